"""A token store: a corpus as fixed-size shards of token ids plus a manifest, read by memory-mapping.

Layout of a store folder:

    manifest.json          written last, atomically: its presence says the store is complete
    train-000000.npy ...   the training documents' tokens, in order
    val-000000.npy ...     the held-out documents' tokens

Shards are NumPy .npy files: each carries its own dtype and length in its header (uint16 while the
vocabulary fits, as GPT-2's 50,257 tokens do, else uint32), NumPy memory-maps it with no code of ours, and
any tool can read one alone. The manifest lists every shard with its token count, document count, byte size
and sha256, the tokenizer, the sources and the val fraction; its own sha256 identifies the store in a run's
config, so start, resume and eval check the manifest and the shards' sizes, never the source text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptforge.errors import UserError

MANIFEST = "manifest.json"
STORE_FORMAT = "gptforge-token-store"
STORE_VERSION = 1
SPLITS = ("train", "val")


def is_store(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.npy"


class ShardedTokens:
    """Shards seen as one read-only array of ids: length, slices and integer-array indexing (what the samplers
    use) cross shard boundaries; only the windows read are paged in."""

    def __init__(self, shards: list[np.ndarray]) -> None:
        self.shards = [shard for shard in shards if len(shard)]
        lengths = np.array([len(shard) for shard in self.shards], dtype=np.int64)
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths
        self.dtype = self.shards[0].dtype if self.shards else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("ShardedTokens slices take no step")
            key = np.arange(start, stop, dtype=np.int64)
        index = np.asarray(key, dtype=np.int64)
        flat = index.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range [0, {len(self)})")
        which = np.searchsorted(self.ends, flat, side="right")
        out = np.empty(flat.shape, dtype=self.dtype)
        for shard in np.unique(which):
            chosen = which == shard
            out[chosen] = self.shards[shard][flat[chosen] - self.starts[shard]]
        return out.reshape(index.shape)


@dataclass
class Store:
    path: Path
    manifest: dict[str, Any]
    sha256: str  # of manifest.json: what a run records
    train: ShardedTokens
    val: ShardedTokens

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def all_tokens(self) -> ShardedTokens:
        return ShardedTokens(self.train.shards + self.val.shards)


def read_manifest(folder: Path) -> tuple[dict[str, Any], str]:
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise UserError(f"{path} is not a token store manifest (not JSON); prepare the store again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise UserError(f"{path} is not a gptforge token store manifest; prepare the store again")
    if manifest.get("version") != STORE_VERSION:
        raise UserError(f"{path} is a version {manifest.get('version')!r} store; this gptforge reads version "
                        f"{STORE_VERSION}: prepare it again")
    return manifest, hashlib.sha256(raw).hexdigest()


def open_store(folder: str | Path, expected_sha256: str | None = None) -> Store:
    """The store in `folder`, each shard checked against the manifest's size (not re-hashed: that would read
    the whole corpus at every start); with `expected_sha256`, the manifest must be that one."""
    folder = Path(folder).expanduser().resolve()
    manifest, sha256 = read_manifest(folder)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise UserError(f"the token store {folder} is not the one this run trained on (manifest sha256 "
                        f"{sha256[:12]}..., the run recorded {expected_sha256[:12]}...); it was prepared again")
    shards: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    entries = manifest.get("shards")
    if not isinstance(entries, list):
        raise UserError(f"{folder / MANIFEST} lists no shards; prepare the store again")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("split") not in SPLITS or not isinstance(entry.get("file"), str):
            raise UserError(f"{folder / MANIFEST} has a malformed shard entry; prepare the store again")
        path = folder / Path(entry["file"]).name
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"shard {path} is missing from the token store; prepare the store again") from None
        if size != entry.get("bytes"):
            raise UserError(f"shard {path} is {size:,} bytes, the manifest says {entry.get('bytes')!r}: damaged or "
                            "replaced; prepare the store again")
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            raise UserError(f"shard {path} is not a .npy array; prepare the store again") from None
        if tokens.ndim != 1 or len(tokens) != entry.get("tokens"):
            raise UserError(f"shard {path} holds {tokens.size:,} tokens, the manifest says {entry.get('tokens')!r}")
        shards[entry["split"]].append(tokens)
    return Store(path=folder, manifest=manifest, sha256=sha256, train=ShardedTokens(shards["train"]),
                 val=ShardedTokens(shards["val"]))
