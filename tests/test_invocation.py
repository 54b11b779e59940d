"""The commands that messages suggest run as printed, in or out of an activated virtual environment."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from gptforge.invocation import gptforge_command


@pytest.fixture
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake .venv/bin with python and the gptforge script, this test's interpreter, and cwd beside it."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "gptforge"):
        (bin_dir / name).write_text("#!/bin/sh\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    return bin_dir


def test_outside_the_activated_venv_the_hint_names_the_venvs_script(venv: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # as after `make train`: .venv/bin is not on PATH
    assert gptforge_command() == ".venv/bin/gptforge"


def test_in_the_activated_venv_the_hint_is_plain_gptforge(venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{venv}:/usr/bin:/bin")
    assert gptforge_command() == "gptforge"


def test_another_gptforge_on_path_is_not_taken_for_this_one(venv: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "gptforge").write_text("#!/bin/sh\n", encoding="utf-8")
    (other / "gptforge").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:/usr/bin:/bin")
    assert gptforge_command() == ".venv/bin/gptforge"


def test_without_a_script_the_hint_runs_the_module(venv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (venv / "gptforge").unlink()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert gptforge_command() == ".venv/bin/python -m gptforge"


def test_the_end_of_training_hint_runs_as_printed(tiny_run: Path) -> None:
    line = next(line for line in (tiny_run / "train.log").read_text(encoding="utf-8").splitlines()
                if "sample more with: " in line)
    argv = shlex.split(line.split("sample more with: ", 1)[1])
    assert shutil.which(argv[0]) is not None, line  # a command this shell can run, with or without the venv on PATH
    assert argv[-3:] == ["sample", "--run", str(tiny_run)]
