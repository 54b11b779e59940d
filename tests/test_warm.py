"""The warm server's children (tests/warm.py) are the processes a fresh interpreter would be: the tests that use
them for kill -9, signals and torchrun rely on it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warm import WarmStarter

REPORT = """
import atexit, json, os, signal, sys, time
import torch

signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))  # as gptforge's own handlers end a run
atexit.register(lambda: print("atexit ran"))  # and no flush: the interpreter's exit flushes
print(json.dumps({"name": __name__, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "marker": os.environ.get("WARM_MARKER"), "threads": torch.get_num_threads(),
                  "stdin": sys.stdin.read(), "line_buffered": sys.stdout.line_buffering,
                  "write_through": sys.stdout.write_through, "pid": os.getpid()}))
sys.stdout.flush()
if sys.argv[1] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "report.py"
    path.write_text(REPORT, encoding="utf-8")
    return path


def wait_for_output(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.read_text():
        assert time.monotonic() < deadline, "the child printed nothing"
        time.sleep(0.01)


def test_a_child_has_its_own_environment_descriptors_and_exit(warm: WarmStarter, script: Path, tmp_path: Path) -> None:
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("from the test", encoding="utf-8")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "WARM_MARKER": "42",
           "OMP_NUM_THREADS": "1"}
    with stdin.open("rb") as given:
        result = warm.run([sys.executable, str(script), "3"], stdin=given, capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 3, result.stderr
    report, *rest = result.stdout.splitlines()
    assert json.loads(report) | {"pid": 0} == {"name": "__main__", "argv": [str(script), "3"], "cwd": str(tmp_path),
                                  "path0": str(tmp_path), "marker": "42", "threads": 1, "stdin": "from the test",
                                  "line_buffered": False, "write_through": False, "pid": 0}
    assert rest == ["atexit ran"]
    two = warm.run([sys.executable, str(script), "0"], capture_output=True, text=True, timeout=60,
                   env={**env, "OMP_NUM_THREADS": "2"}, stdin=subprocess.DEVNULL)
    assert json.loads(two.stdout.splitlines()[0])["threads"] == 2


def test_a_module_runs_as_python_m_runs_it(warm: WarmStarter) -> None:
    """Down to argparse's program name, which comes from sys.argv[0]."""
    for module in ("gptforge", "gptforge.cli"):
        fresh = subprocess.run([sys.executable, "-m", module, "sample", "--help"], capture_output=True, text=True,
                               timeout=120)
        warmed = warm.run([sys.executable, "-m", module, "sample", "--help"], capture_output=True, text=True,
                          timeout=120)
        assert (warmed.returncode, warmed.stdout, warmed.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
        assert fresh.returncode == 0 and "--max-new-tokens" in fresh.stdout


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 7)])
def test_signals_reach_the_child_and_its_status_says_so(warm: WarmStarter, script: Path, tmp_path: Path,
                                                        signum: int, status: int) -> None:
    output = tmp_path / "out.txt"
    with output.open("wb") as out:
        process = warm.popen([sys.executable, str(script), "sleep"], stdout=out, stdin=subprocess.DEVNULL)
    try:
        wait_for_output(output)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
        process.send_signal(signum)
        assert process.wait(timeout=60) == status
    finally:
        process.kill()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 7)])
def test_the_relay_passes_signals_on_and_ends_as_its_child_ends(warm: WarmStarter, script: Path, tmp_path: Path,
                                                                signum: int, status: int) -> None:
    """What torchrun sees of a worker it started as tests/warm_relay.py: SIGTERM to the relay reaches the child;
    a child killed by a signal leaves the relay killed by the same one."""
    output = tmp_path / "out.txt"
    with output.open("wb") as out:
        relay = subprocess.Popen([sys.executable, "-u", *warm.relay_command([str(script), "sleep"])], stdout=out,
                                 stdin=subprocess.DEVNULL)
    try:
        wait_for_output(output)
        child = json.loads(output.read_text().splitlines()[0])
        assert child["argv"] == [str(script), "sleep"] and child["write_through"] is True  # -u, as torchrun's
        assert child["pid"] != relay.pid
        os.kill(relay.pid if signum == signal.SIGTERM else child["pid"], signum)
        assert relay.wait(timeout=60) == status
    finally:
        relay.kill()
        relay.wait()
