"""A GPT-2 tokenizer file is asked for once: a run trained with --tokenizer-file F, and a transformers folder
exported from gptforge, load offline afterwards with no --tokenizer-file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tiktoken

from conftest import assert_one_error, run_main, write_corpus
from gptforge.config import build_config
from gptforge.interop.hf_read import gpt2_ranks_from_vocab
from gptforge.paths import GPT2_BPE_SHA256
from gptforge.train.session import train

TINY_GPT2 = {"tokenizer": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "device": "cpu",
             "progress": False, "max_steps": 1, "batch_size": 2, "eval_interval": 0, "sample_tokens": 2}


@pytest.fixture
def offline(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No gpt2.tiktoken in the data dir or the cache, and no download: only a copy at a path of the user's."""
    corpus_dir = tmp_path / "data"
    corpus_dir.mkdir()
    write_corpus(corpus_dir, data_dir, 5_000)
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(corpus_dir))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(name: str) -> tiktoken.Encoding:
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    ranks = tmp_path / "mine" / "gpt2.tiktoken"
    ranks.parent.mkdir()
    shutil.copyfile(data_dir / "gpt2.tiktoken", ranks)
    return ranks


def train_with(ranks: Path, out: Path) -> Path:
    flags = {**TINY_GPT2, "data": str(ranks.parents[1] / "data" / "corpus.txt"), "tokenizer_file": str(ranks),
             "out": str(out)}
    return train(build_config("tiny", flags=flags)).run_dir


def sample(capsys: pytest.CaptureFixture[str], *source: str) -> tuple[int, str, str]:
    return run_main(["sample", *source, "--prompt", "ROMEO:", "--max-new-tokens", "3", "--seed", "0",
                     "--device", "cpu"], capsys)


def test_a_run_trained_with_a_tokenizer_file_samples_without_it(offline: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run = train_with(offline, tmp_path / "run")
    assert (tmp_path / "cache" / "gpt2.tiktoken").read_bytes() == offline.read_bytes()  # kept in the cache
    status, out, err = sample(capsys, "--run", str(run))
    assert status == 0 and out.startswith("ROMEO:"), err

    # a fresh cache: the path config.json recorded (absolute) still finds it, from another directory too
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "other-cache"))
    monkeypatch.chdir(tmp_path / "data")
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]["tokenizer_file"] == str(offline)
    status, out, err = sample(capsys, "--run", str(run))
    assert status == 0 and out.startswith("ROMEO:"), err

    # and with the file gone too, one line saying what to pass
    offline.unlink()
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "third-cache"))
    assert_one_error(*sample(capsys, "--run", str(run))[::2], "--tokenizer-file")


def test_a_gpt2_export_samples_offline_from_its_own_vocab(offline: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = train_with(offline, tmp_path / "run")
    status, _, err = run_main(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")], capsys)
    assert status == 0, err
    assert hashlib.sha256(gpt2_ranks_from_vocab(tmp_path / "hf")).hexdigest() == GPT2_BPE_SHA256
    offline.unlink()
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "empty-cache"))  # nothing anywhere but the export
    status, out, err = sample(capsys, "--hf", str(tmp_path / "hf"))
    assert status == 0 and out.startswith("ROMEO:"), err


def test_a_vocab_json_that_is_not_gpt2s_ranks_gives_none(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text('{"a": "not a rank"}', encoding="utf-8")
    assert gpt2_ranks_from_vocab(tmp_path) is None
    (tmp_path / "vocab.json").write_text('["a list"]', encoding="utf-8")
    assert gpt2_ranks_from_vocab(tmp_path) is None
    assert gpt2_ranks_from_vocab(tmp_path / "missing") is None
