"""Training on several processes under torchrun: process-group setup, rank helpers, DDP / FSDP2 wrapping.

The model code is single-device and knows nothing of other processes (docs/architecture.md); everything that
does lives here, and a one-process run never touches torch.distributed. FSDP2's imports stay inside
the functions that need them, so that older torch builds (or ones without torch.distributed) still
train on one process.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from gptforge.device import Precision, World, world_from_env
from gptforge.errors import UserError

T = TypeVar("T")


def setup() -> World:
    """Join the process group torchrun prepared: NCCL for CUDA tensors (each process on cuda:LOCAL_RANK),
    gloo for CPU tensors."""
    world = world_from_env()
    if world.world_size == 1 or torch.distributed.is_initialized():
        return world
    if not torch.distributed.is_available():
        raise UserError("this torch build has no torch.distributed; train with one process")
    cuda = torch.cuda.is_available()
    if cuda and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)  # NCCL's communicators bind to the current GPU
    torch.distributed.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return world


def teardown() -> None:
    """Leave the process group while Python is whole.

    Whatever still holds the group (DDP's reducer, a sharded model) is freed first: left to the end of
    the interpreter, gloo's threads meet a half-finalized Python and the process aborts ("terminate called
    without an active exception") after a run that went well.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def wait_for_all_ranks(world_size: int) -> None:
    """Hold every process until all get here. torchrun stops the others as soon as one exits with an error
    status (143 after SIGTERM, say), which would cut rank 0 off while it writes the run's summary."""
    if world_size > 1:
        torch.distributed.barrier()


def run_on_rank0(action: Callable[[], T], rank: int, world_size: int) -> T:
    """Do `action` on rank 0 only (create a folder, write a file) and hand its result to every rank.

    A UserError there is raised on every rank, so all processes stop together with the same message
    instead of the others waiting forever for rank 0. Any other error (a bug, memory running out) also
    stops the others, with a line naming it, while rank 0 raises it with its traceback.
    """
    if world_size == 1:
        return action()
    payload: list[Any] = [None, None]
    if rank == 0:
        try:
            payload = [action(), None]
        except UserError as exc:
            payload = [None, str(exc)]
        except Exception as exc:
            torch.distributed.broadcast_object_list(
                [None, f"process 0 failed ({type(exc).__name__}: {exc}); its traceback is above"], src=0)
            raise
    torch.distributed.broadcast_object_list(payload, src=0)
    result, error = payload
    if error is not None:
        raise UserError(error)
    return result


def max_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise maximum over all processes: how every rank agrees on a flag or a clock."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.tolist()


# --- wrapping the model ------------------------------------------------------------------------------


@dataclass
class WrappedModel:
    """The training step needs two handles on one model: what to call, and where to switch gradient sync."""

    forward: nn.Module  # what the training step calls: the model, maybe wrapped, maybe compiled
    parallel: nn.Module  # where gradient sync is switched: the DDP wrapper, the sharded model, or the model


def wrap_model(model: nn.Module, strategy: str, precision: Precision, use_compile: bool) -> WrappedModel:
    """Wrap the single-device model for `strategy` (none, ddp or fsdp) and compile it if asked.

    DDP wraps the compiled model, the order nanoGPT trains with: DDP's own forward (and no_sync) stays
    outside the compiled code. FSDP2 shards `model` in place, every Block and then the root (embeddings,
    final norm and the tied head), so the optimizer must be built afterwards.
    """
    if strategy == "none":
        return WrappedModel(forward=torch.compile(model) if use_compile else model, parallel=model)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [precision.device.index] if precision.device.type == "cuda" else None
        ddp = DistributedDataParallel(torch.compile(model) if use_compile else model, device_ids=device_ids)
        return WrappedModel(forward=ddp, parallel=ddp)
    if strategy == "fsdp":
        shard(model, precision)
        return WrappedModel(forward=torch.compile(model) if use_compile else model, parallel=model)
    raise ValueError(f"unknown strategy {strategy!r}")


def shard(model: nn.Module, precision: Precision) -> None:
    """FSDP2: each Block is one all-gather / reduce-scatter unit, the root holds the rest.

    On CUDA with bf16 the gathered weights and the matmuls are bf16 while gradients are reduced in
    fp32; elsewhere everything stays fp32 (the CPU has no fast bf16 collectives to gain from).
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        raise UserError(f"--parallel fsdp needs torch 2.6 or later (this is {torch.__version__}); "
                        "use --parallel ddp") from None
    mesh = init_device_mesh(precision.device.type, (torch.distributed.get_world_size(),))
    if precision.device.type == "cuda" and precision.dtype == torch.bfloat16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` went through fully_shard (its parameters are DTensor shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 has no FSDP2, so nothing is sharded
        return False
    return isinstance(model, FSDPModule)


def gradient_sync(parallel: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Accumulate gradients locally on all micro-steps but the last, which alone pays for the collective.

    DDP's no_sync() covers the forward and backward of a micro-step; FSDP2 takes a switch on the module.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(parallel, DistributedDataParallel):
        return contextlib.nullcontext() if enabled else parallel.no_sync()
    if is_sharded(parallel):
        parallel.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip by the norm of the whole model's gradient and return that norm, the same on every rank.

    With FSDP2 each rank holds gradient shards (DTensors), and so is the norm: full_tensor() makes it
    the global value before anything reads it.
    """
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if is_sharded(model) else norm


# --- checkpoints of a sharded model ------------------------------------------------------------------


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Weights and optimizer state laid out as one process holds them, so every checkpoint has one format.

    A sharded model is gathered (a collective: every rank calls this) onto rank 0's CPU; other ranks
    get empty dicts.
    """
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    return weights, _optimizer_state_by_position(optimizer_state)


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict,
                          optimizer_state: dict) -> None:
    """Undo `full_state_dicts`: every rank passes the whole file's dicts and keeps its own shards."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, _optimizer_state_by_name(optimizer_state, model, optimizer),
                             options=options)


def _optimizer_state_by_position(state: dict) -> dict:
    """torch.distributed.checkpoint keys optimizer state by parameter name; Optimizer.state_dict() by the
    parameter's position in the param groups. Store positions, as a one-process run does."""
    if not state:
        return state
    names = [name for group in state["param_groups"] for name in group["params"]]
    position = {name: index for index, name in enumerate(names)}
    return {"state": {position[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [position[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def _optimizer_state_by_name(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    name_of = {parameter: name for name, parameter in model.named_parameters()}
    names = [name_of[parameter] for group in optimizer.param_groups for parameter in group["params"]]
    return {"state": {names[position]: value for position, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[position] for position in group["params"]]}
                             for group in state["param_groups"]]}


# --- `gptforge train --nproc N` ----------------------------------------------------------------------


def launch_local(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m gptforge ARGV` as `nproc` processes on this machine under torchrun; its exit status.

    Ctrl-C already reaches torchrun (same terminal process group), which passes it on to the training
    processes once; so this process ignores it, and forwards a SIGTERM sent to it alone.
    """
    if nproc < 1:
        raise UserError(f"--nproc must be a positive integer, got {nproc}")
    if world_from_env().world_size > 1:
        raise UserError("--nproc starts torchrun itself; under torchrun leave it out")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gptforge", *argv]
    child = subprocess.Popen(command)
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """`argv` less `flag VALUE` / `flag=VALUE`, abbreviations included (argparse accepts unique prefixes)."""
    kept: list[str] = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        name = token.split("=", 1)[0]
        if len(name) > 2 and flag.startswith(name):
            skip_value = "=" not in token
            continue
        kept.append(token)
    return kept
