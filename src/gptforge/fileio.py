"""Writing files so that a crash, a kill or a full disk leaves the old file or the new one, never half of one.

The temporary file lives beside its target so the final os.replace is a rename within one filesystem.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from gptforge.errors import UserError

T = TypeVar("T")


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Replace ``path`` with ``data`` so that readers and crashes see the old or the new file, whole."""
    atomic_write(Path(path), lambda file: file.write(data), what)


def write_safetensors(path: Path, tensors: dict[str, Any], safetensors_torch: Any) -> None:
    """Weights in the safetensors format (module `safetensors_torch`), with the mode every other file gets
    (0644 under the usual umask): safetensors' own save_file leaves 0600, unreadable to anyone else who
    serves or uploads the folder."""
    atomic_write_bytes(path, safetensors_torch.save(tensors, metadata={"format": "pt"}), "the weights")


def safetensors_torch(purpose: str, install: str) -> Any:
    """safetensors' torch API, imported on first use: an optional dependency; without it, `purpose` (what needs
    it) and `install` (the pip command) make the error line."""
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f"{purpose} needs safetensors: {install}") from None
    return safetensors.torch


def parse_json(text: str) -> Any:
    """``json.loads`` whose every refusal is a ValueError with a short reason: besides malformed text, a hostile
    file can nest arrays deeper than Python's recursion limit (a RecursionError) or hold an integer past its
    4,300-digit limit (a ValueError whose text is long)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it nests arrays or objects too deeply to be a file gptforge wrote") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValueError("it holds an integer of more than 4,300 digits") from None
        raise


def read_json(path: Path) -> Any:
    """A JSON file's data; a file that cannot be read or parsed is one UserError naming it."""
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"cannot read {path}: {exc}") from None


def write_json(path: Path, data: Any) -> None:
    """Indented UTF-8, as transformers writes its own files, so an export diffs cleanly against theirs."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def open_own_file(path: Path, flags: int) -> int:
    """A descriptor on `path`, opened (and created when `flags` says so) without following a symbolic link, and
    only when it is a regular file: a run folder received from someone else may hold `train.log` or the lock as a
    link to any file the user can write. A link or a non-file is a one-line UserError; other OSErrors pass on."""
    try:
        descriptor = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or Path(path).is_symlink():
            raise UserError(f"{path} is a symbolic link; gptforge does not write through links in a run folder "
                            "(remove it)") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UserError(f"{path} is not a regular file; gptforge does not write into it (remove it)")
    return descriptor


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    """``atomic_write_bytes`` for UTF-8 text (config.json, summary.txt)."""
    atomic_write_bytes(path, text.encode("utf-8"), what)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], what: str = "file") -> None:
    """Write ``path`` through ``write(file)`` all at once, or not at all.

    A write the system refuses (a full disk, no permission, a read-only filesystem) is the user's to fix,
    so it becomes a one-line UserError naming the file and saying that the previous one is untouched;
    ``what`` names the kind of file in that message.
    """
    # The temporary file lives in the target's directory so os.replace is a rename on one
    # filesystem (atomic), and starts with "." so listings and globs skip it.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_and_rename(temporary, path, write)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
        cause = _os_error_in(exc)
        if cause is None:
            raise  # a RuntimeError that is not about the disk is a bug, not the user's problem
        kept = f"the previous {what} is intact" if path.exists() else "nothing was written"
        raise UserError(f"could not write {what} {path}: {describe_os_error(cause)}; {kept}") from exc
    _fsync_directory(path.parent)


def remove_temporaries(folder: Path, name: str = "*") -> None:
    """Delete the temporary files that `atomic_write` left in `folder` for the file `name` (every file: "*").

    Only a process killed mid-write leaves one, each as big as what it was writing; callers make sure no
    write of their own is in flight."""
    pattern = ".*.tmp" if name == "*" else f".{glob.escape(name)}.*.tmp"
    for leftover in Path(folder).glob(pattern):
        leftover.unlink(missing_ok=True)


def _write_and_rename(temporary: Path, path: Path, write: Callable[[IO[bytes]], object]) -> None:
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


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a failed write as a RuntimeError whose context is it."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def name_too_long(exc: OSError) -> str | None:
    """A path with a component over the filesystem's limit (255 bytes on most), whichever command met it first:
    the system call fails before anything is created, so saying which name is all there is to do."""
    if exc.errno != errno.ENAMETOOLONG:
        return None
    path = Path(os.fsdecode(exc.filename)) if exc.filename is not None else None
    parts = path.parts if path is not None else ()
    longest = max(parts, key=lambda part: len(os.fsencode(part)), default="")
    shown = longest if len(longest) <= 40 else f"{longest[:37]}..."
    return (f"a file or folder name in a path is too long for the filesystem ({len(os.fsencode(longest))} bytes: "
            f"{shown}; most allow 255); pass a shorter name")


def describe_os_error(exc: OSError) -> str:
    """Why a write failed, in words a user can act on: a full disk says so, whatever the platform calls it."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk is full ({reason})"
    return reason


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


STAGING = "staging"  # .OUT.staging-PID.RANDOM: the folder an export fills before it is renamed to OUT


def remove_dead_staging(out: Path) -> None:
    """Delete the staging folders for `out` that an export killed mid-way left beside it (each as big as what it
    was writing): those whose process is gone. A live export's folder, or another user's, stays."""
    for staging in out.parent.glob(f".{glob.escape(out.name)}.{STAGING}-*.*"):
        pid = staging.name[len(f".{out.name}.{STAGING}-"):].split(".")[0]
        if pid.isdigit() and not _process_alive(int(pid)) and staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no pid at all: leave its folder
        pass
    return True


def write_new_folder(out: Path, fill: Callable[[Path], T], what: str) -> T:
    """Create folder `out` (new or empty) from `fill(staging)`, all at once; never write over anything.

    `fill` writes into a hidden folder beside `out`, which is renamed into place only when complete, so
    a failed export leaves neither a half-written folder nor anything changed. Returns what `fill` does.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; pass a new or empty folder to --out")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; pass a new or empty folder to --out (nothing was overwritten)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{STAGING}-{os.getpid()}.", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot write {what} to {out}: {describe_os_error(exc)}; nothing was written") from None
    try:
        result = fill(staging)
        staging.chmod(0o755)
        if out.is_dir():
            out.rmdir()  # empty, checked above; rmdir refuses if anything appeared since
        os.replace(staging, out)
    except OSError as exc:
        raise UserError(f"cannot write {what} to {out}: {describe_os_error(exc)}; nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
