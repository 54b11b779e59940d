"""--target-loss judged on the mean over the last full pass of the data, not on one batch.

The rule's arithmetic is tested on `PassLoss` alone; the trainer's use of it (stop step, log lines,
summary, exit status, resume) with a scripted loss per step, so each case is exact and takes no training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from conftest import run_main
from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.train.pass_loss import Milestone, PassLoss
from gptforge.train.session import start_run, train
from gptforge.train.trainer import StepStats, Trainer
from test_trainer import read_metrics, tiny_config


def at(step: int, loss: float) -> Milestone:
    return Milestone(step=step, loss=loss, training_s=step * 0.5, tokens=step * 100, epoch=step / 3)


def feed(rule: PassLoss, losses: list[float]) -> list[float | None]:
    return [rule.add(loss, at(step, loss)) for step, loss in enumerate(losses)]


# --- the rule ---------------------------------------------------------------------------------------


def test_the_mean_waits_for_a_whole_pass_then_follows_the_last_pass() -> None:
    rule = PassLoss(3, target=0.1)
    assert feed(rule, [0.9, 0.6, 0.3, 0.03, 0.06, 0.09]) == pytest.approx([None, None, 0.6, 0.31, 0.13, 0.06])
    assert rule.first_batch_below == at(3, 0.03)  # one batch fell below at step 3 ...
    assert rule.reached == Milestone(step=5, loss=pytest.approx(0.06), training_s=2.5, tokens=500, epoch=5 / 3)
    assert rule.best_mean == pytest.approx(0.06)  # ... the whole pass only at step 5


def test_a_missed_target_says_so_with_the_best_pass_mean() -> None:
    rule = PassLoss(2, target=0.1)
    feed(rule, [0.5, 0.05, 0.7, 0.4])
    assert rule.reached is None
    assert rule.report() == ("target loss 0.1 NOT reached: best pass mean 0.2750; one batch first below at step 1, "
                             "after 0.5s of training, 100 tokens, 0.33 epochs (loss 0.0500)")
    short = PassLoss(10, target=0.1)
    feed(short, [0.5, 0.4])
    assert short.report() == ("target loss 0.1 NOT reached: fewer steps than one pass of the data (10); "
                              "no single batch below it")
    assert PassLoss(2, target=None).report() is None


def test_a_reached_target_names_the_step_time_tokens_and_epochs() -> None:
    rule = PassLoss(2, target=0.1)
    feed(rule, [0.08, 0.3, 0.05, 0.06])
    assert rule.report() == ("target loss 0.1 reached: mean over the last pass of the data 0.0550 at step 3, after "
                             "1.5s of training, 300 tokens, 1.00 epochs; one batch first below at step 0, after 0.0s "
                             "of training, 0 tokens, 0.00 epochs (loss 0.0800)")


def test_state_round_trip_gives_the_same_decisions() -> None:
    losses = [0.4, 0.2, 0.09, 0.12, 0.05, 0.08, 0.07]
    straight = PassLoss(3, target=0.1)
    expected = feed(straight, losses)
    first = PassLoss(3, target=0.1)
    feed(first, losses[:4])
    second = PassLoss(3, target=0.1)
    second.load_state_dict(first.state_dict())
    got = [second.add(loss, at(step, loss)) for step, loss in enumerate(losses) if step >= 4]
    assert got == expected[4:]  # bit for bit: the sum is exact
    assert second.state_dict() == straight.state_dict()


def test_a_resume_with_another_target_or_pass_length_keeps_only_what_still_means_something() -> None:
    rule = PassLoss(3, target=0.1)
    feed(rule, [0.3, 0.05, 0.2, 0.1])
    other_target = PassLoss(3, target=0.5)
    other_target.load_state_dict(rule.state_dict())
    assert other_target.first_batch_below is None and other_target.mean() == pytest.approx(rule.mean())
    shorter = PassLoss(2, target=0.1)
    shorter.load_state_dict(rule.state_dict())
    assert shorter.mean() == pytest.approx(0.15)  # the newest two losses
    assert shorter.first_batch_below == at(1, 0.05)


def test_milestones_of_a_checkpoint_that_counted_steps_from_0_are_moved_on(tmp_path: Path, corpus: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Older checkpoints (no best_step) named the 0-based index of a step; today's step N is N steps done."""
    scripted_steps(monkeypatch, [0.5, 0.05, 0.5, 0.5, 0.5])
    run_dir = tmp_path / "run"
    train(tiny_config(run_dir, corpus, target_loss=0.1, max_steps=3, **PASS_SETTINGS))
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert state["pass_loss"]["first_batch_below"]["step"] == 2 and state["best_step"] is not None
    state["pass_loss"]["first_batch_below"]["step"] = 1  # as the older code saved it
    del state["best_step"]
    save_checkpoint(state, last)
    train(resume=run_dir, overrides={"max_steps": 5})
    assert "one batch first below at step 2, " in (run_dir / "summary.txt").read_text(encoding="utf-8")
    assert load_checkpoint(last)["pass_loss"]["first_batch_below"]["step"] == 2


