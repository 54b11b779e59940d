"""Checkpoints written in the background, so the GPU keeps training while the disk works.

Writing GPT-2 124M's state (1.5 GB with the optimizer's) takes seconds: with a save every 100 steps
that is a large share of a fast GPU's time. A save therefore copies the state to host memory (a
fraction of a second) and hands the copy to a writer thread. At most one write is in flight: the
next save, and the end of the run, wait for it first, so the host holds at most one extra copy.

A write that fails (a full disk) is reported by the next save or the final one as the same one-line
error a foreground write gives, and the previous checkpoint stays whole either way. When the copy
would take over half the memory the system has available, saves stay in the foreground.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Write = Callable[[dict[str, Any], bool], Path]


class CheckpointWriter:
    """Runs `write(state, best)` on a thread of its own, one call at a time."""

    def __init__(self, write: Write, background: bool = True, notice: Callable[[str], None] = print) -> None:
        self._write = write
        self.background = background
        self._notice = notice  # says once why saves moved to the foreground
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], best: bool, *, wait: bool = False) -> None:
        """Write `state`; return once it is copied, or once it is on disk when `wait` is set or saves
        are in the foreground. Every tensor is copied, even where the state was gathered into fresh host
        memory (FSDP): such a gather still passes AdamW's step counters through as the live tensors.

        Raises the error of the write before this one, if it failed.
        """
        self.wait()
        if wait or not self.background:
            self._write(state, best)
            return
        needed, available = state_bytes(state), available_memory_bytes()
        if available is not None and 2 * needed > available:
            self.background = False
            self._notice(f"checkpoints are written in the foreground from now on: a copy of the state "
                         f"({needed / 1e9:.1f} GB) would take over half the memory available "
                         f"({available / 1e9:.1f} GB)")
            self._write(state, best)
            return
        state = host_copy(state)
        self._thread = threading.Thread(target=self._run, args=(state, best), name="gptforge-checkpoint",
                                        daemon=True)  # a process stopped outright leaves last.pt whole
        self._thread.start()

    def _run(self, state: dict[str, Any], best: bool) -> None:
        try:
            self._write(state, best)
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


def host_copy(value: Any, copies: dict[tuple, torch.Tensor] | None = None) -> Any:
    """`value` with every tensor copied to host memory, so training can go on changing the originals.

    Tensors that are the same view of one storage (GPT-2's tied embedding and output weights) get one
    copy, so the file stores them once, as torch.save does with the originals.
    """
    copies = {} if copies is None else copies
    if isinstance(value, torch.Tensor):
        key = _view_key(value)
        if key not in copies:
            copies[key] = value.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):  # dict or OrderedDict; a state_dict's version notes come along
        copied = type(value)((key, host_copy(item, copies)) for key, item in value.items())
        if hasattr(value, "_metadata"):
            copied._metadata = value._metadata  # type: ignore[attr-defined]
        return copied
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item, copies) for item in value)
    return value


def _view_key(tensor: torch.Tensor) -> tuple:
    """Equal for tensors that are the same view of one storage (tied weights)."""
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype)


def state_bytes(value: Any, seen: set[tuple] | None = None) -> int:
    """Bytes of the tensors in `value`, tied ones once: what `host_copy` allocates."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        key = _view_key(value)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(item, seen) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(item, seen) for item in value)
    return 0


def available_memory_bytes() -> int | None:
    """What Linux says a process can still allocate without swapping (None elsewhere: assumed enough)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
