"""Checkpoints that survive crashes and cannot run code, and the layout of a run directory.

A run directory RUN holds ``config.json``, ``tokenizer.json``, ``metrics.jsonl``, ``train.log``,
``checkpoints/`` (``last.pt``, ``best.pt``, periodic ``step-N.pt``; ``.pt.gz`` when compressed),
``curves.png`` and ``summary.txt``.

Every file is written to a temporary file beside its target and moved into place with one
``os.replace``, so a crash or a full disk leaves either the old file or the new one, never half of
one. Loading always uses ``torch.load(weights_only=True)``: a checkpoint from the internet cannot run
code on the machine that opens it.
"""

from __future__ import annotations

import errno
import glob
import gzip
import io
import json
import os
import pickle
import random
import re
import stat
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from gptforge.config import RunConfig
from gptforge.errors import UserError
from gptforge.fileio import atomic_write, describe_os_error
from gptforge.sizing import STATE_BYTES_PER_PARAMETER, available_memory_bytes, parameter_count

CHECKPOINT_FORMAT = 1  # stored under state["format"]; bump when the layout of the state changes

_GZIP_MAGIC = b"\x1f\x8b"
_STEP_FILE = re.compile(r"step-(\d+)\.pt(\.gz)?")
_REASON_CHARS = 160
_CHUNK_BYTES = 1 << 20
_STATE_SLACK_BYTES = 64 << 20  # the RNG states, counters and the archive's own layout, with room to spare
MIB = 1 << 20


class _BadCheckpoint(Exception):
    """Why one file is not a usable checkpoint; callers add the file name."""


# --- save and load -----------------------------------------------------------------------------


def save_checkpoint(state: dict, path: Path, compress: bool = False) -> Path:
    """Write ``state`` (plus ``"format"``) atomically and return the path actually written.

    With ``compress`` the file is gzip and its name ends in ``.gz``. On any failure the previous
    file at that path is left as it was. torch.save streams into the temporary file, so a large
    model is not held twice in memory.
    """
    path = Path(path)
    if compress and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    state = {**state, "format": CHECKPOINT_FORMAT}

    def write(file: IO[bytes]) -> None:
        if compress:
            with gzip.GzipFile(fileobj=file, mode="wb", compresslevel=6) as gz:
                torch.save(state, gz)
        else:
            torch.save(state, file)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"could not save checkpoint {path}: {describe_os_error(exc)}") from None
    atomic_write(path, write, what="checkpoint")
    _remove_leftover_temporaries(path)
    return path


