"""A run folder received from someone else may hold its own files as symbolic links to any file the user can
write: `--resume` (and a new run into a folder killed before its first checkpoint) refuses such a folder in one
line before writing anything, and the files gptforge appends to or locks are opened without following links."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import run_main
from gptforge.errors import UserError
from gptforge.fileio import open_own_file
from gptforge.run_dir import LOCK_FILE

RUN_ENTRIES = ["config.json", "tokenizer.json", "metrics.jsonl", "train.log", "summary.txt", "curves.png",
               LOCK_FILE, "tensorboard", "checkpoints"]
TINY = ["--preset", "tiny", "--tokenizer", "char", "--device", "cpu", "--max-steps", "1", "--batch-size", "2",
        "--eval-interval", "0", "--sample-tokens", "1", "--no-progress"]


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.mark.parametrize("name", RUN_ENTRIES)
def test_resume_refuses_a_run_whose_file_is_a_link_and_the_target_is_untouched(
        name: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = victim(tmp_path)
    entry = run / name
    if name == "checkpoints":  # the link points at a copy of the checkpoints, so only the link is wrong
        shutil.move(str(entry), str(tmp_path / "elsewhere"))
        target = tmp_path / "elsewhere" / "last.pt"
    elif entry.is_dir():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)
    entry.symlink_to(tmp_path / "elsewhere" if name == "checkpoints" else target)
    before = target.read_bytes()
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--sample-tokens", "1"], capsys)
    assert status == 2 and err.count("\n") == 1 and "symbolic link" in err and str(entry) in err, err
    assert target.read_bytes() == before and entry.is_symlink()


@pytest.mark.parametrize("name", ["train.log", "metrics.jsonl", LOCK_FILE])
def test_a_new_run_into_a_folder_with_a_linked_log_or_lock_is_refused(
        name: str, tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(target)
    status, _, err = run_main(["train", *TINY, "--data", str(corpus), "--out", str(out)], capsys)
    assert status == 2 and "symbolic link" in err and err.count("\n") == 1, err
    assert target.read_text() == "precious\n" and sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("name", ["train.log", "summary.txt"])
def test_a_run_file_that_is_a_folder_is_refused(name: str, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / name).unlink(missing_ok=True)
    (run / name).mkdir()
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--sample-tokens", "1"], capsys)
    assert status == 2 and "is not a folder" not in err and "a folder" in err and err.count("\n") == 1, err


def test_open_own_file_never_follows_a_link_even_when_it_appears_after_the_check(tmp_path: Path) -> None:
    target = victim(tmp_path)
    link = tmp_path / "train.log"
    link.symlink_to(target)
    with pytest.raises(UserError, match="symbolic link"):
        open_own_file(link, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises((UserError, OSError)):
        os.close(open_own_file(fifo, os.O_RDWR | os.O_CREAT))
    assert target.read_text() == "precious\n"
