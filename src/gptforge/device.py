"""Where and how this process computes: device, precision, parallel strategy, compilation and its place among
the processes, decided once per session (`resolve_runtime`) and handed to whatever trains or measures."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from gptforge.config import TrainConfig
from gptforge.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class World:
    """This process's place among those torchrun started; a plain run is rank 0 of 1."""

    rank: int = 0
    local_rank: int = 0  # index among the processes on this machine: the GPU it drives
    world_size: int = 1


def world_from_env() -> World:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process; without them there is one process."""
    try:
        return World(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                     world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them)") from None


def is_main_process() -> bool:
    """Rank 0 alone speaks for the run (errors, logs), so N processes do not print everything N times."""
    return world_from_env().rank == 0


def process_device(device: torch.device, world_size: int) -> torch.device:
    """The device this process trains on: under torchrun every process drives its own GPU, cuda:LOCAL_RANK."""
    if world_size == 1 or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"several processes train on CUDA GPUs or the CPU, not {device.type}; "
                        "use --device cuda or cpu, or train with one process")
    if device.index is not None:
        raise UserError(f"--device {device} puts every process on one GPU; pass --device cuda and each of the "
                        f"{world_size} processes uses its own (cuda:LOCAL_RANK)")
    local_rank = world_from_env().local_rank
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} "
                        "visible); start at most that many processes per machine")
    return torch.device("cuda", local_rank)


def resolve_parallel(parallel: str, world_size: int, dtype: torch.dtype) -> str:
    """`none` for one process; otherwise DDP (a full copy per process) unless `--parallel fsdp` asks to shard.

    FSDP is limited to bf16 and fp32: fp16's loss scaler would have to see gradients from every shard.
    """
    if world_size == 1:
        return "none"
    if parallel != "fsdp":
        return "ddp"
    if dtype == torch.float16:
        raise UserError("--parallel fsdp trains in bfloat16 or float32, not float16; pass --dtype bfloat16 "
                        "(or float32), or use --parallel ddp")
    return "fsdp"


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda > mps > cpu; an explicit device that is not there is the user's mistake."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 elsewhere."""
    if name != "auto":
        dtype = DTYPES[name]
        if dtype == torch.bfloat16 and device.type == "cuda" and not gpu_has_bf16(device):
            raise UserError("this GPU has no bfloat16 support; use --dtype float16 (loss scaling is automatic)")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if gpu_has_bf16(device) else torch.float16
    return torch.float32


def gpu_has_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 natively: NVIDIA from Ampere (compute capability 8.0) on.

    torch.cuda.is_bf16_supported() also says yes for older NVIDIA GPUs (T4, V100), where bf16 is
    emulated and slow; those train faster in fp16 with loss scaling.
    """
    if torch.version.hip:  # ROCm reports its own capability numbering; trust torch there
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device) >= (8, 0)


@dataclass
class Precision:
    """Mixed precision as used in the training step: weights stay fp32, matmuls run in `dtype`."""

    device: torch.device
    dtype: torch.dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def needs_loss_scaling(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Runtime:
    """How this process trains, resolved once from the config and the process group, then passed around."""

    device: torch.device
    precision: Precision
    strategy: str  # "none" (one process), "ddp" or "fsdp"
    compile: bool
    rank: int = 0
    world_size: int = 1


def resolve_runtime(train: TrainConfig, rank: int = 0, world_size: int = 1) -> Runtime:
    """The device (this process's GPU under torchrun), precision, parallel strategy and compile setting of a run.

    A missing GPU or an impossible combination is a UserError here, before any file exists."""
    device = process_device(resolve_device(train.device), world_size)
    precision = Precision(device, resolve_dtype(train.dtype, device))
    strategy = resolve_parallel(train.parallel, world_size, precision.dtype)
    use_compile = train.compile if train.compile is not None else device.type == "cuda"
    return Runtime(device=device, precision=precision, strategy=strategy, compile=use_compile, rank=rank,
                   world_size=world_size)


def configure_matmul_precision(device: torch.device) -> None:
    """TF32 for fp32 matmuls on Ampere and later; a no-op on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_gb(device: torch.device) -> float | None:
    """Peak memory this process has allocated on the GPU, or None where torch does not track it."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
