"""A run's files must agree with its checkpoint: an edited tokenizer.json, a damaged config.json or a corpus
whose text changed is refused by name on resume, touching nothing; the corpus is found again by the
absolute path the run recorded, from any directory and without GPTFORGE_DATA_DIR, by resume and eval.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from conftest import assert_one_error, run_main, snapshot
from gptforge.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--preset", "tiny", "--tokenizer", "char", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--block-size", "16", "--batch-size", "2", "--device", "cpu", "--no-progress", "--eval-interval", "0",
        "--no-plot", "--sample-tokens", "1", "--max-steps", "2"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus that is not found again must fail here, not be downloaded."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A two-step run on a corpus given by a relative path, from its own directory."""
    home = tmp_path_factory.mktemp("home")
    (home / "corpus.txt").write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000])
    with pytest.MonkeyPatch.context() as env:
        env.chdir(home)
        env.setenv("GPTFORGE_CACHE_DIR", str(home / "cache"))
        from gptforge.cli import main

        assert main(["train", *TINY, "--data", "corpus.txt", "--checkpoint-interval", "1", "--out", "run"]) == 0
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the run's directory (corpus and run), and the test working somewhere else."""
    copy = tmp_path / "home"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("cache"))
    state = load_checkpoint(copy / "run" / "checkpoints" / "last.pt")
    assert state["config"]["corpus"]["path"] == str(trained / "corpus.txt")
    for name in ("last.pt", "best.pt"):  # the copy's checkpoints record the copy's corpus
        path = copy / "run" / "checkpoints" / name
        if path.exists():
            state = load_checkpoint(path)
            state["config"]["corpus"]["path"] = str(copy / "corpus.txt")
            path.unlink()
            save_checkpoint(state, path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return copy


EDITED_TOKENIZERS = {
    "other characters": lambda chars: json.dumps({"name": "char", "chars": chars[::-1]}),
    "one character more": lambda chars: json.dumps({"name": "char", "chars": chars + "\u00e9"}),
    "another kind": lambda chars: json.dumps({"name": "gpt2"}),
    "not JSON": lambda chars: "{ this is not json",
}


@pytest.mark.parametrize("edit", sorted(EDITED_TOKENIZERS))
def test_an_edited_tokenizer_json_is_refused_on_resume(edit: str, home: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = home / "run"
    chars = json.loads((run / "tokenizer.json").read_text())["chars"]
    (run / "tokenizer.json").write_text(EDITED_TOKENIZERS[edit](chars))
    before = snapshot(run)
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "4"], capsys)[::2], "tokenizer.json")
    assert snapshot(run) == before


DAMAGED_CONFIGS = {
    "model null": lambda config: json.dumps({**config, "model": None}),
    "model a list": lambda config: json.dumps({**config, "model": [1, 2]}),
    "not a table": lambda config: json.dumps([config]),
    "not JSON": lambda config: "{ cut off",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_CONFIGS))
def test_a_damaged_config_json_is_one_error_line_naming_it(damage: str, home: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = home / "run"
    (run / "config.json").write_text(DAMAGED_CONFIGS[damage](json.loads((run / "config.json").read_text())))
    before = snapshot(run)
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "4"], capsys)[::2], "config.json")
    assert snapshot(run) == before


@pytest.mark.parametrize("part", ["model", "train"])
def test_a_checkpoint_whose_config_is_null_is_one_error_line(part: str, home: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    state = load_checkpoint(home / "run" / "checkpoints" / "last.pt")
    state["config"][part] = None
    damaged = save_checkpoint(state, tmp_path / "damaged.pt")
    assert_one_error(*run_main(["sample", "--checkpoint", str(damaged), "--device", "cpu"], capsys)[::2], part)


CHANGED_CORPORA = {
    "same length, one letter changed": lambda text: text[:-2] + ("x" if text[-2] != "x" else "y") + text[-1],
    "a line more": lambda text: text + "One line more.\n",
    "shorter": lambda text: text[: len(text) // 2],
}


@pytest.mark.parametrize("sampler", ["sequential", "random"])
@pytest.mark.parametrize("change", sorted(CHANGED_CORPORA))
def test_a_corpus_that_changed_is_refused_on_resume_and_by_eval(change: str, sampler: str, home: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the sampler, and however small the change: the sha256 is compared, not the length."""
    run, corpus = home / "run", home / "corpus.txt"
    corpus.write_text(CHANGED_CORPORA[change](corpus.read_text()))
    before = snapshot(run)
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "4", "--sampler", sampler],
                               capsys)[::2], "not the text the run was trained on", "sha256")
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "4", "--data", str(corpus)],
                               capsys)[::2], "sha256")
    assert_one_error(*run_main(["eval", "--run", str(run), "--device", "cpu"], capsys)[::2], "has changed since")
    assert snapshot(run) == before


def test_resume_and_eval_find_the_corpus_from_another_directory(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The run was started with `--data corpus.txt` in its own directory; the test runs elsewhere."""
    run = home / "run"
    status, out, err = run_main(["eval", "--run", str(run), "--device", "cpu", "--max-batches", "1"], capsys)
    assert status == 0 and out.startswith(str(home / "corpus.txt")), err
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "3"], capsys)
    assert status == 0, err
    monkeypatch.chdir(home.parent)  # a relative --data is read from the current directory
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "4", "--data", "home/corpus.txt"],
                              capsys)
    assert status == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    missing = home / "corpus.txt"
    missing.rename(home / "moved.txt")
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "5"], capsys)[::2],
                     str(missing), "is gone")


def test_a_named_dataset_is_found_again_without_gptforge_data_dir(tmp_path: Path, data_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    status, _, err = run_main(["train", *TINY, "--data", "shakespeare", "--out", str(run)], capsys)
    assert status == 0, err
    monkeypatch.delenv("GPTFORGE_DATA_DIR")
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path / "empty-cache"))
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "3"], capsys)
    assert status == 0, err
    status, out, err = run_main(["eval", "--run", str(run), "--device", "cpu", "--max-batches", "1"], capsys)
    assert status == 0 and out.startswith(str(data_dir / "tinyshakespeare.txt")), err
