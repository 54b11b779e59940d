"""Checkpoints written on a thread: what is written, when a save returns, and where errors come out."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gptforge.errors import UserError
from gptforge.train import checkpoint_writer
from gptforge.train.checkpoint_writer import CheckpointWriter
from gptforge.train.host_buffers import HostBuffers


class Recorder:
    """A write function that keeps what it was given, on which thread, and can be held back."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.writes: list[tuple[dict[str, Any], bool, str]] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.delay_s = delay_s
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def __call__(self, state: dict[str, Any], best: bool) -> Path:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        assert self.release.wait(timeout=10), "the test never released the write"
        time.sleep(self.delay_s)
        self.writes.append((state, best, threading.current_thread().name))
        with self.lock:
            self.in_flight -= 1
        return Path("last.pt")


def training_state() -> dict[str, Any]:
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return {"model": {"w": weight}, "optimizer": {"state": {0: {"exp_avg": weight * 2}}, "param_groups": [{}]},
            "step": 7, "rng": {"numpy": [np.arange(3), 5]}, "shape": (torch.ones(2), "x")}


def test_a_save_returns_before_the_write_and_writes_the_state_as_it_was_then() -> None:
    write = Recorder()
    write.release.clear()
    writer = CheckpointWriter(write)
    state = training_state()
    writer.save(state, best=True)  # returns while the write is held back
    assert write.started.wait(timeout=10) and write.writes == []
    state["model"]["w"].add_(100)  # training goes on changing the live tensors
    state["optimizer"]["state"][0]["exp_avg"].zero_()
    state["rng"]["numpy"][0][:] = -1
    write.release.set()
    writer.wait()
    (written, best, thread), = write.writes
    assert best and thread == "gptforge-checkpoint"
    assert torch.equal(written["model"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(written["optimizer"]["state"][0]["exp_avg"], 2 * torch.arange(6.0).reshape(2, 3))
    assert written["rng"]["numpy"][0].tolist() == [0, 1, 2]
    assert written["step"] == 7 and isinstance(written["shape"], tuple)


def test_one_write_at_a_time_in_the_order_of_the_saves() -> None:
    write = Recorder(delay_s=0.05)
    writer = CheckpointWriter(write)
    for step in range(4):
        writer.save({"step": step, "w": torch.full((2,), float(step))}, best=False)
    writer.wait()
    assert [state["step"] for state, _, _ in write.writes] == [0, 1, 2, 3]
    assert write.most_in_flight == 1


@pytest.mark.parametrize("how", ["wait", "foreground"])
def test_a_waited_or_foreground_save_is_on_disk_when_it_returns(how: str) -> None:
    write = Recorder(delay_s=0.05)
    writer = CheckpointWriter(write, background=how != "foreground")
    writer.save({"step": 1}, best=False, wait=how == "wait")
    (_, _, thread), = write.writes
    assert thread == threading.current_thread().name


def test_a_failed_write_is_raised_once_by_the_next_call_into_the_writer() -> None:
    calls = []

    def disk_full(state: dict[str, Any], best: bool) -> Path:
        calls.append(state["step"])
        if state["step"] == 1:
            raise UserError("could not write checkpoint last.pt: the disk is full; the previous checkpoint is intact")
        return Path("last.pt")

    writer = CheckpointWriter(disk_full)
    writer.save({"step": 1}, best=False)  # fails on the thread: this call has already returned
    with pytest.raises(UserError, match="the disk is full"):
        writer.save({"step": 2}, best=False)
    assert calls == [1]  # the save that reported the failure wrote nothing
    writer.wait()  # reported once
    writer.save({"step": 3}, best=False, wait=True)
    assert calls == [1, 3]


def test_saves_move_to_the_foreground_when_a_copy_would_take_half_the_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    write, notices = Recorder(), []
    writer = CheckpointWriter(write, notice=notices.append)
    state = {"w": torch.zeros(1000)}  # 4,000 bytes
    monkeypatch.setattr(checkpoint_writer, "available_memory_bytes", lambda: 7_999)
    writer.save(state, best=False)
    assert write.writes[0][0] is state and write.writes[0][2] == threading.current_thread().name
    assert not writer.background
    assert len(notices) == 1 and "foreground" in notices[0] and "half the memory available" in notices[0]

    monkeypatch.setattr(checkpoint_writer, "available_memory_bytes", lambda: 8_000)
    enough = CheckpointWriter(write, notice=notices.append)
    enough.save(state, best=False)
    enough.wait()
    assert write.writes[1][2] == "gptforge-checkpoint" and write.writes[1][0] is not state
    assert len(notices) == 1


def test_host_copy_keeps_a_state_dicts_type_and_version_notes() -> None:
    weights = torch.nn.Linear(2, 2).state_dict()
    copied = HostBuffers().copy({"model": weights}).state["model"]
    assert type(copied) is type(weights) and list(copied) == list(weights)
    assert copied._metadata == weights._metadata


def test_host_copy_shares_no_memory_and_counts_every_tensor() -> None:
    state, host = training_state(), HostBuffers()
    assert host.bytes_to_allocate(state) == (6 + 6 + 2) * 4
    copy = host.copy(state)
    assert copy.ready is None  # on the CPU the copy is done when copy() returns
    originals = [state["model"]["w"], state["optimizer"]["state"][0]["exp_avg"], state["shape"][0]]
    copies = [copy.state["model"]["w"], copy.state["optimizer"]["state"][0]["exp_avg"], copy.state["shape"][0]]
    for original, copied in zip(originals, copies, strict=True):
        assert torch.equal(original, copied)
        assert original.untyped_storage().data_ptr() != copied.untyped_storage().data_ptr()
    assert not np.shares_memory(copy.state["rng"]["numpy"][0], state["rng"]["numpy"][0])


def test_host_copy_keeps_tied_tensors_tied() -> None:
    weight = torch.randn(4, 3)
    state, host = {"wte": weight.detach(), "lm_head": weight.detach(), "first_row": weight[0]}, HostBuffers()
    assert host.bytes_to_allocate(state) == (12 + 3) * 4  # the tied pair once
    copied = host.copy(state).state
    assert copied["wte"] is copied["lm_head"]
    assert copied["first_row"] is not copied["wte"] and torch.equal(copied["first_row"], weight[0])


def test_the_next_copy_reuses_the_buffers_and_takes_the_new_values() -> None:
    state, host = training_state(), HostBuffers()
    first = host.copy(state).state
    state["model"]["w"].add_(1)
    state["optimizer"]["state"][1] = {"exp_avg": torch.ones(5)}  # state that appeared since: a new buffer
    state["shape"] = (torch.ones(3), "x")  # another shape at the same place: a new buffer
    assert host.bytes_to_allocate(state) == (5 + 3) * 4
    second = host.copy(state).state
    assert second["model"]["w"] is first["model"]["w"]  # the same host memory, refilled
    assert torch.equal(second["model"]["w"], torch.arange(6.0).reshape(2, 3) + 1)
    assert second["optimizer"]["state"][0]["exp_avg"] is first["optimizer"]["state"][0]["exp_avg"]
    assert second["shape"][0] is not first["shape"][0] and torch.equal(second["shape"][0], torch.ones(3))
    assert host.bytes_to_allocate(state) == 0


def test_a_background_save_copies_into_the_writers_kept_buffers() -> None:
    write = Recorder()
    writer = CheckpointWriter(write)
    state = training_state()
    for step in range(2):
        state["model"]["w"].fill_(step)
        writer.save(state, best=False)
        writer.wait()
    first, second = (written["model"]["w"] for written, _, _ in write.writes)
    assert first is second and torch.equal(second, torch.ones(2, 3))


@pytest.mark.gpu
def test_a_gpu_copy_lands_in_pinned_memory_without_blocking_and_before_later_updates() -> None:
    weight = torch.arange(1 << 20, dtype=torch.float32, device="cuda")
    host = HostBuffers()
    copy = host.copy({"w": weight})
    weight.add_(1)  # queued after the copy on the same stream: the copy must not see it
    assert copy.ready is not None and copy.state["w"].is_pinned()
    copy.wait()
    assert torch.equal(copy.state["w"], torch.arange(1 << 20, dtype=torch.float32))
    again = host.copy({"w": weight})
    again.wait()
    assert again.state["w"] is copy.state["w"] and torch.equal(again.state["w"], weight.cpu())


def test_available_memory_is_read_from_proc_meminfo_on_linux() -> None:
    available = checkpoint_writer.available_memory_bytes()
    if not Path("/proc/meminfo").is_file():
        assert available is None
        return
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    assert available is not None and 0 < available <= total_kb * 1024
