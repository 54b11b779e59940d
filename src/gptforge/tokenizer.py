"""Tokenizers: GPT-2's byte-pair encoding (exactly tiktoken's ``gpt2``, usable offline) and characters.

Both share one small interface so the data pipeline, the trainer and sampling never care which
one a run uses; ``tokenizer.json`` in a run directory holds what is needed to rebuild it.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from tqdm import tqdm

from gptforge.config import GPT2_VOCAB_SIZE, TrainConfig, UnknownChoice, choices_of
from gptforge.errors import UserError
from gptforge.fileio import atomic_write_text
from gptforge.paths import GPT2_BPE_FILENAME, find_gpt2_ranks, keep_gpt2_ranks, local_folders, read_gpt2_ranks

GPT2_EOT_ID = 50256
# GPT-2's own pre-tokenizer regex (openai/gpt-2 encoder.py); tiktoken's r50k pattern is an
# equivalent, faster spelling that old tiktoken versions lack, so the original is used here.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# A chunk may end only after a "\n" with non-whitespace on both sides. The pre-tokenizer then ends a
# piece at that "\n" whether or not more text follows, so chunks encode exactly like the whole text.
# After "\n\n" it would not: "a\n\n" alone is [64, 628] but "a\n\nb" is [64, 198, 198, 65].
_SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)")


def smallest_uint_dtype(vocab_size: int) -> np.dtype:
    """Halve the token cache and memory traffic whenever the ids fit in 16 bits."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class Tokenizer(ABC):
    """Text <-> token ids. ``vocab_size`` is exact; padding it for speed is the model's business."""

    name: str
    vocab_size: int
    eot_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ordinary text: special-token strings in it are just text."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; ids outside the vocabulary are a UserError."""

    @abstractmethod
    def encode_corpus(self, text: str, progress: bool = False) -> np.ndarray:
        """The same ids as ``encode``, fast and compact, for whole training corpora."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description that ``tokenizer_from_dict`` rebuilds this tokenizer from."""

    @abstractmethod
    def start_ids(self) -> list[int]:
        """What generation starts from when the prompt is empty."""

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise UserError(
                f"token id {bad} is outside the {self.name} vocabulary (0..{self.vocab_size - 1}); "
                "check that the model and tokenizer come from the same run"
            )
        return ids


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE, built from a local ranks file so that it works with no network."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_id = GPT2_EOT_ID
    chunk_chars = 1 << 20  # encode_corpus works on pieces of about this many characters

    def __init__(self, bpe_file: str | Path | None = None) -> None:
        # the verified local file the ranks came from (None: tiktoken downloaded them), for exports to copy
        self.ranks_file = find_gpt2_ranks(bpe_file)
        # a file passed by path is kept in the cache, so later commands on the same model need no path again
        self._encoding = _gpt2_encoding(self.ranks_file, keep=bpe_file is not None)

    def encode(self, text: str) -> list[int]:
        _check_unicode(text)
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(self._check_ids(ids))

    def encode_array(self, text: str) -> np.ndarray:
        """``encode``'s ids as an array, built by tiktoken without a Python int per token (a token store's
        documents: 10% faster than a list); a stray lone surrogate (from a JSON escape) becomes U+FFFD rather
        than stopping a long preparation."""
        to_numpy = getattr(self._encoding, "encode_to_numpy", None)  # tiktoken >= 0.8
        if to_numpy is None:
            return np.array(self._encoding.encode_ordinary(text), dtype=np.uint32)
        try:
            return to_numpy(text, disallowed_special=())  # no special token allowed: each is ordinary text
        except UnicodeEncodeError:  # what tiktoken's encode_ordinary does with a lone surrogate
            return to_numpy(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), disallowed_special=())

    def encode_corpus(self, text: str, progress: bool = False) -> np.ndarray:
        chunks = split_for_encoding(text, self.chunk_chars)
        dtype = smallest_uint_dtype(self.vocab_size)
        if len(chunks) <= 1:
            return np.array(self.encode(text), dtype=dtype)
        # Batches of 8 chunks keep tiktoken's 8 threads busy while the bar still moves.
        parts: list[np.ndarray] = []
        # like every bar here, only on a terminal: in a log file its carriage returns would be garbage
        bar_on = progress and sys.stderr.isatty()
        with tqdm(total=len(text), unit="char", unit_scale=True, desc="tokenizing", disable=not bar_on) as bar:
            for start in range(0, len(chunks), 8):
                batch = chunks[start:start + 8]
                parts.extend(np.array(ids, dtype=dtype) for ids in self._encoding.encode_ordinary_batch(batch))
                bar.update(sum(len(chunk) for chunk in batch))
        return np.concatenate(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}

    def start_ids(self) -> list[int]:
        return [GPT2_EOT_ID]

    def token_bytes(self) -> list[bytes]:
        """The bytes of each ordinary token, in rank order: the ranks themselves, which an export to another
        format writes out, so it holds exactly the tokenizer the model was trained with."""
        return [self._encoding.decode_single_token_bytes(rank) for rank in range(GPT2_EOT_ID)]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (openai/gpt-2 encoder.py), the alphabet of vocab.json."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in stand_ins]
    stand_ins.update({byte: chr(256 + index) for index, byte in enumerate(others)})
    return stand_ins


