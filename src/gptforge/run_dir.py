"""One trainer per run folder: an exclusive lock on ``RUN/.gptforge.lock`` for as long as it trains.

Two trainers on one folder would interleave their checkpoints, metrics and config.json into a run
that is neither. The lock is ``fcntl.flock``: the kernel drops it when its holder exits in any way,
``kill -9`` included, so a lock is never stale; the file only says which process held it last.
Under torchrun, rank 0 (the one that writes) holds it for all.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptforge.errors import UserError
from gptforge.fileio import describe_os_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".gptforge.lock"

_held: dict[Path, int] = {}  # run folder -> descriptor of its lock file, for the locks this process holds


def lock_run_dir(run_dir: Path) -> None:
    """Take the run folder's lock for this process, or refuse naming the process that holds it."""
    key = Path(run_dir).resolve()
    if fcntl is None or key in _held:
        return
    path = key / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot lock the run folder {run_dir} ({path}: {describe_os_error(exc)})") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise UserError(f"{run_dir} is in use by another gptforge train (PID {holder}); wait for it to finish "
                        "or stop it, or train into another --out") from None
    except OSError as exc:  # a filesystem without locks (some network mounts)
        os.close(descriptor)
        raise UserError(f"cannot lock the run folder {run_dir}: {describe_os_error(exc)}") from None
    _held[key] = descriptor
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass  # the PID only helps the message of a refused second trainer; the lock is what counts


def release_run_dirs() -> None:
    """Let other trainers have the folders this process locked (its exit would do the same)."""
    while _held:
        os.close(_held.popitem()[1])
