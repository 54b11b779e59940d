"""Writing files so that a crash, a kill or a full disk leaves the old file or the new one, never half of one.

The temporary file lives beside its target so the final os.replace is a rename within one filesystem.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers and crashes see the old or the new file, whole."""
    atomic_write(Path(path), lambda file: file.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text (config.json, summary.txt)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    # The temporary file lives in the target's directory so os.replace is a rename on one
    # filesystem (atomic), and starts with "." so listings and globs skip it.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temporary, flags, 0o666)  # 0o666 minus the umask, like a normal open()
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; without this a power cut can undo it on some filesystems."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open directories; its renames are durable without this
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems (network mounts) refuse directory fsync; the file itself is safe
    finally:
        os.close(descriptor)
