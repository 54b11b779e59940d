"""Text -> cached token arrays -> batches.

A corpus (a named dataset, a text file or a folder of .txt files, at any depth) is tokenized once into a raw
array under the cache dir and memory-mapped after that. Samplers cut it into (x, y) batches; their
position is a pure function of how many batches they have served, so ``state_dict`` is a few
integers, identical on every rank, and resuming continues with exactly the next batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gptforge.config import CorpusRecord, TrainConfig, UnknownChoice, choices_of
from gptforge.documents import folder_files
from gptforge.errors import UserError
from gptforge.fileio import atomic_write_bytes, describe_os_error
from gptforge.paths import cache_dir, local_folders

if TYPE_CHECKING:
    from gptforge.tokenizer import Tokenizer

DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class NamedDataset:
    """A corpus `--data NAME` finds: `filename` in GPTFORGE_DATA_DIR or the cache, else downloaded from `url`
    and checked against `sha256`."""

    filename: str
    url: str
    sha256: str


TINY_SHAKESPEARE = NamedDataset(
    "tinyshakespeare.txt", "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
NAMED_DATASETS = {"shakespeare": TINY_SHAKESPEARE, "tinyshakespeare": TINY_SHAKESPEARE}


def find_dataset(name_or_path: str) -> list[Path]:
    """The text files behind a ``--data`` value: a named dataset, a file, or a folder's .txt files at any depth
    (sorted; a symlink out of the folder is not followed)."""
    if not name_or_path.strip():  # Path("") is the current folder: its .txt files would train, unasked
        raise UserError("--data is empty; pass a named dataset (shakespeare), a UTF-8 text file or a folder of "
                        ".txt files")
    if "://" in name_or_path:  # a URL would otherwise end as a puzzling "file not found: https:/..."
        raise UserError(f"--data takes a named dataset, a text file or a folder, not a URL ({name_or_path}); "
                        "gptforge downloads only its named datasets: download the file (e.g. curl -LO URL) "
                        "and pass its path")
    if name_or_path.lower() in NAMED_DATASETS:
        dataset = _named_dataset(NAMED_DATASETS[name_or_path.lower()])
        if Path(name_or_path).expanduser().exists():  # never silently one of two: say which was used
            print(f"warning: --data {name_or_path} is the named dataset ({dataset}), not ./{name_or_path} here; "
                  f"pass ./{name_or_path} for the local one", file=sys.stderr)
        return [dataset]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = folder_files(path, (".txt",))
        if not files:
            raise UserError(f"folder {path} has no .txt files (at any depth); put the corpus in UTF-8 .txt files "
                            "there")
        return files
    if path.suffix or os.sep in name_or_path or "/" in name_or_path:
        raise UserError(f"file not found: {path}; pass an existing UTF-8 text file or folder of .txt files")
    raise UserError(
        f"no dataset or file named {name_or_path!r}; named datasets: {', '.join(NAMED_DATASETS)} "
        "(or pass a UTF-8 text file or a folder of .txt files)"
    )


def _named_dataset(dataset: NamedDataset) -> Path:
    """Local copies first, so that offline machines and CI never reach the network."""
    for folder in local_folders():
        if (folder / dataset.filename).is_file():
            return _checked_copy(folder / dataset.filename, dataset)
    return _download(dataset.url, cache_dir() / dataset.filename, dataset.sha256)


def _checked_copy(path: Path, dataset: NamedDataset) -> Path:
    """A local copy of a named dataset, refused unless it is that dataset's text: a truncated or edited copy in
    the data dir would train on other text under the dataset's name (as gpt2.tiktoken is checked)."""
    try:
        contents = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {describe_os_error(exc)}") from None
    if hashlib.sha256(contents).hexdigest() != dataset.sha256:
        raise UserError(f"{path} is not {dataset.filename} (sha256 mismatch: wrong, edited or cut-off copy); "
                        f"replace it with a good copy (sha256 {dataset.sha256}) or delete it to download one")
    return path


