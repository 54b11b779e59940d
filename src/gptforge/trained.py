"""A trained model loaded for use (sampling, serving, export): its weights, tokenizer and the facts about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptforge.checkpoint import load_checkpoint, load_latest
from gptforge.config import RunConfig
from gptforge.device import resolve_device
from gptforge.errors import UserError
from gptforge.model import GPT, count_parameters
from gptforge.tokenizer import Tokenizer, tokenizer_from_dict


@dataclass
class TrainedModel:
    model: GPT
    tokenizer: Tokenizer
    config: RunConfig
    source: Path  # the checkpoint file it came from
    facts: dict[str, Any]  # preset, parameters, steps, losses: what a demo or summary shows


def load_trained(run: str | Path | None = None, checkpoint: str | Path | None = None, device: str = "auto",
                 tokenizer_file: str | None = None, hf: str | Path | None = None) -> TrainedModel:
    """Load the newest good checkpoint of `run`, the file `checkpoint`, or the transformers GPT-2 folder `hf`,
    ready for inference on `device`."""
    if sum(source is not None for source in (run, checkpoint, hf)) != 1:
        raise UserError("pass exactly one of --run DIR, --checkpoint FILE or --hf DIR")
    if hf is not None:
        from gptforge.hf import load_hf_folder  # gptforge.hf imports this module

        return load_hf_folder(hf, device=device, tokenizer_file=tokenizer_file)
    if run is not None:
        state, path, _ = load_latest(run)
    else:
        path = Path(checkpoint)
        state = load_checkpoint(path)
    try:
        config = RunConfig.from_dict(state["config"])
        tokenizer = tokenizer_from_dict(state["tokenizer"], bpe_file=tokenizer_file)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a gptforge training checkpoint (missing {exc})") from None
    model = GPT(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise UserError(f"the weights in {path} do not fit its config: {first_line}") from None
    model.to(resolve_device(device)).eval()
    facts = {
        "preset": config.preset,
        "parameters": count_parameters(model).total,
        "steps": state.get("step", 0),
        "tokens_seen": state.get("tokens_seen", 0),
        "final_loss": state.get("last_loss"),
        "best_loss": state.get("best_loss"),
        "tokenizer": tokenizer.name,
        "block_size": config.model.block_size,
        "checkpoint": str(path),
    }
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=path, facts=facts)


def autocast_for(model: GPT) -> torch.autocast | None:
    """bf16 autocast for inference on GPUs that have it; None means plain fp32."""
    device = model.lm_head.weight.device
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None
