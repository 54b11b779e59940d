"""The token store: prepared by streaming documents into shards, continued after a stop, read across shard
boundaries, and trained on (start, resume with the source deleted, eval) without the source text."""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error, run_main
from gptforge import store_writer
from gptforge.config import build_config
from gptforge.documents import PIECE_CHARS, open_source
from gptforge.errors import UserError
from gptforge.token_store import MANIFEST, ShardedTokens, open_store
from gptforge.tokenizer import GPT2_EOT_ID, GPT2Tokenizer
from gptforge.train.session import train


def shakespeare_documents(data_dir: Path, count: int = 60) -> list[str]:
    """`count` documents cut from tiny Shakespeare at blank lines, of varied lengths."""
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return [part for part in text.split("\n\n") if part.strip()][:count]


def write_jsonl(path: Path, documents: list[str], gz: bool = False) -> Path:
    lines = "".join(json.dumps({"id": i, "text": doc, "url": f"u{i}"}) + "\n" for i, doc in enumerate(documents))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def expected_splits(documents: list[str], val_fraction: float) -> dict[str, np.ndarray]:
    """What the store must hold: each document's ids after an end-of-text token, every 1/f-th held out."""
    encoder = GPT2Tokenizer()
    parts: dict[str, list[int]] = {"train": [], "val": []}
    for i, doc in enumerate(documents):
        split = "val" if store_writer.is_val_piece(i, val_fraction) else "train"
        parts[split] += [GPT2_EOT_ID, *encoder.encode(doc)]
    return {name: np.array(ids) for name, ids in parts.items()}


def prepare(source, out: Path, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return store_writer.prepare_store(source, out, GPT2Tokenizer(), **kwargs)


def test_a_prepared_store_holds_each_document_after_an_end_of_text_token(tmp_path, data_dir) -> None:
    documents = shakespeare_documents(data_dir)
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl", documents)))
    store = prepare(source, tmp_path / "store", val_fraction=0.1, shard_tokens=500)
    expected = expected_splits(documents, 0.1)
    assert np.array_equal(store.train[0:len(store.train)], expected["train"])
    assert np.array_equal(store.val[0:len(store.val)], expected["val"])
    manifest = store.manifest
    assert manifest["documents"] == {"train": 54, "val": 6}
    assert manifest["tokens"] == {name: len(ids) for name, ids in expected.items()}
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["name"] == "gpt2"
    train_shards = [entry for entry in manifest["shards"] if entry["split"] == "train"]
    assert len(train_shards) > 3 and all(entry["tokens"] >= 500 for entry in train_shards[:-1])
    assert all(np.load(tmp_path / "store" / entry["file"]).dtype == np.uint16 for entry in manifest["shards"])
    assert manifest["sources"]["files"] == [str((tmp_path / "docs.jsonl").resolve())]


def test_worker_processes_write_the_same_store(tmp_path, data_dir) -> None:
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl.gz", shakespeare_documents(data_dir), gz=True)))
    one = prepare(source, tmp_path / "one", shard_tokens=700)
    two = prepare(source, tmp_path / "two", shard_tokens=700, workers=2)
    assert [e["sha256"] for e in one.manifest["shards"]] == [e["sha256"] for e in two.manifest["shards"]]


def test_a_stopped_prepare_continues_after_its_last_complete_shard(tmp_path, data_dir, monkeypatch) -> None:
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl", shakespeare_documents(data_dir))))
    whole = prepare(source, tmp_path / "whole", shard_tokens=400, val_fraction=0.2)
    written = []
    real_write = store_writer._Writer.write_shard

    def killed_after_three(self, split):
        if len(written) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between two shards
        written.append(split)
        real_write(self, split)

    monkeypatch.setattr(store_writer._Writer, "write_shard", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tmp_path / "store", shard_tokens=400, val_fraction=0.2)
    assert not (tmp_path / "store" / MANIFEST).exists()  # a half-prepared folder never looks complete
    with pytest.raises(UserError, match="manifest"):
        open_store(tmp_path / "store")
    (tmp_path / "store" / ".train-000003.npy.1234abcd.tmp").write_bytes(b"half a shard")
    monkeypatch.setattr(store_writer._Writer, "write_shard", real_write)
    encoded = []
    real_encode = store_writer._encode
    monkeypatch.setattr(store_writer, "_encode", lambda batch: encoded.extend(batch) or real_encode(batch))
    again = prepare(source, tmp_path / "store", shard_tokens=400, val_fraction=0.2)
    assert [e["sha256"] for e in again.manifest["shards"]] == [e["sha256"] for e in whole.manifest["shards"]]
    assert len(encoded) < 60  # the documents of the three shards already written were not tokenized again
    assert not list((tmp_path / "store").glob(".*.tmp")) and not (tmp_path / "store" / "prepare-state.json").exists()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(("bad_line", "expected"), [
    (b'{"text": "cut', "line 3 is not JSON"),
    (b'{"text": "caf\xe9"}', "line 3 is not UTF-8"),
    (b'{"text": "\xed\xa0\x80"}', "line 3 is not UTF-8"),  # a surrogate's bytes: no UTF-8, whatever json guesses
    (b'{"body": "x"}', "line 3 has no 'text' field"),
    (b'{"text": 7}', "line 3: 'text' is int, not text"),
])
def test_a_bad_jsonl_line_parsed_by_a_worker_is_one_error_naming_it(tmp_path, workers, bad_line, expected) -> None:
    """JSONL lines are parsed in the worker processes; a bad one still stops the prepare with its line number."""
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b'{"text": "one"}\n\n' + bad_line + b'\n{"text": "two"}\n')
    with pytest.raises(UserError, match=f"docs.jsonl {expected}"):
        prepare(open_source(str(docs)), tmp_path / "store", workers=workers)
    assert not (tmp_path / "store" / MANIFEST).exists()


