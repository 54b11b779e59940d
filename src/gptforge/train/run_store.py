"""Training on a token store: `--data STORE` (a prepared folder) or a source of documents (JSONL, Parquet,
hf:NAME), prepared into the cache first. Plain text files and folders keep the in-memory path of
gptforge.data, token for token as before.

A run records the store's path and its manifest's sha256, never the text: start, resume and eval open the
manifest and check the shards' sizes, so the source may be deleted once it is prepared.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.config import CorpusRecord, TrainConfig
from gptforge.documents import is_record_source, open_source
from gptforge.errors import UserError
from gptforge.store_writer import cached_store
from gptforge.token_store import ShardedTokens, Store, is_store, open_store
from gptforge.tokenizer import GPT2Tokenizer, Tokenizer, tokenizer_from_dict


@dataclass
class StoreData:
    store: Store
    tokenizer: Tokenizer

    @property
    def train(self) -> ShardedTokens:
        return self.store.train

    @property
    def val(self) -> ShardedTokens:
        return self.store.val

    @property
    def record(self) -> CorpusRecord:
        return CorpusRecord(path=str(self.store.path), sha256=self.store.sha256, store=True)


def uses_store(data: str) -> bool:
    return is_store(data) or is_record_source(data)


def new_store_data(train: TrainConfig) -> StoreData:
    """The store behind a new run's --data: opened, or prepared into the cache from its documents."""
    if train.tokenizer != "gpt2":
        raise UserError(f"--data {train.data} is read as documents into a token store, which holds GPT-2 tokens; "
                        "the char tokenizer reads text files: pass --tokenizer gpt2, or a .txt file")
    if is_store(train.data):
        store = open_store(train.data)
    else:
        store = cached_store(open_source(train.data), GPT2Tokenizer(train.tokenizer_file), train.val_fraction,
                             progress=train.progress)
    return StoreData(store, tokenizer_from_dict(store.tokenizer, bpe_file=train.tokenizer_file))


def resumed_store_data(record: CorpusRecord, train: TrainConfig, given_data: bool) -> StoreData:
    """The run's own store again, refused unless its manifest is the one the run recorded."""
    path = train.data if given_data else record.path
    if not is_store(path):
        raise UserError(f"the run's token store {path} is gone (no manifest.json); pass --data with the store it "
                        "trained on")
    store = open_store(path, expected_sha256=record.sha256)
    train.data = str(store.path)
    return StoreData(store, tokenizer_from_dict(store.tokenizer, bpe_file=train.tokenizer_file))
