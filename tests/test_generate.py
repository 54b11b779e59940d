import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import examples
from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import (
    SamplingSettings,
    filter_top_k,
    filter_top_p,
    generate_ids,
    generate_text,
    sample_next,
    stream_text,
)
from gptforge.model import GPT
from gptforge.tokenizer import CharTokenizer, GPT2Tokenizer

CHARS = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def char_model() -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer(CHARS)
    model = GPT(GPTConfig(block_size=24, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, tokenizer


def ids(model: GPT, prompt: list[int], settings: SamplingSettings, vocab: int, n: int = 1) -> torch.Tensor:
    return torch.stack(list(generate_ids(model, prompt, settings, vocab, n)), dim=1)  # (n, steps)


def test_cached_greedy_equals_uncached_greedy(char_model) -> None:
    model, tokenizer = char_model
    prompt = tokenizer.encode("ROMEO:")
    cached = ids(model, prompt, SamplingSettings(max_new_tokens=18, temperature=0), tokenizer.vocab_size)
    plain = ids(model, prompt, SamplingSettings(max_new_tokens=18, temperature=0, use_cache=False),
                tokenizer.vocab_size)
    assert torch.equal(cached, plain)
    # and both equal the argmax of a full forward pass over the growing sequence
    context = torch.tensor([prompt])
    with torch.no_grad():
        for step in range(18):
            logits, _ = model(context)
            nxt = logits[0, -1, : tokenizer.vocab_size].argmax()
            assert nxt.item() == cached[0, step].item()
            context = torch.cat([context, nxt.view(1, 1)], dim=1)


def test_generation_past_the_context_keeps_going(char_model) -> None:
    model, tokenizer = char_model
    long_prompt = tokenizer.encode("First Citizen: we are accounted poor citizens")  # longer than block 24
    settings = SamplingSettings(max_new_tokens=60, temperature=1.0, top_k=None, seed=3)
    tokens = ids(model, long_prompt, settings, tokenizer.vocab_size)
    assert tokens.shape == (1, 60)
    # with no cache it takes the same path: the window slides identically
    plain = ids(model, long_prompt, SamplingSettings(max_new_tokens=60, temperature=1.0, top_k=None, seed=3,
                                                     use_cache=False), tokenizer.vocab_size)
    assert torch.equal(tokens, plain)


def test_top_k_one_is_greedy(char_model) -> None:
    model, tokenizer = char_model
    prompt = tokenizer.encode("To be")
    greedy = ids(model, prompt, SamplingSettings(max_new_tokens=10, temperature=0), tokenizer.vocab_size)
    top1 = ids(model, prompt, SamplingSettings(max_new_tokens=10, temperature=1.3, top_k=1, seed=5),
               tokenizer.vocab_size)
    assert torch.equal(greedy, top1)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.1, 0.05]])
    logits = probs.log()
    kept = torch.isfinite(filter_top_p(logits, 0.75))
    assert kept.tolist() == [[True, False, True, False, False]]  # 0.5 + 0.3 >= 0.75
    kept = torch.isfinite(filter_top_p(logits, 0.85))
    assert kept.tolist() == [[True, False, True, True, False]]  # needs 0.1 too
    kept = torch.isfinite(filter_top_p(logits, 0.01))
    assert kept.tolist() == [[True, False, False, False, False]]  # the top token always stays
    kept = torch.isfinite(filter_top_p(logits, 1.0))
    assert kept.all()


def test_top_k_filter_and_temperature_zero() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    assert sample_next(logits, SamplingSettings(temperature=0)).item() == 1
    generator = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingSettings(temperature=1.0, top_k=2), generator).item() for _ in range(200)}
    assert draws == {1, 3}


# Settings whose values leave float32's range: top-p and temperature below its smallest number are 0 there, a
# temperature above its largest is inf (and a padded row's -inf / inf is NaN).
TINY_AND_HUGE = [{"top_p": 2.2e-251}, {"top_p": 1e-300, "temperature": 1e-320}, {"top_p": 1e-45},
                 {"temperature": 1e300}, {"temperature": 1e300, "top_p": 0.5}, {"temperature": 5e-324, "top_k": 1}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("extreme", TINY_AND_HUGE, ids=str)
def test_values_outside_the_dtype_range_still_sample_a_real_token(extreme: dict, dtype: torch.dtype) -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, float("-inf"), float("-inf")]], dtype=dtype)  # two padded rows
    token = sample_next(logits, SamplingSettings(**extreme), torch.Generator().manual_seed(0)).item()
    if extreme.get("top_p", 1.0) < 1e-30 or extreme.get("temperature", 1.0) < 1e-30:
        assert token == 1  # a vanishing top-p or temperature keeps the most likely token only
    else:
        assert token < 4  # a huge temperature samples uniformly, never a padded row


