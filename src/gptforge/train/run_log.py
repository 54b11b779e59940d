"""What the user sees and keeps of a run: console lines mirrored to train.log, metrics.jsonl, a progress bar.

The bar lives on stderr and only when stderr is a terminal, so logs piped to a file or a notebook
cell stay clean; console lines go through tqdm.write so they never cut through the bar. Each line of
train.log starts with the UTC time it was written (ISO 8601), and a resumed session starts with a line
`--- resumed at step N (session K) ---`; the console shows the lines bare.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gptforge.errors import UserError
from gptforge.fileio import describe_os_error, open_own_file
from gptforge.run_dir import RunDir
from gptforge.train.metrics_history import SESSION, sessions_before
from gptforge.train.trackers import Trackers


def _open_append(path: Path) -> TextIO:
    """A run's log file for appending, never through a symbolic link (closed in RunLog.close)."""
    return os.fdopen(open_own_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8")


def utc_stamp(seconds: float) -> str:
    """ISO 8601 in UTC to the second, e.g. 2026-12-04T00:13:27Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class RunLog:
    # seconds since the epoch for train.log's timestamps and metrics' "time"; a test can fix it
    wall_clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, run: RunDir | None, *, progress: bool = True, enabled: bool = True,
                 trackers: Trackers | None = None) -> None:
        self.enabled = enabled  # False on non-zero ranks: they neither print nor write files
        self.trackers = trackers
        self._log: TextIO | None = None
        self._metrics: TextIO | None = None
        self._metrics_path = run.metrics_file if run is not None else None
        if enabled and run is not None:
            try:
                run.path.mkdir(parents=True, exist_ok=True)
                self._log = _open_append(run.log_file)
                self._metrics = _open_append(run.metrics_file)
            except OSError as exc:
                if self._log is not None:
                    self._log.close()
                raise UserError(f"cannot write the logs of {run.path} ({exc.filename}): {describe_os_error(exc)}"
                                ) from None
        self._want_bar = enabled and progress and sys.stderr.isatty()
        self._bar: tqdm | None = None

    def info(self, message: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(message, file=sys.stdout)
        else:
            print(message, flush=True)
        self._write_log(message)

    def _write_log(self, message: str) -> None:
        if self._log is not None:
            stamp = utc_stamp(self.wall_clock())
            _append(self._log, "".join(f"{stamp} {line}\n" for line in message.split("\n")))

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def record(self, kind: str, **fields: Any) -> None:
        """One JSON object per line; flushed at once so a crash loses at most the line being written."""
        if self._metrics is None:
            return
        self._write_record(kind, fields)
        if self.trackers is not None and "step" in fields:
            self.trackers.log(kind, fields["step"], fields)

    def _write_record(self, kind: str, fields: dict[str, Any]) -> None:
        _append(self._metrics, json.dumps({"kind": kind, **fields, "time": round(self.wall_clock(), 3)}) + "\n")

    def begin_session(self, step: int) -> None:
        """Mark in metrics.jsonl where a session (a start or a resume) begins: the history read back
        (metrics_history.py) numbers steps from it and leaves out what its resume undid."""
        if self._metrics is None:
            return
        # a resume follows at least one session, even where metrics.jsonl holds none of its records
        session = max(sessions_before(self._metrics_path), 1 if step > 0 else 0) + 1
        self._write_record(SESSION, {"session": session, "step": step})  # for the history, not for the trackers
        if session > 1:  # where a resumed session begins in train.log; the console says "resuming ..."
            self._write_log(f"--- resumed at step {step} (session {session}) ---")

    def start_progress(self, done: int, total: int) -> None:
        if self._want_bar:
            self._bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)

    def advance(self, steps: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_progress()
        for handle in (self._log, self._metrics):
            if handle is not None:
                with contextlib.suppress(OSError):  # lines are flushed as written: a failure was already raised
                    handle.close()
        self._log = self._metrics = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def _append(handle: TextIO, text: str) -> None:
    """Write and flush one line; a full disk stops the run with a UserError rather than a traceback.

    Training on without its log would lose the record of the run, and the checkpoints already written
    are complete files (fileio), so stopping here costs nothing that is saved.
    """
    try:
        handle.write(text)
        handle.flush()
    except OSError as exc:
        raise UserError(f"could not write {handle.name}: {describe_os_error(exc)}; training stopped and the "
                        "checkpoints already written are intact") from None
