"""Faults a run must survive: SIGKILL anywhere, damaged and hostile checkpoints, a full disk, a NaN.

Runs are a one-layer, 16-wide char model on a 20k-character slice of tiny Shakespeare, on the CPU.
Subprocesses get the test's GPTFORGE_DATA_DIR / GPTFORGE_CACHE_DIR through the environment and one
thread each (OMP_NUM_THREADS=1), so runs that are compared bit for bit sum in the same order; those the kill -9
chain starts come from the warm servers (tests/warm.py), torch already imported, alternating between the two
so that each resume reads a checkpoint written under another hash seed, as fresh processes would.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import mount, mount_refusal, run_main
from gptforge import fileio
from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.cli import main
from gptforge.config import from_preset
from gptforge.run_dir import RunDir
from gptforge.train import run_log as runlog
from warm import WarmProcess, WarmStarter

CORPUS_CHARS = 20_000
SUBPROCESS_TIMEOUT_S = 120
TINY = ["--preset", "tiny", "--tokenizer", "char", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "16", "--batch-size", "2", "--checkpoint-interval", "1"]


def train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    """`gptforge train` for the tiny model; flags in `extra` win over these."""
    return ["train", *TINY, "--data", str(corpus), "--device", "cpu", "--no-progress", "--eval-interval", "0",
            "--sample-tokens", "4", "--out", str(out), *extra]


def write_corpus(folder: Path, data_dir: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS], encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    return write_corpus(tmp_path, data_dir)



def assert_one_error_line(status: int, err: str, *expected: str) -> str:
    assert "Traceback" not in err, err
    assert status == 2, f"exit status {status}, not 2; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptforge.cli", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def read_records(run_dir: Path, kind: str) -> list[dict]:
    """metrics.jsonl records of one kind; a line cut off by a kill is skipped."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == kind:
            records.append(record)
    return records


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"tensors differ: {different}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def replace_file(path: Path, data: bytes) -> None:
    """New contents under the same name; unlinking first leaves hard links (best.pt, step-N.pt) alone."""
    path.unlink()
    path.write_bytes(data)


# --- kill -9 anywhere ---------------------------------------------------------------------------------------

KILL_ROUNDS = 20
KILL_SEED = 20240521
KILL_STEPS = 100
MID_WRITE_ROUNDS = {2, 6, 10, 14, 18}  # killed the moment a checkpoint's temporary file appears
STARTUP_SHARE = 0.25  # of the other kills; training gets the rest
TEMPORARY_CHECKPOINT = re.compile(r"\.last\.pt\.[0-9a-f]+\.tmp")
STEP_LINE = re.compile(r"^step (\d+) \| epoch", re.MULTILINE)


@dataclass
class Session:
    """One gptforge process of a chain of kills and resumes on the same run."""

    command: str  # "new" (no checkpoint yet: the original command again) or "resume"
    trigger: str  # "start-up", "training", "mid-write" or "end of run": where the kill was aimed
    from_step: int  # the step of the newest checkpoint when it started
    killed: bool
    phase: str  # where the kill landed: start-up, training, checkpoint write, end of run


def start(warm: WarmStarter, argv: list[str], stdout: Path, server: int = 0) -> WarmProcess:
    """`gptforge ARGV` started by warm server `server`, its output in `stdout`."""
    with stdout.open("wb") as out:
        return warm.popen(cli(*argv), stdout=out, stderr=subprocess.STDOUT, env=child_env(), server=server)


def kill_when(process: WarmProcess, output_path: Path, ready: Callable[[str, float], bool],
              delay_s: float) -> None:
    """SIGKILL `delay_s` after `ready(output so far, seconds since start)` holds.

    Kills follow the process's own progress (the step lines it prints), not a clock set by another
    run, so a machine faster or slower than the reference still gets each kill where it was meant.
    """
    started = time.monotonic()
    output = ""
    while process.poll() is None and not ready(output, time.monotonic() - started):
        if time.monotonic() - started > SUBPROCESS_TIMEOUT_S:
            break
        time.sleep(0.002)
        output = output_path.read_text(errors="replace")
    time.sleep(delay_s)
    process.kill()  # a no-op if it has finished


