"""`gptforge export --format hf`: a folder transformers loads as GPT2LMHeadModel, with its tokenizer.

Written to a hidden folder beside the target and moved into place at the end, like every export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptforge.config import GPTConfig
from gptforge.fileio import write_json, write_new_folder, write_safetensors
from gptforge.interop.hf_read import CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_FILE
from gptforge.interop.hf_tokenizer import write_hf_tokenizer
from gptforge.interop.hf_weights import hf_safetensors, to_hf_state_dict
from gptforge.interop.model_card import CARD_FILE, model_card
from gptforge.tokenizer import save_tokenizer
from gptforge.trained_model import TrainedModel


def hf_config(model_config: GPTConfig, vocab_size: int, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json as transformers' GPT2Config writes it, for this model with its unpadded vocabulary."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": model_config.block_size,
        "n_ctx": model_config.block_size,
        "n_embd": model_config.n_embd,
        "n_layer": model_config.n_layer,
        "n_head": model_config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": model_config.dropout,
        "embd_pdrop": model_config.dropout,
        "attn_pdrop": model_config.dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _write_hf(trained: TrainedModel, folder: Path) -> None:
    tokenizer, model = trained.tokenizer, trained.model
    dtype = model.transformer.wte.weight.dtype
    write_safetensors(folder / SAFETENSORS_FILE, to_hf_state_dict(model, tokenizer.vocab_size), hf_safetensors())
    write_json(folder / CONFIG_FILE, hf_config(model.config, tokenizer.vocab_size, tokenizer.eot_id, dtype))
    write_json(folder / "generation_config.json", {"_from_model_config": True, "bos_token_id": tokenizer.eot_id,
                                                   "eos_token_id": tokenizer.eot_id})
    write_hf_tokenizer(tokenizer, folder, model.config.block_size)
    save_tokenizer(tokenizer, folder / TOKENIZER_FILE)  # what `--hf DIR` rebuilds gptforge's tokenizer from
    (folder / CARD_FILE).write_text(model_card(trained), encoding="utf-8")  # the hub page `--push-to-hub` shows


def export_hf(trained: TrainedModel, out: str | Path) -> None:
    """Write `out` as a folder `GPT2LMHeadModel.from_pretrained` and `AutoTokenizer.from_pretrained` load.

    Files are written to a hidden folder beside `out` and moved into place at the end, so a failed
    export leaves nothing half-written.
    """
    write_new_folder(Path(out), lambda staging: _write_hf(trained, staging), "the model")
