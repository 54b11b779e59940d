"""Multi-process training under torchrun, on the CPU with gloo: two processes with half the batch each must
train exactly like one process with all of it (DDP and FSDP, with and without accumulation), resume exactly,
stop together, and leave checkpoints a single process can use.

The sequential sampler gives rank r the r-th half of each global batch, so 2 x B/2 sees the very sequences
1 x B sees, and with dropout 0 the runs differ only in floating-point summation order.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.fsdp

from gptforge.checkpoint import load_checkpoint
from gptforge.cli import main
from gptforge.config import apply_overrides, from_preset
from gptforge.device import resolve_parallel
from gptforge.errors import UserError
from gptforge.run_dir import LOCK_FILE
from gptforge.train.distributed import without_flag
from gptforge.train.metrics_history import SESSION, read_metrics
from gptforge.train.session import resolve_accumulation, train
from warm import WarmStarter

CORPUS_CHARS = 20_000
GLOBAL_BATCH = 4
STEPS = 6
TOLERANCE = 1e-5
TIMEOUT_S = 180

# --parallel fsdp uses FSDP2's public API, torch.distributed.fsdp.fully_shard, which arrived in torch 2.6
NEEDS_FSDP2 = pytest.mark.skipif(not hasattr(torch.distributed.fsdp, "fully_shard"),
                                 reason=f"--parallel fsdp needs torch >= 2.6 (this is {torch.__version__})")
FSDP = pytest.param("fsdp", marks=NEEDS_FSDP2)
SLOW = pytest.mark.slow
# one pytest-xdist worker runs them all, so the runs they share (Runs) are trained once, not once per worker
pytestmark = pytest.mark.xdist_group("distributed")


def settings(corpus: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """A 2-layer, 32-wide char model; a constant learning rate so that a longer --max-steps changes nothing."""
    return {"data": str(corpus), "tokenizer": "char", "device": "cpu", "progress": False, "plot": False,
            "compile": False, "block_size": 16, "batch_size": GLOBAL_BATCH, "max_steps": STEPS, "learning_rate": 1e-2,
            "warmup_steps": 0, "schedule": "constant", "log_interval": 1, "eval_interval": 3, "eval_batches": 2,
            "sample_tokens": 4, "checkpoint_interval": 3, "out": str(out), **overrides}


def as_flags(values: dict[str, Any]) -> list[str]:
    flags = ["train", "--preset", "tiny"]
    for key, value in values.items():
        name = key.replace("_", "-")
        flags += [f"--{name}" if value else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return flags


class Runs:
    """Training runs shared by the tests of this module, each trained once (torchrun costs seconds a launch)."""

    def __init__(self, root: Path, data_dir: Path, warm: WarmStarter) -> None:
        self.root = root
        self.warm = warm
        self.corpus = root / "corpus.txt"
        self.corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS],
                               encoding="utf-8")
        # one thread per process: two of them share the two cores, and float sums depend on the split
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTFORGE_DATA_DIR": str(data_dir),
                    "GPTFORGE_CACHE_DIR": str(root / "cache")}
        self.done: dict[tuple, Path] = {}

    def single(self, grad_accum: int) -> Path:
        """One process, the whole batch, trained in this process."""
        key = ("single", grad_accum)
        if key not in self.done:
            config = from_preset("tiny")
            apply_overrides(config, settings(self.corpus, self.root / f"single-{grad_accum}", grad_accum=grad_accum))
            with pytest.MonkeyPatch.context() as env:
                env.setenv("GPTFORGE_CACHE_DIR", self.env["GPTFORGE_CACHE_DIR"])
                self.done[key] = train(config).run_dir
        return self.done[key]

    def two_ranks(self, parallel: str, grad_accum: int) -> Path:
        """Two processes with half the batch each, keeping their step-N checkpoints; DDP without accumulation
        goes through `train --nproc 2`."""
        key = (parallel, grad_accum)
        if key not in self.done:
            out = self.root / f"{parallel}-{grad_accum}"
            flags = self.flags(out, parallel=parallel, grad_accum=grad_accum, keep_checkpoints=STEPS)
            if key == ("ddp", 1):
                self.check(self.warm.run([sys.executable, "-m", "gptforge", *flags[:1], "--nproc", "2", *flags[1:]],
                                         env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S))
            else:
                self.torchrun(flags)
            self.done[key] = out
        return self.done[key]

    def resumed(self, finished: Path, name: str, after_a_stop: bool) -> tuple[Path, subprocess.CompletedProcess]:
        """The two-process run `finished`, resumed at step 3 and run to its end under torchrun: trained anew
        up to a stop at step 3 (`after_a_stop`: its last.pt, written after the final eval and sample), or
        copied as a crash right after its step-3 checkpoint would leave it (the later checkpoints gone)."""
        copy = self.root / name
        if after_a_stop:
            config = json.loads((finished / "config.json").read_text(encoding="utf-8"))
            self.torchrun(self.flags(copy, parallel=config["train"]["parallel"], max_steps=STEPS // 2))
        else:
            shutil.copytree(finished, copy)
            for path in (copy / "checkpoints").iterdir():
                if path.name != f"step-{STEPS // 2}.pt":
                    path.unlink()
        # each rank resumes under the other's hash seed: nothing written may depend on the seed
        return copy, self.torchrun(["train", "--resume", str(copy), "--max-steps", str(STEPS)], shift=1)

    def flags(self, out: Path, **overrides: Any) -> list[str]:
        return as_flags(settings(self.corpus, out, batch_size=GLOBAL_BATCH // 2, **overrides))

    def torchrun(self, gptforge_args: list[str], probe: str | None = None, check: bool = True,
                 shift: int = 0) -> subprocess.CompletedProcess:
        """A torchrun launch of warm workers; `shift` 1 swaps the ranks' hash seeds (tests/warm.py)."""
        result = subprocess.run(torchrun_command(gptforge_args, probe, self.warm, shift), env=self.env,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        return self.check(result) if check else result

    @staticmethod
    def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result


def torchrun_command(gptforge_args: list[str], probe: str | None = None, warm: WarmStarter | None = None,
                     shift: int = 0) -> list[str]:
    """Two processes of `gptforge ARGS`, or of tests/distributed_probe.py PROBE ARGS; with `warm`, each is
    started by the warm server through tests/warm_relay.py (the stopping tests take real ones)."""
    program = ["-m", "gptforge"] if probe is None else [str(Path(__file__).with_name("distributed_probe.py")), probe]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *(program if warm is None else warm.relay_command(program, shift)), *gptforge_args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, warm: WarmStarter) -> Runs:
    return Runs(tmp_path_factory.mktemp("distributed"), data_dir, warm)


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def loss_by_step(logged: list[dict], kind: str) -> dict[int, float]:
    return {r["step"]: r["loss" if kind == "train" else "val_loss"] for r in logged}