def last_step_printed(output: str) -> int:
    steps = STEP_LINE.findall(output)
    return int(steps[-1]) if steps else -1


def kill_mid_write(process: WarmProcess, checkpoint_dir: Path, known: set[str]) -> str | None:
    """SIGKILL as soon as a new temporary checkpoint file exists: while torch.save or fsync is writing it."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    for polls in range(10**9):
        try:
            names = os.listdir(checkpoint_dir)
        except FileNotFoundError:
            names = []
        fresh = [name for name in names if TEMPORARY_CHECKPOINT.fullmatch(name) and name not in known]
        if fresh:
            process.kill()
            return fresh[0]
        if polls % 256 == 0 and (process.poll() is not None or time.monotonic() > deadline):
            process.kill()
            return None
    raise AssertionError("unreachable")


def phase_of(output: str, hit_mid_write: bool) -> str:
    if hit_mid_write:
        return "checkpoint write"
    if "| loss " not in output:
        return "start-up"
    if "reached max_steps" in output:
        return "end of run"
    return "training"


@pytest.mark.slow
def test_kill_9_at_20_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, corpus: Path,
                                                                                  warm: WarmStarter) -> None:
    started = time.monotonic()
    settings = ["--max-steps", str(KILL_STEPS), "--log-interval", "1", "--dropout", "0.1", "--sampler", "random"]
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    logs = tmp_path / "logs"
    logs.mkdir()

    # the warm servers differ in hash seed, as fresh processes do: the chain alternates between them, so each
    # resume reads a checkpoint written under another seed
    warm.ensure(0)
    warm.ensure(1)
    begun = time.time()
    reference = start(warm, train_argv(corpus, reference_dir, *settings), logs / "reference.txt", server=1)
    assert reference.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0, (logs / "reference.txt").read_text()
    ended = time.time()
    times = [record["time"] for record in read_records(reference_dir, "train")]
    startup_s = times[0] - begun
    step_s = (times[-1] - times[0]) / (len(times) - 1)
    finish_s = ended - times[-1]

    rng = random.Random(KILL_SEED)
    checkpoint_dir = run_dir / "checkpoints"
    last = checkpoint_dir / "last.pt"
    sessions: list[Session] = []
    verified_resumes = 0
    for round_index in range(KILL_ROUNDS):
        resume = bool(RunDir(run_dir).checkpoints())
        from_step = load_checkpoint(last)["step"] if resume else 0
        argv = ["train", "--resume", str(run_dir)] if resume else train_argv(corpus, run_dir, *settings)
        output_path = logs / f"round-{round_index}.txt"
        known = set(os.listdir(checkpoint_dir)) if checkpoint_dir.is_dir() else set()
        ready: Callable[[str, float], bool] | None = None
        if round_index in MID_WRITE_ROUNDS:
            trigger, delay_s = "mid-write", 0.0
        elif round_index == KILL_ROUNDS - 1:  # the last round: while it writes the summary, plot and sample
            trigger, delay_s = "end of run", rng.uniform(0, finish_s / 2)
            ready = lambda output, _: "reached max_steps" in output
        elif rng.random() < STARTUP_SHARE:  # while it loads the checkpoint, reads the data, builds the model
            trigger, delay_s, kill_at = "start-up", 0.0, rng.uniform(0, startup_s)
            ready = lambda output, seconds, at=kill_at: seconds >= at or "| loss " in output
        else:  # at a random moment of a random step, leaving work for the rounds still to come
            window_steps = max(2, 2 * (KILL_STEPS - from_step) // (KILL_ROUNDS - round_index))
            target = min(from_step + 1 + rng.randrange(window_steps), KILL_STEPS - 1)  # "step N": N steps done
            trigger, delay_s = "training", rng.uniform(0, step_s)
            ready = lambda output, _, step=target: last_step_printed(output) >= step
        process = start(warm, argv, output_path, server=round_index % 2)
        temporary = None
        try:
            if ready is None:
                temporary = kill_mid_write(process, checkpoint_dir, known)
            else:
                kill_when(process, output_path, ready, delay_s)
        finally:
            process.kill()
            process.wait(timeout=SUBPROCESS_TIMEOUT_S)
        output = output_path.read_text(errors="replace")
        assert "Traceback" not in output, output
        assert process.returncode in (0, -signal.SIGKILL), output
        if "resuming" in output:  # it got far enough to say where it continues from
            assert f"from last.pt at step {from_step} " in output, output
            verified_resumes += 1
        hit = temporary is not None and (checkpoint_dir / temporary).exists()  # killed before the rename
        sessions.append(Session("resume" if resume else "new", trigger, from_step,
                                process.returncode == -signal.SIGKILL, phase_of(output, hit)))

    final_output = logs / "final.txt"
    final_argv = ["train", "--resume", str(run_dir)] if RunDir(run_dir).checkpoints() else \
        train_argv(corpus, run_dir, *settings)
    final = start(warm, final_argv, final_output, server=KILL_ROUNDS % 2)
    assert final.wait(timeout=SUBPROCESS_TIMEOUT_S) == 0, final_output.read_text(errors="replace")

    chained, expected = load_checkpoint(last), load_checkpoint(reference_dir / "checkpoints" / "last.pt")
    assert chained["step"] == expected["step"] == KILL_STEPS
    assert_same_tensors(chained["model"], expected["model"])
    for index, state in expected["optimizer"]["state"].items():
        assert_same_tensors(chained["optimizer"]["state"][index], state)
    # every step any process of the chain took, including steps redone after a kill, has the reference's loss
    reference_loss = {record["step"]: record["loss"] for record in read_records(reference_dir, "train")}
    chain_records = read_records(run_dir, "train")
    assert {record["step"] for record in chain_records} == set(range(1, KILL_STEPS + 1))
    assert [(r["step"], r["loss"]) for r in chain_records] == [(r["step"], reference_loss[r["step"]])
                                                               for r in chain_records]
    assert not [name for name in os.listdir(checkpoint_dir) if TEMPORARY_CHECKPOINT.fullmatch(name)], \
        "the debris of killed writes was not cleaned up"

    kills = [s for s in sessions if s.killed]
    phases = Counter(s.phase for s in kills)
    mid_write = [s for s in sessions if s.trigger == "mid-write"]
    print(f"\nkill -9 chain: {len(kills)} of {KILL_ROUNDS} processes killed "
          f"({', '.join(f'{n} in {p}' for p, n in sorted(phases.items()))}); "
          f"{sum(s.phase == 'checkpoint write' for s in mid_write)} of {len(mid_write)} mid-write kills landed "
          f"before the rename; {sum(s.command == 'resume' for s in sessions)} resumes "
          f"({verified_resumes} checked against the newest checkpoint); final weights equal the uninterrupted "
          f"run's after {KILL_STEPS} steps; reference run {ended - begun:.1f}s, test {time.monotonic() - started:.1f}s")
    assert len(kills) >= KILL_ROUNDS - 1, sessions  # the end-of-run kill may come after its session finished
    assert phases["checkpoint write"] >= 1, sessions
    assert phases["training"] >= 1 and phases["start-up"] >= 1, sessions


def test_a_run_killed_while_writing_its_first_checkpoint_starts_again_and_sweeps_the_debris(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What kill -9 during the first save leaves: a run folder, a config and a hidden half-written checkpoint."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(from_preset("tiny").to_dict()), encoding="utf-8")
    debris = run_dir / "checkpoints" / ".last.pt.0123abcd.tmp"
    debris.write_bytes(b"PK\x03\x04 half a checkpoint")
    status, _, err = run_main(["train", "--resume", str(run_dir)], capsys)
    assert_one_error_line(status, err, "no checkpoints in")  # nothing to resume from ...
    status, _, err = run_main(train_argv(corpus, run_dir, "--max-steps", "2"), capsys)
    assert status == 0, err  # ... so the original command starts the run again
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    assert not debris.exists()


# --- damaged checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """4 steps, a checkpoint every 2: last.pt, step-4.pt (the same bytes), step-2.pt and best.pt."""
    folder = tmp_path_factory.mktemp("base")
    corpus = write_corpus(folder, data_dir)
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixtures are not active yet
        patch.setenv("GPTFORGE_DATA_DIR", str(data_dir))
        patch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        status = main(train_argv(corpus, folder / "run", "--max-steps", "4", "--checkpoint-interval", "2",
                                 "--keep-checkpoints", "2"))
    assert status == 0
    run = folder / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt", "step-2.pt", "step-4.pt"]
    return run


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


class Exploit:
    """Unpickling this creates a file: the stand-in for running any code."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.target,))


