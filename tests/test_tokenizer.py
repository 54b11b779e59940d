import json
import shutil

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from gptforge.errors import UserError
from gptforge.tokenizer import (
    CharTokenizer,
    GPT2Tokenizer,
    build_tokenizer,
    save_tokenizer,
    split_for_encoding,
    tokenizer_from_dict,
)


@pytest.fixture(scope="module")
def shakespeare(data_dir):
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2(data_dir):
    return GPT2Tokenizer(data_dir / "gpt2.tiktoken")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_id, gpt2.start_ids()) == ("gpt2", 50257, 50256, [50256])


def test_gpt2_token_bytes_are_the_ranks_in_order(gpt2):
    tokens = gpt2.token_bytes()
    assert len(tokens) == 50256 and tokens[15496] == b"Hello" and tokens[995] == b" world"
    assert len(set(tokens)) == len(tokens)  # every rank its own token


def test_gpt2_endoftext_in_text_is_ordinary(gpt2):
    ids = gpt2.encode("a<|endoftext|>b")
    assert 50256 not in ids
    assert gpt2.decode(ids) == "a<|endoftext|>b"


def test_gpt2_shakespeare_count_and_prefix(gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert len(ids) == 338_025
    assert ids[:4] == [5962, 22307, 25, 198]
    assert gpt2.decode(ids) == shakespeare


def test_gpt2_pattern_matches_tiktoken_r50k(gpt2, shakespeare, data_dir, monkeypatch):
    from tiktoken_ext.openai_public import r50k_pat_str

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would otherwise copy the file under /tmp

    reference = tiktoken.Encoding(
        name="r50k-reference", pat_str=r50k_pat_str,
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(data_dir / "gpt2.tiktoken")),
        special_tokens={"<|endoftext|>": 50256},
    )
    tricky = "I'll   they've\n\n\n  x\t\u00a0y 123 4567 ¡¿ 😀 don't'S\r\n \n"
    for text in (shakespeare, tricky):
        assert gpt2.encode(text) == reference.encode_ordinary(text)


def test_gpt2_encode_corpus_equals_encode_across_chunks(gpt2, shakespeare):
    chunked = GPT2Tokenizer()
    chunked.chunk_chars = 50_000
    assert len(split_for_encoding(shakespeare, chunked.chunk_chars)) > 10
    ids = chunked.encode_corpus(shakespeare, progress=False)
    assert ids.dtype == np.uint16
    assert ids.tolist() == gpt2.encode(shakespeare)


@settings(max_examples=examples(200))
@given(text=st.lists(st.sampled_from([*"ab1 \n'!é😀", "<|endoftext|>", "\ud800", "\udfff"]), max_size=30).map("".join))
def test_encode_array_gives_encode_ordinarys_ids(gpt2, text):
    """The token store's encoder: tiktoken's ordinary ids (special-token text is text; a lone surrogate becomes
    U+FFFD as encode_ordinary makes it), as an array."""
    ids = gpt2.encode_array(text)
    assert ids.dtype == np.uint32
    assert ids.tolist() == gpt2._encoding.encode_ordinary(text)


def test_encode_array_without_tiktokens_numpy_encoder(gpt2, monkeypatch):
    """tiktoken before 0.8 has no encode_to_numpy: the same ids from the list."""
    monkeypatch.delattr(type(gpt2._encoding), "encode_to_numpy")
    text = "a<|endoftext|>b \ud800"
    assert gpt2.encode_array(text).tolist() == gpt2._encoding.encode_ordinary(text)


def test_splitting_after_a_blank_line_would_change_the_ids(gpt2):
    """Why encode_corpus cannot cut at every newline: the pre-tokenizer depends on what follows."""
    assert gpt2.encode("a\n\n") + gpt2.encode("b") != gpt2.encode("a\n\nb")


@settings(max_examples=examples(300))
@given(text=st.text(alphabet=st.sampled_from(list("ab1 \n\r\t'!\x1c\x85\u00a0\u2028é")), max_size=60),
       chunk_chars=st.integers(1, 8))
