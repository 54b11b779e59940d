"""The training loop: gradient accumulation, clipping, stop rules, the LR schedule, checkpoints and exact resume.

Every run here is a one- or two-layer char model on a 20k-character slice of tiny Shakespeare, on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import gptforge.checkpoint as checkpoint_module
from conftest import FakeClock
from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.config import RunConfig, apply_overrides, build_config, from_preset
from gptforge.data import SequentialSampler, make_sampler
from gptforge.device import resolve_runtime
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.train.optim import learning_rate_at
from gptforge.train.session import start_run, train
from gptforge.train.trainer import Trainer
from gptforge.use.evaluate import evaluate_text
from gptforge.use.load import load_trained

CORPUS_CHARS = 20_000


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS]
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_config(out: Path, corpus: Path, **overrides: Any) -> RunConfig:
    """A model of a few thousand parameters that takes milliseconds per step."""
    config = from_preset("tiny")
    settings: dict[str, Any] = {
        "data": str(corpus), "tokenizer": "char", "device": "cpu", "progress": False, "plot": False, "compile": False,
        "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "batch_size": 4, "max_steps": 8,
        "learning_rate": 1e-3, "warmup_steps": 2, "log_interval": 1, "eval_interval": 0, "eval_batches": 2,
        "sample_tokens": 4, "checkpoint_interval": 4, "out": str(out),
    }
    settings.update(overrides)
    apply_overrides(config, settings)
    return config


def fit_new_run(config: RunConfig) -> str:
    """A new run trained to its stop rule, without the end-of-run plot and sample (`train` adds those)."""
    trainer, log = start_run(config)
    try:
        return trainer.fit()
    finally:
        log.close()


def read_metrics(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"tensors differ: {different}"


# --- gradient accumulation ---------------------------------------------------------------------------


def test_grad_accumulation_matches_one_big_batch(tmp_path: Path, corpus: Path) -> None:
    # bias=False: the key bias gets a gradient that is zero but for rounding, which AdamW blows up to
    # +-lr in either run; grad_clip=0 so that clipping cannot hide a wrongly scaled gradient
    common = {"sampler": "sequential", "dropout": 0.0, "max_steps": 3, "bias": False, "grad_clip": 0.0}
    big, big_log = start_run(tiny_config(tmp_path / "big", corpus, batch_size=8, grad_accum=1, **common))
    small, small_log = start_run(tiny_config(tmp_path / "small", corpus, batch_size=1, grad_accum=8, **common))
    start = clone_state(big.model)
    assert_same_tensors(clone_state(small.model), start)  # same seed, same start
    try:
        for _ in range(3):
            big_stats, small_stats = big.train_step(), small.train_step()
            assert small_stats.tokens == big_stats.tokens == 8 * 16
            assert small_stats.loss == pytest.approx(big_stats.loss, abs=1e-5)
            assert small_stats.grad_norm == pytest.approx(big_stats.grad_norm, rel=1e-4)
    finally:
        big_log.close()
        small_log.close()
    assert small.sampler.batches_served == 24 and big.sampler.batches_served == 3
    small_params = dict(small.model.named_parameters())
    for name, param in big.model.named_parameters():
        torch.testing.assert_close(small_params[name], param, rtol=0, atol=1e-6, msg=f"{name} differs")
        assert not torch.equal(param, start[name]), f"{name} did not move in three optimizer steps"


def test_tokens_per_step_sets_grad_accum(tmp_path: Path, corpus: Path) -> None:
    # batch 4 x block 16 = 64 tokens per micro-batch, so 256 tokens per step are 4 micro-batches
    trainer, log = start_run(tiny_config(tmp_path / "run", corpus, tokens_per_step=256, grad_accum=1))
    try:
        assert trainer.config.train.grad_accum == 4
        assert trainer.tokens_per_step == 256
        stats = trainer.train_step()
    finally:
        log.close()
    assert stats.tokens == 256
    assert trainer.sampler.batches_served == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["grad_accum"] == 4


def test_tokens_per_step_must_be_a_multiple_of_the_micro_batch(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(UserError, match=r"tokens_per_step 100 is not a multiple of .* = 64\b"):
        start_run(tiny_config(tmp_path / "run", corpus, tokens_per_step=100))
    assert not (tmp_path / "run").exists(), "a rejected config must not create its run directory"


# --- clipping ----------------------------------------------------------------------------------------


def capture_gradients(trainer: Any) -> dict[str, list[torch.Tensor]]:
    """Record the gradients the optimizer is handed, right before its step."""
    captured: dict[str, list[torch.Tensor]] = {}
    original_step = trainer.optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        captured["grads"] = [p.grad.detach().clone() for p in trainer.model.parameters()]
        return original_step(*args, **kwargs)

    trainer.optimizer.step = step
    return captured


def total_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def test_grad_clip_reports_the_raw_norm_and_steps_with_clipped_gradients(tmp_path: Path, corpus: Path) -> None:
    clip = 1e-3
    free, free_log = start_run(tiny_config(tmp_path / "free", corpus, grad_clip=0.0))
    clipped, clipped_log = start_run(tiny_config(tmp_path / "clipped", corpus, grad_clip=clip))
    free_grads, clipped_grads = capture_gradients(free), capture_gradients(clipped)
    try:
        free_stats, clipped_stats = free.train_step(), clipped.train_step()
    finally:
        free_log.close()
        clipped_log.close()

    raw_norm = total_norm(free_grads["grads"])
    assert raw_norm > 100 * clip
    # grad_clip=0: no clipping, the optimizer sees the raw gradient and the reported norm is its norm
    assert free_stats.grad_norm == pytest.approx(raw_norm, rel=1e-5)
    # grad_clip=c: the reported norm is still the pre-clip norm ...
    assert clipped_stats.grad_norm == pytest.approx(raw_norm, rel=1e-5)
    assert clipped_stats.grad_norm > clip
    # ... while the optimizer steps with the same gradient scaled down to norm c
    assert total_norm(clipped_grads["grads"]) == pytest.approx(clip, rel=1e-3)
    scale = clip / raw_norm
    for raw, used in zip(free_grads["grads"], clipped_grads["grads"], strict=True):
        torch.testing.assert_close(used, raw * scale, rtol=1e-3, atol=1e-9)


# --- stop rules ----------------------------------------------------------------------------------------


def test_target_loss_stops_after_the_first_whole_pass_below_it(tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    # every loss is below 10: the run stops once it has a pass's worth of losses (17 batches of 64 x 16)
    outcome = train(tiny_config(run_dir, corpus, target_loss=10.0, max_steps=50, batch_size=64))
    assert outcome.reason.startswith("Reached target loss"), outcome.reason
    assert "at step 17," in outcome.reason
    assert outcome.signal is None and outcome.target_reached is True
    assert [r["step"] for r in read_metrics(run_dir, "train")] == list(range(1, 18))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 17
    summary = (run_dir / "summary.txt").read_text(encoding="utf-8")
    assert "stopped: Reached target loss" in summary
    assert "steps: 17\n" in summary


def test_the_first_step_of_each_session_is_counted_apart_from_training_time(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        fake_clock: FakeClock) -> None:
    """A model's first training forward of a session takes 0.3 s longer, as compilation would."""
    real_forward = GPT.forward
    fake_clock.tick = 0.01

    def compiling_forward(self: GPT, *args: Any, **kwargs: Any) -> Any:
        if self.training and not getattr(self, "compiled", False):
            self.compiled = True
            fake_clock.advance(0.3)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", compiling_forward)
    run_dir = tmp_path / "run"
    trainer, log = start_run(tiny_config(run_dir, corpus, max_steps=3, batch_size=64))
    trainer.runtime = dataclasses.replace(trainer.runtime, compile=True)  # for the log line: wrapped without it
    try:
        trainer.fit()
    finally:
        log.close()
    first_dt = read_metrics(run_dir, "train")[0]["dt_ms"] / 1000
    assert trainer.startup_s == pytest.approx(first_dt, abs=1e-5) and trainer.startup_s == pytest.approx(0.31)
    assert re.search(r"step 1 took \d+\.\ds: torch\.compile compiled the model", capsys.readouterr().out)

    train(resume=run_dir, overrides={"max_steps": 50, "target_loss": 10.0})
    records = read_metrics(run_dir, "train")
    assert [r["step"] for r in records] == list(range(1, 18))  # the target loss stops the run after one pass
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["startup_s"] == pytest.approx(first_dt + records[3]["dt_ms"] / 1000, abs=1e-5)
    training_s = state["elapsed_s"] - state["startup_s"]
    assert state["startup_s"] == pytest.approx(2 * 0.31)  # each session's first step: its two readings and 0.3
    summary = (run_dir / "summary.txt").read_text(encoding="utf-8")
    assert f"training time, all sessions: {training_s:.1f}s (without the first step of each)\n" in summary
    assert f"first step of each session: {state['startup_s']:.1f}s (compilation and warm-up)\n" in summary
    assert (f"after {training_s:.1f}s of training (+{state['startup_s']:.1f}s in the first step of each session: "
            "compilation and warm-up)") in summary


