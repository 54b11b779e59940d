"""The GPT-2 model, readable top to bottom.

Parameter names are exactly Hugging Face's GPT2LMHeadModel names (with nn.Linear weights, which HF's
Conv1D stores transposed), so weights move between the two with one transpose. The model is
single-device code: parallelism is applied from the outside (gptforge.train.distributed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.chunked_loss import chunked_linear_cross_entropy
from gptforge.config import GPTConfig

__all__ = ["GPT", "TIED_LM_HEAD", "TOKEN_EMBEDDING", "GPTConfig", "KVCache", "ParameterCount", "count_parameters",
           "parameter_table"]


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, for one attention layer, so decoding is O(T) per token."""

    def __init__(self, batch_size: int, max_len: int, n_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions start..start+T and return everything up to there."""
        end = start + k.size(2)
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask = None
        is_causal = True
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start, k, v)  # (B, nh, start + T, hs)
            if start > 0:
                # new queries see every cached position and the new ones up to themselves
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # flash / memory-efficient attention where the backend has it
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), start)
        return x + self.mlp(self.ln_2(x))


def vocabulary_loss(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the tokenizer's `vocab_size` real tokens: the padded rows of the output layer (GPT-2's
    50,257 tokens padded to 50,304) are not tokens and take no part in the softmax. Every val loss, the
    trainer's and `gptforge eval`'s, is this one, and it equals what transformers computes for an export."""
    logits = logits[..., :vocab_size].float()
    return F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1), reduction=reduction)


# The output layer is the token embedding's tensor (weight tying, as in GPT-2), so a file that stores the
# weights keeps it once, under the embedding's name.
TOKEN_EMBEDDING = "transformer.wte.weight"
TIED_LM_HEAD = "lm_head.weight"


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        # training's output layer and loss in this many chunks of tokens (--loss-chunks; 1: all logits at once)
        self.loss_chunks = 1
        self.apply(self._init_weights)
        # GPT-2 scales the projections into the residual stream by 1/sqrt(2 * n_layer), one per sublayer
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, start: int = 0,
                last_only: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy loss.

        `start` is the position of idx[:, 0] when a KV cache holds the earlier tokens; `last_only`
        computes logits for the final position only, which is all sampling needs. With `loss_chunks` > 1
        and gradients on (training), the loss is computed chunk by chunk and no logits are returned.
        """
        B, T = idx.size()
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, start)
        x = self.transformer.ln_f(x)
        if targets is not None and self.loss_chunks > 1 and torch.is_grad_enabled():
            loss = chunked_linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1),
                                                self.loss_chunks)
            return None, loss
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
            return logits, loss
        if last_only:
            x = x[:, [-1], :]  # (B, 1, C)
        return self.lm_head(x), None

    def setup_kv_cache(self, batch_size: int, max_len: int | None = None,
                       dtype: torch.dtype | None = None) -> None:
        """Give every attention layer a cache for `batch_size` sequences of up to `max_len` tokens."""
        max_len = max_len or self.config.block_size
        weight = self.lm_head.weight
        head_dim = self.config.n_embd // self.config.n_head
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, max_len, self.config.n_head, head_dim,
                                          dtype or weight.dtype, weight.device)

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None


@dataclass
class ParameterCount:
    total: int
    embedding: int  # token + position embeddings (the token table is shared with lm_head)
    non_embedding: int


def count_parameters(model: nn.Module) -> ParameterCount:
    """Unique parameters (tied tensors once). Works on a model built on the meta device."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return ParameterCount(total=total, embedding=embedding, non_embedding=total - embedding)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}" + ("" if module.bias is not None else " no bias")
    if isinstance(module, nn.Embedding):
        return f"Embedding {module.num_embeddings}x{module.embedding_dim}"
    if isinstance(module, nn.LayerNorm):
        return f"LayerNorm {module.normalized_shape[0]}"
    return type(module).__name__


MAX_BLOCK_ROWS = 48  # deeper models get one row for all their blocks


def parameter_table(model: GPT, n_layer: int | None = None) -> str:
    """Parameter counts per module (a row per block, then one block's insides) and the totals.

    `n_layer` counts that many blocks like the model's first: `summary` builds one block and scales,
    so a billion layers cost no more to describe than one.
    """
    def own(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    built = len(model.transformer.h)
    blocks = built if n_layer is None else n_layer
    per_block = own(model.transformer.h[0])
    block_rows = ([(f"transformer.h.{i}", "Block", per_block) for i in range(blocks)] if blocks <= MAX_BLOCK_ROWS
                  else [(f"transformer.h.0-{blocks - 1}", f"{blocks:,} x Block", blocks * per_block)])

    top: list[tuple[str, str, int]] = [
        ("transformer.wte", _describe(model.transformer.wte) + " (shared with lm_head)",
         own(model.transformer.wte)),
        ("transformer.wpe", _describe(model.transformer.wpe), own(model.transformer.wpe)),
        *block_rows,
        ("transformer.ln_f", _describe(model.transformer.ln_f), own(model.transformer.ln_f)),
        ("lm_head", "Linear (tied to transformer.wte)", 0),
    ]
    inside = [(f"  {name}", _describe(m), sum(p.numel() for p in m.parameters(recurse=False)))
              for name, m in model.transformer.h[0].named_modules()
              if next(m.parameters(recurse=False), None) is not None]
    rows = top + [("each Block holds:", "", 0)] + inside
    name_width = max(len(r[0]) for r in rows)
    kind_width = max(len(r[1]) for r in rows)
    rule = "-" * (name_width + kind_width + 17)
    lines = [f"{'module':<{name_width}}  {'type':<{kind_width}}  {'parameters':>13}", rule]
    for name, kind, count in rows:
        lines.append(f"{name:<{name_width}}  {kind:<{kind_width}}  {count:>13,}" if kind else name)
    counts = count_parameters(model)
    unbuilt = (blocks - built) * per_block
    lines += [rule,
              f"Total parameters: {counts.total + unbuilt:,}",
              f"Embedding parameters (wte + wpe): {counts.embedding:,}",
              f"Non-embedding parameters: {counts.non_embedding + unbuilt:,}"]
    return "\n".join(lines)


def meta_model(config: GPTConfig) -> GPT:
    """The model's structure with no storage behind it: for counting gpt2-xl without 6 GB of RAM."""
    with torch.device("meta"):
        return GPT(config)
