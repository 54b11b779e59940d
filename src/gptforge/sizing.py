"""How big a model is and how much memory it will take, from its config alone, before anything is built.

A flag such as ``--n-embd 65536`` or ``--batch-size 1000000000``, or a small checkpoint whose stored
config says as much, would otherwise allocate tens of GB (or hang the machine swapping) before
anything noticed. The figures here are lower bounds: weights, gradients and AdamW's two moments in
fp32, the activations a backward pass must keep, and the KV cache of generation. A run that needs
more than them may still run out later; a run refused here could never have fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError

GIB = 2**30
FP32 = 4
OPTIMIZER_BYTES_PER_PARAMETER = 4 * FP32  # weights, gradients and AdamW's two moments
STATE_BYTES_PER_PARAMETER = 3 * FP32  # what a checkpoint keeps: weights and AdamW's two moments
ACTIVATIONS_PER_LAYER = 16  # tensors of width n_embd per token a block keeps for backward (qkv, MLP, norms...)


def block_parameters(model: GPTConfig) -> int:
    """Parameters of one transformer block: two LayerNorms, attention (qkv and projection), the MLP."""
    width, bias = model.n_embd, int(model.bias)
    norms = 2 * width * (1 + bias)
    attention = width * 3 * width + bias * 3 * width + width * width + bias * width
    mlp = width * 4 * width + bias * 4 * width + 4 * width * width + bias * width
    return norms + attention + mlp


def parameter_count(model: GPTConfig) -> int:
    """Unique parameters (the output layer is tied to the token embedding), without building anything."""
    embeddings = (model.vocab_size + model.block_size) * model.n_embd
    final_norm = model.n_embd * (1 + int(model.bias))
    return embeddings + model.n_layer * block_parameters(model) + final_norm


@dataclass
class MemoryEstimate:
    """Bytes by purpose; `total` is what is compared with the device's memory."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = ", ".join(f"{name} {size / GIB:,.1f}" for name, size in self.parts.items() if size)
        return f"{self.total / GIB:,.1f} GiB ({shown})"


def training_memory(model: GPTConfig, batch_size: int, shards: int = 1, loss_chunks: int = 1,
                    activation_bytes: int = FP32) -> MemoryEstimate:
    """One process's memory for a training step: its share of the optimizer state and its activations, of
    `activation_bytes` each (2 under bf16 / fp16 autocast: counting them as fp32 would refuse batches that fit),
    and the logits one `--loss-chunks` chunk at a time (fp32: the loss upcasts them)."""
    tokens = batch_size * model.block_size
    return MemoryEstimate({
        "weights, gradients and optimizer state": parameter_count(model) * OPTIMIZER_BYTES_PER_PARAMETER // shards,
        "activations": tokens * model.n_layer * ACTIVATIONS_PER_LAYER * model.n_embd * activation_bytes,
        "logits": 2 * -(-tokens // loss_chunks) * model.vocab_size * FP32,  # the logits and their gradient
    })


def inference_memory(model: GPTConfig, batch_size: int = 1, weights: bool = True) -> MemoryEstimate:
    """Memory to generate `batch_size` sequences with a KV cache of the full context, and to load the
    weights unless they are in memory already."""
    return MemoryEstimate({
        "weights": parameter_count(model) * FP32 * weights,
        "KV cache": 2 * model.n_layer * batch_size * model.block_size * model.n_embd * FP32,
        "logits": batch_size * model.vocab_size * FP32,
    })


def device_memory_bytes(device: torch.device) -> int | None:
    """What `device` can still allocate: free GPU memory, or the host's MemAvailable (None: unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        return available_memory_bytes()
    return None


def check_fits(estimate: MemoryEstimate, device: torch.device, what: str, hint: str) -> None:
    """Refuse, in one line naming the numbers, what cannot fit in the memory `device` has left."""
    available = device_memory_bytes(device)
    if available is not None and estimate.total > available:
        raise UserError(f"{what} needs at least {estimate.describe()} but {device} has "
                        f"{available / GIB:,.1f} GiB available; {hint}")


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