def test_gpt2_chunked_encoding_is_exact(gpt2, text, chunk_chars):
    chunks = split_for_encoding(text, chunk_chars)
    assert "".join(chunks) == text
    assert [i for chunk in chunks for i in gpt2.encode(chunk)] == gpt2.encode(text)


def test_gpt2_decode_out_of_range(gpt2):
    with pytest.raises(UserError, match="50257 is outside"):
        gpt2.decode([1, 50257])


def test_gpt2_found_in_cache_dir_without_network(data_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(data_dir / "gpt2.tiktoken", cache / "gpt2.tiktoken")
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken, "get_encoding", _no_network)
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]


def _no_network(name):
    raise ConnectionError("no network in tests")


def test_gpt2_missing_everywhere_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken, "get_encoding", _no_network)
    with pytest.raises(UserError, match="GPTFORGE_DATA_DIR") as info:
        GPT2Tokenizer()
    assert "--tokenizer-file" in str(info.value)


def test_gpt2_wrong_file(tmp_path):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_text("SGVsbG8= 0\n")
    with pytest.raises(UserError, match="sha256 mismatch") as info:
        GPT2Tokenizer(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(UserError, match="not found"):
        GPT2Tokenizer(tmp_path / "missing.tiktoken")


def test_char_shakespeare(shakespeare):
    tokenizer = CharTokenizer.from_text(shakespeare)
    assert tokenizer.vocab_size == 65 and len(shakespeare) == 1_115_394
    ids = tokenizer.encode_corpus(shakespeare)
    assert ids.dtype == np.uint16 and len(ids) == 1_115_394
    assert ids.tolist() == tokenizer.encode(shakespeare)
    assert tokenizer.decode(ids.tolist()) == shakespeare
    assert tokenizer.start_ids() == tokenizer.encode("\n")
    assert tokenizer.eot_id is None


def test_char_unicode_and_start_without_newline():
    tokenizer = CharTokenizer.from_text("zé😀a")
    assert tokenizer.chars == "azé😀"
    assert tokenizer.encode_corpus("😀aé").tolist() == tokenizer.encode("😀aé") == [3, 0, 2]
    assert tokenizer.start_ids() == [0]


@pytest.mark.parametrize("encode", ["encode", "encode_corpus"])
def test_char_unknown_character(encode):
    tokenizer = CharTokenizer.from_text("abc\n")
    with pytest.raises(UserError, match="'Z' is not in") as info:
        getattr(tokenizer, encode)("abZ😀")
    assert "only knows the 4 characters" in str(info.value)


def test_char_decode_out_of_range():
    with pytest.raises(UserError, match="outside"):
        CharTokenizer("ab").decode([0, 2])


def test_char_rejects_duplicate_characters():
    with pytest.raises(UserError, match="distinct"):
        CharTokenizer("aba")


def test_dict_and_file_round_trip(gpt2, tmp_path):
    char = CharTokenizer.from_text("hello, world\n")
    for tokenizer in (char, gpt2):
        rebuilt = tokenizer_from_dict(json.loads(json.dumps(tokenizer.to_dict())))
        assert type(rebuilt) is type(tokenizer) and rebuilt.to_dict() == tokenizer.to_dict()
        assert rebuilt.encode("hello world") == tokenizer.encode("hello world")
    for tokenizer in (char, gpt2):  # the file a run keeps, read back as a resume and the HF reader read it
        path = save_tokenizer(tokenizer, tmp_path / tokenizer.name / "tokenizer.json")
        assert tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8"))).to_dict() == tokenizer.to_dict()


def test_build_tokenizer():
    assert build_tokenizer("char", text="ba").chars == "ab"
    assert isinstance(build_tokenizer("gpt2"), GPT2Tokenizer)
    with pytest.raises(UserError, match="choose gpt2 or char"):
        build_tokenizer("bpe")


def test_bad_tokenizer_descriptions():
    with pytest.raises(UserError, match="unknown tokenizer 'sentencepiece'"):
        tokenizer_from_dict({"name": "sentencepiece"})
    with pytest.raises(UserError, match="'chars'"):
        tokenizer_from_dict({"name": "char"})
    with pytest.raises(UserError, match="unknown tokenizer None"):
        tokenizer_from_dict(["gpt2"])
