"""Muon with its Newton–Schulz iteration in float32, for CPUs.

``torch.optim.Muon`` orthogonalises every update in bfloat16, which suits a GPU's tensor cores. Most CPUs
have no native bfloat16 matrix multiply (no AVX512-BF16 or AMX): there torch emulates it, and on a 2-core
AVX2 machine a 384 x 1536 product takes 21.6 ms in bfloat16 against 2.7 ms in float32, which made the CPU
recipe's Muon steps 16 times slower than AdamW's. This subclass keeps torch's Muon (its arguments, its
state layout, so checkpoints load in either) and replaces only ``step``, running the same update with the
iteration in float32: more precise and, on a CPU, faster.
"""

from __future__ import annotations

import math

import torch


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's quintic Newton–Schulz iteration on ``update`` (2-D) in its own dtype: ``X <- aX + (bA + cA^2)X``
    with ``A = X X^T``, on the wide orientation, after scaling the Frobenius norm (so the spectral norm) to 1."""
    a, b, c = coefficients
    tall = update.size(0) > update.size(1)
    x = update.T if tall else update
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def scaled_learning_rate(learning_rate: float, rule: str | None, shape: torch.Size) -> float:
    """The per-matrix learning rate of torch's ``adjust_lr_fn``: ``match_rms_adamw`` gives the update AdamW's
    RMS (0.2 * sqrt(max(rows, cols))); ``original`` (torch's default, None) Keller Jordan's
    sqrt(max(1, rows / cols))."""
    rows, cols = shape[:2]
    if rule == "match_rms_adamw":
        return learning_rate * 0.2 * math.sqrt(max(rows, cols))
    return learning_rate * math.sqrt(max(1.0, rows / cols))


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose Newton–Schulz iteration runs in float32 (see the module's docstring)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = parameter.grad
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update.float(), group["ns_coefficients"], group["ns_steps"], group["eps"])
                parameter.mul_(1 - group["lr"] * group["weight_decay"])
                parameter.add_(update.to(parameter.dtype),
                               alpha=-scaled_learning_rate(group["lr"], group["adjust_lr_fn"], parameter.shape))
        return loss
