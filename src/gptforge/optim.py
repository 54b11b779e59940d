"""AdamW with GPT-2's weight-decay split, and learning-rate schedules as pure functions of the step.

Schedules are plain functions of the step (not ``torch.optim.lr_scheduler`` objects) so a resumed
run gets exactly the same learning rate from the step number alone, with no scheduler state to save.
"""

from __future__ import annotations

import inspect
import math

import torch

from gptforge.errors import UserError

SCHEDULES = ("cosine", "constant", "onecycle")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Decaying matmul weights and embeddings regularises the model; decaying biases and LayerNorm
    gains only pulls them towards zero for no benefit, so GPT-2 (and nanoGPT) leave them alone.
    ``named_parameters`` yields a tied tensor (``lm_head.weight`` is ``transformer.wte.weight``) once,
    so the optimizer never steps it twice. Empty groups are left out.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [group for group in groups if group["params"]]


def adamw_accepts_fused() -> bool:
    """Whether this torch build's AdamW has the ``fused`` option (added in torch 2.0)."""
    return "fused" in inspect.signature(torch.optim.AdamW).parameters


def use_fused_adamw(device_type: str) -> bool:
    """Fused AdamW runs the whole update in one CUDA kernel, noticeably faster for big models.

    Only chosen on CUDA, where it is mature; elsewhere torch's default implementation is used.
    """
    return device_type == "cuda" and adamw_accepts_fused()


def build_optimizer(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused kernel where ``use_fused_adamw`` says it pays."""
    extra = {"fused": True} if use_fused_adamw(device_type) else {}
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps, **extra
    )


def learning_rate_at(
    step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int, schedule: str
) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    All schedules share a linear warmup, ``max_lr * (step + 1) / warmup_steps``, so the very first
    step already learns. After warmup:

    - ``cosine``: half a cosine from ``max_lr`` (at ``warmup_steps``) to ``min_lr`` (at ``total_steps``);
    - ``constant``: ``max_lr`` forever;
    - ``onecycle``: a straight line from ``max_lr`` (at ``warmup_steps``) to ``min_lr`` (at
      ``total_steps``), i.e. a triangular one-cycle with linear annealing.

    Decaying schedules stay at ``min_lr`` from ``total_steps`` on, including when warmup is as long
    as or longer than the whole schedule.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return max_lr
    if step >= total_steps:
        return min_lr
    # Here warmup_steps <= step < total_steps, so the span below is at least 1.
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if schedule == "cosine":
        return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max_lr + (min_lr - max_lr) * progress


# Warmup longer than this share of the run leaves too few steps at the peak rate to be what a user meant.
WARMUP_SHARE_LIMIT = 0.25


def warmup_warning(warmup_steps: int, max_steps: int) -> str | None:
    """Why this warmup does not fit a run of `max_steps` (the default 100 steps in a 60-step run never
    reaches the peak rate), or None when it fits."""
    if warmup_steps <= WARMUP_SHARE_LIMIT * max_steps:
        return None
    suggestion = f"pass --warmup-steps {max(1, max_steps // 10)} (a tenth of the run) or fewer"
    if warmup_steps > max_steps:
        return (f"the learning rate never reaches its peak: warmup is {warmup_steps} steps and the run "
                f"{max_steps}; {suggestion}")
    return (f"warmup takes {warmup_steps} of the run's {max_steps} steps ({warmup_steps / max_steps:.0%}), "
            f"so little of it trains at the peak rate; {suggestion}")