def _download(url: str, destination: Path, sha256: str) -> Path:
    """Fetch into a temp file and rename, so an interrupted or corrupt download never looks complete."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            contents = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(
            f"cannot download {destination.name} from {url} ({exc}); set GPTFORGE_DATA_DIR to a folder "
            f"with {destination.name}, or pass a text file path with --data"
        ) from None
    if hashlib.sha256(contents).hexdigest() != sha256:
        raise UserError(f"the download from {url} is corrupt (sha256 mismatch); try again, or set "
                        f"GPTFORGE_DATA_DIR to a folder with {destination.name}")
    _write_atomic(destination, contents)
    return destination


def _write_atomic(path: Path, contents: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, contents)


@dataclass(frozen=True)
class Corpus:
    """The text behind a ``--data`` value, read and hashed once per command, and where it lives."""

    data: str  # the --data value it was read from
    text: str  # the files joined with "\n"
    sha256: str  # of the text
    location: Path  # absolute: the file, or the folder of .txt files
    files: tuple[Path, ...] = ()  # the files read, in order
    size_bytes: int = 0  # their size on disk

    def describe(self) -> str:
        """Where the text came from, for the start of a run: a folder says how many files went in."""
        size = f"{self.size_bytes / 1e6:.1f} MB"
        if self.location.is_dir():
            return f"{len(self.files):,} file{'s' if len(self.files) != 1 else ''} ({size}) from {self.location}"
        return f"{self.data} ({size})"

    @property
    def record(self) -> CorpusRecord:
        """What a run keeps of it (in its config), so a resume or an eval finds it and checks it again."""
        return CorpusRecord(path=str(self.location), sha256=self.sha256)


def read_corpus(data: str) -> Corpus:
    """All the text behind ``data``, its sha256 and its absolute location; an empty corpus is refused."""
    paths = find_dataset(data)
    texts = [_read_utf8(path) for path in paths]
    text = "\n".join(texts)
    if not any(texts):
        raise UserError(f"the corpus {data!r} is empty; give it some text")
    folder = Path(data).expanduser()
    location = folder if data.lower() not in NAMED_DATASETS and folder.is_dir() else paths[0]
    return Corpus(data=data, text=text, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                  location=location.resolve(), files=tuple(paths),
                  size_bytes=sum(path.stat().st_size for path in paths))


def recheck_corpus(record: CorpusRecord, gone: str, changed: str, data: str | None = None) -> Corpus:
    """The corpus as it is now (``data``, or else the recorded path), refused unless it is ``record``'s text.

    Eval and resume find a run's corpus again by the absolute path it recorded, from any directory, and
    compare the sha256, never the length: one changed letter is other text. What the user should do
    differs per command, so the caller's messages are formatted with ``path`` (the recorded one),
    ``current`` (the one read now) and ``now``/``then`` (the start of each sha256).
    """
    if data is None:
        if not Path(record.path).exists():
            raise UserError(gone.format(path=record.path))
        data = record.path
    current = read_corpus(data)
    if current.sha256 != record.sha256:
        raise UserError(changed.format(path=record.path, current=current.location, now=current.sha256[:12],
                                       then=record.sha256[:12]))
    return current


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (invalid byte 0x{exc.object[exc.start]:02x} at byte offset {exc.start}); "
            "convert it to UTF-8"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def load_tokens(data: str | Corpus, tokenizer: Tokenizer, progress: bool = False) -> tuple[np.ndarray, Path]:
    """The corpus as a read-only memmap of ids, tokenizing only the first time a corpus is seen.

    The cache key covers the text's content and the tokenizer, so an edited file or another
    tokenizer never reuses stale ids. A Corpus already read is not read again.
    """
    corpus = data if isinstance(data, Corpus) else read_corpus(data)
    text, content_sha256 = corpus.text, corpus.sha256
    tokenizer_json = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(f"{content_sha256}\n{tokenizer_json}".encode()).hexdigest()
    bin_path = cache_dir() / "tokens" / f"{key}.bin"
    tokens = _open_cached(bin_path, tokenizer.vocab_size)
    if tokens is None:
        ids = tokenizer.encode_corpus(text, progress=progress)
        meta = {"dtype": ids.dtype.name, "count": int(ids.size), "source": corpus.data,
                "content_sha256": content_sha256, "tokenizer": tokenizer.to_dict()}
        try:
            _write_atomic(bin_path, ids.tobytes())
            # written last: its presence says the .bin beside it is complete
            _write_atomic(bin_path.with_suffix(".json"), json.dumps(meta, ensure_ascii=False, indent=2).encode())
        except (OSError, UserError) as exc:
            with contextlib.suppress(OSError):
                bin_path.unlink(missing_ok=True)  # no .bin without the description that vouches for it
            reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            raise UserError(f"cannot cache the tokens of {corpus.data} in {cache_dir()} ({reason}); set "
                            "GPTFORGE_CACHE_DIR to a writable folder with free space") from None
        tokens = _open_cached(bin_path, tokenizer.vocab_size)
        assert tokens is not None, f"token cache {bin_path} unreadable right after writing it"
    return tokens, bin_path


def _open_cached(bin_path: Path, vocab_size: int) -> np.ndarray | None:
    """The cached ids, or None when the cache is missing, does not match its description, or holds an id
    outside the vocabulary (a damaged or foreign file: training on it would index past the embedding). None
    means tokenize again, over it."""
    try:
        meta = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        dtype, count = np.dtype(meta["dtype"]), int(meta["count"])
        if dtype.kind not in "iu" or bin_path.stat().st_size != dtype.itemsize * count or count == 0:
            return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        return None
    return tokens


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part and validate on the last, so the two never share text."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(len(tokens) * val_fraction)
    n_train = len(tokens) - n_val
    return tokens[:n_train], tokens[n_train:]


def check_corpus_size(tokens: np.ndarray, block_size: int, what: str = "training split") -> None:
    """A sample is block_size inputs plus one target, so fewer tokens than that cannot train."""
    if len(tokens) < block_size + 1:
        raise UserError(
            f"the {what} has {len(tokens):,} tokens but block_size {block_size} needs at least "
            f"{block_size + 1:,}; use a smaller --block-size, a larger corpus, or change --val-fraction"
        )


def _check_geometry(tokens: np.ndarray, batch_size: int, block_size: int, rank: int, world_size: int) -> None:
    if batch_size <= 0 or block_size <= 0:
        raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    check_corpus_size(tokens, block_size, what="data")


def _split_rows(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) windows -> contiguous int64 (x, y) on the CPU, ready for pinning or .to(device)."""
    rows = rows.astype(np.int64)
    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
    return x, y


