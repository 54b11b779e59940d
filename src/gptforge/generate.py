"""Sampling from a trained GPT: prefill the prompt once, then decode one token at a time with a KV cache.

Small functions in the spirit of gpt-fast: `sample_next` picks tokens from logits, `prefill` and
`decode_one_token` run the model, `generate_ids` drives them, and `stream_text` turns ids into text
as it is produced without ever printing half of a multi-byte character.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import Tokenizer

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingSettings:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = 200
    top_p: float | None = None
    seed: int | None = None
    stop: str | None = None  # stop once this text appears in the output
    stop_at_eot: bool = True  # stop at the end-of-text token
    use_cache: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be zero or more, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:  # also refuses NaN, which every comparison fails
            raise UserError(f"temperature must be a finite number, zero or more, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise UserError(f"top_k must be positive, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise UserError(f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {self.seed}")


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row; the rest become -inf."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities add up to at least p (nucleus sampling)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the tokens ranked above it already reach p; the top token always stays, also when p
    # is below the dtype's smallest number (2.2e-251 is 0 in float32, and 0 >= 0 would drop every token)
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, settings: SamplingSettings,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from the last position's logits (B, V)."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float()
    # Softmax does not change when the row's maximum is subtracted, and afterwards no division overflows
    # to +inf. A temperature outside float32's range is clamped into it: below it (1e-310) it would be 0, and
    # 0/0 = NaN; above it (1e300) it would be inf, and a padded row's -inf/inf = NaN. So a tiny temperature
    # samples like greedy and a huge one uniformly, instead of failing on NaN probabilities.
    finfo = torch.finfo(torch.float32)
    temperature = min(max(settings.temperature, finfo.tiny), finfo.max)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if settings.top_k is not None:
        logits = filter_top_k(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        logits = filter_top_p(logits, settings.top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


def prefill(model: GPT, idx: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Run the whole prompt (B, T) once, filling the cache; return the last position's logits (B, V)."""
    if use_cache:
        model.setup_kv_cache(batch_size=idx.size(0))
    logits, _ = model(idx, last_only=True)
    if not torch.isfinite(logits).all():
        # weights that diverged in training (still finite numbers, e.g. after a far too high learning
        # rate) give NaN here; sampling would fail obscurely, and greedy decoding would print garbage
        raise UserError("the model's outputs are NaN or infinite: its weights have diverged; sample from an "
                        "earlier checkpoint, or retrain with a lower --learning-rate")
    return logits[:, -1, :]


def decode_one_token(model: GPT, token: torch.Tensor, position: int) -> torch.Tensor:
    """Feed one new token (B, 1) at `position` through the cached model; logits (B, V)."""
    logits, _ = model(token, start=position, last_only=True)
    return logits[:, -1, :]


@torch.no_grad()
def generate_ids(model: GPT, prompt: list[int], settings: SamplingSettings, vocab_size: int,
                 num_samples: int = 1) -> Iterator[torch.Tensor]:
    """Yield the next token of each sample, (num_samples,), for up to max_new_tokens steps.

    Logits of padded vocabulary rows (ids >= vocab_size) are never sampled. Prompts longer than the
    context keep their last block_size tokens; past the context the window slides by a quarter of it
    and the cache is rebuilt, so generation can go on indefinitely.
    """
    settings.validate()
    if not prompt:
        raise UserError("the prompt is empty and the tokenizer has no start token")
    block_size = model.config.block_size
    device = model.lm_head.weight.device
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    was_training = model.training
    model.eval()
    context = torch.tensor(prompt[-block_size:], dtype=torch.long, device=device).repeat(num_samples, 1)
    try:
        logits = prefill(model, context, settings.use_cache)
        for _ in range(settings.max_new_tokens):
            logits[:, vocab_size:] = float("-inf")
            token = sample_next(logits, settings, generator)  # (B, 1)
            yield token[:, 0]
            context = torch.cat([context, token], dim=1)
            if context.size(1) > block_size:
                context = context[:, -(block_size - block_size // 4):]
                logits = prefill(model, context, settings.use_cache)
            elif settings.use_cache:
                logits = decode_one_token(model, token, context.size(1) - 1)
            else:
                logits = prefill(model, context, use_cache=False)
    finally:
        model.clear_kv_cache()
        model.train(was_training)


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: str, settings: SamplingSettings) -> Iterator[str]:
    """Yield pieces of generated text as they are produced (one sample).

    BPE tokens can end in the middle of a UTF-8 character; such pieces are held back until the
    character is complete, and so is any tail that could be the start of the stop string. Stops at
    the end-of-text token or the stop string (which is not included).
    """
    prompt_ids = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    hold = len(settings.stop) - 1 if settings.stop else 0
    pending: list[int] = []
    text, emitted = "", 0
    for token in generate_ids(model, prompt_ids, settings, tokenizer.vocab_size):
        token_id = int(token[0])
        if settings.stop_at_eot and token_id == tokenizer.eot_id:
            break
        pending.append(token_id)
        piece = tokenizer.decode(pending)
        if piece.endswith("\ufffd"):
            continue  # an incomplete multi-byte character: wait for the rest
        pending.clear()
        text += piece
        if settings.stop and settings.stop in text:
            break
        if len(text) - hold > emitted:
            yield text[emitted : len(text) - hold]
            emitted = len(text) - hold
    text += tokenizer.decode(pending) if pending else ""
    if settings.stop:
        text = text.split(settings.stop, 1)[0]
    if len(text) > emitted:
        yield text[emitted:]


def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, settings: SamplingSettings,
                  num_samples: int = 1) -> list[str]:
    """Complete `prompt` num_samples times in one batch; each result is the new text only."""
    prompt_ids = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    finished = [False] * num_samples
    for tokens in generate_ids(model, prompt_ids, settings, tokenizer.vocab_size, num_samples):
        for row, token_id in enumerate(tokens.tolist()):
            if finished[row]:
                continue
            if settings.stop_at_eot and token_id == tokenizer.eot_id:
                finished[row] = True
            else:
                rows[row].append(token_id)
                # a sample that holds the stop string is done: stop generating once every sample is
                finished[row] = bool(settings.stop) and settings.stop in tokenizer.decode(rows[row])
        if all(finished):
            break
    texts = [tokenizer.decode(row) for row in rows]
    if settings.stop:
        texts = [text.split(settings.stop, 1)[0] for text in texts]
    return texts
