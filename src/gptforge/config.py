"""Configuration: the model's shape (GPTConfig), the training run (TrainConfig), and named presets.

A run is fully described by one ``RunConfig`` (model + train). Each field declares its help, and the
Bounds or choices it accepts, beside it (``setting``). ``build_config`` makes one in layers — preset,
then a TOML file, then command-line flags — and validates it once; it is written to ``RUN/config.json``
so a run can always be rebuilt from its directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gptforge.errors import UserError
from gptforge.paths import hf_download_command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


INT64_MAX = 2**63 - 1  # counters and sizes end up in tensors and in C++: beyond this they overflow
SEED_MAX = 2**64 - 1  # what torch.manual_seed accepts


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field accepts: `low` to `high`, each end included unless marked open.

    Checked when the config is validated, so a value that the optimizer, the RNG or the allocator
    would refuse later is refused before any file exists.
    """

    low: float
    high: float = INT64_MAX
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high in (INT64_MAX, math.inf):
            if self.low_open:
                return "positive"
            return {0: "zero or more", 1: "a positive integer"}.get(self.low, f"at least {self.low:g}")
        if self.high > 1e6:
            if self.low == 0 and self.low_open:
                return f"positive and at most {self.high:g}"
            return f"between {self.low:g} and {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


# far past any useful rate (1e30 still is allowed, to make a run diverge on purpose), yet warmup's
# rate * (step + 1) stays finite for any step count
MAX_LEARNING_RATE = 1e100
POSITIVE_INT = Bounds(1)
NON_NEGATIVE_INT = Bounds(0)
POSITIVE = Bounds(0, math.inf, low_open=True)
NON_NEGATIVE = Bounds(0, math.inf)
FRACTION = Bounds(0, 1, high_open=True)  # a probability or share that must leave something


def check_bounds(config: object, bounds: dict[str, Bounds]) -> None:
    """Raise a UserError naming the first field whose value is outside its Bounds (None means unset)."""
    hints = field_types(type(config))
    for name, allowed in bounds.items():
        value = getattr(config, name)
        kinds = (hints[name], *typing.get_args(hints[name]))
        if value is None and type(None) in kinds:
            continue
        number = isinstance(value, int) if int in kinds else isinstance(value, (int, float))
        non_finite = isinstance(value, float) and not math.isfinite(value)  # inf passes no range test we want
        if isinstance(value, bool) or not number or non_finite or not allowed.contains(value):
            limit = f" and at most {allowed.high}" if number and allowed.high == INT64_MAX and value > INT64_MAX \
                else ""
            raise UserError(f"{name} must be {allowed.describe()}{limit}, got {short_repr(value)}")


class UnknownChoice(UserError):
    """A name outside a field's declared choices: validation and the modules that dispatch on it say the same."""

    def __init__(self, name: str, value: Any, choices: tuple[str, ...]) -> None:
        super().__init__(f"unknown {name} {short_repr(value)}; choose {', '.join(choices[:-1])} or {choices[-1]}")

def setting(default: Any, help: str, *, bounds: Bounds | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its `--help` text, the Bounds of a number or the choices of a name: declared once,
    beside the field, and read by the CLI's help and by `check_fields`."""
    return field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices})


def check_fields(config: object) -> None:
    """Refuse the first field outside its declared Bounds or choices, naming what it accepts."""
    for item in fields(config):
        value, choices = getattr(config, item.name), item.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UnknownChoice(item.name, value, choices)
    check_bounds(config, bounds_of(type(config)))


@dataclass
class GPTConfig:
    """The shape of a GPT-2-style model. Field names match nanoGPT's and the HF contract."""

    block_size: int = setting(1024, "context length in tokens", bounds=POSITIVE_INT)
    vocab_size: int = setting(50304, "vocabulary size (derived from the tokenizer when training)", bounds=POSITIVE_INT)
    n_layer: int = setting(12, "transformer blocks", bounds=POSITIVE_INT)
    n_head: int = setting(12, "attention heads (must divide n_embd)", bounds=POSITIVE_INT)
    n_embd: int = setting(768, "embedding width", bounds=POSITIVE_INT)
    dropout: float = setting(0.0, "dropout probability", bounds=FRACTION)
    bias: bool = setting(True, "biases in Linear and LayerNorm layers (GPT-2 has them)")

    def validate(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )


