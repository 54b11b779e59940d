"""`--help` text: a preset's own values as the defaults, the preset table, every flag explained."""

import dataclasses
import re

import pytest

from conftest import run_main
from gptforge.config import PRESETS, GPTConfig, TrainConfig, from_preset, help_of

SHOWN = ("block_size", "n_layer", "n_embd", "batch_size", "learning_rate", "warmup_steps", "max_steps",
         "eval_interval", "tokenizer", "pad_vocab_to")


def train_help(capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    status, out, err = run_main(["train", *flags, "--help"], capsys)
    assert status == 0, err
    return out


def shown_default(help_text: str, flag: str) -> str:
    """The `(default: X)` of FLAG's entry in the options (after the usage lines, which name it too)."""
    options = " ".join(help_text[help_text.index("model settings:"):].split())
    metavar = flag.removeprefix("--").replace("-", "_").upper()
    found = re.search(rf"{flag} {metavar} (?:(?!--).)*?\(default: (.*?)\)", options)
    assert found, flag
    return found.group(1)


@pytest.mark.parametrize("preset", PRESETS)
def test_train_preset_help_shows_that_presets_values_as_defaults(preset: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = from_preset(preset)
    help_text = train_help(capsys, "--preset", preset)
    for name in SHOWN:
        value = getattr(config.model if name in GPTConfig.__dataclass_fields__ else config.train, name)
        assert shown_default(help_text, "--" + name.replace("_", "-")) == str(value), name
    assert f"the defaults shown are {preset}'s" in " ".join(help_text.split())


def test_train_help_without_a_preset_says_where_the_defaults_come_from(capsys: pytest.CaptureFixture[str]) -> None:
    help_text = train_help(capsys)
    assert shown_default(help_text, "--max-steps") == str(TrainConfig().max_steps)
    assert "`train --preset X --help` shows X's" in " ".join(help_text.split())


def test_train_help_ends_with_the_preset_table(capsys: pytest.CaptureFixture[str]) -> None:
    epilog = train_help(capsys).split("recipes (a model and its training settings):", 1)[1]
    listed = [line.split()[0] for line in epilog.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(PRESETS)
    recipe = from_preset("shakespeare-char-cpu")
    line = next(line for line in epilog.splitlines() if line.split()[:1] == ["shakespeare-char-cpu"])
    assert f"block {recipe.model.block_size}" in line and f"{recipe.train.max_steps:,} steps" in line


def test_every_config_flag_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    fields = [(cls, f.name) for cls in (GPTConfig, TrainConfig) for f in dataclasses.fields(cls)]
    assert [name for cls, name in fields if not help_of(cls, name).strip()] == []
    help_text = " ".join(train_help(capsys).split())
    assert "--max-epochs MAX_EPOCHS stop after this many passes over the training split" in help_text
