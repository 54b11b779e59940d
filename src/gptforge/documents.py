"""Documents, streamed one piece at a time from a text file, a folder, JSONL, Parquet or a Hugging Face dataset.

A token store is prepared from these pieces without ever holding the corpus in memory. A piece is one whole
document (a JSONL line, a Parquet row, a dataset record, a .txt file of a folder) or, for a long document, a
part of it cut at a line end; `starts_document` says which, so the store puts GPT-2's end-of-text token
before each document and nothing inside one.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptforge.errors import UserError

PIECE_CHARS = 1 << 20  # a long document is cut at the first line end after this many characters
TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
HF_PREFIX = "hf:"
# named corpora of documents: --data NAME streams the dataset (config) from the Hugging Face hub
NAMED_SOURCES = {"fineweb-edu": ("hf:HuggingFaceFW/fineweb-edu", "sample-10BT")}


@dataclass(frozen=True)
class Piece:
    text: str
    starts_document: bool

    @property
    def size(self) -> int:
        return len(self.text)

    def content(self) -> str:
        return self.text


@dataclass(frozen=True)
class JsonlLine:
    """A JSONL line, parsed where it is tokenized: in a worker process, so the reading process only splits lines.
    It is one whole document."""

    line: bytes
    text_field: str
    where: str  # the file and line, for the error that names a bad record
    starts_document = True

    @property
    def size(self) -> int:
        return len(self.line)

    def content(self) -> str:
        try:
            record = json.loads(self.line.decode("utf-8"))  # decoded first: json.loads(bytes) guesses an encoding
        except UnicodeDecodeError as exc:
            raise UserError(f"{self.where} is not UTF-8 ({exc.reason}); convert the file to UTF-8") from None
        except (json.JSONDecodeError, RecursionError):
            raise UserError(f"{self.where} is not JSON") from None
        return _record_text(record, self.text_field, self.where)


@dataclass
class DocumentSource:
    """Where the documents come from: a description for the store's manifest, and the pieces in order."""

    data: str
    text_field: str = "text"
    hf_config: str | None = None
    split: str = "train"
    files: list[Path] = field(default_factory=list)  # empty for a Hugging Face dataset

    def describe(self) -> dict[str, Any]:
        if self.data.startswith(HF_PREFIX):
            return {"dataset": self.data[len(HF_PREFIX):], "config": self.hf_config, "split": self.split,
                    "text_field": self.text_field}
        return {"files": [str(path) for path in self.files], "text_field": self.text_field}

    def pieces(self) -> Iterator[Piece | JsonlLine]:
        if self.data.startswith(HF_PREFIX):
            yield from _hf_pieces(self.data[len(HF_PREFIX):], self.hf_config, self.split, self.text_field)
            return
        for path in self.files:
            yield from file_pieces(path, self.text_field)


def is_record_source(data: str) -> bool:
    """Sources with documents of their own (JSONL, Parquet, a dataset), which only a token store can hold."""
    return data.startswith(HF_PREFIX) or data.lower() in NAMED_SOURCES or data.lower().endswith(RECORD_SUFFIXES)


def open_source(data: str, text_field: str = "text", hf_config: str | None = None,
                split: str = "train") -> DocumentSource:
    """The documents of `data`: hf:NAME, a file, or a folder (its text and record files, sorted, at any depth;
    a symlink that leads out of the folder is not followed)."""
    if not data.strip():
        raise UserError("--data is empty; pass a text file, a folder, a .jsonl/.parquet file or hf:NAME")
    if data.lower() in NAMED_SOURCES:
        name, named_config = NAMED_SOURCES[data.lower()]
        return DocumentSource(name, text_field, hf_config or named_config, split)
    if data.startswith(HF_PREFIX):
        if not data[len(HF_PREFIX):].strip():
            raise UserError("hf: names no dataset; pass --data hf:OWNER/NAME")
        return DocumentSource(data, text_field, hf_config, split)
    path = Path(data).expanduser()
    if path.is_file():
        return DocumentSource(data, text_field, files=[path.resolve()])
    if path.is_dir():
        files = folder_files(path)
        if not files:
            raise UserError(f"folder {path} has no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files")
        return DocumentSource(data, text_field, files=files)
    raise UserError(f"file not found: {path}; pass a text file, a folder, a .jsonl/.parquet file or hf:NAME")


