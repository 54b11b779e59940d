"""One loader for every place a trained model lives: a run, a checkpoint file, a transformers folder, a Space.

Each command that reads a model (sample, chat, eval, serve, export) and a Space's own app.py call
``load_trained``, so they all accept the same sources and describe a model with the same facts. The
formats of a transformers folder and of a Space are read by their modules in ``gptforge.interop``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from gptforge.checkpoint_entries import USE_ENTRIES
from gptforge.config import RunConfig
from gptforge.device import resolve_device
from gptforge.errors import UserError
from gptforge.interop.hf_read import load_hf_folder
from gptforge.interop.space import load_space
from gptforge.model import GPT, count_parameters
from gptforge.run_dir import RunDir, load_checkpoint_file
from gptforge.sizing import check_fits, inference_memory
from gptforge.tokenizer import tokenizer_from_dict
from gptforge.trained_model import ModelFacts, TrainedModel


def load_trained(run: str | Path | None = None, checkpoint: str | Path | None = None, device: str = "auto",
                 tokenizer_file: str | None = None, hf: str | Path | None = None,
                 space: str | Path | None = None) -> TrainedModel:
    """The newest good checkpoint of `run`, the file `checkpoint`, the transformers GPT-2 folder `hf` or the
    exported Space folder `space`, ready for inference on `device`; `tokenizer_file` helps GPT-2's
    tokenizer load offline."""
    if sum(source is not None for source in (run, checkpoint, hf, space)) != 1:
        raise UserError("pass exactly one of --run DIR, --checkpoint FILE or --hf DIR (or, from Python, space=DIR)")
    if hf is not None:
        return load_hf_folder(hf, device=device, tokenizer_file=tokenizer_file)
    if space is not None:
        return load_space(space, device=device, tokenizer_file=tokenizer_file)
    if run is not None:
        state, path, skipped = RunDir(Path(run)).load_latest(required=USE_ENTRIES)
        for warning in skipped:  # an older checkpoint is used: say which file was passed over, and why
            print(f"warning: {warning}", file=sys.stderr)
    else:
        path = Path(checkpoint)
        state = load_checkpoint_file(path, required=USE_ENTRIES)
    return _from_checkpoint(state, path, device, tokenizer_file)


def recorded_tokenizer_file(config: RunConfig) -> str | None:
    """The --tokenizer-file the run was trained with, while that file is still there."""
    recorded = config.train.tokenizer_file
    return recorded if recorded is not None and Path(recorded).expanduser().is_file() else None


def _from_checkpoint(state: dict[str, Any], path: Path, device: str, tokenizer_file: str | None) -> TrainedModel:
    try:
        config = RunConfig.from_dict(state["config"])
        bpe_file = tokenizer_file if tokenizer_file is not None else recorded_tokenizer_file(config)
        tokenizer = tokenizer_from_dict(state["tokenizer"], bpe_file=bpe_file)
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
    facts = ModelFacts(
        preset=config.preset,
        parameters=count_parameters(model).total,
        steps=state.get("step", 0),
        tokens_seen=state.get("tokens_seen", 0),
        final_loss=state.get("last_loss"),
        best_loss=state.get("best_loss"),
        best_loss_split=state.get("best_loss_split") or _guess_best_loss_split(config),
        tokenizer=tokenizer.name,
        block_size=config.model.block_size,
        checkpoint=str(path),
    )
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=path, facts=facts)


def _guess_best_loss_split(config: RunConfig) -> str:
    """For checkpoints written before the trainer recorded it: a run that evaluates on a val split keeps
    the best val loss, any other the best training loss."""
    return "val" if config.train.val_fraction > 0 and config.train.eval_interval > 0 else "train"


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