def _remove_leftover_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path`` that killed processes left behind, each as big as a checkpoint.

    One process writes a run's checkpoints, so once its own save has been renamed into place every
    other temporary file of that name is debris from a process killed mid-write.
    """
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)


def remove_temporaries(checkpoint_dir: Path) -> None:
    """Delete every temporary file in a run's checkpoint folder: a process about to exit mid-write calls it,
    and only the process holding the run's lock writes there."""
    for leftover in Path(checkpoint_dir).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint``; any problem is a one-line UserError."""
    path = Path(path)
    try:
        return _load(path, map_location)
    except _BadCheckpoint as exc:
        raise UserError(f"cannot load checkpoint {path}: {exc}") from None


def _load(path: Path, map_location: str | torch.device) -> dict:
    _check_regular_file(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise _BadCheckpoint("the file is empty (0 bytes); it was probably cut off, use an older checkpoint")
        with path.open("rb") as file:
            compressed = file.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
            cap, bounded_by = size_cap(path, copies=2 if compressed else 1)  # gzip: the archive and the tensors
            if not compressed and cap is not None and size > cap:
                raise _BadCheckpoint(f"it is {size / MIB:,.0f} MiB, more than {bounded_by} ({cap / MIB:,.0f} MiB); "
                                     "refused")
            source: Path | io.BytesIO = _gunzip(file, cap, bounded_by) if compressed else path
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise _BadCheckpoint(f"cannot read it ({_one_line(exc)})") from None
    state = _torch_load(source, map_location)
    _check_state(state)
    return state


_NOT_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
              (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: reading a FIFO would wait forever, a device
    (/dev/zero) would never end."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _BadCheckpoint("it is a symbolic link that loops, not a file") from None
        if path.is_symlink():
            raise _BadCheckpoint(f"it is a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise _BadCheckpoint("no such file" if isinstance(exc, FileNotFoundError) else _one_line(exc)) from None
    for test, kind in _NOT_FILES:
        if test(mode):
            raise _BadCheckpoint(f"it is {kind}, not a checkpoint file")


def _gunzip(file: IO[bytes], cap: int | None, bounded_by: str) -> io.BytesIO:
    """Decompress into memory (torch.load seeks around the zip archive, which gzip streams do slowly), but
    no more than `cap` bytes: a few MB can inflate to many GB, and a bomb is a damaged checkpoint."""
    file.seek(0)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=file, mode="rb") as gz:
        while chunk := gz.read(_CHUNK_BYTES):
            buffer.write(chunk)
            if cap is not None and buffer.tell() > cap:
                raise _BadCheckpoint(f"it inflates to more than {bounded_by} ({cap / MIB:,.0f} MiB): damaged, or a "
                                     "decompression bomb; refused")
    buffer.seek(0)
    return buffer


def size_cap(path: Path, copies: int = 1) -> tuple[int | None, str]:
    """The most bytes the state in checkpoint `path` may take, and what sets that bound.

    Twice the state of the model its run's config.json describes (weights and AdamW's two moments), when
    the file sits in a run's checkpoints/ folder; never more than the memory available shared by the
    `copies` that loading holds at once. None: no bound is known (not Linux, no run).
    """
    bounds: list[tuple[int, str]] = []
    config_file = path.parent.parent / "config.json"
    if path.parent.name == "checkpoints" and config_file.is_file():
        try:
            model = RunConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8"))).model
            expected = parameter_count(model) * STATE_BYTES_PER_PARAMETER
            bounds.append((2 * expected + _STATE_SLACK_BYTES, f"what the model in {config_file} can hold"))
        except (OSError, ValueError, UserError):
            pass  # a damaged config.json bounds nothing; the memory still does
    available = available_memory_bytes()
    if available is not None:
        bounds.append((available // copies, "half the memory available" if copies == 2 else "the memory available"))
    return min(bounds) if bounds else (None, "")


def _torch_load(source: Path | io.BytesIO, map_location: str | torch.device) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        forbidden = code_it_would_run(exc)
        if forbidden:
            raise _BadCheckpoint(
                f"it asks for {forbidden} while loading, which could run code; refused "
                "(only tensors and plain data are loaded)"
            ) from None
        raise _BadCheckpoint(
            "not a PyTorch checkpoint, or it holds objects other than tensors and plain data (refused)"
        ) from None
    except Exception as exc:  # torch reports corrupt files with many exception types
        raise _BadCheckpoint(
            f"corrupt or truncated, or not a PyTorch checkpoint ({_one_line(exc)}); use an older checkpoint"
        ) from None


def code_it_would_run(exc: pickle.UnpicklingError) -> str | None:
    """The callable a pickle refused by ``weights_only`` asked for (``os.system``...), or None when the
    file was refused for another reason (not a pickle at all)."""
    forbidden = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return forbidden.group(1) if forbidden else None


def _check_state(state: Any) -> None:
    if not isinstance(state, dict):
        raise _BadCheckpoint(f"holds a {type(state).__name__}, not a gptforge checkpoint (a dict)")
    missing = [key for key in ("model", "format") if key not in state]
    if missing:
        raise _BadCheckpoint(f"not a gptforge checkpoint (no {' or '.join(repr(k) for k in missing)} entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise _BadCheckpoint(
            f"checkpoint format {state['format']!r} is not one this gptforge reads ({CHECKPOINT_FORMAT}); "
            "use the gptforge version that wrote it"
        )


def _one_line(exc: BaseException) -> str:
    """The exception's kind and first line, short enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


