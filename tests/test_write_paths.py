"""Every command that writes, on a folder it may not write to or a disk that is full: one error line, exit 2,
nothing half-written and nothing saved changed. Writes: `train --resume` (its lock and logs), `export
--format hf|space`, the token cache under GPTFORGE_CACHE_DIR (`prepare`, `train` on a new corpus).

A read-only folder is a read-only bind mount where this process may mount (root: chmod does not stop
root), else chmod (which stops everyone else). A full disk is a small tmpfs; without the right to
mount, those cases are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import assert_one_error, mount, mount_refusal, run_main, snapshot, write_corpus
from gptforge.run_dir import LOCK_FILE

CORPUS_CHARS = 3_000


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """make(path) -> the folder (or file) becomes read-only for this process until the test ends."""
    undo: list[Callable[[], None]] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
            for path in modes:
                path.chmod(modes[path] & ~0o222)
            undo.append(lambda: [path.chmod(mode) for path, mode in modes.items()])
            return
        if reason := mount_refusal():
            pytest.skip(f"root ignores chmod and this process cannot mount a read-only bind ({reason})")
        mount("--bind", str(folder), str(folder))
        undo.append(lambda: subprocess.run(["umount", "-l", str(folder)], check=True, timeout=30))
        mount("-o", "remount,ro,bind", str(folder))

    yield make
    for action in reversed(undo):
        action()


@pytest.fixture
def full_disk() -> Iterator[Callable[[Path, int], None]]:
    """make(folder, size) -> folder becomes an empty filesystem of `size` bytes."""
    mounted: list[Path] = []

    def make(folder: Path, size: int) -> None:
        if reason := mount_refusal():
            pytest.skip(f"a full disk needs a tmpfs mount, which this process may not make ({reason})")
        folder.mkdir(parents=True, exist_ok=True)
        mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        mounted.append(folder)

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=True, timeout=30)


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    return write_corpus(tmp_path, data_dir, CORPUS_CHARS)


def test_resume_of_a_read_only_run_is_one_line_and_changes_nothing(
        tiny_run: Path, tmp_path: Path, read_only: Callable[[Path], None], capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    read_only(run)
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "22"], capsys)[::2], str(run))
    assert snapshot(run) == before


def test_resume_with_a_read_only_train_log_is_one_line_naming_it(
        tiny_run: Path, tmp_path: Path, read_only: Callable[[Path], None], capsys: pytest.CaptureFixture[str]) -> None:
    """The folder is writable (the lock is taken) but its log is not: refused before any step or save."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    read_only(run / "train.log")
    before = snapshot(run)
    assert_one_error(*run_main(["train", "--resume", str(run), "--max-steps", "22"], capsys)[::2],
                     "cannot write the logs", "train.log")
    after = snapshot(run)
    assert after.pop(LOCK_FILE) == f"{os.getpid()}\n".encode()  # the lock's note of who holds it is all that changed
    before.pop(LOCK_FILE, None)
    assert after == before


@pytest.mark.parametrize("export_format", ["hf", "space"])
def test_export_into_a_read_only_folder_is_one_line(export_format: str, tiny_run: Path, tmp_path: Path,
                                                    read_only: Callable[[Path], None],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "exports"
    parent.mkdir()
    read_only(parent)
    for out in (parent / "new", parent / "deeper" / "new"):
        argv = ["export", "--run", str(tiny_run), "--format", export_format, "--out", str(out)]
        assert_one_error(*run_main(argv, capsys)[::2], str(out), "nothing was written")
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("export_format", ["hf", "space"])
@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(export_format: str, share: float, tiny_run: Path,
                                                                tmp_path: Path, full_disk: Callable[[Path, int], None],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Disks that hold a share of the export: it runs out in the weights or in the files after them."""
    whole = tmp_path / "whole"
    assert run_main(["export", "--run", str(tiny_run), "--format", export_format, "--out", str(whole)], capsys)[0] == 0
    blocks = sum(-(-p.stat().st_size // 4096) * 4096 for p in whole.rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    full_disk(disk, int(blocks * share) // 4096 * 4096 or 4096)
    argv = ["export", "--run", str(tiny_run), "--format", export_format, "--out", str(disk / "out")]
    assert_one_error(*run_main(argv, capsys)[::2], "the disk is full", "nothing was written")
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_read_only_token_cache_is_one_line(command: str, corpus: Path, tmp_path: Path,
                                             read_only: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(cache))
    read_only(cache)
    out = tmp_path / "run"
    argv = (["prepare", "--data", str(corpus), "--tokenizer", "char"] if command == "prepare" else
            ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
             "--no-progress", "--out", str(out)])
    assert_one_error(*run_main(argv, capsys)[::2], "cannot cache the tokens", "GPTFORGE_CACHE_DIR")
    assert not out.exists()


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_full_token_cache_is_one_line_and_leaves_no_half_cache(command: str, data_dir: Path, tmp_path: Path,
                                                                 full_disk: Callable[[Path, int], None],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"  # 200k characters: 200 KB of token ids (uint8 for a char vocabulary)
    corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000])
    cache = tmp_path / "cache"
    full_disk(cache, 64 * 1024)
    monkeypatch.setenv("GPTFORGE_CACHE_DIR", str(cache))
    out = tmp_path / "run"
    argv = (["prepare", "--data", str(corpus), "--tokenizer", "char"] if command == "prepare" else
            ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
             "--no-progress", "--out", str(out)])
    assert_one_error(*run_main(argv, capsys)[::2], "cannot cache the tokens", "the disk is full")
    assert not [p for p in cache.rglob("*") if p.is_file()]
    assert not out.exists()