def folder_files(folder: Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES + RECORD_SUFFIXES) -> list[Path]:
    """The files of `folder` named with one of `suffixes`, at any depth, sorted (a folder's files before its
    subfolders'), hidden ones left out; a symlink that leads out of the folder is not followed."""
    root = folder.resolve()
    found = []
    for directory, subdirs, names in os.walk(root):  # os.walk does not descend into linked folders
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if not name.lower().endswith(suffixes) or name.startswith("."):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                continue  # a link out of the folder: not the user's corpus
            if path.is_file():
                found.append(path)
    return found


def file_pieces(path: Path, text_field: str) -> Iterator[Piece | JsonlLine]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl_pieces(path, text_field)
    elif name.endswith(".parquet"):
        yield from _parquet_pieces(path, text_field)
    else:
        yield from _text_pieces(path)


def _text_pieces(path: Path) -> Iterator[Piece]:
    """One document, read in pieces of about PIECE_CHARS characters that end at a line end."""
    try:
        with path.open(encoding="utf-8", newline="") as file:
            first, parts, size = True, [], 0
            for line in file:
                parts.append(line)
                size += len(line)
                if size >= PIECE_CHARS:
                    yield Piece("".join(parts), first)
                    first, parts, size = False, [], 0
            if parts or first:
                yield Piece("".join(parts), first)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start} of a read); convert it to "
                        "UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def _record_text(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise UserError(f"{where} has no {text_field!r} field; name the text column with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise UserError(f"{where}: {text_field!r} is {type(text).__name__}, not text")
    return text


def _jsonl_pieces(path: Path, text_field: str) -> Iterator[JsonlLine]:
    """The lines as Python's text mode would give them (a line ends at \n, \r\n or \r), blank ones left out,
    without decoding them here."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as file:
            for chunk in file:
                for line in chunk.splitlines() if b"\r" in chunk else (chunk,):
                    number += 1
                    if not _blank(line):
                        yield JsonlLine(line, text_field, f"{path} line {number}")
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _blank(line: bytes) -> bool:
    """Whether the UTF-8 line is whitespace to str.strip(): decoded only when it starts with a byte that may begin
    non-ASCII whitespace (a record starts with printable ASCII)."""
    stripped = line.strip()
    return not stripped or (not 0x20 < stripped[0] < 0x7F and not line.decode("utf-8", "replace").strip())


def _parquet_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading Parquet needs pyarrow: pip install 'gptforge[data]'") from None
    try:
        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            raise UserError(f"{path} has no column {text_field!r} (it has {', '.join(parquet.schema_arrow.names)});"
                            " name the text column with --text-field")
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    raise UserError(f"{path}: a {text_field!r} value is {type(text).__name__}, not text")
                yield Piece(text, True)
    except UserError:
        raise
    except Exception as exc:  # pyarrow's errors share no base class worth naming
        raise UserError(f"cannot read {path} as Parquet: {exc}") from None


def _hf_pieces(name: str, config: str | None, split: str, text_field: str) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError:
        raise UserError("--data hf:NAME needs the datasets library: pip install 'gptforge[data]'") from None
    datasets.logging.set_verbosity_error()  # the hub's retry warnings would bury the one line that says what to do
    datasets.logging.disable_progress_bar()
    try:
        records = datasets.load_dataset(name, config, split=split, streaming=True)
        for number, record in enumerate(records):
            yield Piece(_record_text(record, text_field, f"hf:{name} record {number}"), True)
    except UserError:
        raise
    except Exception as exc:  # offline, unknown name or config: datasets raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot stream hf:{name} ({first}); check the name, --hf-config and --split, and the "
                        "network (offline, datasets reads only its local cache: set HF_DATASETS_OFFLINE=1)") from None