def test_unreached_target_loss_does_not_stop(tmp_path: Path, corpus: Path) -> None:
    assert fit_new_run(tiny_config(tmp_path / "run", corpus, target_loss=0.01, max_steps=3)) == "reached max_steps 3"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3


# --- learning rate -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "decay_steps"), [("cosine", None), ("onecycle", 6), ("constant", None)])
def test_learning_rate_applied_each_step_follows_the_schedule(tmp_path: Path, corpus: Path, schedule: str,
                                                              decay_steps: int | None) -> None:
    max_steps, warmup, peak, ratio = 8, 3, 2e-3, 0.1
    config = tiny_config(tmp_path / "run", corpus, schedule=schedule, decay_steps=decay_steps, max_steps=max_steps,
                         warmup_steps=warmup, learning_rate=peak, min_lr_ratio=ratio)
    trainer, log = start_run(config)
    applied = []
    try:
        for step in range(max_steps):
            stats = trainer.train_step()
            assert stats.step == step + 1  # steps done
            group_lrs = {group["lr"] for group in trainer.optimizer.param_groups}
            assert len(group_lrs) == 1, group_lrs
            applied.append(group_lrs.pop())
            assert stats.lr == applied[-1]
    finally:
        log.close()
    expected = [learning_rate_at(step, max_lr=peak, min_lr=peak * ratio, warmup_steps=warmup,
                                 total_steps=decay_steps or max_steps, schedule=schedule)
                for step in range(max_steps)]
    assert applied == pytest.approx(expected, rel=1e-12, abs=0)
    assert applied[0] > 0
    assert applied[warmup - 1] == pytest.approx(peak)


