"""Hostile JSON and TOML: nested past Python's recursion limit, integers past its 4,300-digit limit, a list or table
where a string belongs, null or {} where a number belongs. Every file gptforge reads (a run's config.json,
tokenizer.json and metrics.jsonl, a transformers folder's config.json, a Space's config.json, tokenizer.json and
facts.json, a --config TOML) is a one-line `error:` or, for the metrics a plot skips, no error at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_one_error, examples, run_main
from gptforge.config import TrainConfig, field_types
from gptforge.errors import UserError
from gptforge.fileio import parse_json
from gptforge.train.plot import plot_run
from gptforge.use.load import load_trained

DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
HUGE_INT = '{"model": ' + "7" * 5_000 + "}"
HOSTILE = {"deep-array": DEEP_ARRAY, "deep-object": DEEP_OBJECT, "5000-digit-int": HUGE_INT}
DERANDOMIZED = settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def exports(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported once as a transformers folder (hf/) and a Space (space/)."""
    folder = tmp_path_factory.mktemp("exports")
    for kind in ("hf", "space"):
        status, _, err = run_main_quiet(["export", "--run", str(tiny_run), "--format", kind, "--out",
                                         str(folder / kind)])
        assert status == 0, err
    return folder


def run_main_quiet(argv: list[str]) -> tuple[int, str, str]:
    """run_main for a module fixture, which cannot take capsys: only the exit status matters there."""
    from gptforge.cli import main

    return main(argv), "", ""


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def copy_export(exports: Path, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exports / kind, tmp_path / kind))


@pytest.mark.parametrize("payload", HOSTILE, ids=list(HOSTILE))
@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_resume_reading_a_hostile_run_file_is_one_line(name: str, payload: str, run: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (run / name).write_text(HOSTILE[payload])
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "21"], capsys)
    assert_one_error(status, err)
    assert name in err and len(err) < 400, err


@pytest.mark.parametrize("payload", HOSTILE, ids=list(HOSTILE))
@pytest.mark.parametrize("name", ["config.json", "gptforge_tokenizer.json"])
def test_a_hostile_file_in_a_transformers_folder_is_one_line(name: str, payload: str, exports: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_export(exports, "hf", tmp_path)
    (folder / name).write_text(HOSTILE[payload])
    status, _, err = run_main(["sample", "--hf", str(folder), "--device", "cpu", "--max-new-tokens", "2"], capsys)
    assert_one_error(status, err)
    assert name in err and len(err) < 400, err


@pytest.mark.parametrize("payload", HOSTILE, ids=list(HOSTILE))
@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "facts.json"])
def test_a_hostile_file_in_a_space_is_a_user_error(name: str, payload: str, exports: Path, tmp_path: Path) -> None:
    folder = copy_export(exports, "space", tmp_path)
    (folder / name).write_text(HOSTILE[payload])
    with pytest.raises(UserError, match=name) as caught:
        load_trained(space=folder, device="cpu")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize("payload", HOSTILE, ids=list(HOSTILE))
