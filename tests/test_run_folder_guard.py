"""`train --out` never writes into a folder that is not its own: one that holds anything other than a gptforge
run's files (a transformers export, a project folder, `.`) is refused, as `export --out` refuses a non-empty
folder; a run folder equal to, or inside, the --data folder is refused. Nothing in either is changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_main
from gptforge.cli import main
from gptforge.run_dir import RunDir

TINY = ["--preset", "tiny", "--tokenizer", "char", "--device", "cpu", "--max-steps", "1", "--batch-size", "2",
        "--eval-interval", "0", "--sample-tokens", "1", "--no-progress"]

FOREIGN_FOLDERS = {
    "transformers export": {"config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}),
                            "tokenizer.json": "{}", "model.safetensors": "weights"},
    "project folder": {"README.md": "# mine\n", "pyproject.toml": "[project]\n"},
    "another program's config.json": {"config.json": json.dumps({"model": 1, "train": [2]})},
    "a non-JSON config.json": {"config.json": "not json"},
    "a tokenizer.json beside notes": {"tokenizer.json": "{}", "notes.txt": "keep me"},
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("kind", sorted(FOREIGN_FOLDERS))
def test_train_out_refuses_a_folder_that_is_not_a_run_and_changes_nothing(
        kind: str, tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, text in FOREIGN_FOLDERS[kind].items():
        (out / name).write_text(text)
    before = snapshot(out)
    status, _, err = run_main(["train", *TINY, "--data", str(corpus), "--out", str(out)], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "is not a gptforge run" in err, err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(FOREIGN_FOLDERS[kind])


def test_train_out_dot_in_a_project_folder_is_refused(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my app"}')
    monkeypatch.chdir(project)
    status, _, err = run_main(["train", *TINY, "--data", str(corpus), "--out", "."], capsys)
    assert status == 2 and "is not a gptforge run" in err, err
    assert (project / "config.json").read_text() == '{"name": "my app"}' and len(list(project.iterdir())) == 1


def test_a_run_killed_before_its_first_checkpoint_is_still_accepted(tmp_path: Path, corpus: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status, _, err = run_main(["train", *TINY, "--data", str(corpus), "--out", str(out)], capsys)
    assert status == 0, err
    for leftover in (out / "checkpoints").iterdir():  # as if killed before the first checkpoint
        leftover.unlink()
    (out / "checkpoints" / ".last.pt.1234abcd.tmp").write_bytes(b"half")
    assert RunDir(out).foreign_entry() is None
    status, _, err = run_main(["train", *TINY, "--data", str(corpus), "--out", str(out)], capsys)
    assert status == 0, err


@settings(max_examples=12, derandomize=True, deadline=None)
@given(depth=st.lists(st.sampled_from(["runs", "a", "b", "."]), max_size=3), dotdot=st.booleans())
def test_out_equal_to_or_inside_the_data_folder_is_refused(depth: list[str], dotdot: bool, tmp_path_factory:
                                                           pytest.TempPathFactory, data_dir: Path) -> None:
    folder = tmp_path_factory.mktemp("data-out")
    data = folder / "texts"
    data.mkdir()
    (data / "a.txt").write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5000])
    out = data.joinpath(*depth)
    if dotdot:
        out = data / "x" / ".." / out.relative_to(data)
    before = snapshot(data)
    assert main(["train", *TINY, "--data", str(data), "--out", str(out)]) == 2
    assert snapshot(data) == before and [p.name for p in data.iterdir()] == ["a.txt"]


def test_a_symlink_to_the_data_folder_is_refused_too(tmp_path: Path, data_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "texts"
    data.mkdir()
    (data / "a.txt").write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:5000])
    (tmp_path / "link").symlink_to(data)
    status, _, err = run_main(["train", *TINY, "--data", str(data), "--out", str(tmp_path / "link" / "run")], capsys)
    assert status == 2 and "is inside the --data folder" in err, err
    assert [p.name for p in data.iterdir()] == ["a.txt"]
