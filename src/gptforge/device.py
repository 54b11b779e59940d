"""Which device and precision a run uses, decided once and explained to the user."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gptforge.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
