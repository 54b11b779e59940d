"""Checkpoints written in the background, so the GPU keeps training while the disk works.

Writing GPT-2 124M's state (1.5 GB with the optimizer's) takes seconds: with a save every 100 steps
that is a large share of a fast GPU's time. A save therefore copies the state into host buffers that are
reused from save to save (pinned, with copies that do not block the training thread, on CUDA:
host_buffers.py) and hands the copy to a writer thread. At most one write is in flight: the
next save, and the end of the run, wait for it first, so the host holds one copy's worth of buffers.

A write that fails (a full disk) is reported by the next save or the final one as the same one-line
error a foreground write gives, and the previous checkpoint stays whole either way. When the copy
would take over half the memory the system has available, saves stay in the foreground.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptforge.sizing import available_memory_bytes
from gptforge.train.host_buffers import HostBuffers, HostCopy

Write = Callable[[dict[str, Any], bool], Path]


class CheckpointWriter:
    """Runs `write(state, best)` on a thread of its own, one call at a time."""

    def __init__(self, write: Write, background: bool = True, notice: Callable[[str], None] = print) -> None:
        self._write = write
        self.background = background
        self._notice = notice  # says once why saves moved to the foreground
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._host = HostBuffers()

    def save(self, state: dict[str, Any], best: bool, *, wait: bool = False) -> None:
        """Write `state`; return once its copy is under way (on CUDA the copies are queued, not waited for), or
        once it is on disk when `wait` is set or saves are in the foreground. Every tensor is copied, even
        where the state was gathered into fresh host memory (FSDP): such a gather still passes AdamW's step
        counters through as the live tensors.

        Raises the error of the write before this one, if it failed.
        """
        self.wait()
        if wait or not self.background:
            self._write(state, best)
            return
        needed, available = self._host.bytes_to_allocate(state), available_memory_bytes()
        if available is not None and 2 * needed > available:
            self.background = False
            self._notice(f"checkpoints are written in the foreground from now on: a copy of the state "
                         f"({needed / 1e9:.1f} GB) would take over half the memory available "
                         f"({available / 1e9:.1f} GB)")
            self._write(state, best)
            return
        copy = self._host.copy(state)  # the previous write is done (wait() above): its buffers are free again
        self._thread = threading.Thread(target=self._run, args=(copy, best), name="gptforge-checkpoint",
                                        daemon=True)  # a process stopped outright leaves last.pt whole
        self._thread.start()

    def _run(self, copy: HostCopy, best: bool) -> None:
        try:
            copy.wait()
            self._write(copy.state, best)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