class SequentialSampler:
    """Consecutive windows in order, epoch after epoch (build-nanogpt's DataLoaderLite).

    The data is cut into windows of block_size tokens (plus one target). A global batch is the next
    world_size * batch_size windows, rank r taking the r-th batch_size of them; an epoch ends when
    the next global batch does not fit, dropping the tail. When even one global batch does not fit
    (a tiny corpus), batches cycle through the windows instead, so every batch is still full and a
    single batch may cover the data more than once.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        _check_geometry(tokens, batch_size, block_size, rank, world_size)
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.rank, self.world_size = rank, world_size
        self.batches_served = 0
        num_windows = (len(tokens) - 1) // block_size
        self._windows_per_batch = world_size * batch_size
        self._cyclic = num_windows < self._windows_per_batch
        self.batches_per_epoch = 1 if self._cyclic else num_windows // self._windows_per_batch
        self._windows_per_epoch = num_windows if self._cyclic else self.batches_per_epoch * self._windows_per_batch
        self.tokens_per_epoch = self._windows_per_epoch * block_size

    @property
    def epoch(self) -> float:
        """Passes over the data completed, fractional."""
        return self.batches_served * self._windows_per_batch / self._windows_per_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first_window = self.batches_served * self._windows_per_batch + self.rank * self.batch_size
        self.batches_served += 1
        T = self.block_size
        if self._cyclic:
            windows = (first_window + np.arange(self.batch_size)) % self._windows_per_epoch
            return _split_rows(self.tokens[windows[:, None] * T + np.arange(T + 1)])
        start = (first_window % self._windows_per_epoch) * T
        flat = torch.from_numpy(self.tokens[start:start + self.batch_size * T + 1].astype(np.int64))
        return flat[:-1].view(self.batch_size, T), flat[1:].view(self.batch_size, T)

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self.batches_served, "num_tokens": len(self.tokens),
                "batch_size": self.batch_size, "block_size": self.block_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Positions only mean the same thing with the same data and batch shape, so check those."""
        mine = self.state_dict()
        _check_state_keys(state, mine, "sequential")
        for name in ("num_tokens", "batch_size", "block_size", "world_size"):
            if int(state[name]) != mine[name]:
                raise UserError(
                    f"cannot resume the sequential sampler: it was saved with {name}={int(state[name])} but "
                    f"this run has {name}={mine[name]}; resume with the same data, --batch-size, "
                    "--block-size and number of processes, or use --sampler random"
                )
        self.batches_served = int(state["batches_served"])


class RandomSampler:
    """Windows at random offsets, with replacement (nanoGPT's get_batch).

    Batch i on rank r is drawn from a generator seeded by (seed, rank, i), so the stream is a pure
    function of the batch count: resuming needs only the counters, and rank 0's state resumes every rank.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        _check_geometry(tokens, batch_size, block_size, rank, world_size)
        if seed < 0:
            raise UserError(f"seed must be zero or more, got {seed}")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_served = 0
        self.tokens_served = 0
        self.tokens_per_epoch = len(tokens)
        self.batches_per_epoch = max(1, math.ceil(len(tokens) / (world_size * batch_size * block_size)))

    @property
    def epoch(self) -> float:
        """Tokens served (all ranks) over the data's length: expected passes, fractional."""
        return self.tokens_served / self.tokens_per_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = np.random.default_rng((self.seed, self.rank, self.batches_served))
        T = self.block_size
        starts = generator.integers(0, len(self.tokens) - T, size=self.batch_size)
        self.batches_served += 1
        self.tokens_served += self.world_size * self.batch_size * T
        return _split_rows(self.tokens[starts[:, None] + np.arange(T + 1)])

    def state_dict(self) -> dict[str, int]:
        return {"batches_served": self.batches_served, "tokens_served": self.tokens_served, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The saved seed wins, so a resumed run continues the same stream."""
        _check_state_keys(state, self.state_dict(), "random")
        self.batches_served = int(state["batches_served"])
        self.tokens_served = int(state["tokens_served"])
        self.seed = int(state["seed"])


def _check_state_keys(state: dict[str, Any], expected: dict[str, int], kind: str) -> None:
    if not set(expected) <= set(state):
        raise UserError(f"the saved data position is not a {kind} sampler's; resume with the --sampler "
                        "the run was started with")


def make_sampler(kind: str, tokens: np.ndarray, batch_size: int, block_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> SequentialSampler | RandomSampler:
    """The sampler named by ``--sampler``."""
    if kind == "sequential":
        return SequentialSampler(tokens, batch_size, block_size, rank, world_size)
    if kind == "random":
        return RandomSampler(tokens, batch_size, block_size, seed, rank, world_size)
    raise UnknownChoice("sampler", kind, choices_of(TrainConfig, "sampler"))
