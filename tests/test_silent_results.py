"""No silent wrong results: `--data ""` is not the current folder, and a local copy of a named dataset is
checked against the dataset's sha256 (as gpt2.tiktoken is), so nothing trains on other text under its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import assert_one_error, run_main

TRAIN = ["--preset", "tiny", "--tokenizer", "char", "--device", "cpu", "--max-steps", "1", "--no-progress"]


@pytest.mark.parametrize("data", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_an_empty_data_is_refused_not_the_current_folder(data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("a text file in the current folder, never asked for\n" * 100)
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(["train", *TRAIN, "--data", data, "--out", str(tmp_path / "never")], capsys)
    assert_one_error(status, err, "--data is empty")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("damage", ["cut", "edited", "empty"])
def test_a_damaged_tinyshakespeare_in_the_data_dir_is_refused(damage: str, data_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    text = (data_dir / "tinyshakespeare.txt").read_bytes()
    copy = folder / "tinyshakespeare.txt"
    copy.write_bytes({"cut": text[: len(text) // 2], "edited": text.replace(b"First", b"Frist", 1),
                      "empty": b""}[damage])
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(folder))
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    status, _, err = run_main(["train", *TRAIN, "--data", "shakespeare", "--out", str(tmp_path / "never")], capsys)
    assert_one_error(status, err, "sha256 mismatch", str(copy))
    assert not (tmp_path / "never").exists()


def test_a_good_tinyshakespeare_copy_is_used(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptforge.data import find_dataset

    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copyfile(data_dir / "tinyshakespeare.txt", folder / "tinyshakespeare.txt")
    monkeypatch.setenv("GPTFORGE_DATA_DIR", str(folder))
    assert find_dataset("shakespeare") == [folder / "tinyshakespeare.txt"]


@pytest.mark.parametrize("newer", ["plain", "gzip"])
@pytest.mark.parametrize("higher", ["plain", "gzip"])
def test_plain_and_gzip_side_by_side_resume_the_higher_step_not_the_newer_file(newer: str, higher: str,
                                                                                tmp_path: Path) -> None:
    import os

    from gptforge.checkpoint import save_checkpoint
    from gptforge.run_dir import RunDir

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    paths = {}
    for kind in ("plain", "gzip"):
        step = 40 if kind == higher else 30
        paths[kind] = save_checkpoint({"model": {}, "step": step}, folder / "last.pt", compress=kind == "gzip")
        moment = 2_000_000 if kind == newer else 1_000_000
        os.utime(paths[kind], (moment, moment))
    state, path, warnings = RunDir(tmp_path / "run").load_latest()
    assert (path, state["step"], warnings) == (paths[higher], 40, [])


@pytest.mark.parametrize(("flags", "refused"), [
    (["--tokens-per-step", "4096", "--grad-accum", "3"], True),  # 4096 / (8 x 128) = 4 micro-batches
    (["--tokens-per-step", "4096", "--grad-accum", "4"], False),
    (["--grad-accum", "3"], False),
    (["--tokens-per-step", "4096"], False),
], ids=["disagree", "agree", "accum-only", "tokens-only"])
def test_tokens_per_step_and_grad_accum_that_disagree_are_one_line(flags: list[str], refused: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gptforge.config import build_config
    from gptforge.errors import UserError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    settings = {"batch_size": 8, "block_size": 128}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        settings[flag.removeprefix("--").replace("-", "_")] = int(value)
    if refused:
        with pytest.raises(UserError, match="--grad-accum 3 disagrees with tokens_per_step 4,096"):
            build_config("tiny", flags=settings)
    else:
        build_config("tiny", flags=settings)


def test_the_disagreement_is_one_line_before_the_run_folder(corpus: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["train", *TRAIN, "--data", str(corpus), "--batch-size", "8", "--block-size", "128",
                               "--tokens-per-step", "4096", "--grad-accum", "3", "--out", str(tmp_path / "never")],
                              capsys)
    assert_one_error(status, err, "disagrees")
    assert not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def run_without_val(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from conftest import tiny_char_config, write_corpus
    from gptforge.train.session import train

    folder = tmp_path_factory.mktemp("no-val")
    corpus = write_corpus(folder, data_dir, 20_000)
    return train(tiny_char_config(folder / "run", data=str(corpus), val_fraction=0.0, max_steps=2)).run_dir


def test_eval_val_on_a_run_without_a_val_split_says_so(run_without_val: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["eval", "--run", str(run_without_val), "--split", "val", "--device", "cpu"], capsys)
    assert_one_error(status, err, "the run had no val split")
    status, out, err = run_main(["eval", "--run", str(run_without_val), "--split", "train", "--device", "cpu",
                                 "--max-batches", "1"], capsys)
    assert status == 0 and "train split" in out, err


def test_eval_val_takes_the_runs_own_fraction_and_refuses_a_larger_one(tiny_run: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from gptforge.fileio import read_json

    own = read_json(tiny_run / "config.json")["train"]["val_fraction"]
    assert own > 0
    status, _, err = run_main(["eval", "--run", str(tiny_run), "--split", "val", "--device", "cpu",
                               "--val-fraction", str(min(own * 2, 0.9))], capsys)
    assert_one_error(status, err, "more than the run's")
    status, _, err = run_main(["eval", "--run", str(tiny_run), "--device", "cpu", "--max-batches", "1"], capsys)
    assert status == 0, err


@pytest.mark.parametrize("damage", ["id-past-vocab", "float-dtype"])
def test_a_token_cache_with_ids_outside_the_vocabulary_is_tokenized_again(damage: str, corpus: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import numpy as np

    from gptforge.data import load_tokens, read_corpus
    from gptforge.tokenizer import build_tokenizer

    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    text = read_corpus(str(corpus))
    tokenizer = build_tokenizer("char", text=text.text)
    tokens, bin_path = load_tokens(text, tokenizer)
    expected = np.array(tokens)
    del tokens
    meta_path = bin_path.with_suffix(".json")
    if damage == "id-past-vocab":
        bad = expected.copy()
        bad[len(bad) // 2] = tokenizer.vocab_size + 5
        bin_path.write_bytes(bad.tobytes())
    else:
        same_size = np.dtype(f"float{expected.dtype.itemsize * 8}")  # the sizes agree: only the kind is wrong
        bin_path.write_bytes(expected.astype(same_size).tobytes())
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "dtype": same_size.name}))
    again, _ = load_tokens(read_corpus(str(corpus)), tokenizer)
    assert np.array_equal(np.array(again), expected)


@pytest.mark.parametrize("local", ["folder", "file"])
def test_a_named_dataset_beside_a_local_one_of_its_name_says_which_is_used(local: str, data_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from gptforge.data import find_dataset

    monkeypatch.chdir(tmp_path)
    if local == "folder":
        (tmp_path / "shakespeare").mkdir()
        (tmp_path / "shakespeare" / "mine.txt").write_text("my own shakespeare\n")
    else:
        (tmp_path / "shakespeare").write_text("my own shakespeare\n")
    capsys.readouterr()
    assert find_dataset("shakespeare") == [data_dir / "tinyshakespeare.txt"]
    warning = capsys.readouterr().err
    assert "named dataset" in warning and "./shakespeare" in warning, warning
    local_files = [path.resolve() for path in find_dataset("./shakespeare")]
    assert local_files == [tmp_path / ("shakespeare/mine.txt" if local == "folder" else "shakespeare")]
    assert capsys.readouterr().err == ""


def test_a_named_dataset_alone_warns_of_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from gptforge.data import find_dataset

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    find_dataset("shakespeare")
    assert capsys.readouterr().err == ""


def test_the_processes_train_nproc_will_launch_count_in_the_agreement(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --nproc 2` checks in the parent, where WORLD_SIZE is not set yet: 4096 tokens a step at 8 x 128
    over 2 processes is 2 micro-batches each, not 4."""
    from gptforge.config import build_config
    from gptforge.errors import UserError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    flags = {"batch_size": 8, "block_size": 128, "tokens_per_step": 4096, "grad_accum": 2}
    assert build_config("tiny", flags=flags, processes=2).train.grad_accum == 2
    with pytest.raises(UserError, match="--grad-accum 2 disagrees"):
        build_config("tiny", flags=flags)
