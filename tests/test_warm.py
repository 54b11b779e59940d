"""The warm servers' children (tests/warm.py) are the processes a fresh interpreter would be: the tests that use
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
import atexit, json, os, signal, subprocess, sys, time
import torch

if "handle" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))  # as gptforge's own handlers end a run
if "leave-a-grandchild" in sys.argv:  # holding this process's stdout after it ends
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(sys.argv[0] + ".grandchild", "w") as file:
        file.write(str(grandchild.pid))
atexit.register(lambda: print("atexit ran"))  # and no flush: the interpreter's exit flushes
print(json.dumps({
    "name": __name__, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "pid": os.getpid(),
    "marker": os.environ.get("WARM_MARKER"), "threads": torch.get_num_threads(), "stdin": sys.stdin.read(),
    "line_buffered": sys.stdout.line_buffering, "write_through": sys.stdout.write_through,
    "descriptors": sorted(os.listdir("/proc/self/fd")), "hash": hash("gptforge"),
    "signals": {s.name: repr(signal.getsignal(s)) for s in signal.valid_signals() if isinstance(s, signal.Signals)},
}))
sys.stdout.flush()
if "sleep" in sys.argv:
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
"""
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "WARM_MARKER": "42",
       "OMP_NUM_THREADS": "1"}


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "report.py"
    path.write_text(REPORT, encoding="utf-8")
    return path


def first_report(path: Path) -> dict:
    """The child's report, once it has printed it."""
    deadline = time.monotonic() + 60
    while not path.read_text():
        assert time.monotonic() < deadline, "the child printed nothing"
        time.sleep(0.01)
    return json.loads(path.read_text().splitlines()[0])