@settings(max_examples=examples(200))
@given(temperature=st.floats(0, 1e308), top_k=st.none() | st.integers(1, 10**30),
       top_p=st.none() | st.floats(0, 1, exclude_min=True), scale=st.floats(1e-30, 1e30),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
@example(temperature=0.8, top_k=None, top_p=2.2e-251, scale=1.0, dtype=torch.float32)  # found by the demo fuzzer
def test_any_valid_setting_samples_a_token_that_can_be_sampled(temperature: float, top_k: int | None,
                                                                top_p: float | None, scale: float,
                                                                dtype: torch.dtype) -> None:
    settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    settings.validate()
    logits = (torch.linspace(-1, 1, 8) * scale).clamp(-6e4, 6e4).to(dtype)
    logits = torch.cat([logits, torch.full((3,), float("-inf"), dtype=dtype)]).repeat(2, 1)  # padded rows
    tokens = sample_next(logits, settings, torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 1) and all(math.isfinite(logits[0, t].item()) for t in tokens[:, 0].tolist())


def test_padded_vocabulary_is_never_sampled() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=128, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # make the padded rows irresistible
        model.transformer.wte.weight[100:] = model.transformer.wte.weight[100:] * 0 + 3.0
    tokens = ids(model, [1, 2, 3], SamplingSettings(max_new_tokens=30, temperature=1.0, top_k=None, seed=0), 100)
    assert int(tokens.max()) < 100


def test_seed_repeats_and_batches_are_independent(char_model) -> None:
    model, tokenizer = char_model
    settings = SamplingSettings(max_new_tokens=20, temperature=1.0, top_k=None, seed=11)
    first = generate_text(model, tokenizer, "A", settings, num_samples=3)
    again = generate_text(model, tokenizer, "A", settings, num_samples=3)
    assert first == again
    assert len(first) == 3 and len(set(first)) > 1  # three different samples in one batch


def test_stream_equals_batch_text_and_stop_string(char_model) -> None:
    model, tokenizer = char_model
    settings = SamplingSettings(max_new_tokens=40, temperature=0)
    streamed = list(stream_text(model, tokenizer, "ROMEO:", settings))
    assert len(streamed) > 1  # it really streams
    full = "".join(streamed)
    assert full == generate_text(model, tokenizer, "ROMEO:", settings)[0]
    stop = full[10:12]
    cut = "".join(stream_text(model, tokenizer, "ROMEO:", SamplingSettings(max_new_tokens=40, temperature=0,
                                                                           stop=stop)))
    assert cut == full[: full.index(stop)]
    assert stop not in cut


class Scripted(GPT):
    """Emits `script` one token at a time after a one-token prompt, whatever the input."""

    def __init__(self, script: list[int]) -> None:
        super().__init__(GPTConfig(block_size=64, vocab_size=50304, n_layer=1, n_head=1, n_embd=8))
        self.script = script

    def forward(self, idx, targets=None, *, start=0, last_only=False):
        produced = idx.size(1) + start - 1  # tokens generated before this call
        logits = torch.full((idx.size(0), 1, self.config.vocab_size), -1e9)
        logits[:, :, self.script[min(produced, len(self.script) - 1)]] = 0.0
        return logits, None


def test_stream_never_splits_a_multibyte_character(data_dir) -> None:
    tokenizer = GPT2Tokenizer(data_dir / "gpt2.tiktoken")
    text = "naïve café — 日本語 🙂 ok"
    pieces_ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in pieces_ids)  # some tokens are partial characters
    settings = SamplingSettings(max_new_tokens=len(pieces_ids), temperature=0, use_cache=False)
    pieces = list(stream_text(Scripted(pieces_ids), tokenizer, "", settings))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_samples_in_a_batch_stop_generating_once_all_hold_the_stop_string(data_dir) -> None:
    tokenizer = GPT2Tokenizer(data_dir / "gpt2.tiktoken")
    model = Scripted(tokenizer.encode("one two. three four five six seven"))
    calls = []
    forward = model.forward
    model.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    settings = SamplingSettings(max_new_tokens=30, temperature=0, use_cache=False, stop=".")
    assert generate_text(model, tokenizer, "", settings, num_samples=2) == ["one two"] * 2
    assert len(calls) <= 4  # the prompt, then one call per token up to the ".", not 30


def test_generation_ends_at_the_end_of_text_token(data_dir) -> None:
    tokenizer = GPT2Tokenizer(data_dir / "gpt2.tiktoken")
    model = Scripted(tokenizer.encode("Hello there") + [tokenizer.eot_id] + tokenizer.encode(" after"))
    settings = SamplingSettings(max_new_tokens=20, temperature=0, use_cache=False)
    assert "".join(stream_text(model, tokenizer, "", settings)) == "Hello there"
    assert generate_text(model, tokenizer, "", settings, num_samples=2) == ["Hello there"] * 2
    keep_going = SamplingSettings(max_new_tokens=20, temperature=0, use_cache=False, stop_at_eot=False)
    assert "".join(stream_text(model, tokenizer, "", keep_going)).startswith("Hello there<|endoftext|> after")


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(char_model) -> None:
    model, tokenizer = char_model
    long_prompt = tokenizer.encode("First Citizen: before we proceed any further, hear me speak.")
    assert len(long_prompt) > model.config.block_size
    settings = SamplingSettings(max_new_tokens=10, temperature=0)
    cropped = long_prompt[-model.config.block_size:]
    assert torch.equal(ids(model, long_prompt, settings, tokenizer.vocab_size),
                       ids(model, cropped, settings, tokenizer.vocab_size))
    assert not torch.equal(ids(model, long_prompt[:model.config.block_size], settings, tokenizer.vocab_size),
                           ids(model, cropped, settings, tokenizer.vocab_size))


@pytest.mark.parametrize("bad", [
    {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": -1},
])
def test_bad_settings_are_user_errors(char_model, bad) -> None:
    model, tokenizer = char_model
    with pytest.raises(UserError):
        generate_text(model, tokenizer, "A", SamplingSettings(**bad))


def test_empty_prompt_starts_from_the_start_token(char_model, data_dir) -> None:
    model, tokenizer = char_model
    assert len(generate_text(model, tokenizer, "", SamplingSettings(max_new_tokens=5, temperature=0))[0]) == 5
    assert GPT2Tokenizer(data_dir / "gpt2.tiktoken").start_ids() == [50256]
    assert tokenizer.start_ids() == [tokenizer.encode("\n")[0]]
