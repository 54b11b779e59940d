"""Every numeric setting is range-checked before anything exists, and what the check accepts can be built.

The table is derived from the config's own fields, so a field added without bounds fails here; each
bound is tried just outside (refused: one error line, no run folder) and on its edge (accepted). The
property test draws whole training configs from the bounds and builds a real run from each one it
accepted: nothing that validation lets through may fail later, in the optimizer, the RNG or the sampler.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import examples, run_main
from gptforge.config import (
    INT64_MAX,
    Bounds,
    GPTConfig,
    TrainConfig,
    bounds_of,
    field_types,
    from_preset,
)
from gptforge.errors import UserError
from gptforge.hellaswag import HELLASWAG_FILENAME
from gptforge.paths import cache_dir
from gptforge.train.session import start_run

MODEL_BOUNDS = bounds_of(GPTConfig)
TRAIN_BOUNDS = bounds_of(TrainConfig)  # every int and float field: a test checks that none is missing
CORPUS_CHARS = 3_000
HELLASWAG_SAMPLE = Path(__file__).parent / "fixtures" / "hellaswag_val_sample.jsonl"
TINY_MODEL = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8"]


def numeric_fields(cls: type) -> dict[str, type]:
    """Each int or float field (optional or not) and its number type; bools are settings, not numbers."""
    found = {}
    for name, annotation in field_types(cls).items():
        kinds = (annotation, *typing.get_args(annotation))
        for kind in (int, float):
            if kind in kinds and bool not in kinds:
                found[name] = kind
    return found


ALL_BOUNDS = {**MODEL_BOUNDS, **TRAIN_BOUNDS}
KINDS = {**numeric_fields(GPTConfig), **numeric_fields(TrainConfig)}


def outside(bounds: Bounds, kind: type) -> list[object]:
    """Values just past each end of `bounds` (the end itself where it is open), and NaN and inf for floats."""
    step = 1 if kind is int else 1e-9
    values: list[object] = [bounds.low if bounds.low_open else bounds.low - step]
    if bounds.high != math.inf:
        values.append(bounds.high if bounds.high_open else (bounds.high + 1 if kind is int else bounds.high * 1.5))
    if kind is float:
        values += [math.nan, math.inf, -math.inf]
    return values


def on_edge(bounds: Bounds, kind: type) -> list[object]:
    """The closed ends of `bounds` (the value nearest an open end for floats): all must be accepted."""
    values: list[object] = [bounds.low] if not bounds.low_open else ([bounds.low + 1] if kind is int else [1e-12])
    if bounds.high != math.inf:
        values.append(bounds.high if not bounds.high_open else (bounds.high - 1 if kind is int else 0.999999))
    return values


def test_every_numeric_field_has_bounds() -> None:
    assert set(KINDS) == set(ALL_BOUNDS), f"fields without bounds: {set(KINDS) ^ set(ALL_BOUNDS)}"


BAD_CASES = [(name, value) for name, bounds in ALL_BOUNDS.items() for value in outside(bounds, KINDS[name])]


@pytest.mark.parametrize(("name", "value"), BAD_CASES, ids=[f"{n}={v!r}" for n, v in BAD_CASES])
def test_a_value_outside_its_bounds_is_one_error_line_and_no_run_folder(
        name: str, value: object, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS])
    out = tmp_path / "run"
    text = repr(value) if isinstance(value, float) else str(value)
    if name == "vocab_size":  # the tokenizer sets it, so there is no flag: a config file can still hold one
        (tmp_path / "bad.toml").write_text(f"{name} = {text}\n")
        setting = ["--config", str(tmp_path / "bad.toml")]
    else:
        setting = ["--" + name.replace("_", "-") + "=" + text]  # "=": a negative value is not a flag
    argv = ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
            "--no-progress", "--no-plot", *TINY_MODEL, "--out", str(out), *setting]
    status, _, err = run_main(argv, capsys)
    assert "Traceback" not in err and status == 2, (status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(ALL_BOUNDS))
def test_the_edge_values_of_every_bound_are_accepted(name: str) -> None:
    for value in on_edge(ALL_BOUNDS[name], KINDS[name]):
        config = from_preset("tiny")
        part = config.model if name in MODEL_BOUNDS else config.train
        setattr(part, name, KINDS[name](value))
        if name in ("n_head", "n_embd"):
            config.model.n_embd = config.model.n_head = int(value)  # n_head must divide n_embd
        config.validate()


def drawn(bounds: Bounds, kind: type) -> st.SearchStrategy:
    if kind is int:  # the whole range, with small values often: those are the runs that get built
        low, high = int(bounds.low) + bounds.low_open, int(min(bounds.high, INT64_MAX)) - bounds.high_open
        return st.integers(low, min(high, low + 64)) | st.integers(low, high)
    return st.floats(min_value=bounds.low, max_value=None if bounds.high == math.inf else bounds.high,
                     exclude_min=bounds.low_open, exclude_max=bounds.high_open, allow_nan=False,
                     allow_infinity=False)


OPTIONAL = {name for name, annotation in field_types(TrainConfig).items() if type(None) in typing.get_args(annotation)}


@st.composite
def train_settings(draw: st.DrawFn) -> dict:
    """Every bounded field from its whole range (optional ones sometimes unset); tokens_per_step is mostly
    a whole number of micro-batches (8 tokens per sequence here), sometimes drawn freely."""
    values = {}
    for name, bounds in TRAIN_BOUNDS.items():
        value = drawn(bounds, KINDS[name])
        values[name] = draw(st.none() | value if name in OPTIONAL else value)
    if values["tokens_per_step"] is not None and draw(st.integers(0, 3)):
        values["tokens_per_step"] = values["batch_size"] * 8 * draw(st.integers(1, 4))
    values["sampler"] = draw(st.sampled_from(["sequential", "random"]))
    values["schedule"] = draw(st.sampled_from(["cosine", "constant", "onecycle"]))
    return values


def build_or_refuse(train_settings: dict, dropout: float, tmp_path: Path, data_dir: Path) -> str:
    """start_run on a tiny model with these settings: "built" (and its learning rates finite at every
    milestone), or why it was refused, which must leave no run folder."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS])
    out = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    tokenizer = "char"
    if train_settings.get("hellaswag_interval"):  # HellaSwag needs GPT-2's tokenizer and its val file
        tokenizer = "gpt2"
        shutil.copyfile(HELLASWAG_SAMPLE, cache_dir() / HELLASWAG_FILENAME)
    config = from_preset("tiny")
    config.model = dataclasses.replace(config.model, n_layer=1, n_embd=16, n_head=2, block_size=8, dropout=dropout)
    config.train = dataclasses.replace(config.train, **train_settings, data=str(corpus), tokenizer=tokenizer,
                                       device="cpu", dtype="float32", compile=False, progress=False, out=str(out))
    try:
        trainer, log = start_run(config)
    except UserError as exc:
        assert not out.exists(), "a refused config left a run folder behind"
        return f"refused: {str(exc).split()[0]}"
    try:
        for step in (0, config.train.warmup_steps, config.train.decay_steps, config.train.max_steps):
            assert math.isfinite(trainer.learning_rate(step)), f"learning rate at step {step}"
        trainer.sampler.state_dict()
    finally:
        log.close()
    return "built"


