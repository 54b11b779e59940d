"""Shared fixtures: the offline data folder, and a private cache dir so tests never touch ~/.cache."""

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings as hypothesis_settings

from gptforge.cli import main
from gptforge.config import RunConfig, build_config
from gptforge.train.session import train
from warm import WarmProcess, WarmStarter

# Property tests. `derandomized` (the default: make test, CI): the same examples on every run, so a green run is
# green every time, and no deadline per example, so a loaded machine is no failure. `fuzz` (`make fuzz`, which
# passes --hypothesis-profile=fuzz): new random examples each run, ten times as many, and a deadline per example
# as the guard against hangs. A test asks for `examples(n)`: n under derandomized, 10 n under fuzz.
hypothesis_settings.register_profile("derandomized", derandomize=True, database=None, deadline=None,
                                     max_examples=100)
hypothesis_settings.register_profile("fuzz", derandomize=False, deadline=10_000, max_examples=1000)
hypothesis_settings.load_profile("derandomized")


def examples(n: int) -> int:
    """A property test's number of examples: `n` under the derandomized profile, scaled up by the fuzz one."""
    return n * hypothesis_settings.default.max_examples // 100


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist every core already runs a worker: one torch thread each, or the workers' threads
    fight over the cores (torch's spinning threads then run several times slower than one)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, tests marked slow run first, so that the last minutes are not one long test on one
    core while the others idle. Tests marked gpu need CUDA: without it they are skipped, with the reason shown
    (make test passes -rs)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # not in one process: module-scoped fixtures would be built twice
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: each kind keeps its order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$GPTFORGE_DATA_DIR (CI) or the checkout's ../shared/data; failing, not skipping, when absent."""
    folder = Path(os.environ.get("GPTFORGE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (folder / "tinyshakespeare.txt").is_file():
        pytest.fail(f"test data not found in {folder}; set GPTFORGE_DATA_DIR to the shared data folder")
    return folder.resolve()


@pytest.fixture(scope="session")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmStarter]:
    """Starts `python -m gptforge ...` processes with torch already imported (tests/warm.py): for tests that
    start many, such as the kill -9 and signal tests."""
    starter = WarmStarter(tmp_path_factory.mktemp("warm"))
    yield starter
    starter.close()


@pytest.fixture(autouse=True)
def isolated_dirs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the package at the offline data (so nothing downloads) and at a fresh cache per test; under
    pytest-xdist, the processes a test starts get one torch thread each, as the workers do."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def require_transformers_models(transformers: Any) -> None:
    """Skip unless transformers can build PyTorch models here: transformers 5 needs torch >= 2.6 and turns its
    models off on older torch (there, `pip install "transformers<5"` brings these tests back)."""
    if not transformers.utils.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} has no PyTorch models with torch {torch.__version__}"
                    " (transformers 5 needs torch >= 2.6; use transformers<5)")


def tiny_char_config(out: Path, **train_settings: Any) -> RunConfig:
    """A 2-layer, 32-wide character model on tiny Shakespeare that trains in seconds on two CPU cores; no
    curves.png at the end (a second of matplotlib a run) unless a test asks for it with plot=True."""
    return build_config("tiny", flags={"tokenizer": "char", "device": "cpu", "progress": False, "plot": False,
                                       "max_steps": 20, "batch_size": 4, "eval_interval": 0, "sample_tokens": 8,
                                       "out": str(out),
                                       **train_settings})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One tiny char run (vocabulary 65 padded to 128) trained once per session; tests only read it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPTFORGE_DATA_DIR", str(data_dir))
        env.setenv("GPTFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("tiny-cache")))
        return train(tiny_char_config(tmp_path_factory.mktemp("tiny") / "run")).run_dir


class FakeClock:
    """A clock for `Trainer.clock` that moves `tick` seconds per reading, plus what a test `advance`s it by:
    durations then depend on what the code does, never on how fast or loaded the machine is."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Drive every duration the trainer measures with a FakeClock (no tick unless the test sets one)."""
    from gptforge.train.trainer import Trainer

    clock = FakeClock()
    monkeypatch.setattr(Trainer, "clock", staticmethod(clock))
    return clock


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask, 022, so new files should be 0644 whatever the test runner's own umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`gptforge ARGV` in this process: (exit status, stdout, stderr); argparse exits through SystemExit."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    """The first 20,000 characters of tiny Shakespeare as a text file: an epoch of a tiny model in a few steps."""
    return write_corpus(tmp_path, data_dir, 20_000)


def write_corpus(folder: Path, data_dir: Path, chars: int) -> Path:
    """The first `chars` characters of tiny Shakespeare as folder/corpus.txt."""
    path = folder / "corpus.txt"
    path.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: equal before and after means nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error(status: int, err: str, *expected: str) -> None:
    """Bad input's contract: exit status 2 and one `error: ...` line holding each of `expected`, no traceback."""
    assert "Traceback" not in err and status == 2, (status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], err


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


def mount_refusal() -> str | None:
    """Why this process cannot mount a tmpfs (not root, no mount command, no capability), or None when it can."""
    probe = Path(f"/tmp/gptforge-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        mount("-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe))
    except (OSError, subprocess.SubprocessError) as exc:
        return str(getattr(exc, "stderr", b"") or exc).strip() or "mount failed"
    finally:
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=30)
        probe.rmdir()
    return None


def reap(process: subprocess.Popen | WarmProcess) -> None:
    """Kill `process` if it still runs, and wait for it: no test leaves a child behind."""
    if process.poll() is None:
        process.kill()
        process.wait()


LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")  # ISO 8601 UTC, before every line of train.log


def read_log(run_dir: Path) -> str:
    """RUN/train.log as the console showed it: each line's timestamp checked and removed."""
    lines = (run_dir / "train.log").read_text(encoding="utf-8").splitlines()
    unstamped = [line for line in lines if not LOG_STAMP.match(line)]
    assert not unstamped, f"train.log lines without a timestamp: {unstamped[:3]}"
    return "".join(LOG_STAMP.sub("", line) + "\n" for line in lines)