def wait_until_gone(pid: int, what: str) -> None:
    """Until process `pid` has ended and been reaped (Linux: its /proc entry is gone)."""
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_child_is_what_a_fresh_interpreter_would_be(warm: WarmStarter, script: Path, tmp_path: Path) -> None:
    """Also while another child runs, holding pipes of its own: no descriptor of one reaches the other."""
    stdin = tmp_path / "stdin.txt"
    stdin.write_bytes(b"from the test\r\nand\ra line\n")
    other = warm.popen([sys.executable, str(script), "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, env=ENV)
    results = []
    for start in (subprocess.run, warm.run):
        with stdin.open("rb") as given:
            results.append(start([sys.executable, str(script), "3"], stdin=given, capture_output=True, env=ENV,
                                 cwd=tmp_path, timeout=60))
    assert other.poll() is None
    other.kill()
    assert other.communicate(timeout=60)[1] == b"" and other.returncode == -signal.SIGKILL
    fresh, warmed = results
    assert (warmed.returncode, warmed.stderr) == (fresh.returncode, fresh.stderr) == (3, b"")
    report, *rest = warmed.stdout.decode().split("\n")
    assert rest == ["atexit ran", ""]
    fresh_report = json.loads(fresh.stdout.decode().splitlines()[0])
    warm_report = json.loads(report)
    for differing in ("pid", "hash"):  # a hash seed of its own: fresh processes draw theirs
        assert warm_report.pop(differing) != fresh_report.pop(differing)
    assert warm_report == fresh_report
    assert warm_report | {"signals": None} == {
        "name": "__main__", "argv": [str(script), "3"], "cwd": str(tmp_path), "path0": str(tmp_path),
        "marker": "42", "threads": 1, "stdin": "from the test\r\nand\ra line\n", "line_buffered": False,
        "write_through": False, "descriptors": ["0", "1", "2", "3"], "signals": None}
    two = warm.run([sys.executable, str(script), "0"], capture_output=True, text=True, timeout=60,
                   env={**ENV, "OMP_NUM_THREADS": "2"}, stdin=subprocess.DEVNULL)
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


def test_what_a_child_cannot_have_is_refused(warm: WarmStarter, script: Path) -> None:
    """Settings the interpreter reads at its own start, and a stdin pipe."""
    with pytest.raises(ValueError, match="PYTHONHASHSEED"):
        warm.popen([sys.executable, str(script), "0"], env={**ENV, "PYTHONHASHSEED": "1"})
    with pytest.raises(ValueError, match="stdin"):
        warm.popen([sys.executable, str(script), "0"], stdin=subprocess.PIPE, env=ENV)
    with pytest.raises(ValueError, match="-m MODULE"):
        warm.popen([sys.executable, "-c", "pass"], env=ENV)


@pytest.mark.parametrize(("signum", "handle", "status"), [
    (signal.SIGKILL, False, -signal.SIGKILL), (signal.SIGTERM, False, -signal.SIGTERM), (signal.SIGTERM, True, 7)])
def test_signals_reach_the_child_and_its_status_says_so(warm: WarmStarter, script: Path, tmp_path: Path,
                                                        signum: int, handle: bool, status: int) -> None:
    output = tmp_path / "out.txt"
    with output.open("wb") as out:
        process = warm.popen([sys.executable, str(script), "sleep", *["handle"] * handle], stdout=out,
                             stdin=subprocess.DEVNULL, env=ENV)
    try:
        assert first_report(output)["pid"] == process.pid
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
        process.send_signal(signum)
        assert process.wait(timeout=60) == status
        process.kill()  # once it has ended: nothing, as Popen
    finally:
        process.kill()


def test_communicate_reads_to_the_end_of_the_output_not_of_the_child(warm: WarmStarter, script: Path) -> None:
    """A process the child left holding its stdout keeps communicate() waiting, as with Popen."""
    process = warm.popen([sys.executable, str(script), "0", "leave-a-grandchild"], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env=ENV)
    with pytest.raises(subprocess.TimeoutExpired):
        process.communicate(timeout=5)
    assert process.wait(timeout=60) == 0
    os.kill(int(Path(f"{script}.grandchild").read_text()), signal.SIGKILL)


def test_a_child_whose_client_went_away_is_killed_and_the_server_serves_on(warm: WarmStarter, script: Path,
                                                                            tmp_path: Path) -> None:
    output = tmp_path / "out.txt"
    with output.open("wb") as out:
        process = warm.popen([sys.executable, str(script), "sleep"], stdout=out, stdin=subprocess.DEVNULL, env=ENV)
    first_report(output)
    process.connection.close()  # as a relay torchrun killed with SIGKILL
    wait_until_gone(process.pid, "the child outlived its client")
    assert warm.run([sys.executable, str(script), "5"], capture_output=True, timeout=60, env=ENV).returncode == 5


@pytest.mark.parametrize(("target", "signum", "status"), [
    ("relay", signal.SIGTERM, 7), ("child", signal.SIGKILL, -signal.SIGKILL), ("relay", signal.SIGKILL, None)])
def test_the_relay_passes_signals_on_and_ends_as_its_child_ends(warm: WarmStarter, script: Path, tmp_path: Path,
                                                                target: str, signum: int, status: int | None) -> None:
    """What torchrun sees of a worker it started as tests/warm_relay.py: a signal to the relay reaches the
    child; a child killed by a signal leaves the relay killed by the same one; a relay killed outright takes
    its child with it. Ranks 0 and 1 get children of different hash seeds, and a shift swaps them."""
    children = []
    relays = []
    for rank, shift in ((0, 0), (1, 0), (0, 1)):
        output = tmp_path / f"out-{rank}-{shift}.txt"
        with output.open("wb") as out:
            relays.append(subprocess.Popen(
                [sys.executable, "-u", *warm.relay_command([str(script), "sleep", "handle"], shift)], stdout=out,
                stdin=subprocess.DEVNULL, env={**ENV, "LOCAL_RANK": str(rank)}))
        children.append(first_report(output))
    try:
        assert children[0]["hash"] != children[1]["hash"] == children[2]["hash"]
        relay, child = relays[0], children[0]
        assert child["argv"] == [str(script), "sleep", "handle"] and child["write_through"] is True  # -u
        os.kill(relay.pid if target == "relay" else child["pid"], signum)
        if status is None:
            assert relay.wait(timeout=60) == -signal.SIGKILL
            wait_until_gone(child["pid"], "the child outlived its relay")
        else:
            assert relay.wait(timeout=60) == status
    finally:
        for relay in relays:
            relay.kill()
            relay.wait()
