"""Stop rules not covered elsewhere (epochs, time budget), periodic samples, and the terminal output."""

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import read_log, tiny_char_config
from gptforge.train.session import train
from gptforge.train.trainer import Trainer


def records(run_dir, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_max_epochs_stops_after_one_pass(tmp_path) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")  # 1,720 chars
    config = tiny_char_config(tmp_path / "run", data=str(corpus), val_fraction=0.0, max_steps=1000,
                              max_epochs=1.0, log_interval=1, batch_size=4)
    outcome = train(config)
    steps = records(outcome.run_dir, "train")
    assert outcome.reason.startswith("reached max_epochs 1.0")
    assert steps[-1]["epoch"] >= 1.0 > steps[-2]["epoch"]  # stopped at the first step that completed the pass
    assert len(steps) < 1000


def test_time_budget_stops_at_the_first_step_past_it(tmp_path, fake_clock) -> None:
    fake_clock.tick = 0.1  # a few readings per step: about 0.3 s of fake time each
    config = tiny_char_config(tmp_path / "run", max_steps=100_000, time_budget=2.0, log_interval=1)
    outcome = train(config)
    assert outcome.reason == "used the time budget of 2s"
    elapsed = [r["elapsed_s"] for r in records(outcome.run_dir, "train")]
    assert elapsed[-1] >= 2.0 > elapsed[-2]  # not a step earlier, not a step later
    assert outcome.last_checkpoint is not None and outcome.last_checkpoint.is_file()


def test_a_time_budget_that_ends_the_run_in_its_warmup_is_a_warning(tmp_path, fake_clock, capsys) -> None:
    fake_clock.tick = 0.1
    config = tiny_char_config(tmp_path / "run", max_steps=5000, time_budget=2.0, warmup_steps=100)
    outcome = train(config)
    out = capsys.readouterr().out
    assert outcome.reason == "used the time budget of 2s"
    warning = next(line for line in out.splitlines() if "still in the learning rate's warmup" in line)
    assert warning.startswith("warning: training stopped after ") and "of 100 steps" in warning
    assert "--max-steps" in warning and "--warmup-steps" in warning
    assert warning in (outcome.run_dir / "train.log").read_text()


def test_a_time_budget_past_the_warmup_has_no_warmup_warning(tmp_path, fake_clock, capsys) -> None:
    fake_clock.tick = 0.1
    train(tiny_char_config(tmp_path / "run", max_steps=5000, time_budget=2.0, warmup_steps=2))
    assert "still in the learning rate's warmup" not in capsys.readouterr().out


def test_time_budget_counts_evaluations_too(tmp_path, fake_clock, monkeypatch) -> None:
    # steps take a millisecond of fake time and each evaluation half a second: a budget that counted
    # only the steps would run for about 700 steps
    fake_clock.tick = 0.001
    real_evaluate = Trainer.evaluate

    def slow_evaluate(self: Trainer) -> float:
        fake_clock.advance(0.5)
        return real_evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    config = tiny_char_config(tmp_path / "run", max_steps=100_000, time_budget=2.0, log_interval=1, eval_interval=1,
                              eval_batches=1, val_fraction=0.5, checkpoint_interval=100_000)
    outcome = train(config)
    assert outcome.reason == "used the time budget of 2s"
    steps = records(outcome.run_dir, "train")
    assert steps[-1]["elapsed_s"] >= 2.0 > steps[-2]["elapsed_s"]
    assert len(steps) == 5  # four evaluations (2 s) and the step after them


def test_a_warmup_longer_than_the_run_is_a_warning_in_the_output_and_the_log(tmp_path, capsys) -> None:
    outcome = train(tiny_char_config(tmp_path / "run", max_steps=6))  # the default warmup: 100 steps
    warning = "warning: the learning rate never reaches its peak: warmup is 100 steps and the run 6"
    assert warning in capsys.readouterr().out
    assert warning in (outcome.run_dir / "train.log").read_text()  # a warmup that fits: test_optim's cases


def test_periodic_samples_are_logged(tmp_path) -> None:
    config = tiny_char_config(tmp_path / "run", max_steps=6, sample_interval=3, sample_tokens=12)
    outcome = train(config)
    samples = records(outcome.run_dir, "sample")
    assert [s["step"] for s in samples] == [3]  # after 3 steps; not again at the end
    assert len(samples[0]["text"]) == 12
    assert "--- sample at step 3 ---" in (outcome.run_dir / "train.log").read_text()


def run_in_terminal(args: list[str], timeout_s: float = 120) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal, as a person's shell would."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100 x 24 terminal
    process = subprocess.Popen(args, stdin=child_fd, stdout=child_fd, stderr=child_fd, env=os.environ.copy())
    os.close(child_fd)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(main_fd)
    assert process.returncode == 0
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_progress_bar_in_a_terminal_does_not_garble_the_log(tmp_path) -> None:
    out = tmp_path / "run"
    screen = run_in_terminal([sys.executable, "-m", "gptforge", "train", "--preset", "tiny", "--tokenizer", "char",
                              "--device", "cpu", "--max-steps", "40", "--log-interval", "10", "--batch-size", "4",
                              "--eval-interval", "0", "--sample-tokens", "8", "--out", str(out)])
    assert "step/s" in screen or "s/step" in screen  # the bar was drawn
    log_lines = read_log(out).splitlines()
    step_lines = [line for line in log_lines if re.match(r"step \d+ \| epoch", line)]
    assert [int(line.split()[1]) for line in step_lines] == [1, 10, 20, 30, 40]
    # each step line reaches the terminal whole: on a line of its own after the bar is cleared
    terminal_lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part) for part in re.split(r"[\r\n]+", screen)]
    for line in step_lines:
        assert line in terminal_lines
    log = (out / "train.log").read_text()
    assert "\r" not in log and "step/s" not in log and "s/step" not in log  # no bar in the kept log
