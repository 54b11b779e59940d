"""`train --init-from hf:DIR`: a new run that starts from a transformers GPT-2's weights (fine-tuning)."""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import GPT2_VOCAB_SIZE, RunConfig
from gptforge.errors import UserError
from gptforge.interop.hf_read import HFCheckpoint, read_hf_folder
from gptforge.interop.hub import fetch_model, is_hub_name
from gptforge.tokenizer import Tokenizer

INIT_PREFIX = "hf:"


@dataclass
class FineTuneInit:
    """The checkpoint a new run starts from, and what the run's config took from it (for the log)."""

    checkpoint: HFCheckpoint
    notes: list[str]

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """The run's tokenizer must be the one the checkpoint was trained with, or every id means another token."""
        vocab = self.checkpoint.shape.vocab_size
        if vocab != tokenizer.vocab_size:
            hint = "train with --tokenizer gpt2" if vocab == GPT2_VOCAB_SIZE else "use the tokenizer it learned"
            raise UserError(f"{self.checkpoint.config_file} has a vocabulary of {vocab:,} tokens but this run's "
                            f"{tokenizer.name} tokenizer has {tokenizer.vocab_size:,}; {hint}")
        saved = self.checkpoint.tokenizer
        if saved is not None and saved != tokenizer.to_dict():
            raise UserError(f"{self.checkpoint.tokenizer_file} describes another tokenizer than this "
                            f"run's {tokenizer.name} tokenizer (for char: another corpus' characters)")


def prepare_init(config: RunConfig) -> FineTuneInit | None:
    """For init hf:DIR (or hf:NAME, a hub model fetched into huggingface_hub's cache when no folder NAME is
    here), read it and give the run its model shape; None for a run from scratch.

    Called before anything is created, so a bad folder leaves nothing behind. The run keeps its own
    dropout and may use fewer positions (a smaller --block-size crops the position embeddings).
    """
    if not config.train.init.startswith(INIT_PREFIX):
        return None
    source = config.train.init[len(INIT_PREFIX):]
    checkpoint = read_hf_folder(fetch_model(source) if is_hub_name(source) else source)
    model, shape = config.model, checkpoint.shape
    adopted = {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd, "bias": True,
               "block_size": min(model.block_size, shape.block_size)}
    changed = [f"{key} {getattr(model, key)} -> {value}" for key, value in adopted.items()
               if getattr(model, key) != value]
    for key, value in adopted.items():
        setattr(model, key, value)
    notes = [f"init: fine-tuning {checkpoint.weights_file}; model shape from {checkpoint.config_file}"
             + (f" (replaces the run's {', '.join(changed)})" if changed else "")]
    if model.block_size < shape.block_size:
        notes.append(f"init: block_size {model.block_size}: position embeddings cropped from {shape.block_size}")
    return FineTuneInit(checkpoint=checkpoint, notes=notes)