# --- finding checkpoints in a run --------------------------------------------------------------


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Checkpoint files of a run, newest first: last, then step-N by N descending, then best.

    best.pt comes last because it can be far older than the others. When a name exists both plain
    and gzipped (the compression setting changed on resume), the more recently written one wins.
    """
    checkpoint_dir = Path(run_dir) / "checkpoints"
    if not checkpoint_dir.is_dir():
        return []
    ranked: list[tuple[int, int, float, Path]] = []
    for path in checkpoint_dir.iterdir():  # files or not: what is not one is skipped by name when loading
        stem = path.name.removesuffix(".gz")
        step = _STEP_FILE.fullmatch(path.name)
        if stem == "last.pt":
            rank, number = 0, 0
        elif step:
            rank, number = 1, -int(step.group(1))
        elif stem == "best.pt":
            rank, number = 2, 0
        else:
            continue
        ranked.append((rank, number, -path.lstat().st_mtime, path))
    return [path for *_, path in sorted(ranked)]


def find_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run that actually loads (each candidate is loaded to prove it).

    Callers that also need the state should call ``load_latest`` instead, to load it only once.
    """
    return load_latest(run_dir)[1]


def load_latest(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict, Path, list[str]]:
    """Load the newest good checkpoint of a run, falling back past corrupt ones.

    Returns the state, its path and one ``"skipping PATH: reason"`` warning per file passed over, so
    a crash while writing ``last.pt`` costs at most the steps since the previous checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found; pass a folder made by `gptforge train`")
    checkpoint_dir = run_dir / "checkpoints"
    if not checkpoint_dir.is_dir():
        raise UserError(f"{run_dir} has no checkpoints/ folder; is it a gptforge run directory?")
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        raise UserError(f"no checkpoints in {checkpoint_dir} yet; train longer or pass --checkpoint FILE")
    warnings: list[str] = []
    for path in candidates:
        try:
            return _load(path, map_location), path, warnings
        except _BadCheckpoint as exc:
            warnings.append(f"skipping {path}: {exc}")
    raise UserError(f"none of the {len(candidates)} checkpoints in {checkpoint_dir} loads ({'; '.join(warnings)})")


def prune_step_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step-N files (all of them when ``keep <= 0``) to bound disk use."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return
    steps = []
    for path in checkpoint_dir.iterdir():
        match = _STEP_FILE.fullmatch(path.name)
        if match and path.is_file():
            steps.append((int(match.group(1)), path.stat().st_mtime, path))
    steps.sort(reverse=True)
    for *_, path in steps[max(keep, 0):]:
        path.unlink(missing_ok=True)


def new_run_dir(out: str | None, preset: str) -> Path:
    """Create the directory for a new run; never reuse one that already holds a trained model."""
    if out is not None:
        return _claim_named_run_dir(Path(out))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{preset}"
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create run directory {candidate}: {exc.strerror}; pass --out DIR") from None
        return candidate
    raise UserError(f"too many runs named {base}-N; pass --out DIR")


def _claim_named_run_dir(path: Path) -> Path:
    # Only real checkpoints count: a process killed while writing its first one leaves just a hidden
    # temporary file, and the same command must then be able to start the run again.
    if checkpoint_candidates(path):
        raise UserError(
            f"{path} already holds a run with checkpoints; continue it with --resume {path} "
            "or choose another --out"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # includes "exists and is a file"
        raise UserError(f"cannot create run directory {path}: {exc.strerror}; choose another --out") from None
    return path


# --- random number generators ------------------------------------------------------------------


def capture_rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor | list]:
    """Every RNG a training step draws from, as tensors, lists and numbers that weights_only accepts.

    Restoring these makes a resumed run draw the same dropout masks and random batches as an
    uninterrupted one. Of the GPUs, only `device`'s generator is kept: it is the one this process
    draws from (under torchrun every process drives its own GPU, seeded and drawn alike).
    """
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device is not None and device.type == "cuda" else [],
        "python": [version, list(internal), gauss_next],
        # MT19937 keys are uint32; int64 holds them exactly and every torch version can load it.
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
    }


def restore_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Undo ``capture_rng_state`` on `device`; entries that are absent (a GPU state on a CPU run) are skipped."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda_states[0].cpu(), device)
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached_gaussian))

