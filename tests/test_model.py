import dataclasses
import math

import pytest
import torch

from conftest import require_transformers_models
from gptforge.config import MODEL_PRESETS, GPTConfig, padded_vocab_size
from gptforge.errors import UserError
from gptforge.interop.hf_weights import load_hf_state_dict
from gptforge.model import GPT, count_parameters, meta_model, parameter_table
from gptforge.tokenizer import GPT2Tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is in the dev extra")

HF_NAMES = {
    "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
    "lm_head.weight",
}


def small_hf_model(vocab_size: int = 97, n_positions: int = 32) -> "transformers.GPT2LMHeadModel":
    require_transformers_models(transformers)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=48, n_layer=3, n_head=4,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    # random init leaves biases and LayerNorms trivial: perturb everything so each weight matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("pad_to", [1, 64])
def test_logits_equal_transformers(pad_to: int) -> None:
    hf = small_hf_model()
    vocab = hf.config.vocab_size
    config = GPTConfig(block_size=32, vocab_size=padded_vocab_size(vocab, pad_to), n_layer=3, n_head=4, n_embd=48)
    ours = GPT(config).eval()
    load_hf_state_dict(ours, hf.state_dict())
    idx = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        logits, _ = ours(idx)
    assert logits.shape == (3, 32, config.vocab_size)
    assert (logits[..., :vocab] - expected).abs().max().item() <= 1e-4
    # the loss agrees too (HF shifts the labels itself)
    with torch.no_grad():
        hf_loss = hf(idx, labels=idx).loss
        _, our_loss = ours(idx[:, :-1], idx[:, 1:])
    if pad_to == 1:
        assert abs(hf_loss.item() - our_loss.item()) <= 1e-5


def test_parameter_names_are_hf_names() -> None:
    hf = small_hf_model()
    ours = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=3, n_head=4, n_embd=48))
    hf_names = {k for k in hf.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert set(ours.state_dict()) == hf_names
    assert set(ours.state_dict()) >= HF_NAMES
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_wrong_state_dict_is_refused() -> None:
    hf_state = small_hf_model().state_dict()
    with pytest.raises(UserError, match="unexpected"):
        load_hf_state_dict(GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=48)), hf_state)
    with pytest.raises(UserError, match="shape mismatch for transformer.wpe.weight"):
        load_hf_state_dict(GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=3, n_head=4, n_embd=48)), hf_state)


@pytest.mark.parametrize(("preset", "vocab", "expected"), [
    ("gpt2", 50304, 124_475_904),
    ("gpt2", 50257, 124_439_808),
    ("gpt2-medium", 50257, 354_823_168),
    ("gpt2-large", 50257, 774_030_080),
    ("gpt2-xl", 50257, 1_557_611_200),
])
def test_parameter_counts_match_published_sizes(preset: str, vocab: int, expected: int) -> None:
    model = meta_model(dataclasses.replace(MODEL_PRESETS[preset], vocab_size=vocab))
    assert count_parameters(model).total == expected
    assert next(model.parameters()).is_meta  # counted without allocating the weights
    assert f"Total parameters: {expected:,}" in parameter_table(model)


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=512, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for proj in (block.attn.c_proj, block.mlp.c_proj):
        assert proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert torch.count_nonzero(proj.bias) == 0
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert torch.equal(block.ln_1.weight, torch.ones(256))


@pytest.mark.slow
def test_initial_loss_on_real_text_is_near_uniform(data_dir) -> None:
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    tokens = torch.tensor(GPT2Tokenizer(data_dir / "gpt2.tiktoken").encode(text)[: 4 * 257]).view(4, 257)
    torch.manual_seed(1337)
    model = GPT(dataclasses.replace(MODEL_PRESETS["gpt2"], vocab_size=50304, block_size=256)).eval()
    with torch.no_grad():
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss.item() - math.log(50257)) < 0.4  # ln(50257) = 10.82; the seeds log 10.95-11.0


def test_no_bias_variant_and_dropout_train_mode() -> None:
    config = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, bias=False, dropout=0.1)
    model = GPT(config)
    assert all(not name.endswith(".bias") for name, _ in model.named_parameters())
    idx = torch.randint(0, 50, (2, 16))
    model.train()
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.wte.weight.grad is not None


def test_sequence_longer_than_block_is_rejected() -> None:
    model = GPT(MODEL_PRESETS["tiny"])
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [
    {"n_embd": 30, "n_head": 4}, {"n_layer": 0}, {"block_size": -1}, {"dropout": 1.5},
])
def test_invalid_config_is_a_user_error(bad: dict) -> None:
    with pytest.raises(UserError):
        GPT(dataclasses.replace(MODEL_PRESETS["tiny"], **bad))


def test_kv_cache_matches_full_forward() -> None:
    torch.manual_seed(0)
    model = GPT(MODEL_PRESETS["tiny"]).eval()
    idx = torch.randint(0, 65, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        model.setup_kv_cache(batch_size=2)
        prefix, _ = model(idx[:, :12])
        chunk, _ = model(idx[:, 12:16], start=12)  # several new tokens at once use the explicit mask
        steps = [model(idx[:, t : t + 1], start=t)[0] for t in range(16, 20)]
        model.clear_kv_cache()
    cached = torch.cat([prefix, chunk, *steps], dim=1)
    assert (cached - full).abs().max().item() < 1e-5
