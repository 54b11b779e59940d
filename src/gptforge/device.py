"""Where and how this process computes: device, precision, parallel strategy, compilation and its place among
the processes, decided once per session (`resolve_runtime`) and handed to whatever trains or measures."""

from __future__ import annotations

import contextlib
import os
import shutil
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


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets and env:// reads


def world_from_env() -> World:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each process; without them there is one process.

    Values a launcher cannot have set (not integers, a rank outside the world, several processes without the
    rendezvous address torchrun gives every one of them) are one UserError, not torch's report from deep inside
    init_process_group or a run that trains as rank 1 of 1."""
    values = {}
    for name, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise UserError(f"{name}={text[:40]!r} is not an integer; RANK, LOCAL_RANK and WORLD_SIZE are set by "
                            "torchrun (or `gptforge train --nproc N`): unset them to train with one process") from None
    world = World(rank=values["RANK"], local_rank=values["LOCAL_RANK"], world_size=values["WORLD_SIZE"])
    if world.world_size < 1 or not 0 <= world.rank < world.world_size or world.local_rank < 0:
        raise UserError(f"RANK={world.rank}, LOCAL_RANK={world.local_rank}, WORLD_SIZE={world.world_size} is no "
                        "process of a launched run (0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0); unset them to train "
                        "with one process, or start several with torchrun (or `gptforge train --nproc N`)")
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if world.world_size > 1 and missing:
        verb = "is" if len(missing) == 1 else "are"
        raise UserError(f"WORLD_SIZE={world.world_size} but {', '.join(missing)} {verb} not set: a launcher did not "
                        "start this process; unset WORLD_SIZE to train with one process, or start several with "
                        "torchrun (or `gptforge train --nproc N`)")
    return world


def is_main_process() -> bool:
    """Rank 0 alone speaks for the run (errors, logs), so N processes do not print everything N times; a
    process whose RANK is not a launcher's speaks, to say so."""
    try:
        return world_from_env().rank == 0
    except UserError:
        return True


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
    if use_compile:
        check_compiler(device)
    return Runtime(device=device, precision=precision, strategy=strategy, compile=use_compile, rank=rank,
                   world_size=world_size)


def check_compiler(device: torch.device) -> None:
    """torch.compile builds C++ kernels on the CPU and a C launcher for Triton's GPU kernels: without a compiler
    installed, the first training step would fail deep inside inductor after the run folder exists. Asked here,
    with the lookup torch itself makes, it is one line before anything is written."""
    if device.type == "cpu":
        from torch._inductor import cpp_builder, exc

        try:
            found = cpp_builder.get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            found = None
        wanted = "a C++ compiler (g++ or clang++, or one named by $CXX)"
    else:
        names = (os.environ.get("CC"), "cc", "gcc", "clang")  # Triton's own search for its launcher's compiler
        found = next((name for name in names if name and shutil.which(name)), None)
        wanted = "a C compiler (cc, gcc or clang, or one named by $CC)"
    if found is None:
        raise UserError(f"--compile needs {wanted} and none is installed; install one (e.g. `apt install g++`) "
                        "or train without --compile (--no-compile)")


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