def test_jsonl_lines_end_and_blank_lines_are_skipped_as_in_text_mode(tmp_path) -> None:
    """Lines end at \\n, \\r\\n or \\r, and a line of any Unicode whitespace is skipped, as Python's text mode and
    str.strip() see them: the same documents, numbered the same, as when lines were read as text."""
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes('{"text": "a"}\r{"text": "b"}\r\n\u00a0\u3000\n\x1c\n{"text": "c"}\n \n{"text": 7}'.encode())
    pieces = list(open_source(str(docs)).pieces())
    assert [piece.content() for piece in pieces[:3]] == ["a", "b", "c"]
    assert [piece.where.rsplit(" ", 1)[1] for piece in pieces] == ["1", "2", "5", "7"]


def test_prepare_never_writes_over_what_it_did_not_make(tmp_path, data_dir) -> None:
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl", shakespeare_documents(data_dir, 5))))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare(source, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    prepare(source, tmp_path / "store")
    with pytest.raises(UserError, match="already holds a token store"):
        prepare(source, tmp_path / "store")


def test_a_long_text_file_is_one_document_cut_into_pieces(tmp_path, data_dir) -> None:
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    store = prepare(open_source(str(data_dir / "tinyshakespeare.txt")), tmp_path / "store", val_fraction=0.0,
                    shard_tokens=50_000)
    ids = store.train[0:len(store.train)]
    assert len(text) > PIECE_CHARS and ids[0] == GPT2_EOT_ID and np.count_nonzero(ids == GPT2_EOT_ID) == 1
    assert GPT2Tokenizer().decode(ids[1:].tolist()) == text
    assert store.manifest["documents"] == {"train": 1, "val": 0}


def test_a_folder_lists_its_files_and_does_not_follow_links_out(tmp_path, data_dir) -> None:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First document.\n")
    (folder / "sub" / "b.jsonl").write_text(json.dumps({"text": "Second."}) + "\n")
    (tmp_path / "secret.txt").write_text("not the corpus\n")
    os.symlink(tmp_path / "secret.txt", folder / "link.txt")
    os.symlink(folder / "a.txt", folder / "inside.txt")
    source = open_source(str(folder))
    names = [path.name for path in source.files]
    assert names == ["a.txt", "inside.txt", "b.jsonl"]
    store = prepare(source, tmp_path / "store", val_fraction=0.0)
    assert store.manifest["documents"]["train"] == 3
    assert "not the corpus" not in GPT2Tokenizer().decode(store.train[0:len(store.train)].tolist())


@pytest.mark.parametrize("start_stop", [(0, 1), (0, 37), (495, 512), (990, 1000)])
def test_sharded_tokens_read_across_shard_boundaries(start_stop) -> None:
    whole = np.arange(1000, dtype=np.uint16)
    sharded = ShardedTokens([whole[:300], whole[300:301], whole[301:700], whole[700:]])
    start, stop = start_stop
    assert np.array_equal(sharded[start:stop], whole[start:stop])
    rows = np.array([[0, 299, 300], [301, 699, 999]])
    assert np.array_equal(sharded[rows], whole[rows]) and len(sharded) == 1000
    with pytest.raises(IndexError):
        sharded[np.array([1000])]


