"""gptforge's weights in transformers' GPT2LMHeadModel layout, and back.

The parameter names are the same on both sides; HF's Conv1D layers store their weights as (in, out), so
those four matrices per block are transposed. Our vocabulary may be padded for speed; an export drops
the padding, so transformers sees a standard vocab-size GPT-2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.fileio import safetensors_torch
from gptforge.model import GPT, TIED_LM_HEAD, TOKEN_EMBEDDING, meta_model

# Conv1D in transformers: y = x @ W with W (in, out); nn.Linear keeps (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers (the causal mask) that older transformers versions saved beside the weights.
NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias")
POSITIONS = "transformer.wpe.weight"


def hf_safetensors() -> Any:
    """safetensors' torch API for the Hugging Face format (an optional dependency: the hf extra)."""
    return safetensors_torch("the Hugging Face format", "pip install 'gptforge[hf]'")


def load_hf_state_dict(model: GPT, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy a transformers GPT-2 state dict into `model`, transposing Conv1D weights.

    The model's vocabulary may be larger (padded). The extra rows of the tied embedding get the mean of
    the real rows: a zero row would give those never-seen tokens logit 0, far above a trained GPT-2's
    typical logits, so they would take most of the probability and wreck the loss of a fine-tuning run.
    """
    ours = model.state_dict()
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(NOT_WEIGHTS)}
    hf_state.setdefault(TIED_LM_HEAD, hf_state.get(TOKEN_EMBEDDING))
    missing = sorted(set(ours) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(ours))
    if missing or unexpected:
        raise UserError(f"not a GPT-2 state dict matching this model: missing {missing[:4]}, "
                        f"unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name, target in ours.items():
            source = hf_state[name]
            if name.endswith(CONV1D_SUFFIXES):
                source = source.t()
            if name in (TOKEN_EMBEDDING, TIED_LM_HEAD) and source.shape[0] < target.shape[0]:
                target[: source.shape[0]].copy_(source)
                target[source.shape[0]:].copy_(source.mean(dim=0))
                continue
            if source.shape != target.shape:
                raise UserError(f"shape mismatch for {name}: checkpoint {tuple(source.shape)}, "
                                f"model {tuple(target.shape)}")
            target.copy_(source)


def to_hf_state_dict(model: GPT, vocab_size: int) -> dict[str, torch.Tensor]:
    """`model`'s weights as GPT2LMHeadModel holds them: Conv1D-transposed, `vocab_size` rows, biases.

    A model built with bias=False gets zero biases, which compute the same function, because
    GPT-2 always has them. lm_head is left out: it is the token embedding.
    """
    ours = model.state_dict()
    dtype = model.transformer.wte.weight.dtype
    hf_state = {}
    for name, shape_only in meta_model(dataclasses.replace(model.config, bias=True)).state_dict().items():
        if name == TIED_LM_HEAD:
            continue
        tensor = ours[name].detach().cpu() if name in ours else torch.zeros(shape_only.shape, dtype=dtype)
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        if name == TOKEN_EMBEDDING:
            tensor = tensor[:vocab_size]
        hf_state[name] = tensor.clone(memory_format=torch.contiguous_format)  # safetensors refuses views
    return hf_state


def hf_shapes(shape: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a transformers GPT-2 of this shape stores, computed without allocating it."""
    return {name: tuple(tensor.t().shape if name.endswith(CONV1D_SUFFIXES) else tensor.shape)
            for name, tensor in meta_model(shape).state_dict().items() if name != TIED_LM_HEAD}