@pytest.mark.parametrize("name", sorted(TRAIN_BOUNDS))
def test_a_run_with_any_setting_on_its_edge_is_built(name: str, tmp_path: Path, data_dir: Path) -> None:
    for value in on_edge(TRAIN_BOUNDS[name], KINDS[name]):
        outcome = build_or_refuse({name: KINDS[name](value)}, 0.0, tmp_path, data_dir)
        assert outcome in ("built", "refused: training", "refused: tokens_per_step", "refused: the"), (value, outcome)


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train_settings=train_settings(), dropout=drawn(MODEL_BOUNDS["dropout"], float))
def test_a_config_that_validation_accepts_builds_a_run(train_settings: dict, dropout: float, tmp_path: Path,
                                                       data_dir: Path) -> None:
    event(build_or_refuse(train_settings, dropout, tmp_path, data_dir))


@pytest.mark.parametrize(("flag", "value"), [("--weight-decay", "inf"), ("--max-steps", "1" + "0" * 400)])
def test_infinite_or_float_overflowing_values_are_one_error_line(flag: str, value: str, tmp_path, capsys) -> None:
    status, _, err = run_main(["train", "--preset", "tiny", "--tokenizer", "char", "--device", "cpu", flag, value,
                               "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# --- choices: declared once, with the field, and implemented by the module that acts on them -----------------


def test_every_declared_choice_is_implemented(data_dir: Path) -> None:
    """Each value a config field's metadata allows works where it is used; a value not declared is refused by
    validation with the declared list."""
    import numpy as np

    from gptforge.config import choices_of
    from gptforge.data import make_sampler
    from gptforge.device import DTYPES, resolve_parallel
    from gptforge.model import GPT
    from gptforge.tokenizer import build_tokenizer
    from gptforge.train.optim import build_optimizer, learning_rate_at

    tokens = np.arange(200, dtype=np.uint32)
    for kind in choices_of(TrainConfig, "sampler"):
        assert make_sampler(kind, tokens, 2, 8, seed=0).next_batch()[0].shape == (2, 8)
    for name in choices_of(TrainConfig, "tokenizer"):
        assert build_tokenizer(name, text="abc", bpe_file=data_dir / "gpt2.tiktoken").name == name
    for schedule in choices_of(TrainConfig, "schedule"):
        assert learning_rate_at(5, max_lr=1.0, min_lr=0.1, warmup_steps=2, total_steps=10, schedule=schedule) > 0
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8))
    available = [name for name in choices_of(TrainConfig, "optimizer")
                 if name != "muon" or hasattr(__import__("torch").optim, "Muon")]
    for name in available:
        build_optimizer(model, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu",
                        optimizer=name)
    assert set(choices_of(TrainConfig, "dtype")) == {"auto", *DTYPES}
    assert {resolve_parallel(name, 2, DTYPES["float32"]) for name in choices_of(TrainConfig, "parallel")} == \
        {"ddp", "fsdp"}
    for field in ("sampler", "tokenizer", "schedule", "optimizer", "dtype", "parallel"):
        config = TrainConfig(**{field: "nonsense"})
        *others, last = choices_of(TrainConfig, field)
        with pytest.raises(UserError, match=f"unknown {field} 'nonsense'; choose {', '.join(others)} or {last}$"):
            config.validate()
