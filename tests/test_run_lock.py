"""One trainer per run folder: a second one, new or resumed, is refused naming the holder's PID, and the
lock dies with its holder (kill -9 included), so the run then resumes.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_main
from gptforge.run_dir import LOCK_FILE
from warm import WarmStarter

SUBPROCESS_TIMEOUT_S = 120
TINY = ["--preset", "tiny", "--tokenizer", "char", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "16", "--batch-size", "2", "--checkpoint-interval", "1", "--device", "cpu", "--no-progress",
        "--no-plot", "--eval-interval", "0", "--sample-tokens", "2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000])
    return path


@pytest.fixture
def held_by_another(tmp_path: Path) -> Iterator[callable]:
    """hold(run) -> takes run's lock through a file description of its own, as another process would."""
    descriptors = []

    def hold(run: Path, pid: int = 424242) -> None:
        run.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(descriptor, f"{pid}\n".encode(), 0)
        descriptors.append(descriptor)

    yield hold
    for descriptor in descriptors:
        os.close(descriptor)


def assert_in_use(status: int, err: str, pid: int) -> None:
    assert "Traceback" not in err and status == 2, (status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"in use by another gptforge train (PID {pid})" \
        in lines[0], err


def test_every_way_into_a_locked_run_is_refused_and_touches_nothing(
        tiny_run: Path, corpus: Path, tmp_path: Path, held_by_another: callable,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    held_by_another(run)
    before = snapshot(run)
    assert_in_use(*run_main(["train", "--resume", str(run), "--max-steps", "40"], capsys)[::2], 424242)
    assert snapshot(run) == before
    fresh = tmp_path / "fresh"  # a new run whose folder another trainer has just claimed (no checkpoint yet)
    held_by_another(fresh, pid=515151)
    assert_in_use(*run_main(["train", *TINY, "--data", str(corpus), "--out", str(fresh)], capsys)[::2], 515151)
    assert sorted(p.name for p in fresh.iterdir()) == [LOCK_FILE]


def test_a_lock_released_by_its_holder_lets_the_run_go_on(tiny_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, os, time; d = os.open({str(run / LOCK_FILE)!r}, "
                               "os.O_RDWR | os.O_CREAT); fcntl.flock(d, fcntl.LOCK_EX); os.ftruncate(d, 0); "
                               "os.write(d, str(os.getpid()).encode()); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert_in_use(*run_main(["train", "--resume", str(run), "--max-steps", "21"], capsys)[::2], holder.pid)
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, nothing cleans up the file
        holder.wait(timeout=SUBPROCESS_TIMEOUT_S)
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--sample-tokens", "1"], capsys)
    assert status == 0, err
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_two_real_trainers_on_one_folder(corpus: Path, tmp_path: Path, warm: WarmStarter) -> None:
    """The second trainer, whether it resumes or starts the same --out, is refused with the first one's PID,
    and the folder keeps one run's files; once the first is killed (-9), a resume takes over."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first_output = tmp_path / "first.txt"
    with first_output.open("wb") as out:
        first = warm.popen([sys.executable, "-m", "gptforge", "train", *TINY, "--data", str(corpus), "--out",
                            str(run), "--max-steps", "1000000"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not list((run / "checkpoints").glob("last.pt")) and first.poll() is None:
            assert time.monotonic() < deadline, first_output.read_text()
            time.sleep(0.05)
        resume = warm.run([sys.executable, "-m", "gptforge", "train", "--resume", str(run)],
                          capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
        assert_in_use(resume.returncode, resume.stderr, first.pid)
        again = warm.run([sys.executable, "-m", "gptforge", "train", *TINY, "--data", str(corpus), "--out",
                          str(run)], capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
        assert again.returncode == 2 and "already holds a run" in again.stderr, again.stderr
        assert first.poll() is None, first_output.read_text()  # the first never noticed
    finally:
        first.kill()
        first.wait(timeout=SUBPROCESS_TIMEOUT_S)
    resumed = warm.run([sys.executable, "-m", "gptforge", "train", "--resume", str(run), "--max-steps", "1"],
                       capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    assert "in use" not in resumed.stdout + resumed.stderr