def losses(run_dir: Path, kind: str = "train") -> dict[int, float]:
    return loss_by_step(records(run_dir, kind), kind)


def newest_session_losses(run_dir: Path, kind: str = "train") -> dict[int, float]:
    """The losses the run's last session logged (after its "session" record), each step once."""
    logged = read_metrics(run_dir / "metrics.jsonl")
    newest = logged[max(i for i, record in enumerate(logged) if record["kind"] == SESSION):]
    picked = [record for record in newest if record["kind"] == kind]
    assert len({record["step"] for record in picked}) == len(picked), picked
    return loss_by_step(picked, kind)


def last_state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


# --- two processes train like one -----------------------------------------------------------------------


@pytest.mark.parametrize(("parallel", "grad_accum"), [
    ("ddp", 1), pytest.param("ddp", 2, marks=SLOW), pytest.param("fsdp", 1, marks=[NEEDS_FSDP2, SLOW]),
    pytest.param("fsdp", 2, marks=[NEEDS_FSDP2, SLOW])])
def test_two_processes_with_half_the_batch_train_like_one_with_all_of_it(runs: Runs, parallel: str,
                                                                         grad_accum: int) -> None:
    single, ranks = runs.single(grad_accum), runs.two_ranks(parallel, grad_accum)
    expected, actual = losses(single), losses(ranks)
    assert [r["step"] for r in records(ranks, "train")] == list(range(1, STEPS + 1))  # once each: rank 0 alone writes
    assert actual == pytest.approx(expected, abs=TOLERANCE, rel=0)
    assert len(set(expected.values())) == STEPS  # the loss moves, so a step that went wrong would show
    assert losses(ranks, "eval") == pytest.approx(losses(single, "eval"), abs=TOLERANCE, rel=0)
    ours, theirs = last_state(ranks), last_state(single)
    assert ours["world_size"] == 2 and ours["tokens_seen"] == theirs["tokens_seen"]
    # Weights agree within 1e-6 but for the attention key bias: its true gradient is zero (softmax ignores a
    # shift shared by all keys), so Adam turns float noise into steps of up to the learning rate there.
    for name, tensor in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], tensor, atol=10 * TOLERANCE, rtol=0)


