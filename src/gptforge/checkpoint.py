"""The checkpoint file format: written so that it survives crashes, loaded so that it cannot run code, and the
RNG states a checkpoint carries so that a resumed run draws what an uninterrupted one would.

Every file is written to a temporary file beside its target and moved into place with one
``os.replace``, so a crash or a full disk leaves either the old file or the new one, never half of
one. Loading always uses ``torch.load(weights_only=True)``: a checkpoint from the internet cannot run
code on the machine that opens it.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import pickle
import random
import re
import stat
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from gptforge.checkpoint_entries import entry_problem
from gptforge.errors import UserError
from gptforge.fileio import atomic_write, describe_os_error
from gptforge.sizing import available_memory_bytes

CHECKPOINT_FORMAT = 1  # stored under state["format"]; bump when the layout of the state changes

_GZIP_MAGIC = b"\x1f\x8b"
_REASON_CHARS = 160
_CHUNK_BYTES = 1 << 20
MIB = 1 << 20


class BadCheckpoint(Exception):
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
    return path


StateBound = tuple[int, str]  # the most bytes a checkpoint's state may take, and what sets that bound


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", bound: StateBound | None = None,
                    required: Collection[str] = ()) -> dict:
    """Load a checkpoint written by ``save_checkpoint``; any problem is a one-line UserError.

    `bound` (run_dir.RunDir.state_bound) caps what the file may inflate to, besides the memory available;
    `required` names the entries the caller uses (checkpoint_entries.py): when given, each must be there and every
    entry present must be of its type; without it only the format is checked."""
    path = Path(path)
    try:
        return read_checkpoint(path, map_location, bound, required)
    except BadCheckpoint as exc:
        raise UserError(f"cannot load checkpoint {path}: {exc}") from None


def read_checkpoint(path: Path, map_location: str | torch.device, bound: StateBound | None,
                    required: Collection[str] = ()) -> dict:
    """``load_checkpoint`` for callers that try several files: raises BadCheckpoint, without the file name."""
    _check_regular_file(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadCheckpoint("the file is empty (0 bytes); it was probably cut off, use an older checkpoint")
        with path.open("rb") as file:
            compressed = file.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
            cap, bounded_by = size_cap(bound, copies=2 if compressed else 1)  # gzip: the archive and the tensors
            if not compressed and cap is not None and size > cap:
                raise BadCheckpoint(f"it is {size / MIB:,.0f} MiB, more than {bounded_by} ({cap / MIB:,.0f} MiB); "
                                    "refused")
            source: Path | io.BytesIO = _gunzip(file, cap, bounded_by) if compressed else path
            check_archive_size(source if compressed else file, cap, bounded_by)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise BadCheckpoint(f"cannot read it ({_one_line(exc)})") from None
    state = _torch_load(source, map_location)
    _check_state(state, required)
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
            raise BadCheckpoint("it is a symbolic link that loops, not a file") from None
        if path.is_symlink():
            raise BadCheckpoint(f"it is a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise BadCheckpoint("no such file" if isinstance(exc, FileNotFoundError) else _one_line(exc)) from None
    for test, kind in _NOT_FILES:
        if test(mode):
            raise BadCheckpoint(f"it is {kind}, not a checkpoint file")


def _gunzip(file: IO[bytes], cap: int | None, bounded_by: str) -> io.BytesIO:
    """Decompress into memory (torch.load seeks around the zip archive, which gzip streams do slowly), but
    no more than `cap` bytes: a few MB can inflate to many GB, and a bomb is a damaged checkpoint."""
    file.seek(0)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=file, mode="rb") as gz:
        while chunk := gz.read(_CHUNK_BYTES):
            buffer.write(chunk)
            if cap is not None and buffer.tell() > cap:
                raise BadCheckpoint(f"it inflates to more than {bounded_by} ({cap / MIB:,.0f} MiB): damaged, or a "
                                     "decompression bomb; refused")
    buffer.seek(0)
    return buffer


def check_archive_size(file: IO[bytes] | io.BytesIO, cap: int | None, bounded_by: str) -> None:
    """Read the zip archive's central directory (what torch.save writes) before torch.load inflates anything:
    torch.save stores every entry uncompressed, so a deflated entry is refused (a 1 MB file can inflate to GBs),
    and the entries' declared sizes together are held to `cap`. A file that is not a zip is left to torch.load,
    which refuses it with its own reason."""
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError):
        return
    finally:
        file.seek(0)
    packed = next((entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        raise BadCheckpoint(f"its entry {packed[:80]!r} is compressed inside the archive, which torch.save never "
                            "writes: damaged, or a decompression bomb; refused")
    total = sum(entry.file_size for entry in entries)
    if cap is not None and total > cap:
        raise BadCheckpoint(f"its entries inflate to {total / MIB:,.0f} MiB, more than {bounded_by} "
                            f"({cap / MIB:,.0f} MiB): damaged, or a decompression bomb; refused")


def size_cap(bound: StateBound | None, copies: int = 1) -> tuple[int | None, str]:
    """The most bytes a checkpoint's state may take, and what sets that bound: `bound` (what the run's model can
    hold), and never more than the memory available shared by the `copies` that loading holds at once. None: no
    bound is known (not Linux, no run)."""
    bounds = [bound] if bound is not None else []
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
            raise BadCheckpoint(
                f"it asks for {forbidden} while loading, which could run code; refused "
                "(only tensors and plain data are loaded)"
            ) from None
        raise BadCheckpoint(
            "not a PyTorch checkpoint, or it holds objects other than tensors and plain data (refused)"
        ) from None
    except Exception as exc:  # torch reports corrupt files with many exception types
        raise BadCheckpoint(
            f"corrupt or truncated, or not a PyTorch checkpoint ({_one_line(exc)}); use an older checkpoint"
        ) from None


def code_it_would_run(exc: pickle.UnpicklingError) -> str | None:
    """The callable a pickle refused by ``weights_only`` asked for (``os.system``...), or None when the
    file was refused for another reason (not a pickle at all)."""
    forbidden = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return forbidden.group(1) if forbidden else None


def _check_state(state: Any, required: Collection[str]) -> None:
    if not isinstance(state, dict):
        raise BadCheckpoint(f"holds a {type(state).__name__}, not a gptforge checkpoint (a dict)")
    missing = [key for key in ("model", "format") if key not in state]
    if missing:
        raise BadCheckpoint(f"not a gptforge checkpoint (no {' or '.join(repr(k) for k in missing)} entry)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise BadCheckpoint(
            f"checkpoint format {state['format']!r} is not one this gptforge reads ({CHECKPOINT_FORMAT}); "
            "use the gptforge version that wrote it"
        )
    problem = entry_problem(state, required) if required else None  # none named: the file layer alone
    if problem is not None:
        raise BadCheckpoint(f"{problem}; it was damaged or not written by gptforge")


def _one_line(exc: BaseException) -> str:
    """The exception's kind and first line, short enough for a one-line error."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


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

