"""A trained model ready for use (sampling, serving, export): its weights, tokenizer and the facts about it.

Every source (a run, a checkpoint file, a transformers folder, an exported Space) ends as this one record,
so sampling, the demo and the exporters never care where a model came from.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptforge.config import RunConfig
from gptforge.device import gpu_has_bf16
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import Tokenizer


@dataclass
class ModelFacts:
    """What a demo, a Space's README and facts.json say about a model.

    A source that does not know a fact leaves it None: a transformers folder has no step count, and a
    Space exported by an older gptforge may lack any of them.
    """

    preset: str = "custom"
    parameters: int | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    final_loss: float | None = None  # the training loss of the last step
    best_loss: float | None = None
    best_loss_split: str | None = None  # "val" or "train": which loss the trainer kept the best of
    tokenizer: str | None = None
    block_size: int | None = None
    checkpoint: str | None = None  # the file the weights came from, on this machine

    def to_dict(self) -> dict[str, Any]:
        """The known facts (facts.json's keys), leaving out unknown ones as older exports did."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> ModelFacts:
        """Facts read back from ``source`` (a facts.json); keys it lacks stay unknown, keys it has must have
        their type, so the demo never fails on a hand-edited file while showing the page."""
        if not isinstance(data, dict):
            raise UserError(f"{source} does not hold a JSON object of facts; export the Space again")
        types = typing.get_type_hints(cls)
        known = {}
        for name, expected in types.items():
            value = data.get(name)
            if float in typing.get_args(expected) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if value is not None and (isinstance(value, bool) or not isinstance(value, expected)):
                raise UserError(f"{source}: {name} {value!r} has the wrong type ({type(value).__name__}); "
                                "export the Space again")
            known[name] = value
        return cls(**{name: value for name, value in known.items() if value is not None})


@dataclass
class TrainedModel:
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    source: Path  # the file the weights came from
    facts: ModelFacts


def best_loss_label(facts: ModelFacts) -> str:
    """"best val loss" or "best train loss": which loss the trainer kept the best of."""
    return f"best {facts.best_loss_split} loss" if facts.best_loss_split else "best loss"


def autocast_for(model: GPT) -> torch.autocast | None:
    """bf16 autocast for inference on GPUs that have it; None means plain fp32."""
    device = model.lm_head.weight.device
    if device.type == "cuda" and gpu_has_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None
