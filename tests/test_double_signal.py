"""Two Ctrl-Cs (or SIGTERMs) 0.1 s apart stop training at once with 130 (143), in a loop of rounds: no C++
abort ("terminate called without an active exception", status 134), no traceback, no temporary file left,
and every checkpoint on disk still whole.

The model is big enough (a few MB of state) that checkpoint writes, on a thread while training goes on,
are often in flight when the second signal lands: half the rounds send the first signal the moment a
write's temporary file appears, the others once training has logged a few steps. The processes come from the
warm server (tests/warm.py): real processes, torch already imported.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import reap
from gptforge.checkpoint import load_checkpoint
from gptforge.run_dir import RunDir
from warm import WarmProcess, WarmStarter

ROUNDS = 5
SECOND_SIGNAL_AFTER_S = 0.1
SUBPROCESS_TIMEOUT_S = 120
MODEL = ["--preset", "tiny", "--tokenizer", "char", "--n-layer", "4", "--n-embd", "192", "--n-head", "4",
         "--block-size", "64", "--batch-size", "4", "--checkpoint-interval", "1", "--device", "cpu", "--no-progress",
         "--eval-interval", "0", "--max-steps", "1000000", "--log-interval", "1"]
TEMPORARY = re.compile(r"^\..*\.tmp$")


def wait_for(ready: callable, process: WarmProcess, what: str) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {SUBPROCESS_TIMEOUT_S}s"
        time.sleep(0.001)


def temporaries(checkpoint_dir: Path) -> list[str]:
    try:
        return [name for name in os.listdir(checkpoint_dir) if TEMPORARY.match(name)]
    except FileNotFoundError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_two_signals_a_tenth_of_a_second_apart_exit_cleanly_in_every_round(signum: int, tmp_path: Path,
                                                                            data_dir: Path, warm: WarmStarter) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outcomes = []
    for round_number in range(ROUNDS):
        run = tmp_path / f"run-{round_number}"
        stdout, stderr = tmp_path / f"out-{round_number}.txt", tmp_path / f"err-{round_number}.txt"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = warm.popen([sys.executable, "-m", "gptforge", "train", *MODEL, "--data", str(corpus),
                                  "--out", str(run)], stdout=out, stderr=err, env=env)
        try:
            if round_number % 2:
                wait_for(lambda out=stdout: "step 3 |" in out.read_text(errors="replace"), process, "step 3")
            else:  # the moment a checkpoint is being written (after the first, so there is one to keep)
                checkpoints = run / "checkpoints"
                wait_for(lambda folder=checkpoints: (folder / "last.pt").exists() and temporaries(folder),
                         process, "a checkpoint write in flight")
            process.send_signal(signum)
            time.sleep(SECOND_SIGNAL_AFTER_S)
            process.send_signal(signum)
            process.wait(timeout=SUBPROCESS_TIMEOUT_S)
        finally:
            reap(process)
        errors = stderr.read_text(errors="replace")
        outcomes.append(process.returncode)
        assert process.returncode == 128 + signum, f"round {round_number}: status {process.returncode}\n{errors}"
        assert "terminate called" not in errors and "Traceback" not in errors, errors
        assert temporaries(run / "checkpoints") == [], f"round {round_number} left a temporary file"
        for path in RunDir(run).checkpoints():
            assert load_checkpoint(path)["step"] >= 1
    assert outcomes == [128 + signum] * ROUNDS