@pytest.mark.slow
@NEEDS_FSDP2
def test_a_sharded_run_saves_the_one_process_checkpoint_layout(runs: Runs) -> None:
    sharded, single = last_state(runs.two_ranks("fsdp", 1)), last_state(runs.single(1))
    assert list(sharded["model"]) == list(single["model"])
    assert all(not hasattr(t, "full_tensor") and t.device.type == "cpu" for t in sharded["model"].values())
    assert sharded["optimizer"]["state"].keys() == single["optimizer"]["state"].keys()
    assert sharded["optimizer"]["param_groups"] == single["optimizer"]["param_groups"]


def assert_resumed_exactly(resumed: Path, result: subprocess.CompletedProcess, uninterrupted: Path) -> None:
    """The steps after step 3, run by the resumed session, log the uninterrupted run's losses and end in its
    very state."""
    assert re.search(rf"resuming {re.escape(str(resumed))} from (last|step-{STEPS // 2})\.pt at step {STEPS // 2} ",
                     result.stdout), result.stdout
    for kind in ("train", "eval"):
        redone = newest_session_losses(resumed, kind)
        assert redone == {step: loss for step, loss in losses(uninterrupted, kind).items() if step > STEPS // 2}
        assert redone  # bit for bit, not approximately, and not vacuously
    ours, theirs = last_state(resumed), last_state(uninterrupted)
    assert ours["step"] == theirs["step"] == STEPS
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    for index, saved in theirs["optimizer"]["state"].items():
        assert all(torch.equal(ours["optimizer"]["state"][index][k], v) for k, v in saved.items()), index


@pytest.mark.slow
@pytest.mark.parametrize(("parallel", "after_a_stop"), [("ddp", True), pytest.param("fsdp", False, marks=NEEDS_FSDP2)],
                         ids=["ddp-after-a-stop", "fsdp-after-a-crash"])
def test_resume_under_two_processes_continues_exactly(runs: Runs, parallel: str, after_a_stop: bool) -> None:
    straight = runs.two_ranks(parallel, 1)
    assert_resumed_exactly(*runs.resumed(straight, f"{parallel}-resumed", after_a_stop), straight)


@SLOW
@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason=f"torch {torch.__version__} has no torch.optim.Muon")
def test_muon_under_ddp_trains_like_one_process_and_resumes_exactly(runs: Runs) -> None:
    """Every DDP rank holds whole matrices and the averaged gradient, so each orthogonalises the same update."""
    single_dir = runs.root / "muon-single"
    config = from_preset("tiny")
    apply_overrides(config, settings(runs.corpus, single_dir, optimizer="muon"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPTFORGE_CACHE_DIR", runs.env["GPTFORGE_CACHE_DIR"])
        train(config)
    straight = runs.root / "muon-ddp"
    runs.torchrun(runs.flags(straight, parallel="ddp", optimizer="muon", keep_checkpoints=STEPS))
    # the float noise of a two-way gradient sum shows more through Newton-Schulz than through AdamW
    assert losses(straight) == pytest.approx(losses(single_dir), abs=1e-3, rel=0)
    assert len(set(losses(single_dir).values())) == STEPS
    assert_resumed_exactly(*runs.resumed(straight, "muon-ddp-resumed", after_a_stop=False), straight)


# --- gradients cross processes once per optimizer step ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", FSDP])
def test_gradients_are_exchanged_only_on_the_last_micro_step(runs: Runs, parallel: str) -> None:
    # DDP: one bucket holds this model's gradients, so one all-reduce a step, not one per micro-step.
    # FSDP2: reduce-scatter is switched off for the first two of three micro-steps and on for the last.
    result = runs.torchrun(runs.flags(runs.root / f"sync-{parallel}", parallel=parallel, grad_accum=3, max_steps=2,
                                      eval_interval=0), probe="sync")
    steps = [json.loads(line.removeprefix("SYNC ")) for line in result.stdout.splitlines()
             if line.startswith("SYNC ")]
    assert [step["step"] for step in steps] == [1, 2]
    for step in steps:
        if parallel == "ddp":
            assert step["ddp_buckets"] == 1 and step["fsdp_sync"] == [], step
        else:
            assert step["ddp_buckets"] == 0 and step["fsdp_sync"] == [False, False, True], step


def test_global_tokens_per_step_is_shared_out_over_the_processes(runs: Runs) -> None:
    config = from_preset("tiny")
    apply_overrides(config, settings(runs.corpus, runs.root / "unused", batch_size=2, tokens_per_step=256))
    for world_size, grad_accum in [(1, 8), (2, 4), (4, 2)]:
        resolve_accumulation(config, world_size)
        assert config.train.grad_accum == grad_accum
    with pytest.raises(UserError, match="batch_size x block_size x processes = 96"):
        resolve_accumulation(config, 3)


def test_a_nan_on_one_process_stops_both_before_the_update(runs: Runs) -> None:
    run_dir = runs.root / "nan"
    result = runs.torchrun(runs.flags(run_dir, checkpoint_interval=1, eval_interval=0), probe="nan-on-rank-1",
                           check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite values at step 3" in errors[0], result.stderr[-3000:]
    assert [r["step"] for r in records(run_dir, "train")] == [1, 2]
    assert last_state(run_dir)["step"] == 2  # the last good checkpoint, from before the bad step


# --- one process reads what two wrote --------------------------------------------------------------------


@pytest.mark.slow
def test_a_ddp_run_samples_on_one_process(runs: Runs, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sample", "--run", str(runs.two_ranks("ddp", 1)), "--max-new-tokens", "20", "--seed", "1",
                   "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0 and len(out.strip()) >= 10


@pytest.mark.slow
def test_resuming_with_another_number_of_processes_is_one_clear_error(runs: Runs, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs.two_ranks("ddp", 1), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    status = main(["train", "--resume", str(run_dir), "--max-steps", str(STEPS + 2)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "written by 2 processes, this run has 1" in err
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_a_one_process_run_resumed_by_two_stops_both_with_the_error_said_once(runs: Runs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs.single(1), run_dir)
    result = runs.warm.run([sys.executable, "-m", "gptforge", "train", "--nproc", "2", "--resume", str(run_dir)],
                           env=runs.env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode != 0  # torchrun's status, passed on by --nproc
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written by 1 process, this run has 2" in errors[0], result.stderr


def test_under_torchrun_process_0_alone_holds_the_run_lock(runs: Runs, tmp_path: Path) -> None:
    """Rank 0 takes the lock for all (were rank 1 to try, it would be refused by rank 0): a held lock is one
    error line for the whole job and touches nothing. That a free one lets both processes resume, rank 1
    not taking it, test_resume_under_two_processes_continues_exactly shows."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs.two_ranks("ddp", 1), run_dir)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(descriptor, b"4242\n", 0)
        held = runs.torchrun(["train", "--resume", str(run_dir), "--max-steps", str(STEPS + 1)], check=False)
    finally:
        os.close(descriptor)
    assert held.returncode != 0
    errors = [line for line in held.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "in use by another gptforge train (PID 4242)" in errors[0], held.stderr
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


# --- stopping together -----------------------------------------------------------------------------------


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The process torchrun started for `rank` (Linux: found through /proc)."""
    for children in Path(f"/proc/{torchrun_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"no rank {rank} among the children of {torchrun_pid}")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torchrun", "rank 1"])
def test_sigterm_stops_every_process_after_the_same_step_and_saves_once(runs: Runs, tmp_path: Path,
                                                                        target: str) -> None:
    """To torchrun's process group (Ctrl-C in a shell, a scheduler), or to one training process alone."""
    run_dir = tmp_path / "run"
    command = torchrun_command(runs.flags(run_dir, max_steps=1_000_000, eval_interval=0, checkpoint_interval=1000))
    with (tmp_path / "out.txt").open("w") as stdout, (tmp_path / "err.txt").open("w") as stderr:
        process = subprocess.Popen(command, env=runs.env, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run_dir / "metrics.jsonl").is_file() or len(records(run_dir, "train")) < 4:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
            time.sleep(0.1)
        if target == "torchrun":
            os.killpg(process.pid, signal.SIGTERM)  # torchrun passes it on to each training process
        else:
            os.kill(worker_pid(process.pid, rank=1), signal.SIGTERM)
        process.wait(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log, stderr = (run_dir / "train.log").read_text(encoding="utf-8"), (tmp_path / "err.txt").read_text()
    # a process left behind in a collective would end in a traceback once its peer left; the only ones
    # allowed are torchrun's own reports of the signal it got or of its processes' exit status
    assert stderr.count("Traceback") == stderr.count("SignalException: Process") + stderr.count(
        "ChildFailedError:"), stderr
    assert log.count("SIGTERM: saving") == 1  # with target "rank 1", rank 0 got no signal and still stopped
    state = last_state(run_dir)
    assert 4 <= state["step"] < 1_000_000
    assert state["step"] == records(run_dir, "train")[-1]["step"]
    assert f"stopped by SIGTERM after {state['step']} steps" in log
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert "stopped: stopped by SIGTERM" in (run_dir / "summary.txt").read_text(encoding="utf-8")


# --- settings ------------------------------------------------------------------------------------------------


def test_parallel_strategy_follows_the_number_of_processes() -> None:
    assert resolve_parallel("fsdp", 1, torch.float32) == "none"
    assert resolve_parallel("auto", 2, torch.bfloat16) == "ddp"
    assert resolve_parallel("fsdp", 2, torch.bfloat16) == "fsdp"
    with pytest.raises(UserError, match="bfloat16"):
        resolve_parallel("fsdp", 2, torch.float16)


def test_nproc_is_left_out_of_what_torchrun_runs() -> None:
    assert without_flag(["train", "--nproc", "2", "--out", "r"], "--nproc") == ["train", "--out", "r"]
    assert without_flag(["train", "--nproc=2", "--np", "4"], "--nproc") == ["train"]
    assert without_flag(["train", "--n-layer", "2"], "--nproc") == ["train", "--n-layer", "2"]


@pytest.mark.parametrize("flags", [["--nproc", "0"], ["--nproc", "2", "--parallel", "zero"],
                                   ["--nproc", "2", "--parallel", "fsdp", "--optimizer", "muon"]],
                         ids=["nproc", "parallel", "fsdp-muon"])
def test_bad_multi_process_flags_are_one_error_line(flags: list[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status = main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()


# --- an error on rank 0 reaches the others -----------------------------------------------------------------


def run_on_rank0_in_a_group(rank: int, store_path: str, results: str) -> None:
    """One of two processes started by torch.multiprocessing (nothing kills the other when one fails, as
    on another node): rank 0's action fails like a bug; what each rank saw goes to RESULTS/RANK."""
    from datetime import timedelta

    from gptforge.train.distributed import run_on_rank0

    store = torch.distributed.FileStore(store_path, 2)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=60))

    def buggy() -> None:
        raise RuntimeError("a simulated bug")

    try:
        run_on_rank0(buggy, rank, 2)
        seen = "nothing"
    except Exception as exc:
        seen = f"{type(exc).__name__}: {exc}"
    Path(results, str(rank)).write_text(seen, encoding="utf-8")
    torch.distributed.destroy_process_group()


def test_a_bug_in_rank_0s_action_stops_the_other_ranks_with_its_name(tmp_path: Path) -> None:
    # had rank 1 been left waiting, the group's timeout would have ended its wait with a timeout error instead
    torch.multiprocessing.spawn(run_on_rank0_in_a_group, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    assert (tmp_path / "0").read_text(encoding="utf-8") == "RuntimeError: a simulated bug"  # with its traceback
    assert (tmp_path / "1").read_text(encoding="utf-8") == \
        "UserError: process 0 failed (RuntimeError: a simulated bug); its traceback is above"