def test_parquet_in_fineweb_schema_trains_with_the_fineweb_recipe(tmp_path, data_dir) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (pip install 'gptforge[data]')")
    import pyarrow.parquet as pq

    documents = shakespeare_documents(data_dir, 80)
    table = pa.table({"text": documents, "id": [f"<urn:{i}>" for i in range(80)], "dump": ["CC-MAIN"] * 80,
                      "url": [f"https://example.org/{i}" for i in range(80)], "score": [3.1] * 80})
    pq.write_table(table, tmp_path / "000_00000.parquet")
    config = build_config("fineweb-gpt2", flags={
        "data": str(tmp_path / "000_00000.parquet"), "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32,
        "batch_size": 2, "tokens_per_step": 128, "max_steps": 3, "warmup_steps": 1, "eval_interval": 2,
        "eval_batches": 1, "hellaswag_interval": 0, "val_fraction": 0.1, "device": "cpu", "progress": False,
        "out": str(tmp_path / "run")})
    assert (config.train.learning_rate, config.train.warmup_steps, config.train.weight_decay) == (6e-4, 1, 0.1)
    outcome = train(config)
    saved = json.loads((outcome.run_dir / "config.json").read_text())
    assert saved["corpus"]["store"] is True and Path(saved["corpus"]["path"]).parent.name == "stores"
    assert "val loss" in (outcome.run_dir / "train.log").read_text()


def test_a_run_on_a_store_resumes_and_evaluates_with_the_source_deleted(tmp_path, data_dir, capsys) -> None:
    source_file = write_jsonl(tmp_path / "docs.jsonl", shakespeare_documents(data_dir, 200))
    status, out, err = run_main(["prepare", "--data", str(source_file), "--out", str(tmp_path / "store"),
                                 "--shard-tokens", "2000", "--val-fraction", "0.1", "--workers", "1"], capsys)
    assert status == 0, err
    assert "200 documents" in out and "store:" in out
    source_file.unlink()
    flags = ["--preset", "tiny", "--tokenizer", "gpt2", "--data", str(tmp_path / "store"), "--device", "cpu",
             "--batch-size", "2", "--eval-interval", "2", "--eval-batches", "1", "--no-progress"]
    status, _, err = run_main(["train", *flags, "--max-steps", "2", "--out", str(tmp_path / "run")], capsys)
    assert status == 0, err
    status, _, err = run_main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "4"], capsys)
    assert status == 0, err
    assert "resuming" in (tmp_path / "run" / "train.log").read_text()
    status, out, err = run_main(["eval", "--run", str(tmp_path / "run"), "--device", "cpu", "--max-batches", "2"],
                                capsys)
    assert status == 0 and "val split" in out, err
    shard = next((tmp_path / "store").glob("train-000001.npy"))
    with shard.open("ab") as file:
        file.write(b"\0\0")
    assert_one_error(*run_main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "6"], capsys)[::2],
                     "train-000001.npy", "prepare the store again")


def test_a_resume_refuses_a_store_prepared_again(tmp_path, data_dir, capsys) -> None:
    source = open_source(str(write_jsonl(tmp_path / "docs.jsonl", shakespeare_documents(data_dir, 100))))
    prepare(source, tmp_path / "store", shard_tokens=3000)
    flags = ["--preset", "tiny", "--tokenizer", "gpt2", "--data", str(tmp_path / "store"), "--device", "cpu",
             "--batch-size", "2", "--eval-interval", "0", "--no-progress", "--max-steps", "2"]
    assert run_main(["train", *flags, "--out", str(tmp_path / "run")], capsys)[0] == 0
    shutil.rmtree(tmp_path / "store")
    prepare(source, tmp_path / "store", shard_tokens=2000)
    assert_one_error(*run_main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "4"], capsys)[::2],
                     "not the one this run trained on")


@pytest.mark.parametrize(("argv", "expected"), [
    (["--data", "hf:nobody-here/no-such-dataset"], "cannot stream hf:nobody-here/no-such-dataset"),
    (["--data", "MISSING.jsonl"], "file not found"),
    (["--data", "DOCS", "--text-field", "body"], "no 'body' field"),
    (["--data", "DOCS", "--tokenizer", "char"], "the char tokenizer reads text files"),
    (["--data", ""], "--data is empty"),
])
def test_prepare_refusals_are_one_line(tmp_path, monkeypatch, capsys, argv, expected) -> None:
    datasets = pytest.importorskip("datasets", reason="hf: sources need the datasets library "
                                   "(pip install 'gptforge[data]')")
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)  # this machine's state, without the retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    docs = write_jsonl(tmp_path / "docs.jsonl", ["one", "two"])
    argv = [str(docs) if arg == "DOCS" else str(tmp_path / arg) if arg == "MISSING.jsonl" else arg for arg in argv]
    assert_one_error(*run_main(["prepare", *argv, "--out", str(tmp_path / "store"), "--workers", "1"], capsys)[::2],
                     expected)