def test_resume_past_the_end_keeps_the_schedule_and_says_so(tmp_path: Path, corpus: Path) -> None:
    run_dir, peak, ratio = tmp_path / "run", 2e-3, 0.1
    train(tiny_config(run_dir, corpus, max_steps=6, warmup_steps=2, learning_rate=peak, min_lr_ratio=ratio))
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train"]["decay_steps"] == 6
    train(resume=run_dir, overrides={"max_steps": 9})
    lrs = [record["lr"] for record in read_metrics(run_dir, "train")]
    assert len(lrs) == 9
    assert lrs[5] > peak * ratio  # still decaying in the first session
    assert lrs[6:] == pytest.approx([peak * ratio] * 3)  # not a second warm restart up to the peak
    assert "the learning rate schedule ends at step 6" in (run_dir / "train.log").read_text(encoding="utf-8")


def test_a_warmup_longer_than_the_schedule_ends_with_it_on_resume(tmp_path: Path, corpus: Path) -> None:
    """The schedule (4 steps) ends inside the 6-step warmup: a resume past it trains at the lowest rate, as
    the log says, instead of warming on up to the peak."""
    run_dir, peak, ratio = tmp_path / "run", 2e-3, 0.1
    train(tiny_config(run_dir, corpus, max_steps=4, warmup_steps=6, learning_rate=peak, min_lr_ratio=ratio))
    train(resume=run_dir, overrides={"max_steps": 8})
    lrs = [record["lr"] for record in read_metrics(run_dir, "train")]
    assert lrs[:4] == pytest.approx([peak * (step + 1) / 6 for step in range(4)])
    assert lrs[4:] == pytest.approx([peak * ratio] * 4)
    assert (f"later steps train at the lowest rate ({peak * ratio:.2e})"
            in (run_dir / "train.log").read_text(encoding="utf-8"))


