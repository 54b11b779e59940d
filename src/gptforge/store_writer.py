"""`gptforge prepare`: stream documents into a token store, in bounded memory, resumable after a kill.

The main process reads pieces of documents (gptforge.documents) and hands batches of them to worker
processes, each with its own tiktoken encoder (JSONL lines go as bytes and are parsed there: parsing is most
of the cost of reading them, and the main process would otherwise keep a core for itself); at most a few
batches are in flight, so memory holds a few batches plus one shard per split, whatever the corpus size.
Each piece goes to the train or the val split by its position (every 1/val_fraction-th piece is held out:
whole documents, or whole parts of a long one), so no text is shared between them. GPT-2's end-of-text token
starts every document, as GPT-2 and build-nanogpt do.

A shard is written (to a temporary name, then renamed) once it holds at least shard_tokens tokens, always at
a piece boundary; `prepare-state.json` then records it and how far each split has got. A prepare killed
midway and run again with the same settings continues after the last complete shard; manifest.json is
written only at the end, so a half-prepared folder never looks like a store.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gptforge.documents import DocumentSource, JsonlLine, Piece
from gptforge.errors import UserError
from gptforge.fileio import atomic_write, atomic_write_text
from gptforge.token_store import MANIFEST, SPLITS, STORE_FORMAT, STORE_VERSION, Store, open_store, shard_name
from gptforge.tokenizer import GPT2_EOT_ID, GPT2Tokenizer, smallest_uint_dtype

STATE = "prepare-state.json"
BATCH_CHARS = 1 << 21  # characters (or a JSONL line's bytes) handed to a worker at once
DEFAULT_SHARD_TOKENS = 100_000_000  # build-nanogpt's shard size: 200 MB of uint16


@dataclass
class Split:
    """One split's shards so far and the pieces waiting for the next one."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    through: int = -1  # every piece of this split up to this index is in a written shard
    pending: list[np.ndarray] = field(default_factory=list)
    pending_tokens: int = 0  # kept as pieces come: summing a shard's thousands of pieces at each one is quadratic
    pending_documents: int = 0
    last_piece: int = -1


def is_val_piece(index: int, val_fraction: float) -> bool:
    """Every 1/val_fraction-th piece, spread evenly (piece 0 always trains)."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


_worker_tokenizer: GPT2Tokenizer | None = None


def _start_worker(ranks_file: Path | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = GPT2Tokenizer(ranks_file)


def _encode(batch: list[tuple[int, Piece | JsonlLine]]) -> list[tuple[int, np.ndarray, bool]]:
    """Each piece's ids (JSONL lines parsed here first), after GPT-2's end-of-text token where a document starts."""
    assert _worker_tokenizer is not None
    dtype = smallest_uint_dtype(_worker_tokenizer.vocab_size)
    encoded = []
    for index, piece in batch:
        ids = _worker_tokenizer.encode_array(piece.content())
        starts = piece.starts_document
        tokens = np.empty(len(ids) + starts, dtype=dtype)
        tokens[:starts] = GPT2_EOT_ID
        tokens[starts:] = ids
        encoded.append((index, tokens, starts))
    return encoded


def prepare_store(source: DocumentSource, out: Path, tokenizer: GPT2Tokenizer, *, val_fraction: float = 0.01,
                  shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None,
                  progress: bool = True) -> Store:
    """Write the token store of `source` into `out` (new, empty, or a prepare of the same settings to
    continue) and open it."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise UserError(f"--shard-tokens must be positive, got {shard_tokens}")
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise UserError(f"--workers must be positive, got {workers}")
    out = Path(out).expanduser()
    settings = {"sources": source.describe(), "files": _file_stamps(source), "tokenizer": tokenizer.to_dict(),
                "val_fraction": val_fraction, "shard_tokens": shard_tokens}
    splits = _start(out, settings)
    writer = _Writer(out, splits, settings, shard_tokens)
    total = sum(stamp[1] for stamp in settings["files"]) or None
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"preparing {out.name}", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    with _Encoder(workers, tokenizer.ranks_file) as encoder:
        batch: list[tuple[int, Piece | JsonlLine]] = []
        batch_chars = 0
        for index, piece in enumerate(source.pieces()):
            bar.update(piece.size)
            split = "val" if is_val_piece(index, val_fraction) else "train"
            if index <= splits[split].through:
                continue  # in a shard written before the prepare was stopped
            batch.append((index, piece))
            batch_chars += piece.size
            if batch_chars >= BATCH_CHARS:
                writer.take(encoder.submit(batch), val_fraction)
                batch, batch_chars = [], 0
                bar.set_postfix(tokens=f"{writer.tokens:,}", documents=f"{writer.documents:,}", refresh=False)
        if batch:
            writer.take(encoder.submit(batch), val_fraction)
        writer.take(encoder.drain(), val_fraction)
    bar.close()
    writer.finish()
    return open_store(out)


class _Encoder:
    """Batches encoded by worker processes (or in this one, with one worker), results in order, at most
    2 x workers batches in flight."""

    def __init__(self, workers: int, ranks_file: Path | None) -> None:
        self.workers, self.ranks_file = workers, ranks_file
        self.pool: Any = None
        self.in_flight: collections.deque = collections.deque()

    def __enter__(self) -> _Encoder:
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's threads
            self.pool = context.Pool(self.workers, initializer=_start_worker, initargs=(self.ranks_file,))
        else:
            _start_worker(self.ranks_file)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def submit(self, batch: list[tuple[int, Piece | JsonlLine]]) -> list[tuple[int, np.ndarray, bool]]:
        """Queue `batch`; return the results that are due (the oldest, once too many are in flight)."""
        if self.pool is None:
            return _encode(batch)
        self.in_flight.append(self.pool.apply_async(_encode, (batch,)))
        done = []
        while len(self.in_flight) > 2 * self.workers:
            done.extend(self.in_flight.popleft().get())
        return done

    def drain(self) -> list[tuple[int, np.ndarray, bool]]:
        done = []
        while self.in_flight:
            done.extend(self.in_flight.popleft().get())
        return done