def damaged(kind: str, good: bytes, folder: Path) -> bytes:
    """The bytes of a checkpoint damaged or replaced in one of the ways files go wrong."""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "zero-byte":
        return b""
    if kind == "text":
        return b"step 4, loss 3.2\n"
    if kind == "safetensors":  # a weights file of another format under a .pt name
        from safetensors.torch import save

        return save({"transformer.wte.weight": torch.zeros(4, 4)})
    if kind == "not-gptforge":  # a real torch file, but not a training checkpoint
        torch.save({"weights": torch.zeros(3)}, folder / "other.pt")
        return (folder / "other.pt").read_bytes()
    raise AssertionError(kind)


BAD_FILE_REASONS = {"truncated": "corrupt or truncated", "zero-byte": "empty (0 bytes)",
                    "text": "not a PyTorch checkpoint", "safetensors": "not a PyTorch checkpoint",
                    "not-gptforge": "no 'model'"}


@pytest.mark.parametrize("kind", list(BAD_FILE_REASONS))
def test_sample_names_a_damaged_checkpoint_in_one_line(kind: str, base_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(damaged(kind, (base_run / "checkpoints" / "last.pt").read_bytes(), tmp_path))
    status, out, err = run_main(["sample", "--checkpoint", str(path), "--max-new-tokens", "3"], capsys)
    assert_one_error_line(status, err, str(path), BAD_FILE_REASONS[kind])
    assert out == ""


def test_sample_names_weights_that_do_not_fit_their_config(base_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    state = load_checkpoint(base_run / "checkpoints" / "last.pt")
    state["config"]["model"]["n_embd"] = 32  # the weights are 16 wide
    path = save_checkpoint(state, tmp_path / "mislabelled.pt")
    status, _, err = run_main(["sample", "--checkpoint", str(path), "--max-new-tokens", "3"], capsys)
    assert_one_error_line(status, err, str(path), "transformer.wte.weight", "(64, 16)", "(64, 32)")


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text"])
def test_resume_skips_damaged_checkpoints_says_so_and_continues(kind: str, run_copy: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = run_copy / "checkpoints"
    good = (checkpoints / "last.pt").read_bytes()
    for name in ("last.pt", "step-4.pt"):  # the two newest, so it must fall back to step-2.pt
        replace_file(checkpoints / name, damaged(kind, good, run_copy))
    status, out, err = run_main(["train", "--resume", str(run_copy), "--max-steps", "6"], capsys)
    assert status == 0, err
    log = (run_copy / "train.log").read_text(encoding="utf-8")
    for name in ("last.pt", "step-4.pt"):
        line = f"warning: skipping {checkpoints / name}: "
        assert line in out and line in log
    assert "from step-2.pt at step 2" in out
    assert load_checkpoint(checkpoints / "last.pt")["step"] == 6


def test_resume_and_sample_with_no_loadable_checkpoint_name_every_file(run_copy: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = run_copy / "checkpoints"
    for index, path in enumerate(sorted(checkpoints.iterdir())):
        replace_file(path, damaged(["truncated", "zero-byte", "text", "safetensors"][index], path.read_bytes(),
                                   run_copy))
    before = snapshot(run_copy)
    for argv in (["train", "--resume", str(run_copy)], ["sample", "--run", str(run_copy)]):
        status, _, err = run_main(argv, capsys)
        line = assert_one_error_line(status, err, "none of the 4 checkpoints")
        for path in checkpoints.iterdir():
            assert f"skipping {path}" in line
    assert snapshot(run_copy) == before


def test_resume_refuses_a_checkpoint_of_another_model_naming_the_difference(
        run_copy: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    status, _, err = run_main(train_argv(corpus, other, "--n-embd", "32", "--max-steps", "1"), capsys)
    assert status == 0, err
    replace_file(run_copy / "checkpoints" / "last.pt", (other / "checkpoints" / "last.pt").read_bytes())
    before = snapshot(run_copy)
    status, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    assert_one_error_line(status, err, "n_embd", "16", "32")
    assert snapshot(run_copy) == before, "the run was changed by a checkpoint that is not its own"


# --- hostile checkpoints ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoints_are_refused_by_real_processes_without_running(run_copy: Path, tmp_path: Path,
                                                                              warm: WarmStarter) -> None:
    target = tmp_path / "pwned"
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps({"model": Exploit(target), "format": 1}, protocol=2))
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"model": Exploit(target), "format": 1}, zipped)
    for path in (run_copy / "checkpoints").iterdir():
        path.unlink()
    shutil.copyfile(zipped, run_copy / "checkpoints" / "last.pt")  # the run's only checkpoint
    commands = {"sample raw pickle": ["sample", "--checkpoint", str(raw)],
                "sample torch zip": ["sample", "--checkpoint", str(zipped)],
                "resume": ["train", "--resume", str(run_copy)]}
    processes = {name: warm.popen(cli(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=child_env(), cwd=tmp_path) for name, argv in commands.items()}
    for name, process in processes.items():
        try:
            _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        finally:
            process.kill()
        assert_one_error_line(process.returncode, err, "refused")
        assert not target.exists(), f"{name}: the payload ran"


def test_resume_falls_back_past_a_malicious_last_checkpoint(run_copy: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "pwned"
    last = run_copy / "checkpoints" / "last.pt"
    last.unlink()
    torch.save({"model": Exploit(target), "format": 1}, last)
    status, out, err = run_main(["train", "--resume", str(run_copy), "--max-steps", "5"], capsys)
    assert status == 0, err
    assert f"skipping {last}: it asks for" in out and "refused" in out
    assert "from step-4.pt at step 4" in out
    assert not target.exists()


PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".gz", ".pyc"}


@pytest.mark.parametrize("export_format", ["space", "hf"])
def test_exports_hold_safetensors_and_no_pickle(export_format: str, tiny_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open

    out = tmp_path / export_format
    status, _, err = run_main(["export", "--run", str(tiny_run), "--format", export_format, "--out", str(out)], capsys)
    assert status == 0, err
    files = [path for path in out.rglob("*") if path.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES], "a pickle-capable file was exported"
    for path in files:
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and head != b"PK\x03\x04", f"{path} looks like a pickle or torch zip"
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert "transformer.wte.weight" in set(weights.keys())


# --- a full disk -----------------------------------------------------------------------------------------------


class SmallDisk:
    """A folder on a filesystem of a given size: a real tmpfs where this process may mount one, else a
    simulated one (gptforge's two writers, fileio's temporary files and RunLog's logs, fail with ENOSPC
    once the bytes written under the folder pass the size)."""

    def __init__(self, path: Path, size: int, monkeypatch: pytest.MonkeyPatch, real: bool) -> None:
        self.path, self.size, self.real, self.used = path, size, real, 0
        path.mkdir()
        if real:
            mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
            return
        fds: set[int] = set()
        real_open, real_fdopen, real_builtin_open = os.open, os.fdopen, open

        def tracking_open(file: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
            descriptor = real_open(file, flags, mode, **kwargs)
            if Path(file).is_relative_to(path):
                fds.add(descriptor)
            return descriptor

        def quota_fdopen(descriptor: int, *args: Any, **kwargs: Any) -> Any:
            file = real_fdopen(descriptor, *args, **kwargs)
            return QuotaFile(file, self) if descriptor in fds else file

        def quota_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            handle = real_builtin_open(file, *args, **kwargs)
            return QuotaFile(handle, self) if Path(file).is_relative_to(path) else handle

        monkeypatch.setattr(fileio.os, "open", tracking_open)
        monkeypatch.setattr(fileio.os, "fdopen", quota_fdopen)
        monkeypatch.setattr(runlog, "open", quota_open, raising=False)

    def take(self, size: int) -> None:
        if self.used + size > self.size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.used += size

    def resize(self, size: int) -> None:
        self.size = size
        if self.real:
            mount("-o", f"remount,size={size}", str(self.path))

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=True, timeout=30)


class QuotaFile:
    """A file whose writes count against a SmallDisk."""

    def __init__(self, file: Any, disk: SmallDisk) -> None:
        self._file, self._disk = file, disk

    def write(self, data: Any) -> int:
        self._disk.take(len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes)
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> QuotaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


@pytest.fixture(params=["tmpfs", "simulated"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], SmallDisk]]:
    """make(size) -> a SmallDisk; the tmpfs variant needs the right to mount (root), the simulated one nothing."""
    if request.param == "tmpfs" and (reason := mount_refusal()):
        pytest.skip(f"cannot mount a tmpfs here ({reason}); the simulated disk checks the same behaviour")
    disks: list[SmallDisk] = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk-{len(disks)}", size, monkeypatch, request.param == "tmpfs"))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


def test_full_disk_while_saving_keeps_the_previous_checkpoint_and_stops_in_one_line(
        small_disk: Callable[[int], SmallDisk], corpus: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(train_argv(corpus, tmp_path / "sizing", "--max-steps", "1"), capsys)
    assert status == 0, err
    checkpoint_bytes = (tmp_path / "sizing" / "checkpoints" / "last.pt").stat().st_size
    disk = small_disk(int(checkpoint_bytes * 1.5) + 32 * 1024)  # one checkpoint and the logs, not two checkpoints
    run_dir = disk.path / "run"
    status, _, err = run_main(train_argv(corpus, run_dir, "--max-steps", "6"), capsys)
    last = run_dir / "checkpoints" / "last.pt"
    assert_one_error_line(status, err, f"could not write checkpoint {last}", "the disk is full",
                          "the previous checkpoint is intact")
    assert load_checkpoint(last)["step"] == 1
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left on the disk"

    disk.resize(8 * 1024 * 1024)  # space freed: the same run continues
    status, out, err = run_main(["train", "--resume", str(run_dir)], capsys)
    assert status == 0, err
    assert "from last.pt at step 1" in out
    assert load_checkpoint(last)["step"] == 6


@pytest.mark.parametrize("size", [1024, 6 * 1024], ids=["config.json", "logs"])
def test_full_disk_at_any_write_is_one_error_line(size: int, small_disk: Callable[[int], SmallDisk], corpus: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    disk = small_disk(size)
    status, _, err = run_main(train_argv(corpus, disk.path / "run", "--max-steps", "3"), capsys)
    assert_one_error_line(status, err, "the disk is full")
    assert not [p for p in disk.path.rglob("*") if p.name.endswith(".tmp")]


# --- a NaN ---------------------------------------------------------------------------------------------------


def test_diverging_run_stops_before_the_bad_step_and_its_checkpoint_still_loads(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end, with nothing injected: a learning rate of 1e30 makes the second step's loss NaN."""
    run_dir = tmp_path / "run"
    argv = train_argv(corpus, run_dir, "--learning-rate", "1e30", "--warmup-steps", "0", "--log-interval", "1",
                      "--max-steps", "10")
    status, _, err = run_main(argv, capsys)
    line = assert_one_error_line(status, err, "non-finite values at step", "the optimizer step was not taken",
                                 "--learning-rate")
    bad_step = int(re.search(r"at step (\d+)", line).group(1))
    last = run_dir / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    assert saved["step"] == bad_step - 1 >= 1  # the steps before the NaN, none after
    assert all(torch.isfinite(tensor).all() for tensor in saved["model"].values())
    assert [record["step"] for record in read_records(run_dir, "train")] == list(range(1, bad_step))
    before = last.read_bytes()

    status, _, err = run_main(["train", "--resume", str(run_dir)], capsys)  # loads, and stops at the same step
    assert_one_error_line(status, err, f"non-finite values at step {bad_step}")
    assert last.read_bytes() == before
    status, out, err = run_main(["sample", "--run", str(run_dir), "--max-new-tokens", "5"], capsys)
    assert_one_error_line(status, err, "diverged")