GPT2_VOCAB_SIZE = 50257

# The published GPT-2 sizes (exact vocabulary; padding is applied when a run is built) and small
# models for CPUs and tests.
MODEL_PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=GPT2_VOCAB_SIZE),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024, vocab_size=GPT2_VOCAB_SIZE),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280, vocab_size=GPT2_VOCAB_SIZE),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600, vocab_size=GPT2_VOCAB_SIZE),
    # a small BPE model that trains on a laptop CPU in minutes
    "gpt2-mini": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=GPT2_VOCAB_SIZE),
    # nanoGPT's CPU character model shape
    "char-small": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
    # for tests: seconds on two CPU cores
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65),
}


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Round the vocabulary up to a multiple (64 gives 50,304 for GPT-2) for faster matmuls."""
    if multiple <= 1:
        return vocab_size
    return math.ceil(vocab_size / multiple) * multiple


MUON_FSDP_ERROR = ("--optimizer muon orthogonalises whole matrices and FSDP holds shards of them; use --parallel "
                   "ddp (or one process) with Muon, or --optimizer adamw with FSDP")


@dataclass
class TrainConfig:
    """Everything about a training run except the model's shape. Each field is a `--flag`."""

    data: str = setting("shakespeare", "named dataset (shakespeare, fineweb-edu), a UTF-8 text file, a folder of .txt "
                        "files, a token store (gptforge prepare --out), or documents (.jsonl[.gz], .parquet, hf:NAME) "
                        "prepared into a store in the cache")
    tokenizer: str = setting(
        "gpt2", "gpt2 (GPT-2 BPE via tiktoken) or char (built from the corpus)", choices=("gpt2", "char"))
    tokenizer_file: str | None = setting(None, "path to gpt2.tiktoken when offline")
    pad_vocab_to: int = setting(
        64, "pad the vocabulary up to a multiple of this (1 keeps it exact)", bounds=POSITIVE_INT)
    val_fraction: float = setting(0.1, "share of tokens held out for validation (0 allowed); a token store's val "
                                  "documents are chosen when it is prepared", bounds=FRACTION)
    sampler: str = setting(
        "sequential",
        "sequential (epochs of consecutive windows) or random (nanoGPT)",
        choices=("sequential", "random"))

    batch_size: int = setting(16, "sequences per micro-batch (per process)", bounds=POSITIVE_INT)
    grad_accum: int = setting(
        1, "micro-batches per optimizer step (derived when tokens_per_step is set)", bounds=POSITIVE_INT)
    tokens_per_step: int | None = setting(
        None, "global tokens per optimizer step; sets grad_accum", bounds=POSITIVE_INT)

    optimizer: str = setting(
        "adamw",
        "adamw, or muon (torch >= 2.9): Muon for the blocks' 2-D weights, AdamW for embeddings, biases "
        "and norms; one learning rate and schedule serve both; not with --parallel fsdp",
        choices=("adamw", "muon"))
    learning_rate: float = setting(6e-4, "peak learning rate", bounds=Bounds(0, MAX_LEARNING_RATE, low_open=True))
    min_lr_ratio: float = setting(0.1, "cosine decays to learning_rate * min_lr_ratio", bounds=Bounds(0, 1))
    warmup_steps: int = setting(100, "linear warmup steps", bounds=NON_NEGATIVE_INT)
    schedule: str = setting("cosine", "cosine, constant, or onecycle", choices=("cosine", "constant", "onecycle"))
    decay_steps: int | None = setting(
        None,
        "length of the schedule; defaults to max_steps, fixed when the run starts (a resume with more "
        "steps continues at the lowest rate unless this is raised too)",
        bounds=POSITIVE_INT)
    weight_decay: float = setting(0.1, "AdamW weight decay on 2D+ tensors", bounds=NON_NEGATIVE)
    beta1: float = setting(0.9, "AdamW beta1", bounds=FRACTION)
    beta2: float = setting(0.95, "AdamW beta2", bounds=FRACTION)
    grad_clip: float = setting(1.0, "0 disables clipping", bounds=NON_NEGATIVE)
    loss_chunks: int = setting(
        1,
        "compute training's output layer and loss in N chunks of tokens, so all the logits are never "
        "held at once (1: in one piece)",
        bounds=POSITIVE_INT)

    max_steps: int = setting(5000, "optimizer steps to train for", bounds=POSITIVE_INT)
    max_epochs: float | None = setting(
        None,
        "stop after this many passes over the training split (fractions such as 0.5 allowed; none: no "
        "limit)",
        bounds=POSITIVE)
    time_budget: float | None = setting(
        None, "wall-clock seconds in the training loop (steps, evals, samples, saves) before stopping", bounds=POSITIVE)
    target_loss: float | None = setting(
        None,
        "stop once the mean training loss over the last full pass of the data (the last ceil(corpus "
        "tokens / tokens per step) steps) is below this",
        bounds=POSITIVE)
    require_target: bool = setting(
        False, "exit with status 3 when a --target-loss was not reached (default: 0, the summary says so)")

    log_interval: int = setting(10, "log a line every N steps", bounds=POSITIVE_INT)
    eval_interval: int = setting(250, "evaluate on the val split every N steps (0: never)", bounds=NON_NEGATIVE_INT)
    eval_batches: int = setting(20, "micro-batches per evaluation", bounds=POSITIVE_INT)
    hellaswag_interval: int = setting(
        0, "score HellaSwag val (acc, acc_norm) every N steps into metrics.jsonl and curves.png; GPT-2 tokenizer "
        "only; the file from GPTFORGE_DATA_DIR, the cache or a download (0: never)", bounds=NON_NEGATIVE_INT)
    sample_interval: int = setting(0, "0 disables periodic samples during training", bounds=NON_NEGATIVE_INT)
    sample_tokens: int = setting(200, "tokens per sample (periodic and final)", bounds=POSITIVE_INT)
    checkpoint_interval: int = setting(250, "write checkpoints/last.pt every N steps", bounds=POSITIVE_INT)
    checkpoint_every_s: float | None = setting(
        None, "also write last.pt whenever this many seconds of wall time passed since the last save", bounds=POSITIVE)
    keep_checkpoints: int = setting(
        0, "also keep the last K step-N.pt files (0: only last.pt and best.pt)", bounds=NON_NEGATIVE_INT)
    compress_checkpoints: bool = setting(False, "write .pt.gz instead of .pt")
    background_checkpoints: bool = setting(
        True,
        "write checkpoints on a thread while training goes on (the final one is waited for); "
        "--no-background-checkpoints writes them before the next step")

    device: str = setting("auto", "auto (cuda > mps > cpu), cuda, cuda:N, mps, cpu")
    dtype: str = setting(
        "auto",
        "auto (bf16 on capable GPUs, fp16 on older GPUs, fp32 on CPU), float32, bfloat16, float16",
        choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool | None = setting(None, "None: on for CUDA, off elsewhere")
    parallel: str = setting(
        "auto",
        "with several processes (torchrun, --nproc): auto or ddp (a model copy per process) or fsdp "
        "(sharded with FSDP2); one process ignores it",
        choices=("auto", "ddp", "fsdp"))
    seed: int = setting(1337, "random seed", bounds=Bounds(0, SEED_MAX))
    init: str = setting(
        "scratch",
        "scratch (GPT-2 initialisation) or hf:DIR (fine-tune a transformers GPT-2 folder; its "
        "config.json sets the model's shape) or hf:NAME (a hub model such as gpt2, downloaded through "
        "huggingface_hub)")

    out: str | None = setting(None, "run directory; default runs/<timestamp>-<preset>")
    progress: bool = setting(True, "progress bar when the output is a terminal")
    plot: bool = setting(True, "draw RUN/curves.png when training ends (about a second on a CPU); --no-plot "
                               "leaves it to `gptforge plot RUN`, e.g. in a sweep of many short runs")
    tensorboard: bool = setting(
        False, "log metrics for TensorBoard in RUN/tensorboard (pip install 'gptforge[track]')")
    wandb: bool = setting(False, "log metrics to Weights & Biases (pip install 'gptforge[track]')")

    def validate(self) -> None:
        check_fields(self)
        if self.optimizer == "muon" and self.parallel == "fsdp":
            raise UserError(MUON_FSDP_ERROR)
        device_kind = self.device.split(":")[0]
        if device_kind not in ("auto", "cpu", "cuda", "mps"):
            raise UserError(f"unknown device {short_repr(self.device)}; choose auto, cpu, cuda, cuda:N or mps")
        if self.init != "scratch" and not self.init.startswith("hf:"):
            raise UserError(f"unknown init {short_repr(self.init)}; choose scratch or hf:DIR (a transformers GPT-2 "
                            "folder)")
        if self.init.startswith("hf:") and not self.init[3:].strip():
            raise UserError("init names no folder: pass --init-from hf:DIR with DIR a transformers GPT-2 folder "
                            f"(e.g. from `{hf_download_command('gpt2')}` on a machine with internet)")


def bounds_of(cls: type) -> dict[str, Bounds]:
    """The Bounds of each numeric field of a config dataclass, from its metadata."""
    return {f.name: f.metadata["bounds"] for f in fields(cls) if f.metadata.get("bounds") is not None}


def help_of(cls: type, name: str) -> str:
    """A field's `--help` text, declared with the field."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values a field accepts, declared with the field; the modules that act on them implement exactly these."""
    return next(f.metadata["choices"] for f in fields(cls) if f.name == name)


@dataclass
class CorpusRecord:
    """Which text a run trains on: its absolute path (a file or folder) and the sha256 of the text.

    Kept in the config (and so in every checkpoint), so a resume or an eval finds the corpus from any
    directory and notices when the text is not the one the run was trained on.
    """

    path: str
    sha256: str  # of the text; for a token store, of its manifest.json
    store: bool = False  # the path is a token store (gptforge prepare --out), not text


@dataclass
class RunConfig:
    """A whole run: which preset it came from, the model's shape and the training settings."""

    preset: str = "custom"
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    corpus: CorpusRecord | None = None  # set when training starts

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train),
                "corpus": dataclasses.asdict(self.corpus) if self.corpus is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config of a config.json or a checkpoint; a damaged one is a UserError naming the part."""
        if not isinstance(data, dict):
            raise UserError(f"the run's config is a {type(data).__name__}, not a table of settings")
        parts = {name: data.get(name, {}) for name in ("model", "train")}
        for name, part in parts.items():
            if not isinstance(part, dict):
                raise UserError(f"the run's config has {json_name(part)} for {name!r}, not a table of settings")
        config = cls(preset=str(data.get("preset", "custom")))
        apply_overrides(config, {**parts["model"], **parts["train"]})
        corpus = data.get("corpus")
        if isinstance(corpus, dict) and isinstance(corpus.get("path"), str) and isinstance(corpus.get("sha256"), str):
            config.corpus = CorpusRecord(path=corpus["path"], sha256=corpus["sha256"],
                                         store=corpus.get("store") is True)
        return config


def json_name(value: Any) -> str:
    """How a value reads in JSON, for messages about a file: None is `null`."""
    return "null" if value is None else f"a {type(value).__name__}"


# Recipes: a model preset plus training settings. The key names are TrainConfig/GPTConfig fields; a recipe
# tuned for Muon keeps, under WITHOUT_MUON, the settings to use where torch has no torch.optim.Muon.
WITHOUT_MUON = "without_muon"
RECIPES: dict[str, dict[str, Any]] = {
    # The seeds' job: GPT-2 124M on tiny Shakespeare until the mean training loss over a pass of the data is
    # below 0.1 (20 steps of 16 x 1024 tokens). Memorizing wants a moderate peak and a decaying rate: on an H200,
    # lr 3e-4 brought one batch below 0.1 at step 1,107, while 6e-4 stalled at 0.56 after 2,000 steps and 1.5e-3
    # / 3e-3 at 3.7 / 4.1 (a CPU proxy shows why: benchmarks/RESULTS.md). A save every 500 steps (~18 s on an
    # H200) keeps checkpoints under 2% of the training time.
    "shakespeare-gpt2": {
        "model": "gpt2",
        "data": "shakespeare", "tokenizer": "gpt2", "batch_size": 16, "block_size": 1024,
        "val_fraction": 0.0, "learning_rate": 3e-4, "warmup_steps": 50, "max_steps": 2000,
        "target_loss": 0.1, "eval_interval": 0, "checkpoint_interval": 500, "log_interval": 10,
    },
    # nanoGPT's CPU character model and batch. Muon (torch >= 2.9) at 1e-2 reaches nanoGPT's val loss
    # (1.88) in 500 steps instead of its 2,000; on older torch, AdamW at 3e-3 over 1,200 steps
    # (benchmarks/RESULTS.md has both, side by side with nanoGPT).
    "shakespeare-char-cpu": {
        "model": "char-small",
        "data": "shakespeare", "tokenizer": "char", "batch_size": 12, "block_size": 64,
        "pad_vocab_to": 1, "sampler": "random", "optimizer": "muon", "learning_rate": 1e-2, "warmup_steps": 50,
        "max_steps": 500, "beta2": 0.99, "eval_interval": 250, "eval_batches": 20,
        "checkpoint_interval": 250, "log_interval": 50,
        WITHOUT_MUON: {"optimizer": "adamw", "learning_rate": 3e-3, "max_steps": 1200, "eval_interval": 300,
                       "checkpoint_interval": 300},
    },
    # build-nanogpt's run: GPT-2 124M on FineWeb-Edu sample-10BT, 524,288 tokens per step (64 x 1024 x 8 GPUs, or
    # gradient accumulation on fewer), 19,073 steps (10B tokens, one epoch), lr 6e-4 warmed up over 715 steps
    # and cosine-decayed to 10%, weight decay 0.1, val every 250 steps and HellaSwag with it.
    "fineweb-gpt2": {
        "model": "gpt2",
        "data": "fineweb-edu", "tokenizer": "gpt2", "batch_size": 64, "block_size": 1024, "tokens_per_step": 524_288,
        "val_fraction": 0.005, "learning_rate": 6e-4, "min_lr_ratio": 0.1, "warmup_steps": 715, "max_steps": 19_073,
        "weight_decay": 0.1, "eval_interval": 250, "eval_batches": 20, "hellaswag_interval": 250,
        "checkpoint_interval": 1000, "log_interval": 10,
    },
    # Fine-tune a downloaded GPT-2 (its shape replaces the preset's): needs --init-from hf:DIR.
    "shakespeare-finetune": {
        "model": "gpt2", "init": "hf:",
        "data": "shakespeare", "tokenizer": "gpt2", "batch_size": 8, "block_size": 512,
        "learning_rate": 1e-4, "warmup_steps": 20, "max_steps": 200, "eval_interval": 50, "eval_batches": 20,
        "checkpoint_interval": 100, "log_interval": 10,
    },
}

PRESETS = sorted([*MODEL_PRESETS, *RECIPES])


def from_preset(name: str, optimizer: str | None = None) -> RunConfig:
    """A RunConfig for a model preset (default training settings) or a recipe.

    A recipe tuned for Muon takes its WITHOUT_MUON settings where torch has no Muon, or when
    ``optimizer`` (the run's --optimizer) asks for the one those settings were tuned for.
    """
    if name in RECIPES:
        recipe = dict(RECIPES[name])
        fallback = recipe.pop(WITHOUT_MUON, {})
        wanted = optimizer or recipe.get("optimizer")
        if fallback and (wanted == fallback["optimizer"] or not muon_available()):
            recipe.update(fallback)
        config = RunConfig(preset=name, model=dataclasses.replace(MODEL_PRESETS[recipe.pop("model")]))
        apply_overrides(config, recipe)
        return config
    if name in MODEL_PRESETS:
        return RunConfig(preset=name, model=dataclasses.replace(MODEL_PRESETS[name]))
    raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")


def muon_available() -> bool:
    """Whether this torch has PyTorch's own Muon (torch >= 2.9)."""
    import torch

    return hasattr(torch.optim, "Muon")


def preset_table() -> str:
    """One line per preset, for `train --help`: what each recipe trains and each model preset's shape."""
    lines = ["recipes (a model and its training settings):"]
    for name in RECIPES:
        config = from_preset(name)
        model, train = config.model, config.train
        lines.append(f"  {name:22} {RECIPES[name]['model']}, {train.tokenizer} tokenizer, block {model.block_size}, "
                     f"batch {train.batch_size}, lr {train.learning_rate:g}, {train.max_steps:,} steps")
    lines.append("model presets (default training settings):")
    for name, model in MODEL_PRESETS.items():
        lines.append(f"  {name:22} {model.n_layer} layers, {model.n_head} heads, width {model.n_embd}, "
                     f"block {model.block_size}")
    return "\n".join(lines)


def field_types(cls: type) -> dict[str, Any]:
    """The declared type of each dataclass field, resolved from its annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


MODEL_KEYS = {f.name for f in fields(GPTConfig)}


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a value from TOML/JSON/CLI text to the field's declared type, with a clear error."""
    args = typing.get_args(annotation)
    is_optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType)) and type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if is_optional else annotation
    if value is None or (is_optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if is_optional:
            return None
        raise UserError(f"{name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                value = value.replace("_", "").replace(",", "")
                return int(float(value)) if ("e" in value.lower() and float(value).is_integer()) else int(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
            return result
        if base is str:
            if not isinstance(value, str):  # a TOML list or table, a JSON number: never silently str()-ed
                raise TypeError
            return value
    except (TypeError, ValueError, OverflowError):
        kind = getattr(base, "__name__", str(base))
        raise UserError(f"{name} must be {'an' if kind == 'int' else 'a'} {kind}, got {short_repr(value)}") from None
    return value


def short_repr(value: Any, limit: int = 60) -> str:
    """A value as a one-line message shows it: a hostile file's list of a million items, or nested a thousand
    deep, is cut to its type and start."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested past the recursion limit; an int past 4,300 digits
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit - 3]}... (a {type(value).__name__})"


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set fields by name on whichever part (model or train) owns them; unknown keys are errors."""
    model_types, train_types = field_types(GPTConfig), field_types(TrainConfig)
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name in model_types:
            setattr(config.model, name, coerce(name, value, model_types[name]))
        elif name in train_types:
            setattr(config.train, name, coerce(name, value, train_types[name]))
        elif name == "preset":
            continue
        else:
            raise UserError(f"unknown setting {short_repr(key)}")
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config: flat keys, or [model] / [train] tables, plus an optional `preset`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    toml_only = "--config takes a TOML file (`key = value` lines, optional [model] / [train] tables)"
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        raise UserError(f"{path} is not TOML: {toml_only}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UserError(f"cannot parse config file {path} as TOML (it nests arrays or tables too deeply); "
                        f"{toml_only}") from None
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer of more than 4,300 digits
        reason = "it holds an integer of more than 4,300 digits" if "integer string" in str(exc) else exc
        raise UserError(f"cannot parse config file {path} as TOML ({reason}); {toml_only}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def default_preset(device: str | None) -> str:
    """The flagship GPU recipe where a CUDA GPU will be used, the CPU recipe otherwise."""
    import torch

    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    return "shakespeare-gpt2" if use_cuda else "shakespeare-char-cpu"


def build_config(preset: str | None = None, toml: str | Path | None = None,
                 flags: Mapping[str, Any] | None = None, processes: int | None = None) -> RunConfig:
    """The one way a config is made: a preset or recipe, then a TOML file's settings, then flags; validated.
    `processes`: how many the run will have when this process launches them (`train --nproc`).

    With no preset named (by `preset` or the file's `preset` key), the recipe for this machine
    (`default_preset`). A recipe tuned for Muon gets its AdamW settings when --optimizer adamw is asked for.
    """
    flags = dict(flags or {})
    file_settings = load_toml(toml) if toml is not None else {}
    file_preset = file_settings.pop("preset", None)
    name = preset or file_preset or default_preset(flags.get("device", file_settings.get("device")))
    config = from_preset(name, optimizer=flags.get("optimizer", file_settings.get("optimizer")))
    apply_overrides(config, file_settings)
    apply_overrides(config, flags)
    config.validate()
    if "grad_accum" in flags or "grad_accum" in file_settings:
        check_accumulation_agrees(config, processes)
    return config


def check_accumulation_agrees(config: RunConfig, processes: int | None = None) -> None:
    """A --grad-accum asked for beside a tokens_per_step (a flag, the file or the recipe) that derives another:
    one line, not a grad_accum silently replaced. The processes count: those `train --nproc` will launch, or
    torchrun's (WORLD_SIZE)."""
    train = config.train
    if train.tokens_per_step is None:
        return
    world = os.environ.get("WORLD_SIZE", "1")
    world_size = int(world) if world.isdigit() and int(world) > 0 else 1  # a bad one is refused where runs start
    world_size = processes if processes and processes > 0 else world_size
    derived = train.tokens_per_step / (train.batch_size * config.model.block_size * world_size)
    if derived != train.grad_accum:
        raise UserError(f"--grad-accum {train.grad_accum} disagrees with tokens_per_step {train.tokens_per_step:,}, "
                        f"which means grad_accum {derived:g} at batch_size {train.batch_size} x block_size "
                        f"{config.model.block_size}; pass one of them (--tokens-per-step sets grad_accum)")
