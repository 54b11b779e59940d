"""A resume names what it cannot honour: a flag for a setting the run keeps (--out, --tokenizer, --pad-vocab-to,
--val-fraction) is one line, and a hand-edited config.json's training settings are named, not silently
reverted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_error, run_main


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.mark.parametrize(("flag", "value"), [("--out", "elsewhere"), ("--tokenizer", "gpt2"),
                                             ("--pad-vocab-to", "256"), ("--val-fraction", "0.3")])
def test_a_flag_a_resume_cannot_honour_is_named(flag: str, value: str, run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    value = str(tmp_path / value) if flag == "--out" else value
    status, _, err = run_main(["train", "--resume", str(run), flag, value, "--max-steps", "21"], capsys)
    assert_one_error(status, err, f"{flag} {value} cannot change on resume")
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    assert not (tmp_path / "elsewhere").exists()


def test_the_same_value_is_accepted(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((run / "config.json").read_text())
    status, _, err = run_main(["train", "--resume", str(run), "--out", str(run), "--tokenizer",
                               config["train"]["tokenizer"], "--max-steps", "21", "--no-progress"], capsys)
    assert status == 0, err


def test_a_hand_edited_config_json_is_named_not_silently_reverted(run: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((run / "config.json").read_text())
    config["train"]["learning_rate"] = 0.5
    (run / "config.json").write_text(json.dumps(config))
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--no-progress"], capsys)
    assert status == 0, err
    assert "learning_rate 0.5" in out + err and "pass them as flags" in out + err, (out, err)


def test_a_resume_with_only_flags_names_nothing(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--no-progress"], capsys)
    assert status == 0 and "differs from the checkpoint" not in out + err, (out, err)
