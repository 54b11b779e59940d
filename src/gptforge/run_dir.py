"""Every path under a run folder RUN, and what is done with them: create, lock, list the checkpoints, load the
newest good one, save one (with its best / step-N links), prune, clean up after a killed write.

    RUN/config.json       the fully resolved config          RUN/metrics.jsonl   one JSON object per record
    RUN/tokenizer.json    what rebuilds the tokenizer        RUN/train.log       the console's lines, timestamped
    RUN/summary.txt       how the run ended                  RUN/curves.png      the training curves
    RUN/tensorboard/      with --tensorboard                 RUN/.gptforge.lock  held while a trainer runs
    RUN/checkpoints/      last.pt, best.pt, step-N.pt (.pt.gz when compressed)

No other module names these files. One trainer per folder: the lock is ``fcntl.flock`` on
``.gptforge.lock``, which the kernel drops when its holder exits in any way (``kill -9`` included), so it
is never stale; the file only says which process held it last. Under torchrun, rank 0 (the one that
writes) holds it for all. torch is imported only by what reads or writes checkpoints, so `gptforge plot`
starts without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptforge.config import RunConfig
from gptforge.errors import UserError
from gptforge.fileio import atomic_write_text, describe_os_error, open_own_file, parse_json, remove_temporaries

if TYPE_CHECKING:
    import torch

    from gptforge.checkpoint import StateBound

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".gptforge.lock"
CHECKPOINT_DIR = "checkpoints"
_STEP_FILE = re.compile(r"step-(\d+)\.pt(\.gz)?")
_STATE_SLACK_BYTES = 64 << 20  # the RNG states, counters and the archive's own layout, with room to spare

_held: dict[Path, int] = {}  # run folder -> descriptor of its lock file, for the locks this process holds


class _RunFile:
    """A file or folder under RUN, read as an attribute of a RunDir: `run.config_file` is RUN/config.json."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir, owner: type) -> Path:
        return run.path / self.name