@pytest.mark.parametrize("warmup_steps", [3, 4, 5])
def test_resume_across_the_end_of_warmup_continues_to_the_same_bits(tmp_path: Path, corpus: Path,
                                                                   warmup_steps: int) -> None:
    """Split after 4 steps: the first cosine step is the last of the first session (3), the first of the resumed
    one (4), or the second of it (5)."""
    common = {"warmup_steps": warmup_steps, "decay_steps": 8, "checkpoint_interval": 4, "log_interval": 1}
    fit_new_run(tiny_config(tmp_path / "straight", corpus, max_steps=8, **common))
    fit_new_run(tiny_config(tmp_path / "split", corpus, max_steps=4, **common))
    train(resume=tmp_path / "split", overrides={"max_steps": 8})
    expected = train_records(tmp_path / "straight")
    assert train_records(tmp_path / "split") == expected
    lrs = [record[3] for record in expected]
    assert lrs.index(max(lrs)) == warmup_steps - 1  # the peak, then the cosine: both sessions cover both parts


# --- checkpoints ----------------------------------------------------------------------------------------


def test_last_checkpoint_holds_everything_and_loads_as_a_trained_model(tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    trainer, log = start_run(tiny_config(run_dir, corpus, max_steps=5, checkpoint_interval=2, sampler="random"))
    try:
        assert trainer.fit() == "reached max_steps 5"
    finally:
        log.close()

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "step", "tokens_seen", "sampler", "rng", "config", "tokenizer"):
        assert key in state, key
    assert not [k for k in state["model"] if k.startswith(("_orig_mod.", "module.")) or "._orig_mod." in k]
    assert set(state["model"]) == set(GPT(trainer.config.model).state_dict())
    assert_same_tensors(state["model"], clone_state(trainer.model))
    assert state["step"] == 5
    assert state["tokens_seen"] == 5 * 4 * 16
    assert state["sampler"] == trainer.sampler.state_dict()
    assert state["sampler"]["batches_served"] == 5
    assert {"torch", "python", "numpy"} <= set(state["rng"])
    assert len(state["optimizer"]["state"]) == len(list(trainer.model.parameters()))
    assert state["config"] == json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert state["tokenizer"] == json.loads((run_dir / "tokenizer.json").read_text(encoding="utf-8"))

    trained = load_trained(run=run_dir, device="cpu")
    assert trained.source == run_dir / "checkpoints" / "last.pt"
    assert trained.facts.steps == 5
    assert trained.tokenizer.to_dict() == trainer.tokenizer.to_dict()
    x = torch.randint(0, trainer.config.model.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trained.model(x)[0], trainer.model(x)[0])


