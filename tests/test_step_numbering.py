"""One step numbering everywhere: "step N" is N optimizer steps done, in the console, train.log, metrics.jsonl,
summary.txt, the checkpoints, an interrupt's messages and the plot; train.log's timestamps and session lines."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import read_log, run_main
from gptforge.checkpoint import load_checkpoint
from gptforge.train import plot
from gptforge.train.metrics_history import read_history, read_metrics
from gptforge.train.run_log import RunLog
from gptforge.train.trainer import StepStats, Trainer

VAL_LINE = re.compile(r"^step (\d+) \| val loss", re.M)
TRAIN_LINE = re.compile(r"^step (\d+) \| epoch", re.M)


def train_argv(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--out", str(run_dir),
            "--device", "cpu", "--no-progress", "--block-size", "16", "--batch-size", "4", "--eval-batches", "2",
            "--sample-tokens", "4", "--warmup-steps", "1", *extra]


def summary_steps(run_dir: Path) -> int:
    return int(re.search(r"^steps: (\d+)$", (run_dir / "summary.txt").read_text(encoding="utf-8"), re.M).group(1))


def test_the_last_eval_logged_is_the_summarys_the_metrics_and_the_checkpoints_step(
        tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    status, out, err = run_main(train_argv(corpus, run_dir, "--max-steps", "4", "--eval-interval", "2",
                                           "--log-interval", "2"), capsys)
    assert status == 0, err
    log = read_log(run_dir)
    for text in (out, log):
        assert [int(step) for step in VAL_LINE.findall(text)] == [2, 4]
        assert [int(step) for step in TRAIN_LINE.findall(text)] == [1, 2, 4]  # the first step, then every 2nd
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in metrics if r["kind"] == "eval"] == [2, 4]
    assert metrics[-1]["step"] == summary_steps(run_dir) == load_checkpoint(run_dir / "checkpoints" / "last.pt")[
        "step"] == 4


def test_an_interrupt_names_the_steps_done_as_the_summary_and_checkpoint_do(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM arrives during the third step: the run finishes it, saves and stops after 3 steps."""
    real_step = Trainer.train_step

    def step_then_signal(self: Trainer) -> StepStats:
        stats = real_step(self)
        if self.step == 3:
            self._on_signal(signal.SIGTERM, None)  # what the installed handler gets from the OS
        return stats

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    run_dir = tmp_path / "run"
    status, out, err = run_main(train_argv(corpus, run_dir, "--max-steps", "100", "--eval-interval", "2",
                                           "--log-interval", "1"), capsys)
    assert status == 128 + signal.SIGTERM, err
    assert f"SIGTERM: saving {run_dir / 'checkpoints'} after 3 steps" in out
    assert "stopped by SIGTERM after 3 steps" in out
    assert "stopped: stopped by SIGTERM after 3 steps" in (run_dir / "summary.txt").read_text(encoding="utf-8")
    assert summary_steps(run_dir) == load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    assert [int(step) for step in VAL_LINE.findall(out)] == [2, 3]  # the final eval, after the third step
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]


def test_a_resumed_run_draws_each_eval_once(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Steps 3 and its eval were logged, then its checkpoints lost (a kill mid-save): the resume from step 2
    redoes step 3, and the plot draws the redone eval alone."""
    run_dir = tmp_path / "run"
    argv = train_argv(corpus, run_dir, "--max-steps", "3", "--eval-interval", "1", "--checkpoint-interval", "2",
                      "--keep-checkpoints", "5")
    status, _, err = run_main(argv, capsys)
    assert status == 0, err
    for path in (run_dir / "checkpoints").iterdir():
        if load_checkpoint(path)["step"] == 3:
            path.unlink()
    status, out, err = run_main(["train", "--resume", str(run_dir), "--max-steps", "4", "--no-progress"], capsys)
    assert status == 0, err
    assert "at step 2 " in out
    raw = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in raw if r["kind"] == "eval"] == [1, 2, 3, 3, 4]

    drawn: dict[str, list[int]] = {}
    draw_loss = plot._plot_loss

    def recording(axes: Any, train: list[dict], evals: list[dict]) -> None:
        drawn["train"], drawn["eval"] = [r["step"] for r in train], [r["step"] for r in evals]
        draw_loss(axes, train, evals)

    monkeypatch.setattr(plot, "_plot_loss", recording)
    plot.plot_run(run_dir)
    assert drawn["eval"] == [1, 2, 3, 4] and drawn["train"] == sorted(set(drawn["train"]))
    redone_eval = [r for r in raw if r["kind"] == "eval"][3]
    assert [r for r in read_history(run_dir / "metrics.jsonl") if r["kind"] == "eval"][2] == redone_eval


def test_train_log_lines_carry_utc_timestamps_and_each_resume_a_session_line(
        tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(RunLog, "wall_clock", staticmethod(lambda: 1_796_343_207.5))
    run_dir = tmp_path / "run"
    status, out, err = run_main(train_argv(corpus, run_dir, "--max-steps", "2", "--eval-interval", "1"), capsys)
    assert status == 0, err
    assert "2026-12-04" not in out  # the console shows the lines bare
    for max_steps in ("3", "4"):
        status, out, err = run_main(["train", "--resume", str(run_dir), "--max-steps", max_steps, "--no-progress"],
                                    capsys)
        assert status == 0, err
    lines = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()
    assert lines and all(line.startswith("2026-12-04T00:13:27Z ") for line in lines)
    log = read_log(run_dir)
    separators = re.findall(r"^--- resumed at step (\d+) \(session (\d+)\) ---$", log, re.M)
    assert separators == [("2", "2"), ("3", "3")]
    # each separator opens its session: the "resuming" line follows it, and nothing of the earlier session does
    second_session = log.split("--- resumed at step 2 (session 2) ---\n")[1]
    assert second_session.split("--- resumed")[0].count("resuming ") == 1
    assert "resuming " not in log.split("--- resumed at step 2 (session 2) ---")[0]
    sessions = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "session"]
    assert [(r["session"], r["step"]) for r in sessions] == [(1, 0), (2, 2), (3, 3)]


def test_the_summary_says_one_figure_a_line_and_the_best_losss_step(
        tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    status, _, err = run_main(train_argv(corpus, run_dir, "--max-steps", "2", "--eval-interval", "0"), capsys)
    assert status == 0, err
    status, _, err = run_main(["train", "--resume", str(run_dir), "--max-steps", "4", "--no-progress"], capsys)
    assert status == 0, err
    summary = (run_dir / "summary.txt").read_text(encoding="utf-8")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    training = float(re.search(r"^training time, all sessions: (\d+\.\d)s \(without the first step of each\)$",
                               summary, re.M).group(1))
    first_steps = float(re.search(r"^first step of each session: (\d+\.\d)s \(compilation and warm-up\)$",
                                  summary, re.M).group(1))
    assert training == pytest.approx(state["elapsed_s"] - state["startup_s"], abs=0.051)
    assert first_steps == pytest.approx(state["startup_s"], abs=0.051)
    assert re.search(r"^wall time, this session: \d+\.\ds$", summary, re.M)
    # without evals, best is the lowest training loss at a save, and best.pt that save
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert f"best loss (train): {best['best_loss']:.4f} at step {best['step']}\n" in summary