def _check_unicode(text: str) -> None:
    """Refuse lone surrogates, which tiktoken would silently turn into U+FFFD: the model would continue
    other text than the user's. They come from undecodable bytes in a command-line argument or from
    JSON escapes sent to the demo, never from a UTF-8 file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"the text is not valid Unicode: {text[exc.start]!r} at position {exc.start} is a lone "
                        "surrogate (bytes that are not UTF-8?); pass UTF-8 text") from None


def split_for_encoding(text: str, chunk_chars: int) -> list[str]:
    """Cut text into pieces of about ``chunk_chars`` that GPT-2 encodes exactly like the whole.

    A piece can be much longer when the text has no safe place to cut (e.g. no single newlines).
    """
    chunks = []
    start = 0
    while len(text) - start > chunk_chars:
        cut = _SAFE_SPLIT.search(text, start + chunk_chars)
        if cut is None:
            break
        chunks.append(text[start:cut.start()])
        start = cut.start()
    chunks.append(text[start:])
    return chunks


def _gpt2_encoding(ranks_file: Path | None, keep: bool = False) -> tiktoken.Encoding:
    """The local file when there is one, so that offline machines never reach the network; `keep` copies it
    into the cache."""
    if ranks_file is not None:
        contents = read_gpt2_ranks(ranks_file)
        if keep:
            keep_gpt2_ranks(contents)
        return _build_gpt2_encoding(contents)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:  # tiktoken's download fails in many ways (no network, proxy, bad hash)
        searched = ", ".join(str(folder / GPT2_BPE_FILENAME) for folder in local_folders())
        raise UserError(
            f"cannot load the GPT-2 tokenizer: no {GPT2_BPE_FILENAME} found (looked for {searched}) and "
            f"tiktoken could not download it ({type(exc).__name__}); set GPTFORGE_DATA_DIR to a folder "
            f"containing {GPT2_BPE_FILENAME}, or pass --tokenizer-file PATH"
        ) from None


@functools.lru_cache(maxsize=1)
def _build_gpt2_encoding(contents: bytes) -> tiktoken.Encoding:
    # Parsed here rather than with tiktoken.load.load_tiktoken_bpe, which copies local files into
    # a cache under the system temp dir; the format is "<base64 token> <rank>" per line.
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in contents.splitlines())}
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT_ID}
    )


class CharTokenizer(Tokenizer):
    """One token per character of the training corpus (nanoGPT's shakespeare_char)."""

    name = "char"
    eot_id = None

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise UserError("a char tokenizer needs a non-empty string of distinct characters; "
                            "rebuild tokenizer.json from the corpus")
        self.chars = chars
        self.vocab_size = len(chars)
        self._ids = {char: index for index, char in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[char] for char in text]
        except KeyError as exc:
            raise self._unknown_char(exc.args[0]) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in self._check_ids(ids))

    def encode_corpus(self, text: str, progress: bool = False) -> np.ndarray:
        """Vectorised lookup of code points; a million characters take milliseconds, so no bar."""
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        vocab_points = np.array([ord(char) for char in self.chars], dtype=np.uint32)
        order = np.argsort(vocab_points)
        positions = np.searchsorted(vocab_points[order], code_points).clip(max=len(order) - 1)
        ids = order[positions]
        unknown = np.flatnonzero(vocab_points[ids] != code_points)
        if unknown.size:
            raise self._unknown_char(text[unknown[0]])
        return ids.astype(smallest_uint_dtype(self.vocab_size))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "chars": self.chars}

    def start_ids(self) -> list[int]:
        return [self._ids.get("\n", 0)]

    def _unknown_char(self, char: str) -> UserError:
        return UserError(
            f"character {char!r} is not in this char tokenizer's vocabulary: the model only knows the "
            f"{self.vocab_size} characters of its training corpus; remove it from the text"
        )


def build_tokenizer(name: str, text: str | None = None, bpe_file: str | Path | None = None) -> Tokenizer:
    """The tokenizer a new run uses; a char tokenizer is built from the corpus ``text``."""
    if name == "gpt2":
        return GPT2Tokenizer(bpe_file)
    if name == "char":
        if text is None:
            raise ValueError("a char tokenizer is built from the corpus: pass text")
        return CharTokenizer.from_text(text)
    raise UnknownChoice("tokenizer", name, choices_of(TrainConfig, "tokenizer"))


def tokenizer_from_dict(data: dict[str, Any], bpe_file: str | Path | None = None) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict`` output; ``bpe_file`` helps a gpt2 one load offline."""
    name = data.get("name") if isinstance(data, dict) else None
    if name == "gpt2":
        return GPT2Tokenizer(bpe_file)
    if name == "char":
        chars = data.get("chars")
        if not isinstance(chars, str):
            raise UserError("the char tokenizer description has no 'chars' string; rebuild it from the corpus")
        return CharTokenizer(chars)
    raise UserError(f"unknown tokenizer {name!r} in tokenizer description; expected gpt2 or char")


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> Path:
    """Write ``path`` (a tokenizer.json) atomically, so a crash never leaves a run with half a tokenizer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False, indent=2) + "\n")
    return path
