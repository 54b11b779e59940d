"""Weights in Hugging Face transformers' GPT2LMHeadModel layout, to and from gptforge's GPT.

The names are the same on both sides; HF's Conv1D layers store their weights as (in, out), so those
four matrices per block are transposed. The vocabulary may be padded on our side.
"""

from __future__ import annotations

import torch

from gptforge.errors import UserError
from gptforge.model import GPT

# Conv1D in transformers: y = x @ W with W (in, out); nn.Linear keeps (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf_state_dict(model: GPT, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy a transformers GPT-2 state dict into `model`, transposing Conv1D weights.

    The model's vocabulary may be larger (padded): the extra rows of the tied embedding are zeroed.
    """
    ours = model.state_dict()
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    hf_state.setdefault("lm_head.weight", hf_state.get("transformer.wte.weight"))
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
            if name in ("transformer.wte.weight", "lm_head.weight") and source.shape[0] < target.shape[0]:
                target.zero_()
                target[: source.shape[0]].copy_(source)
                continue
            if source.shape != target.shape:
                raise UserError(f"shape mismatch for {name}: checkpoint {tuple(source.shape)}, "
                                f"model {tuple(target.shape)}")
            target.copy_(source)