class _Writer:
    def __init__(self, out: Path, splits: dict[str, Split], settings: dict[str, Any], shard_tokens: int) -> None:
        self.out, self.splits, self.settings, self.shard_tokens = out, splits, settings, shard_tokens
        self.tokens = sum(entry["tokens"] for split in splits.values() for entry in split.shards)
        self.documents = sum(entry["documents"] for split in splits.values() for entry in split.shards)

    def take(self, encoded: list[tuple[int, np.ndarray, bool]], val_fraction: float) -> None:
        for index, tokens, starts in encoded:
            split = self.splits["val" if is_val_piece(index, val_fraction) else "train"]
            split.pending.append(tokens)
            split.pending_tokens += len(tokens)
            split.pending_documents += starts
            split.last_piece = index
            self.tokens += len(tokens)
            self.documents += starts
            if split.pending_tokens >= self.shard_tokens:
                self.write_shard(split)

    def write_shard(self, split: Split) -> None:
        name = next(key for key, value in self.splits.items() if value is split)
        tokens = np.concatenate(split.pending)
        path = self.out / shard_name(name, len(split.shards))
        atomic_write(path, lambda file: np.save(file, tokens, allow_pickle=False), "the shard")
        split.shards.append({"file": path.name, "split": name, "tokens": int(len(tokens)),
                             "documents": split.pending_documents, "bytes": path.stat().st_size,
                             "sha256": _file_sha256(path)})
        split.through = split.last_piece
        split.pending, split.pending_tokens, split.pending_documents = [], 0, 0
        self.save_state()

    def save_state(self) -> None:
        state = {"settings": self.settings,
                 "splits": {name: {"shards": split.shards, "through": split.through}
                            for name, split in self.splits.items()}}
        atomic_write_text(self.out / STATE, json.dumps(state, indent=1))

    def finish(self) -> None:
        for split in self.splits.values():
            if split.pending:
                self.write_shard(split)
        shards = [entry for name in SPLITS for entry in self.splits[name].shards]
        if not shards:
            raise UserError(f"the corpus {self.settings['sources']} holds no text")
        manifest = {
            "format": STORE_FORMAT, "version": STORE_VERSION, "tokenizer": self.settings["tokenizer"],
            "dtype": np.load(self.out / shards[0]["file"], mmap_mode="r").dtype.name,
            "eot_id": GPT2_EOT_ID, "sources": self.settings["sources"], "val_fraction": self.settings["val_fraction"],
            "shard_tokens": self.shard_tokens,
            "tokens": {name: sum(e["tokens"] for e in self.splits[name].shards) for name in SPLITS},
            "documents": {name: sum(e["documents"] for e in self.splits[name].shards) for name in SPLITS},
            "shards": shards,
        }
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=1))  # last: the store is complete
        (self.out / STATE).unlink(missing_ok=True)


def _start(out: Path, settings: dict[str, Any]) -> dict[str, Split]:
    """The splits to continue from: a stopped prepare of the same settings in `out`, else none (a new or
    empty folder). Anything else in `out` is refused: a prepare never writes over what it did not make."""
    if (out / MANIFEST).exists():
        raise UserError(f"{out} already holds a token store; pass another --out, or delete it to prepare again")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a new folder for the token store")
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.tmp"):  # a shard whose write was killed
        leftover.unlink()
    state_path = out / STATE
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if state.get("settings") == json.loads(json.dumps(settings)):
                splits = {name: Split(shards=state["splits"][name]["shards"], through=state["splits"][name]["through"])
                          for name in SPLITS}
                if all((out / entry["file"]).is_file() for split in splits.values() for entry in split.shards):
                    return splits
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        raise UserError(f"{out} holds a stopped prepare of other settings or sources; pass another --out, or "
                        "delete it to start again")
    others = [path.name for path in out.iterdir()]
    if others:
        raise UserError(f"--out {out} is not empty ({', '.join(sorted(others)[:3])}...); pass a new or empty folder")
    return {name: Split() for name in SPLITS}


def _file_stamps(source: DocumentSource) -> list[tuple[str, int, int]]:
    """Each source file's path, size and modification time: a changed file is another prepare."""
    stamps = []
    for path in source.files:
        stat = path.stat()
        stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
    return stamps


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_store(source: DocumentSource, tokenizer: GPT2Tokenizer, val_fraction: float, progress: bool = True,
                 workers: int | None = None) -> Store:
    """The store of `source` in the cache (prepared there the first time, or continued after a stop): what
    `train --data FILE.jsonl` and `prepare` without --out use. The key covers the sources (with the files'
    sizes and times), the tokenizer and the val fraction."""
    from gptforge.paths import cache_dir

    key = json.dumps([source.describe(), _file_stamps(source), tokenizer.to_dict(), val_fraction], sort_keys=True)
    folder = cache_dir() / "stores" / hashlib.sha256(key.encode()).hexdigest()[:32]
    if (folder / MANIFEST).is_file():
        return open_store(folder)
    return prepare_store(source, folder, tokenizer, val_fraction=val_fraction, workers=workers, progress=progress)