def test_outcome_names_the_checkpoint_just_written_after_compression_is_switched_off(
        tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    first = train(tiny_config(run_dir, corpus, max_steps=2, compress_checkpoints=True))
    assert first.last_checkpoint == run_dir / "checkpoints" / "last.pt.gz"
    outcome = train(resume=run_dir, overrides={"max_steps": 4, "compress_checkpoints": False})
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 4
    # the stale last.pt.gz from step 2 is still there; the outcome must point at the new file
    assert outcome.last_checkpoint == run_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(outcome.last_checkpoint)["step"] == 4


def test_training_goes_on_while_a_checkpoint_is_written_and_the_last_one_is_waited_for(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The save after step 2 is held on the disk until step 3 has run: only a background write lets that happen."""
    run_dir = tmp_path / "run"
    trainer, log = start_run(tiny_config(run_dir, corpus, max_steps=6, checkpoint_interval=2, keep_checkpoints=3))
    step_3_ran, saved_steps = threading.Event(), []

    def slow_disk(state: dict[str, Any], path: Path, compress: bool = False) -> Path:
        if state["step"] == 2:
            assert step_3_ran.wait(timeout=30), "training waited for the checkpoint write"
        if state["step"] == 6:
            time.sleep(0.5)  # the final save: fit must not return before it is on disk
        saved_steps.append(state["step"])
        return save_checkpoint(state, path, compress)

    real_forward = trainer.forward_model

    def forward(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if trainer.step == 3:
            step_3_ran.set()
        return real_forward(x, y)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_disk)
    trainer.forward_model = forward
    try:
        assert trainer.fit() == "reached max_steps 6"
    finally:
        log.close()
    assert saved_steps == [2, 4, 6]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    # in a background save (step 4's; the final one is written in the foreground), the tied embedding and
    # output weights are stored once, as torch.save stores the originals
    weights = load_checkpoint(run_dir / "checkpoints" / "step-4.pt")["model"]
    # step 2's write was held until step 3 had run: it still holds step 2's AdamW step counters
    held_back = load_checkpoint(run_dir / "checkpoints" / "step-2.pt")["optimizer"]["state"]
    assert {float(moments["step"]) for moments in held_back.values()} == {2.0}
    assert weights["lm_head.weight"].untyped_storage().data_ptr() == \
        weights["transformer.wte.weight"].untyped_storage().data_ptr()


def test_foreground_checkpoints_are_written_before_the_next_step(tmp_path: Path, corpus: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, log = start_run(tiny_config(tmp_path / "run", corpus, max_steps=4, checkpoint_interval=2,
                                         background_checkpoints=False))
    written_at = []

    def recording_disk(state: dict[str, Any], path: Path, compress: bool = False) -> Path:
        written_at.append((state["step"], trainer.step, threading.current_thread() is threading.main_thread()))
        return save_checkpoint(state, path, compress)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", recording_disk)
    try:
        trainer.fit()
    finally:
        log.close()
    assert written_at == [(2, 2, True), (4, 4, True)]


# --- exact resume -----------------------------------------------------------------------------------------


def train_records(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["tokens_seen"]) for r in read_metrics(run_dir, "train")]


@pytest.mark.parametrize(("sampler", "dropout", "optimizer"), [
    ("random", 0.0, "adamw"), ("sequential", 0.0, "adamw"), ("random", 0.2, "adamw"),
    pytest.param("random", 0.0, "muon", marks=pytest.mark.skipif(not hasattr(torch.optim, "Muon"),
                                                                  reason="torch.optim.Muon needs torch >= 2.9"))])
def test_resume_continues_to_the_same_bits(tmp_path: Path, corpus: Path, sampler: str, dropout: float,
                                           optimizer: str) -> None:
    # decay_steps pins the schedule: max_steps changes between the two sessions of the split run
    common = {"sampler": sampler, "dropout": dropout, "decay_steps": 8, "checkpoint_interval": 4,
              "eval_interval": 3, "log_interval": 1, "optimizer": optimizer}
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    assert fit_new_run(tiny_config(straight_dir, corpus, max_steps=8, **common)) == "reached max_steps 8"
    assert fit_new_run(tiny_config(split_dir, corpus, max_steps=4, **common)) == "reached max_steps 4"
    assert load_checkpoint(split_dir / "checkpoints" / "last.pt")["step"] == 4
    resumed = train(resume=split_dir, overrides={"max_steps": 8})
    assert resumed.reason == "reached max_steps 8"

    expected = train_records(straight_dir)
    assert [r[0] for r in expected] == list(range(1, 9))
    assert train_records(split_dir) == expected  # losses, norms, lrs: bit for bit
    straight_evals = [(r["step"], r["val_loss"]) for r in read_metrics(straight_dir, "eval")]
    split_evals = [(r["step"], r["val_loss"]) for r in read_metrics(split_dir, "eval")]
    # the split run also evaluates at its first session's final step; every shared eval is identical
    assert [e[0] for e in straight_evals] == [3, 6, 8]
    assert set(straight_evals) <= set(split_evals)

    straight_state = load_checkpoint(straight_dir / "checkpoints" / "last.pt")
    split_state = load_checkpoint(split_dir / "checkpoints" / "last.pt")
    assert split_state["step"] == straight_state["step"] == 8
    assert split_state["tokens_seen"] == straight_state["tokens_seen"]
    assert split_state["sampler"] == straight_state["sampler"]
    assert_same_tensors(split_state["model"], straight_state["model"])
    for index, saved in straight_state["optimizer"]["state"].items():
        assert_same_tensors(split_state["optimizer"]["state"][index], saved)


# --- non-finite loss ------------------------------------------------------------------------------------


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    trainer, log = start_run(tiny_config(run_dir, corpus, max_steps=10, checkpoint_interval=1))

    def slow_disk(state: dict[str, Any], path: Path, compress: bool = False) -> Path:
        if state["step"] == 3:  # still being written when step 3 fails: it must land before the error goes up
            time.sleep(0.5)
        return save_checkpoint(state, path, compress)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_disk)
    real_forward = trainer.forward_model
    before: dict[str, Any] = {}

    def poisoned(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, loss = real_forward(x, y)
        if trainer.step != 3:
            return logits, loss
        if not before:  # the state just before the bad step
            before["model"] = clone_state(trainer.model)
            before["optimizer"] = copy.deepcopy(trainer.optimizer.state_dict())
        return logits, loss * float("nan")

    trainer.forward_model = poisoned
    try:
        with pytest.raises(UserError, match=r"non-finite values at step 4\b") as raised:  # the 4th
            trainer.fit()
    finally:
        log.close()
    assert "nan" in str(raised.value).lower()
    assert before, "the poisoned step never ran"
    assert trainer.step == 3
    assert_same_tensors(clone_state(trainer.model), before["model"])
    after_optimizer = trainer.optimizer.state_dict()
    for index, saved in before["optimizer"]["state"].items():
        assert_same_tensors(after_optimizer["state"][index], saved)
    assert all(p.grad is None for p in trainer.model.parameters())

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 3
    assert_same_tensors(state["model"], before["model"])
    assert all(math.isfinite(r["loss"]) for r in read_metrics(run_dir, "train"))

    outcome = train(resume=run_dir, overrides={"max_steps": 5})
    assert outcome.reason == "reached max_steps 5"
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == 5
    assert all(torch.isfinite(t).all() for t in resumed["model"].values())
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3, 4, 5]


# --- evaluation -----------------------------------------------------------------------------------------


def test_the_trainers_val_loss_is_gptforge_evals_on_the_same_windows(tmp_path: Path, corpus: Path) -> None:
    """One val loss: over the tokenizer's 58 characters, not the 64 rows the vocabulary is padded to."""
    config = tiny_config(tmp_path / "run", corpus, max_steps=6, eval_interval=6, eval_batches=3, val_fraction=0.2)
    trainer, log = start_run(config)
    try:
        trainer.fit()
        during_training = trainer.evaluate()
    finally:
        log.close()
    assert trainer.tokenizer.vocab_size < config.model.vocab_size
    trained = load_trained(None, tmp_path / "run" / "checkpoints" / "last.pt", device="cpu")
    result = evaluate_text(trained, str(corpus), split="val", val_fraction=0.2, batch_size=config.train.batch_size,
                           max_batches=config.train.eval_batches, progress=False)
    assert result.windows == config.train.eval_batches * config.train.batch_size
    assert during_training == pytest.approx(result.loss, abs=1e-5)
    windows = SequentialSampler(trainer.val_tokens, config.train.batch_size, config.model.block_size)
    with torch.no_grad():  # the model's own loss, over all 64 rows: what the trainer used to report
        padded = sum(trained.model(*windows.next_batch())[1].item() for _ in range(3)) / 3
    assert abs(padded - result.loss) > 1e-4


def test_a_trainer_is_built_from_a_config_a_model_a_runtime_and_a_sampler() -> None:
    """No tokenizer, run folder or val split: it trains steps (what bench times), and refuses to fit(), which
    saves checkpoints."""
    config = build_config("tiny", flags={"device": "cpu", "batch_size": 2, "block_size": 8})
    runtime = resolve_runtime(config.train)
    tokens = (np.arange(500) % config.model.vocab_size).astype(np.uint32)
    trainer = Trainer(config, GPT(config.model), runtime, make_sampler("random", tokens, 2, 8, seed=0))
    assert math.isfinite(trainer.train_step().loss) and trainer.step == 1
    assert not trainer.can_sample and not trainer.evaluates
    with pytest.raises(RuntimeError, match="run folder"):
        trainer.fit()


@pytest.mark.parametrize(("val_fraction", "split"), [(0.1, "val"), (0.0005, "train")])
def test_the_checkpoint_says_which_loss_best_loss_is(val_fraction: float, split: str, tmp_path: Path,
                                                     corpus: Path) -> None:
    """With eval_interval set, best_loss is the best val loss only where the val split holds a block: a split of
    a few tokens is never evaluated, so the best training loss is kept, and the checkpoint, the summary and the
    loaded model's facts all say so (config alone would suggest "val")."""
    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, corpus, val_fraction=val_fraction, eval_interval=4))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["best_loss_split"] == split
    assert f"best loss ({split}):" in (run_dir / "summary.txt").read_text()
    assert load_trained(run=run_dir, device="cpu").facts.best_loss_split == split
