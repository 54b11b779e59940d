"""The output layer and cross-entropy in chunks of tokens, so training never holds all the logits.

GPT-2's head makes (tokens x 50,304) logits: at batch 16 x 1024 that is 3.3 GB in fp32 for the
loss, and its gradient as much again. Here each chunk's logits are made, turned into the loss and
into the gradients of the hidden states and of the head's weight, and dropped before the next
chunk, so peak memory holds one chunk's logits. The gradients are computed during the forward pass
(the backward pass only scales them), so no matmul is done twice.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunks: int) -> torch.Tensor:
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        start = 0
        for hidden_chunk, target_chunk in zip(hidden.chunk(chunks), targets.chunk(chunks), strict=True):
            logits = F.linear(hidden_chunk, weight).float()  # (n, vocab); autocast picks the matmul's dtype
            counted = (target_chunk != -1).unsqueeze(1)  # -1 marks a position without a target
            picked = target_chunk.clamp(min=0).unsqueeze(1)
            log_probs = logits.log_softmax(dim=-1)
            loss_sum -= log_probs.gather(1, picked).masked_fill(~counted, 0.0).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot(target), zero where nothing is counted
            grad_logits = log_probs.exp_().scatter_add_(1, picked, torch.full_like(log_probs[:, :1], -1.0))
            grad_logits.masked_fill_(~counted, 0.0)
            end = start + hidden_chunk.size(0)
            grad_hidden[start:end] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight += (grad_logits.t().to(hidden.dtype) @ hidden_chunk).float()
            start = end
        count = (targets != -1).sum()
        ctx.save_for_backward(grad_hidden, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        return (grad_hidden * scale.to(grad_hidden.dtype), (grad_weight * scale).to(ctx.weight_dtype),
                None, None)


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 chunks: int) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (-1: ignored), the same value and
    gradients as ``F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=-1)`` within
    float rounding, computed ``chunks`` rows at a time. ``hidden`` is (tokens, width)."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunks)
