"""Loss and perplexity of a trained model on any text: every token of the chosen split is scored once.

Only the tokenizer's real tokens take part in the softmax (padded vocabulary rows are dropped), so the
figure equals what the same weights give in transformers after `gptforge export`.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from gptforge.data import check_corpus_size, load_tokens, recheck_corpus, split_tokens
from gptforge.errors import UserError
from gptforge.model import vocabulary_loss
from gptforge.token_store import ShardedTokens, is_store, open_store
from gptforge.trained_model import TrainedModel, autocast_for


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token, in nats
    perplexity: float
    tokens: int  # predicted tokens scored
    windows: int


def trained_corpus(trained: TrainedModel) -> str:
    """The text the model was trained on, by the absolute path its run recorded, so `eval --run R` finds it
    from any directory; shakespeare for models with no record (HF folders, older checkpoints)."""
    record = trained.config.corpus
    if record is None:
        return "shakespeare"
    if record.store:  # the manifest the run recorded, checked; the text it came from may be gone
        open_store(record.path, expected_sha256=record.sha256)
        return record.path
    recheck_corpus(
        record,
        gone="the corpus the model was trained on, {path}, is gone; pass --data to evaluate on other text",
        changed="the corpus the model was trained on, {path}, has changed since (sha256 {then}... then); "
                "pass --data {path} to evaluate on it as it is now",
    )
    return record.path


def own_val_fraction(trained: TrainedModel, split: str, asked: float | None) -> float:
    """The --val-fraction for evaluating a model on its own training corpus: the run's, so "val" is the text it
    held out. A run that held nothing out has no val split: its "val" loss would be on training text."""
    trained_with = trained.config.train.val_fraction
    if split == "val" and trained_with == 0 and trained.config.corpus is not None:
        raise UserError("the run had no val split (it trained with --val-fraction 0, on all of its corpus): a val "
                        "loss there would be on training text; pass --split train, or --data other text")
    if split == "val" and asked is not None and asked > trained_with:
        raise UserError(f"--val-fraction {asked} is more than the run's {trained_with}: the split would hold "
                        "training text; leave it out to use the run's")
    return asked if asked is not None else trained_with or DEFAULT_VAL_FRACTION


def choose_split(tokens: np.ndarray, split: str, val_fraction: float) -> np.ndarray:
    if split == "all":
        return tokens
    train_tokens, val_tokens = split_tokens(tokens, val_fraction)
    return val_tokens if split == "val" else train_tokens


def store_split(folder: str, trained: TrainedModel, split: str) -> ShardedTokens:
    """A token store's own split (its val documents were held out when it was prepared)."""
    store = open_store(folder)
    if store.tokenizer.get("name") != trained.tokenizer.name:
        raise UserError(f"the token store {folder} holds {store.tokenizer.get('name')} tokens; the model uses the "
                        f"{trained.tokenizer.name} tokenizer")
    return {"val": store.val, "train": store.train, "all": store.all_tokens}[split]


DEFAULT_VAL_FRACTION = 0.1  # other text than the run's own: its last tenth


@torch.no_grad()
def evaluate_text(trained: TrainedModel, data: str, split: str = "val", val_fraction: float = 0.1,
                  batch_size: int = 8, max_batches: int | None = None, progress: bool = True) -> EvalResult:
    """Score consecutive, non-overlapping windows of block_size tokens (the last partial one too)."""
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if max_batches is not None and max_batches <= 0:
        raise UserError(f"--max-batches must be positive, got {max_batches}")
    if split == "val" and not 0 < val_fraction < 1:
        raise UserError(f"--split val needs --val-fraction in (0, 1), got {val_fraction}")
    if is_store(data):
        tokens = store_split(data, trained, split)
    else:
        tokens, _ = load_tokens(data, trained.tokenizer, progress=progress)
        tokens = choose_split(tokens, split, val_fraction)
    check_corpus_size(tokens, 1, what=f"{split} split")
    block_size = trained.config.model.block_size
    full_windows = (len(tokens) - 1) // block_size
    batches = [(start, min(batch_size, full_windows - start // block_size), block_size)
               for start in range(0, full_windows * block_size, batch_size * block_size)]
    tail = len(tokens) - 1 - full_windows * block_size
    if tail:
        batches.append((full_windows * block_size, 1, tail))  # the last, shorter window
    batches = batches[:max_batches]
    model = trained.model
    device = model.lm_head.weight.device
    vocab_size = trained.tokenizer.vocab_size
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, unit="batch", disable=not (progress and sys.stderr.isatty()), leave=False)
    for start, count, length in bar:
        rows = np.asarray(tokens[start : start + count * length + 1], dtype=np.int64)
        x = torch.from_numpy(rows[:-1].reshape(count, length)).to(device)  # (B, T)
        y = torch.from_numpy(rows[1:].reshape(count, length)).to(device)  # (B, T)
        with autocast_for(model) or contextlib.nullcontext():
            logits, _ = model(x)
        total_loss += vocabulary_loss(logits, y, vocab_size, reduction="sum").item()
        total_tokens += y.numel()
        bar.set_postfix(loss=f"{total_loss / total_tokens:.4f}", refresh=False)
    mean = total_loss / total_tokens
    return EvalResult(loss=mean, perplexity=math.exp(mean), tokens=total_tokens,
                      windows=sum(count for _, count, _ in batches))