@dataclass(frozen=True)
class RunDir:
    """A run folder: the names of its files, and the operations on its checkpoints."""

    path: Path

    config_file = _RunFile("config.json")
    tokenizer_file = _RunFile("tokenizer.json")
    metrics_file = _RunFile("metrics.jsonl")
    log_file = _RunFile("train.log")
    summary_file = _RunFile("summary.txt")
    curves_file = _RunFile("curves.png")
    tensorboard_dir = _RunFile("tensorboard")
    checkpoint_dir = _RunFile(CHECKPOINT_DIR)

    def foreign_entry(self) -> str | None:
        """The first thing in the folder that no gptforge run writes (another program's config.json counts),
        or None: the folder is missing, empty, or a run (perhaps one killed before its first checkpoint)."""
        if not self.path.is_dir():
            return None
        names = {descriptor.name for descriptor in vars(RunDir).values() if isinstance(descriptor, _RunFile)}
        for entry in sorted(self.path.iterdir()):
            temporary = entry.name.startswith(".") and entry.name.endswith(".tmp")
            if entry.name not in names | {LOCK_FILE} and not temporary:
                return entry.name
        if self.config_file.exists() and not _is_run_config(self.config_file):
            return f"a {self.config_file.name} that is not a gptforge run's"
        return None

    def check_no_links(self) -> None:
        """Refuse a run folder whose own files or folders are symbolic links, or of the wrong kind (a folder named
        train.log): writing them would write wherever the link points. Called before anything is written."""
        for descriptor in vars(RunDir).values():
            if not isinstance(descriptor, _RunFile):
                continue
            path = self.path / descriptor.name
            folder = descriptor.name in (CHECKPOINT_DIR, self.tensorboard_dir.name)
            if path.is_symlink():
                raise UserError(f"{path} is a symbolic link; gptforge does not write through links in a run folder "
                                "(remove it)")
            if path.exists() and path.is_dir() != folder:
                raise UserError(f"{path} is {'not ' if folder else ''}a folder; gptforge does not write into it "
                                "(remove it)")

    def write_config(self, config: RunConfig) -> None:
        """config.json: the fully resolved config, rewritten whole (atomically) when a resume changes it."""
        atomic_write_text(self.config_file, json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoint_file(self, name: str, compress: bool = False) -> Path:
        """checkpoints/NAME.pt, or NAME.pt.gz for a compressed one (`name`: last, best, step-N)."""
        return self.checkpoint_dir / (f"{name}.pt.gz" if compress else f"{name}.pt")

    def checkpoints(self) -> list[Path]:
        """The checkpoint files, newest first: last, then step-N by N descending, then best.

        best.pt comes last because it can be far older than the others. When a name exists both plain and
        gzipped (the compression setting changed on resume), both are listed, newer first; load_latest takes
        the one of the higher step.
        """
        if not self.checkpoint_dir.is_dir():
            return []
        ranked: list[tuple[int, int, float, Path]] = []
        for path in self.checkpoint_dir.iterdir():  # files or not: what is not one is skipped when loading
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

    def require_folder(self, checkpoint_flag: bool = True) -> None:
        """Refuse a path that is no folder: a checkpoint file given as RUN is pointed to --checkpoint."""
        if self.path.is_file():
            hint = f"pass the file as --checkpoint {self.path}" if checkpoint_flag else "pass the run's folder"
            raise UserError(f"{self.path} is a file, not a run directory; {hint}")
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path} not found; pass a folder made by `gptforge train`")

    def load_latest(self, map_location: str | torch.device = "cpu", required: Collection[str] = ()
                    ) -> tuple[dict, Path, list[str]]:
        """Load the newest good checkpoint, falling back past corrupt ones and those that lack an entry of
        `required` (checkpoint_entries.py) or hold one of the wrong type.

        Returns the state, its path and one ``"skipping PATH: reason"`` warning per file passed over, so a
        crash while writing ``last.pt`` costs at most the steps since the previous checkpoint.
        """
        self.require_folder()
        if not self.checkpoint_dir.is_dir():
            raise UserError(f"{self.path} has no checkpoints/ folder; is it a gptforge run directory?")
        candidates = self.checkpoints()
        if not candidates:
            raise UserError(f"no checkpoints in {self.checkpoint_dir} yet; train longer or pass --checkpoint FILE")
        from gptforge.checkpoint import BadCheckpoint, read_checkpoint

        warnings: list[str] = []
        bound = self.state_bound()
        for name in dict.fromkeys(path.name.removesuffix(".gz") for path in candidates):
            loaded = []
            for path in (path for path in candidates if path.name.removesuffix(".gz") == name):
                try:
                    loaded.append((read_checkpoint(path, map_location, bound, required), path))
                except BadCheckpoint as exc:
                    warnings.append(f"skipping {path}: {exc}")
            if loaded:  # last.pt beside last.pt.gz (compression changed on resume): the higher step, not the newer file
                state, path = max(loaded, key=lambda item: _saved_step(item[0]))
                return state, path, warnings
        raise UserError(f"none of the {len(candidates)} checkpoints in {self.checkpoint_dir} loads "
                        f"({'; '.join(warnings)})")

    def state_bound(self) -> StateBound | None:
        """Twice the state (weights and AdamW's two moments) of the model config.json describes: more than
        a checkpoint of this run can hold. None when config.json is missing or damaged: it bounds nothing."""
        from gptforge.sizing import STATE_BYTES_PER_PARAMETER, parameter_count

        if not self.config_file.is_file():
            return None
        try:
            model = RunConfig.from_dict(parse_json(self.config_file.read_text(encoding="utf-8"))).model
        except (OSError, ValueError, UserError):
            return None
        expected = parameter_count(model) * STATE_BYTES_PER_PARAMETER
        return 2 * expected + _STATE_SLACK_BYTES, f"what the model in {self.config_file} can hold"

    def save_checkpoint(self, state: dict[str, Any], *, best: bool, keep: int, compress: bool) -> Path:
        """Write last.pt atomically; best.pt, and step-N.pt when `keep` > 0, become links to the same bytes;
        only the newest `keep` step-N files stay."""
        from gptforge.checkpoint import save_checkpoint

        last = save_checkpoint(state, self.checkpoint_file("last", compress), compress)
        remove_temporaries(self.checkpoint_dir, last.name)  # this process writes the run: others were killed
        if best:
            link_atomically(last, self.checkpoint_file("best", compress))
        if keep > 0:
            link_atomically(last, self.checkpoint_file(f"step-{state['step']}", compress))
            self.prune_step_checkpoints(keep)
        return last

    def prune_step_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` step-N files (all of them when ``keep <= 0``) to bound disk use."""
        if not self.checkpoint_dir.is_dir():
            return
        steps = []
        for path in self.checkpoint_dir.iterdir():
            match = _STEP_FILE.fullmatch(path.name)
            if match and path.is_file():
                steps.append((int(match.group(1)), path.stat().st_mtime, path))
        steps.sort(reverse=True)
        for *_, path in steps[max(keep, 0):]:
            path.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Delete every temporary file in checkpoints/: the process holding the run's lock calls it when it
        must exit in the middle of a write."""
        remove_temporaries(self.checkpoint_dir)

    def lock(self) -> None:
        """Take the run folder's lock for this process, or refuse naming the process that holds it."""
        key = self.path.resolve()
        if fcntl is None or key in _held:
            return
        path = key / LOCK_FILE
        self.check_no_links()
        try:
            descriptor = open_own_file(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise UserError(f"cannot lock the run folder {self.path} ({path}: {describe_os_error(exc)})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise UserError(f"{self.path} is in use by another gptforge train (PID {holder}); wait for it to "
                            "finish or stop it, or train into another --out") from None
        except OSError as exc:  # a filesystem without locks (some network mounts)
            os.close(descriptor)
            raise UserError(f"cannot lock the run folder {self.path}: {describe_os_error(exc)}") from None
        _held[key] = descriptor
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the PID only helps the message of a refused second trainer; the lock is what counts


def _is_run_config(path: Path) -> bool:
    """Whether `path` is a regular file holding a gptforge run's config (a table with a "model" and a "train"
    table), not the config.json of a transformers export or another program."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(data.get(part), dict) for part in ("model", "train"))


def release_run_dirs() -> None:
    """Let other trainers have the folders this process locked (its exit would do the same)."""
    while _held:
        os.close(_held.popitem()[1])


def create_run_dir(out: str | None, preset: str) -> RunDir:
    """Create the folder of a new run (`out`, or runs/<timestamp>-<preset>); never reuse one that already
    holds a trained model."""
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
        return RunDir(candidate)
    raise UserError(f"too many runs named {base}-N; pass --out DIR")


def _claim_named_run_dir(path: Path) -> RunDir:
    # Only real checkpoints count: a process killed while writing its first one leaves just a hidden
    # temporary file, and the same command must then be able to start the run again.
    run = RunDir(path)
    if run.checkpoints():
        raise UserError(f"{path} already holds a run with checkpoints; continue it with --resume {path} "
                        "or choose another --out")
    foreign = run.foreign_entry()
    if foreign is not None:
        raise UserError(f"{path} is not empty and is not a gptforge run (it holds {foreign}); pass a new or empty "
                        "folder to --out (nothing was overwritten)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # includes "exists and is a file"
        raise UserError(f"cannot create run directory {path}: {exc.strerror}; choose another --out") from None
    return run


def _saved_step(state: dict[str, Any]) -> int:
    step = state.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu", required: Collection[str] = ()
                         ) -> dict:
    """Load one checkpoint file; inside a run's checkpoints/ folder, bounded by what that run's model holds."""
    from gptforge.checkpoint import load_checkpoint

    path = Path(path)
    run = RunDir(path.parent.parent) if path.parent.name == CHECKPOINT_DIR else None
    return load_checkpoint(path, map_location, run.state_bound() if run is not None else None, required)


def link_atomically(source: Path, target: Path) -> None:
    """Make `target` hold the same bytes as `source` without writing them again (copy where links fail)."""
    temporary = target.with_name(f".{target.name}.link.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)
