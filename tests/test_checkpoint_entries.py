"""A checkpoint in gptforge's format whose entries are missing or of the wrong type is a damaged checkpoint: resume
falls back to the next good one (as for a cut-off file), and sample/eval/export say in one line which entry."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_one_error, examples, run_main
from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.checkpoint_entries import RESUME_ENTRIES, USE_ENTRIES
from gptforge.run_dir import RunDir
from gptforge.train.session import resume_run

ENTRY_SETTINGS = settings(max_examples=examples(80), suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)
                      | st.just(torch.zeros(2)),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                      max_leaves=6)
OPTIONAL_ENTRIES = ("startup_s", "pass_loss", "world_size", "best_loss_split", "best_step")


@pytest.fixture(scope="module")
def good_state(tiny_run: Path) -> dict[str, Any]:
    return load_checkpoint(tiny_run / "checkpoints" / "last.pt")


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """The tiny run with an older good checkpoint, step-1.pt, for a resume to fall back to."""
    copy = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    shutil.copyfile(copy / "checkpoints" / "last.pt", copy / "checkpoints" / "step-1.pt")
    (copy / "checkpoints" / "best.pt").unlink()
    return copy


def write_last(run: Path, state: dict[str, Any]) -> Path:
    return save_checkpoint({key: value for key, value in state.items() if key != "format"},
                           run / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def restorer(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A trainer resumed from a copy of the tiny run: what a resume restores an accepted checkpoint into."""
    copy = shutil.copytree(tiny_run, tmp_path_factory.mktemp("restorer") / "run")
    trainer, log = resume_run(copy, {})
    yield trainer
    log.close()


@ENTRY_SETTINGS
@given(name=st.sampled_from([*RESUME_ENTRIES, *OPTIONAL_ENTRIES]), value=VALUES, drop=st.booleans())
def test_a_resume_restores_last_or_falls_back_naming_the_entry(name: str, value: Any, drop: bool,
                                                               good_state: dict[str, Any], restorer: Any,
                                                               run: Path) -> None:
    state = {key: item for key, item in good_state.items() if not (drop and key == name)}
    if not drop:
        state[name] = value
    write_last(run, state)
    loaded, path, warnings = RunDir(run).load_latest(required=RESUME_ENTRIES)
    if path.name == "last.pt":  # accepted: then every entry restores without an exception
        assert not (drop and name in RESUME_ENTRIES) and warnings == []
        restorer.load_state_dict(loaded)
    else:
        assert path.name == "step-1.pt" and len(warnings) == 1, warnings
        assert f"'{name}' entry" in warnings[0] and "\n" not in warnings[0], warnings


@pytest.mark.parametrize(("name", "value"), [("step", None), ("optimizer", "x"), ("model", {}), ("rng", None),
                                             ("sampler", {"batches_served": "7"}), ("tokenizer", {"name": "bpe"}),
                                             ("best_step", "7")])
def test_train_resume_falls_back_past_a_checkpoint_with_a_bad_entry(name: str, value: Any, good_state: dict,
                                                                    run: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_last(run, {**good_state, name: value})
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--no-progress"], capsys)
    assert status == 0, err
    assert "step-1.pt" in out and f"'{name}' entry" in out + err, (out, err)


@pytest.mark.parametrize("name", ["config", "tokenizer", "optimizer", "step"])
def test_a_missing_entry_is_a_skipped_checkpoint_on_resume(name: str, good_state: dict, run: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    write_last(run, {key: value for key, value in good_state.items() if key != name})
    _, path, warnings = RunDir(run).load_latest(required=RESUME_ENTRIES)
    assert path.name == "step-1.pt" and f"'{name}' entry is missing" in warnings[0]


@pytest.mark.parametrize(("name", "value"), [*((entry, None) for entry in USE_ENTRIES), ("config", {"model": 3}),
                                             ("model", {"x": 1})])
@pytest.mark.parametrize("command", ["sample", "eval", "export"])
def test_using_a_checkpoint_with_a_bad_entry_is_one_line(command: str, name: str, value: Any, good_state: dict,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint({**{k: v for k, v in good_state.items() if k != "format"}, name: value},
                           tmp_path / "odd.pt")
    argv = {"sample": ["sample", "--checkpoint", str(path), "--max-new-tokens", "1", "--device", "cpu"],
            "eval": ["eval", "--checkpoint", str(path), "--device", "cpu"],
            "export": ["export", "--checkpoint", str(path), "--format", "hf", "--out", str(tmp_path / "out")]}[command]
    status, _, err = run_main(argv, capsys)
    assert_one_error(status, err, f"'{name}' entry")
    assert not (tmp_path / "out").exists()
