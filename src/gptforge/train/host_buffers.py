"""Host memory that background checkpoints copy the training state into, kept from one save to the next.

A save must not stop training for long, yet the state it writes must be the state of one moment. So
each save copies every tensor to host memory first. Allocating 1.5 GB (GPT-2 124M with AdamW's moments)
afresh for every save costs page faults on the CPU, and copying from a GPU into ordinary (pageable)
memory runs at a fraction of the bus's speed and blocks the training thread until it is done. Here the
buffers are allocated once and reused; on CUDA they are page-locked (pinned), the copies are queued on
the training stream without waiting (`non_blocking`), and a CUDA event marks when they are done: the
writer thread waits on the event, the training thread does not. Kernels queued after the copies (the
next optimizer step's in-place updates) run after them on the same stream, so the copy is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Location = tuple[Any, ...]  # where a tensor sits in the state: the keys and indices that lead to it


@dataclass
class HostCopy:
    state: dict[str, Any]
    ready: torch.cuda.Event | None  # None when every copy was done by the time copy() returned

    def wait(self) -> None:
        """Block until every copy has landed in host memory (on the writer's thread)."""
        if self.ready is not None:
            self.ready.synchronize()


class HostBuffers:
    def __init__(self) -> None:
        self._buffers: dict[Location, torch.Tensor] = {}

    def bytes_to_allocate(self, state: dict[str, Any]) -> int:
        """Host memory a copy of `state` would add to what is held: tied tensors once, reused buffers not at all."""
        total = 0
        seen: set[tuple] = set()

        def count(path: Location, tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            key = _view_key(tensor)
            if key not in seen and not self._fits(path, tensor):
                total += tensor.numel() * tensor.element_size()
            seen.add(key)
            return tensor

        map_tensors(state, count)
        return total

    def copy(self, state: dict[str, Any]) -> HostCopy:
        """`state` with every tensor copied to host buffers (numpy arrays copied too), so training can go on
        changing the originals. Tensors that are the same view of one storage (GPT-2's tied embedding and
        output weights) get one copy, so the file stores them once, as torch.save does with the originals.

        The buffers of the previous copy are reused: call it only once that copy has been written.
        """
        copies: dict[tuple, torch.Tensor] = {}
        kept: dict[Location, torch.Tensor] = {}
        streams: dict[torch.device, torch.cuda.Stream] = {}

        def copy_one(path: Location, tensor: torch.Tensor) -> torch.Tensor:
            key = _view_key(tensor)
            if key not in copies:
                buffer = self._buffers[path] if self._fits(path, tensor) else \
                    torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
                buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda)
                if tensor.is_cuda:
                    streams[tensor.device] = torch.cuda.current_stream(tensor.device)
                copies[key] = kept[path] = buffer
            return copies[key]

        copied = map_tensors(state, copy_one)
        self._buffers = kept
        ready = None
        if streams:
            (stream,) = streams.values()  # one process drives one GPU
            ready = torch.cuda.Event()
            ready.record(stream)
        return HostCopy(copied, ready)

    def _fits(self, path: Location, tensor: torch.Tensor) -> bool:
        buffer = self._buffers.get(path)
        return (buffer is not None and buffer.shape == tensor.shape and buffer.dtype == tensor.dtype
                and buffer.is_pinned() == tensor.is_cuda)


def map_tensors(value: Any, action: Callable[[Location, torch.Tensor], torch.Tensor], path: Location = ()) -> Any:
    """`value` rebuilt with `action(path, tensor)` in place of each tensor and numpy arrays copied; dicts keep
    their type and a state_dict's version notes."""
    if isinstance(value, torch.Tensor):
        return action(path, value)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):  # dict or OrderedDict
        rebuilt = type(value)((key, map_tensors(item, action, (*path, key))) for key, item in value.items())
        if hasattr(value, "_metadata"):
            rebuilt._metadata = value._metadata  # type: ignore[attr-defined]
        return rebuilt
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(item, action, (*path, index)) for index, item in enumerate(value))
    return value


def _view_key(tensor: torch.Tensor) -> tuple:
    """Equal for tensors that are the same view of one storage (tied weights)."""
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tensor.stride(), tensor.dtype)
