"""--loss-chunks: the output layer and cross-entropy chunk by chunk give the plain path's loss and
gradients, hold no full logits for backward, and leave the model's logits alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.chunked_loss import chunked_linear_cross_entropy
from gptforge.config import GPTConfig
from gptforge.model import GPT

VOCAB = 37


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16))


def batch(ignored: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 17), generator=generator)
    targets = tokens[:, 1:].clone()
    targets[0, :ignored] = -1
    return tokens[:, :-1], targets


def loss_and_grads(model: GPT, chunks: int, ignored: int = 0,
                   dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.loss_chunks = chunks
    x, y = batch(ignored)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("chunks", [2, 5, 48])  # 48 rows: even chunks, uneven ones, one row each
@pytest.mark.parametrize("ignored", [0, 7])
def test_chunked_loss_and_gradients_match_the_plain_path(chunks: int, ignored: int):
    model = tiny_gpt()
    plain_loss, plain_grads = loss_and_grads(model, 1, ignored)
    loss, grads = loss_and_grads(model, chunks, ignored)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, expected in plain_grads.items():
        torch.testing.assert_close(grads[name], expected, rtol=1e-5, atol=1e-7, msg=name)


def test_chunked_loss_under_bf16_autocast_matches_to_bf16_tolerance():
    model = tiny_gpt()
    plain_loss, plain_grads = loss_and_grads(model, 1, dtype=torch.bfloat16)
    loss, grads = loss_and_grads(model, 4, dtype=torch.bfloat16)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain_loss, rtol=1e-2, atol=1e-2)
    for name, expected in plain_grads.items():
        assert grads[name].dtype == expected.dtype == torch.float32
        torch.testing.assert_close(grads[name], expected, rtol=5e-2, atol=2e-3, msg=name)


def test_a_scaled_loss_scales_the_gradients():
    """The backward pass multiplies the gradients made in the forward pass by the incoming gradient, as
    gradient accumulation (loss / grad_accum) and fp16's loss scaler need."""
    torch.manual_seed(0)
    hidden = torch.randn(10, 6, requires_grad=True)
    weight = torch.randn(VOCAB, 6, requires_grad=True)
    targets = torch.randint(0, VOCAB, (10,))
    (chunked_linear_cross_entropy(hidden, weight, targets, 3) * 0.25).backward()
    reference_hidden = hidden.detach().clone().requires_grad_()
    reference_weight = weight.detach().clone().requires_grad_()
    (F.cross_entropy(F.linear(reference_hidden, reference_weight), targets) * 0.25).backward()
    torch.testing.assert_close(hidden.grad, reference_hidden.grad)
    torch.testing.assert_close(weight.grad, reference_weight.grad)


def test_training_keeps_no_full_logits_for_backward():
    """What autograd saves for the backward pass: the plain path keeps (tokens x vocab) logits, the
    chunked one no vocabulary-wide tensor larger than the head's own gradient (vocab x width)."""
    def largest_vocabulary_wide(chunks: int) -> int:
        model = tiny_gpt()
        model.loss_chunks = chunks
        sizes: list[int] = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if VOCAB in tensor.shape:
                sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(*batch())
        return max(sizes)

    assert largest_vocabulary_wide(1) >= 3 * 16 * VOCAB
    assert largest_vocabulary_wide(4) == VOCAB * 16


def test_logits_and_evaluation_are_unchanged():
    model = tiny_gpt()
    x, y = batch()
    plain_logits, _ = model(x)
    model.loss_chunks = 4
    logits, no_loss = model(x)
    assert no_loss is None and torch.equal(logits, plain_logits)
    with torch.no_grad():  # evaluation: the plain path, logits and all
        eval_logits, eval_loss = model(x, y)
        model.loss_chunks = 1
        plain_eval_logits, plain_eval_loss = model(x, y)
    assert torch.equal(eval_logits, plain_eval_logits) and torch.equal(eval_loss, plain_eval_loss)
    model.loss_chunks = 4
    training_logits, _ = model(x, y)
    assert training_logits is None  # training with chunks never makes them


def test_the_chunked_loss_compiles_in_one_graph_to_the_same_numbers():
    """torch.compile traces the custom autograd Function without a graph break (aot_eager: the same
    capture as the GPU's inductor, without compiling kernels) and gives eager's loss and gradients."""
    eager_loss, eager_grads = loss_and_grads(tiny_gpt(), 4)
    model = tiny_gpt()
    model.loss_chunks = 4
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _, loss = compiled(*batch())
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager_loss)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, eager_grads[name], msg=name)


@pytest.mark.gpu
def test_on_cuda_compiled_in_bf16_the_chunked_loss_matches_the_plain_one():
    """The GPU path the benchmark times: inductor-compiled, bf16 autocast, GPT-2's padded vocabulary."""
    def run(chunks: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=4, n_embd=128)).cuda()
        model.loss_chunks = chunks
        tokens = torch.randint(0, 50304, (4, 129), generator=torch.Generator().manual_seed(2)).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = torch.compile(model)(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        return loss.detach().float(), {name: p.grad.float() for name, p in model.named_parameters()}

    plain_loss, plain_grads = run(1)
    loss, grads = run(8)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-2, atol=1e-2)
    for name, expected in plain_grads.items():
        torch.testing.assert_close(grads[name], expected, rtol=5e-2, atol=1e-3, msg=name)