# --- the trainer -----------------------------------------------------------------------------------


def scripted_steps(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> None:
    """Every Trainer's step returns the next scripted loss (by step number) instead of training."""

    def train_step(self: Trainer) -> StepStats:
        for _ in range(self.config.train.grad_accum):
            self.sampler.next_batch()
        self.step += 1
        stats = StepStats(step=self.step, loss=losses[self.step - 1], grad_norm=1.0, lr=1e-3,
                          tokens=self.tokens_per_step, seconds=0.01)
        self.tokens_seen += stats.tokens
        self.last_loss = stats.loss
        return stats

    monkeypatch.setattr(Trainer, "train_step", train_step)


# 20,000 characters, 10% val: 18,000 train tokens. Block 16 x batch 64 = 1,024 tokens per micro-batch.
PASS_SETTINGS = {"block_size": 16, "batch_size": 64, "log_interval": 1, "checkpoint_interval": 1000}


@pytest.mark.parametrize(("sampler", "grad_accum", "steps"), [
    ("sequential", 1, 17),  # 17,999 // 16 = 1,124 windows: 17 batches of 64 per epoch
    ("sequential", 2, 9),  # 17 micro-batches over accumulation 2: ceil = 9 steps
    ("random", 1, 18),  # ceil(18,000 / 1,024)
    ("random", 3, 6),  # ceil(18,000 / 3,072)
])
def test_one_pass_is_an_epoch_in_optimizer_steps(tmp_path: Path, corpus: Path, sampler: str, grad_accum: int,
                                                 steps: int) -> None:
    trainer, log = start_run(tiny_config(tmp_path / "run", corpus, sampler=sampler, grad_accum=grad_accum,
                                         target_loss=0.1, **PASS_SETTINGS))
    log.close()
    assert trainer.pass_loss.steps == steps
    if sampler == "sequential":
        assert trainer.sampler.batches_per_epoch == 17


def test_one_batch_below_the_target_does_not_stop_the_run(tmp_path: Path, corpus: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # a pass is 9 steps (sequential, accumulation 2); step 5 alone dips below; the mean over steps 10-18 is
    # (0.15 + 0.12 + 7 x 0.095) / 9 = 0.0978, the first below 0.1
    losses = [1.0, 0.8, 0.6, 0.4, 0.05, 0.3, 0.2, 0.2, 0.15, 0.12] + [0.095] * 9 + [0.01] * 20
    scripted_steps(monkeypatch, losses)
    run_dir = tmp_path / "run"
    outcome = train(tiny_config(run_dir, corpus, grad_accum=2, target_loss=0.1, max_steps=len(losses),
                                **PASS_SETTINGS))
    assert outcome.target_reached is True
    assert "at step 18," in outcome.reason and "over the last pass of the data (9 steps) is 0.0978" in outcome.reason
    records = read_metrics(run_dir, "train")
    assert records[-1]["step"] == 18
    assert "pass_loss" not in records[7] and records[8]["pass_loss"] == pytest.approx(math.fsum(losses[:9]) / 9)
    log_text = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "step 5: one batch's loss 0.0500 is below the target 0.1; the run stops once the mean over a whole pass" \
        in log_text
    assert "| pass mean 0.0978 |" in log_text
    summary = (run_dir / "summary.txt").read_text(encoding="utf-8")
    assert "target loss 0.1 reached: mean over the last pass of the data 0.0978 at step 18, after" in summary
    assert "one batch first below at step 5, after" in summary
    assert f"{18 * 2 * 1024:,} tokens, 2.12 epochs;" in summary  # 36 micro-batches of an epoch's 17


def test_a_missed_target_is_said_plainly_and_fails_only_when_required(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scripted_steps(monkeypatch, [0.5, 0.05] * 20)  # every other batch is below 0.1; no pass ever is
    argv = ["train", "--preset", "tiny", "--data", str(corpus), "--tokenizer", "char", "--device", "cpu",
            "--no-progress", "--block-size", "16", "--batch-size", "64", "--sampler", "random", "--max-steps", "30",
            "--target-loss", "0.1", "--eval-interval", "0", "--sample-tokens", "4", "--no-plot"]
    status, out, _ = run_main([*argv, "--out", str(tmp_path / "lenient")], capsys)
    assert status == 0
    summary = (tmp_path / "lenient" / "summary.txt").read_text(encoding="utf-8")
    assert "target loss 0.1 NOT reached: best pass mean 0.2750; one batch first below at step 2," in summary
    assert "NOT reached" in out
    status, _, _ = run_main([*argv, "--out", str(tmp_path / "strict"), "--require-target"], capsys)
    assert status == 3


def test_a_resumed_run_stops_at_the_same_step_as_an_uninterrupted_one(tmp_path: Path, corpus: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # a pass is 17 steps: the mean over steps 5-21 is (0.2 + 5 x 0.11 + 11 x 0.08) / 17 = 0.0959
    losses = [0.9, 0.5, 0.09, 0.3, 0.2] + [0.11] * 5 + [0.08] * 18 + [0.01] * 20
    scripted_steps(monkeypatch, losses)
    settings: dict[str, Any] = {**PASS_SETTINGS, "target_loss": 0.1, "max_steps": len(losses), "decay_steps": 40}
    straight = train(tiny_config(tmp_path / "straight", corpus, **settings))
    split_dir = tmp_path / "split"
    train(tiny_config(split_dir, corpus, **{**settings, "max_steps": 12}))
    assert load_checkpoint(split_dir / "checkpoints" / "last.pt")["pass_loss"]["first_batch_below"]["step"] == 3
    resumed = train(resume=split_dir, overrides={"max_steps": len(losses)})
    assert straight.target_reached and resumed.target_reached
    assert read_metrics(split_dir, "train")[-1]["step"] == read_metrics(tmp_path / "straight", "train")[-1]["step"]
    straight_summary = (tmp_path / "straight" / "summary.txt").read_text(encoding="utf-8")
    split_summary = (split_dir / "summary.txt").read_text(encoding="utf-8")
    for summary in (straight_summary, split_summary):
        assert "target loss 0.1 reached: mean over the last pass of the data 0.0959 at step 21, after" in summary
        assert "one batch first below at step 3, after" in summary


def test_checkpoint_every_s_saves_on_wall_time(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock on which every step takes 3 s: a save whenever 5 s have passed since the last one."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # each reading a millisecond later, so no duration is zero
        return now[0]

    monkeypatch.setattr(Trainer, "clock", staticmethod(clock))
    real_step, real_save = Trainer.train_step, Trainer.save

    def step(self: Trainer) -> StepStats:
        now[0] += 3.0
        return real_step(self)

    saved_at: list[int] = []

    def save(self: Trainer, best: bool = False, wait: bool = False) -> None:
        saved_at.append(self.step)
        real_save(self, best, wait)

    monkeypatch.setattr(Trainer, "train_step", step)
    monkeypatch.setattr(Trainer, "save", save)
    train(tiny_config(tmp_path / "run", corpus, max_steps=12, checkpoint_interval=1000, checkpoint_every_s=5.0))
    # after steps 2, 4, ... (6 s since the last save), and at the end
    assert saved_at == [2, 4, 6, 8, 10, 12]