def test_parse_json_refuses_every_hostile_text_with_a_value_error(payload: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_json(HOSTILE[payload])
    assert len(str(caught.value)) < 100


# --- metrics.jsonl: a plot skips what it cannot draw, and a finished run still draws its curves -----------------


def test_a_finished_run_draws_its_curves_past_hostile_metrics_lines(run: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as metrics:
        for payload in HOSTILE.values():
            metrics.write(payload + "\n")
        metrics.write('{"kind": "train", "step": ' + "9" * 400 + ', "loss": 1e999}\n')
    (run / "curves.png").unlink(missing_ok=True)
    status, _, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--no-progress", "--plot"], capsys)
    assert status == 0, err
    assert "no curves" not in err and (run / "curves.png").stat().st_size > 0


@settings(max_examples=examples(20), suppress_health_check=[HealthCheck.function_scoped_fixture])  # a plot each
@given(records=st.lists(st.dictionaries(st.sampled_from(["kind", "step", "loss", "val_loss", "lr", "grad_norm",
                                                         "tokens_per_sec", "pass_loss"]),
                                        st.sampled_from(["train", "eval"]) | JSON_VALUES
                                        | st.integers(min_value=10**300, max_value=10**400)), max_size=6))
def test_plot_draws_or_refuses_any_metrics(records: list[dict[str, Any]], tmp_path: Path) -> None:
    folder = tmp_path / "plotted"
    folder.mkdir(exist_ok=True)
    lines = [json.dumps(record) for record in records]
    (folder / "metrics.jsonl").write_text("\n".join(['{"kind": "train", "step": 1, "loss": 2.0}', *lines]) + "\n")
    assert plot_run(folder).stat().st_size > 0


# --- a transformers config.json whose numbers are not numbers --------------------------------------------------


@DERANDOMIZED
@given(key=st.sampled_from(["n_positions", "vocab_size", "n_layer", "n_head", "n_embd", "n_inner",
                            "layer_norm_epsilon"]),
       value=JSON_VALUES | st.integers(min_value=2**63, max_value=10**400))
def test_any_value_for_a_shape_key_loads_or_is_one_line(key: str, value: Any, exports: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "hf"
    if not folder.is_dir():
        shutil.copytree(exports / "hf", folder)
    config = json.loads((exports / "hf" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    status, _, err = run_main(["sample", "--hf", str(folder), "--device", "cpu", "--max-new-tokens", "1"], capsys)
    if status != 0:
        assert_one_error(status, err)
        assert len(err) < 500, err


@pytest.mark.parametrize("value", [None, {}], ids=["null", "empty-table"])
@pytest.mark.parametrize("key", ["n_positions", "vocab_size", "n_layer", "n_head", "n_embd"])
def test_null_or_a_table_for_a_shape_number_is_named(key: str, value: Any, exports: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_export(exports, "hf", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    status, _, err = run_main(["sample", "--hf", str(folder), "--device", "cpu", "--max-new-tokens", "1"], capsys)
    assert_one_error(status, err)
    assert key in err and "not a whole number" in err, err


# --- a --config TOML ---------------------------------------------------------------------------------------------

STRING_SETTINGS = sorted(name for name, kind in field_types(TrainConfig).items() if kind in (str, str | None))
TOML_NOT_STRINGS = st.sampled_from(["[]", "{}", "[1, 2]", '{a = "x"}', '[["nested"]]', "[{a = 1}]"])


@DERANDOMIZED
@given(key=st.sampled_from(STRING_SETTINGS), value=TOML_NOT_STRINGS, table=st.booleans())
def test_a_list_or_table_where_a_string_belongs_is_one_line(key: str, value: str, table: bool, tmp_path: Path,
                                                            corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(("[train]\n" if table else "") + f"{key} = {value}\n")
    status, _, err = run_main(["train", "--config", str(settings_file), "--preset", "tiny", "--data", str(corpus),
                               "--out", str(tmp_path / "never"), "--max-steps", "1"], capsys)
    assert_one_error(status, err)
    assert key in err and not (tmp_path / "never").exists(), err


@pytest.mark.parametrize("text", ["data = " + DEEP_ARRAY, "max_steps = " + "7" * 5_000,
                                  "a = " + "{b = " * 20_000 + "1" + "}" * 20_000],
                         ids=["deep-array", "5000-digit-int", "deep-table"])
def test_a_hostile_toml_is_one_line(text: str, tmp_path: Path, corpus: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(text + "\n")
    status, _, err = run_main(["train", "--config", str(settings_file), "--data", str(corpus), "--out",
                               str(tmp_path / "never")], capsys)
    assert_one_error(status, err)
    assert len(err) < 400 and not (tmp_path / "never").exists(), err


def test_a_huge_integer_in_a_message_is_cut(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(f"max_steps = {10 ** 4000}\n")
    status, _, err = run_main(["train", "--config", str(settings_file), "--data", str(corpus), "--out",
                               str(tmp_path / "never")], capsys)
    assert_one_error(status, err)
    assert "max_steps" in err and len(err) < 400, err
