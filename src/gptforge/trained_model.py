"""A trained model loaded for use (sampling, serving, export): its weights, tokenizer and the facts about it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptforge.config import RunConfig
from gptforge.device import gpu_has_bf16, resolve_device
from gptforge.errors import UserError
from gptforge.model import GPT, count_parameters
from gptforge.run_dir import RunDir, load_checkpoint_file
from gptforge.sizing import check_fits, inference_memory
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
        from gptforge.interop.hf import load_hf_folder  # gptforge.interop.hf imports this module

        return load_hf_folder(hf, device=device, tokenizer_file=tokenizer_file)
    if run is not None:
        state, path, skipped = RunDir(Path(run)).load_latest()
        for warning in skipped:  # an older checkpoint is used: say which file was passed over, and why
            print(f"warning: {warning}", file=sys.stderr)
    else:
        path = Path(checkpoint)
        state = load_checkpoint_file(path)
    try:
        config = RunConfig.from_dict(state["config"])
        tokenizer = tokenizer_from_dict(state["tokenizer"], bpe_file=tokenizer_file)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a gptforge training checkpoint (missing {exc})") from None
    target = resolve_device(device)
    check_fits(inference_memory(config.model), target, f"the model in {path}",
               "its config asks for more than this machine has (is the file from this model?)")
    model = GPT(config.model)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, AttributeError):  # AttributeError: "model" is not a mapping of tensors
        mismatch = weights_mismatch(model, state["model"])
        raise UserError(f"the weights in {path} do not fit its config ({mismatch})") from None
    model.to(target).eval()
    facts = {
        "preset": config.preset,
        "parameters": count_parameters(model).total,
        "steps": state.get("step", 0),
        "tokens_seen": state.get("tokens_seen", 0),
        "final_loss": state.get("last_loss"),
        "best_loss": state.get("best_loss"),
        # the trainer keeps the best val loss when the run evaluates on a val split, else the best training loss
        "best_loss_split": "val" if config.train.val_fraction > 0 and config.train.eval_interval > 0 else "train",
        "tokenizer": tokenizer.name,
        "block_size": config.model.block_size,
        "checkpoint": str(path),
    }
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=path, facts=facts)


def best_loss_label(facts: dict[str, Any]) -> str:
    """"best val loss" or "best train loss": which loss the trainer kept the best of."""
    split = facts.get("best_loss_split")
    return f"best {split} loss" if split else "best loss"


def weights_mismatch(model: torch.nn.Module, weights: Any) -> str:
    """The first difference between a model's tensors and a checkpoint's, named, for a one-line error
    (torch's own message starts with a line that names nothing)."""
    if not isinstance(weights, dict):
        return f"the weights are a {type(weights).__name__}, not a dict of tensors"
    expected = model.state_dict()
    for name, tensor in expected.items():
        found = weights.get(name)
        if not isinstance(found, torch.Tensor):
            return f"{name} is missing"
        if found.shape != tensor.shape:
            return f"{name} is {tuple(found.shape)} in the checkpoint but {tuple(tensor.shape)} for its config"
    extra = sorted(set(weights) - set(expected))
    return f"unexpected tensors {extra[:3]}" if extra else "the tensors do not load"


def autocast_for(model: GPT) -> torch.autocast | None:
    """bf16 autocast for inference on GPUs that have it; None means plain fp32."""
    device = model.lm_head.weight.device
    if device.type == "cuda" and gpu_has_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None
