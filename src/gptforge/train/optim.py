"""AdamW with GPT-2's weight-decay split (or Muon for the hidden matrices), and learning-rate schedules
as pure functions of the step.

Schedules are plain functions of the step (not ``torch.optim.lr_scheduler`` objects) so a resumed
run gets exactly the same learning rate from the step number alone, with no scheduler state to save.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from gptforge.config import MUON_FSDP_ERROR, TrainConfig, UnknownChoice, choices_of, muon_available
from gptforge.errors import UserError
from gptforge.train.distributed import is_sharded

MUON_MIN_TORCH = "2.9"
# what config.py declares, read once: learning_rate_at runs every step
OPTIMIZERS = choices_of(TrainConfig, "optimizer")
SCHEDULES = choices_of(TrainConfig, "schedule")
# the blocks live under this prefix (model.py); their 2-D weights are the "hidden matrices" Muon takes
HIDDEN_PREFIX = "transformer.h."


def param_groups(model: torch.nn.Module, weight_decay: float,
                 exclude: frozenset[torch.nn.Parameter] = frozenset()) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Decaying matmul weights and embeddings regularises the model; decaying biases and LayerNorm
    gains only pulls them towards zero for no benefit, so GPT-2 (and nanoGPT) leave them alone.
    ``named_parameters`` yields a tied tensor (``lm_head.weight`` is ``transformer.wte.weight``) once,
    so the optimizer never steps it twice. Empty groups are left out, and so are the ``exclude``d
    parameters (another optimizer's).
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad or parameter in exclude:
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


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The transformer blocks' 2-D weights (attention and MLP projections): what Muon orthogonalises.

    Embeddings (and the head tied to them) stay with AdamW: their rows are looked up one token at a
    time, not applied as a linear map, so an orthogonalised update has no meaning for them.
    """
    return [parameter for name, parameter in model.named_parameters()
            if name.startswith(HIDDEN_PREFIX) and parameter.dim() == 2 and parameter.requires_grad]


def check_optimizer(optimizer: str, sharded: bool) -> None:
    """Refuse what cannot run, before a run directory exists: Muon is PyTorch's own from torch 2.9, and
    it orthogonalises whole matrices, which FSDP's shards are not."""
    if optimizer not in OPTIMIZERS:
        raise UnknownChoice("optimizer", optimizer, OPTIMIZERS)
    if optimizer != "muon":
        return
    if not muon_available():
        raise UserError(f"--optimizer muon needs torch >= {MUON_MIN_TORCH} (torch.optim.Muon); this is torch "
                        f"{torch.__version__}: upgrade torch or use --optimizer adamw")
    if sharded:
        raise UserError(MUON_FSDP_ERROR)


class MuonWithAdamW:
    """Muon for the hidden matrices and AdamW for everything else, stepped as one optimizer.

    The trainer, the loss scaler and the checkpoints see one object: ``param_groups`` lists AdamW's
    groups then Muon's (the same dicts, so setting a group's ``lr`` reaches the optimizer that owns it)
    and ``state_dict`` has a single optimizer's layout, parameters numbered across both in that order.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer) -> None:
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def _adamw_size(self) -> int:
        return sum(len(group["params"]) for group in self.adamw.param_groups)

    def state_dict(self) -> dict[str, Any]:
        first, second = self.adamw.state_dict(), self.muon.state_dict()
        offset = self._adamw_size()
        state = {**first["state"], **{index + offset: value for index, value in second["state"].items()}}
        groups = first["param_groups"] + [{**group, "params": [index + offset for index in group["params"]]}
                                          for group in second["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Split a ``state_dict`` back into the two optimizers; a plain AdamW's state is refused."""
        groups = state_dict["param_groups"]
        split = len(self.adamw.param_groups)
        if len(groups) != split + len(self.muon.param_groups):
            raise UserError("the checkpoint's optimizer state is not Muon with AdamW; resume with the "
                            "--optimizer the run was started with")
        offset = self._adamw_size()
        state = state_dict["state"]
        self.adamw.load_state_dict({"state": {index: value for index, value in state.items() if index < offset},
                                    "param_groups": groups[:split]})
        self.muon.load_state_dict({
            "state": {index - offset: value for index, value in state.items() if index >= offset},
            "param_groups": [{**group, "params": [index - offset for index in group["params"]]}
                             for group in groups[split:]]})


def build_optimizer(
    model: torch.nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
    eps: float = 1e-8,
    optimizer: str = "adamw",
) -> torch.optim.AdamW | MuonWithAdamW:
    """AdamW over ``param_groups`` (the fused kernel where ``use_fused_adamw`` says it pays), or with
    ``optimizer="muon"`` Muon for ``hidden_matrices`` and that AdamW for the rest.

    Muon scales its step with ``adjust_lr_fn="match_rms_adamw"`` (0.2 * sqrt(max(rows, cols))), so its
    updates have AdamW's RMS and one learning rate and schedule serve both, as Moonshot's paper shows.
    On a CPU, Muon is ``Float32Muon``: the same update with its iteration in float32.
    """
    # is_sharded imports FSDP (seconds on a CPU), so it is asked only when Muon needs the answer
    check_optimizer(optimizer, optimizer == "muon" and is_sharded(model))
    extra = {"fused": True} if use_fused_adamw(device_type) else {}
    if optimizer == "adamw":
        return torch.optim.AdamW(
            param_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=eps, **extra
        )
    hidden = hidden_matrices(model)
    adamw = torch.optim.AdamW(param_groups(model, weight_decay, exclude=frozenset(hidden)), lr=learning_rate,
                              betas=betas, eps=eps, **extra)
    # on a CPU the Newton–Schulz iteration runs in float32 (muon_fp32.py says why); elsewhere torch's own.
    # Imported here: the module subclasses torch.optim.Muon, which check_optimizer has just found.
    from gptforge.train.muon_fp32 import Float32Muon

    muon_class = Float32Muon if device_type == "cpu" else torch.optim.Muon
    muon = muon_class([{"params": hidden, "name": "muon"}], lr=learning_rate, weight_decay=weight_decay,
                      adjust_lr_fn="match_rms_adamw")
    return MuonWithAdamW(adamw, muon)


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

    Decaying schedules end at ``total_steps``: from there on the rate is ``min_lr``, even when warmup
    is as long as or longer than the whole schedule (the rate then rises until ``total_steps`` and drops
    to ``min_lr``), so a run resumed past its schedule's end always trains at the lowest rate.
    """
    if schedule not in SCHEDULES:
        raise UnknownChoice("schedule", schedule, SCHEDULES)
    if schedule != "constant" and step >= total_steps:
        return min_lr
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return max_lr
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


def stopped_in_warmup_warning(steps_done: int, warmup_steps: int, last_lr: float, peak_lr: float) -> str | None:
    """Why a run that a time budget, an epoch limit or a signal stopped before its warmup ended never trained at
    its peak rate, or None when its warmup was over (a --max-steps inside the warmup is warned of at the start)."""
    if steps_done >= warmup_steps:
        return None
    return (f"training stopped after {steps_done} steps, still in the learning rate's warmup of {warmup_steps} steps "
            f"(rate {last_lr:.2e} of its peak {peak_lr:.2e}); for a run this short (e.g. --time-budget) pass "
            f"--max-steps {steps_done} and --warmup-steps {max(1, steps_done // 10)}, so its schedule fits it")
