"""gptforge's tokenizers in files transformers' `AutoTokenizer` loads.

The GPT-2 BPE becomes the `vocab.json` / `merges.txt` pair of transformers' GPT2Tokenizer; a char
tokenizer becomes a tokenizers-library `tokenizer.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptforge.fileio import write_json
from gptforge.interop.hf_read import HF_TOKENIZER_FILE
from gptforge.tokenizer import GPT2_EOT_ID, CharTokenizer, GPT2Tokenizer, Tokenizer, bytes_to_unicode

ENDOFTEXT = "<|endoftext|>"


def _merge_pair(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: BPE on its bytes with the merges ranked before it."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 2:
        candidates = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
        best_rank, i = min(candidates)
        if best_rank >= rank:
            raise ValueError(f"token {token!r} of rank {rank} cannot be built from earlier merges")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def gpt2_vocab_and_merges(token_bytes: list[bytes]) -> tuple[dict[str, int], list[str]]:
    """vocab.json and merges.txt (without its header) from BPE ranks (`token_bytes[rank]`).

    tiktoken keeps only the ranks; transformers wants the merges, in rank order, which each multi-byte
    token's own BPE run recovers.
    """
    alphabet = bytes_to_unicode()
    spell = lambda token: "".join(alphabet[byte] for byte in token)
    ranks = {token: rank for rank, token in enumerate(token_bytes)}
    vocab = {spell(token): rank for rank, token in enumerate(token_bytes)}
    merges = [" ".join(map(spell, _merge_pair(token, rank, ranks)))
              for rank, token in enumerate(token_bytes) if len(token) > 1]
    return vocab, merges


def _write_gpt2_tokenizer(tokenizer: GPT2Tokenizer, folder: Path, max_length: int) -> None:
    vocab, merges = gpt2_vocab_and_merges(tokenizer.token_bytes())
    vocab[ENDOFTEXT] = GPT2_EOT_ID
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length,
                                                  "add_prefix_space": False, "errors": "replace", **special})
    write_json(folder / "special_tokens_map.json", special)


def char_tokenizer_json(tokenizer: CharTokenizer) -> dict[str, Any]:
    """The tokenizers library's description of a character tokenizer, for AutoTokenizer.

    Every character is its own piece (the pattern matches any one code point, newlines included) and its
    own word in a WordLevel vocabulary with gptforge's ids; decoding fuses the pieces with nothing between
    them. The unknown-token name is in no vocabulary, so a character the corpus lacked is refused, as
    gptforge refuses it, rather than silently mapped to some id.
    """
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {char: index for index, char in enumerate(tokenizer.chars)},
                  "unk_token": "<unk>"},
    }


def _write_char_tokenizer(tokenizer: CharTokenizer, folder: Path, max_length: int) -> None:
    write_json(folder / HF_TOKENIZER_FILE, char_tokenizer_json(tokenizer))
    # no clean-up of "spaces before punctuation" on decode: the text must come back exactly
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                  "model_max_length": max_length,
                                                  "clean_up_tokenization_spaces": False})


def write_hf_tokenizer(tokenizer: Tokenizer, folder: Path, max_length: int) -> None:
    """The files AutoTokenizer loads the model's tokenizer from; `max_length` is the model's context."""
    if isinstance(tokenizer, GPT2Tokenizer):
        _write_gpt2_tokenizer(tokenizer, folder, max_length)
    elif isinstance(tokenizer, CharTokenizer):
        _write_char_tokenizer(tokenizer, folder, max_length)
    else:
        raise TypeError(f"no transformers form for the {tokenizer.name} tokenizer")
