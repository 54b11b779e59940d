"""A training session: from a config to a running Trainer, and from a finished Trainer to the files a run keeps.

Everything that can be wrong with the user's input (config, data, tokenizer, resume target) is found
before the run directory is created, so a bad command leaves nothing behind and touches nothing saved.
A config is validated where it enters (start_run, resumed_config); the Runtime is resolved here, once.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptforge.checkpoint_entries import RESUME_ENTRIES
from gptforge.config import MODEL_KEYS, RunConfig, apply_overrides, json_name, padded_vocab_size
from gptforge.data import (
    Corpus,
    check_corpus_size,
    load_tokens,
    make_sampler,
    read_corpus,
    recheck_corpus,
    split_tokens,
)
from gptforge.device import Runtime, resolve_runtime
from gptforge.errors import UserError
from gptforge.fileio import atomic_write_text, parse_json
from gptforge.hellaswag import Example, find_hellaswag, read_examples
from gptforge.hellaswag import check_tokenizer as check_hellaswag_tokenizer
from gptforge.interop.hf_init import prepare_init
from gptforge.invocation import gptforge_command
from gptforge.model import GPT, count_parameters, parameter_table
from gptforge.run_dir import RunDir, create_run_dir, release_run_dirs
from gptforge.sizing import check_fits, training_memory
from gptforge.token_store import ShardedTokens
from gptforge.tokenizer import Tokenizer, build_tokenizer, save_tokenizer, tokenizer_from_dict
from gptforge.train import distributed
from gptforge.train.optim import check_optimizer, stopped_in_warmup_warning, warmup_warning
from gptforge.train.run_log import RunLog
from gptforge.train.run_store import StoreData, new_store_data, resumed_store_data, uses_store
from gptforge.train.trackers import Trackers, check_trackers
from gptforge.train.trainer import Trainer


@dataclass
class TrainOutcome:
    run_dir: Path
    reason: str
    signal: int | None  # the signal that stopped the run, if one did
    last_checkpoint: Path | None
    target_reached: bool | None  # None without a --target-loss
    require_target: bool  # --require-target: a missed target is a failure for the caller


def resolve_accumulation(config: RunConfig, world_size: int) -> None:
    """Derive grad_accum from tokens_per_step, which must be a whole number of micro-batches."""
    train = config.train
    if train.tokens_per_step is None:
        return
    per_micro_step = train.batch_size * config.model.block_size * world_size
    if train.tokens_per_step % per_micro_step:
        nearest = per_micro_step * max(1, round(train.tokens_per_step / per_micro_step))
        raise UserError(
            f"tokens_per_step {train.tokens_per_step:,} is not a multiple of batch_size x block_size x processes "
            f"= {per_micro_step:,}; use a multiple of it, e.g. {nearest:,}"
        )
    train.grad_accum = train.tokens_per_step // per_micro_step


def check_training_fits(config: RunConfig, runtime: Runtime) -> None:
    """Refuse a model or batch that cannot fit in the device's memory before building or writing anything."""
    shards = runtime.world_size if runtime.strategy == "fsdp" else 1
    estimate = training_memory(config.model, config.train.batch_size, shards, config.train.loss_chunks,
                               runtime.precision.dtype.itemsize)
    check_fits(estimate, runtime.device, "training this model",
               "use a smaller --batch-size (raise --grad-accum to keep the tokens per step), --block-size, "
               "--pad-vocab-to, --loss-chunks or model")


def load_data(config: RunConfig, corpus: Corpus, tokenizer: Tokenizer,
              log: RunLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens, cache_path = load_tokens(corpus, tokenizer, progress=config.train.progress)
    train_tokens, val_tokens = split_tokens(tokens, config.train.val_fraction)
    check_corpus_size(train_tokens, config.model.block_size)
    if config.train.val_fraction > 0 and len(val_tokens) <= config.model.block_size:
        log.warn(f"the val split has only {len(val_tokens)} tokens, less than one block of "
                 f"{config.model.block_size + 1}: no evaluation")
    return tokens, train_tokens, val_tokens


def store_tokens(config: RunConfig, store: StoreData, log: RunLog) -> tuple[ShardedTokens, ShardedTokens]:
    """A token store's train and val shards: the val split was chosen by documents when it was prepared."""
    check_corpus_size(store.train, config.model.block_size)
    if len(store.val) <= config.model.block_size:
        log.warn(f"the token store {store.store.path} has {len(store.val):,} val tokens, less than one block of "
                 f"{config.model.block_size + 1}: no evaluation (prepare it with a larger --val-fraction)")
    return store.train, store.val


def open_log(run: RunDir, config: RunConfig, rank: int) -> RunLog:
    train = config.train
    trackers = None
    if rank == 0 and (train.tensorboard or train.wandb):
        trackers = Trackers(run, config.to_dict(), tensorboard=train.tensorboard, wandb=train.wandb)
    return RunLog(run, progress=train.progress, enabled=rank == 0, trackers=trackers)


def initial_model(config: RunConfig, runtime: Runtime) -> GPT:
    """The model with GPT-2's initialisation drawn from the run's seed, on this process's device."""
    torch.manual_seed(config.train.seed)
    return GPT(config.model).to(runtime.device)


def hellaswag_examples(config: RunConfig, tokenizer: Tokenizer) -> list[Example] | None:
    """--hellaswag-interval: the val examples, read (or downloaded) before any file of the run is written."""
    if not config.train.hellaswag_interval:
        return None
    check_hellaswag_tokenizer(tokenizer)
    return read_examples(find_hellaswag())


def build_trainer(config: RunConfig, runtime: Runtime, model: GPT, train_tokens: np.ndarray, val_tokens: np.ndarray,
                  tokenizer: Tokenizer, run: RunDir, log: RunLog, hellaswag: list[Example] | None = None) -> Trainer:
    train = config.train
    sampler = make_sampler(train.sampler, train_tokens, train.batch_size, config.model.block_size, train.seed,
                           runtime.rank, runtime.world_size)
    return Trainer(config, model, runtime, sampler, val_tokens=val_tokens, tokenizer=tokenizer, run=run, log=log,
                   hellaswag=hellaswag)


def start_run(config: RunConfig, *, rank: int = 0, world_size: int = 1) -> tuple[Trainer, RunLog]:
    """A new run: validate the config (the Python API's edge, as build_config is the CLI's), build the tokenizer
    and data, size the vocabulary, then create the run directory."""
    config.validate()
    init = prepare_init(config)  # --init-from hf:DIR: read DIR now and take the model's shape from it
    resolve_accumulation(config, world_size)
    train = config.train
    check_trackers(train.tensorboard, train.wandb)
    runtime = resolve_runtime(train, rank, world_size)  # a missing GPU is an error before any file exists
    if init is not None and runtime.strategy == "fsdp":
        raise UserError("--init-from cannot start a sharded run yet; use --parallel ddp (or one process)")
    check_optimizer(train.optimizer, sharded=runtime.strategy == "fsdp")
    check_out_outside_data(train.out or "runs", train.data)
    if train.tokenizer_file is not None:  # recorded absolute, so sample/eval/export find it from any directory
        train.tokenizer_file = str(Path(train.tokenizer_file).expanduser().resolve())
    store = new_store_data(train) if uses_store(train.data) else None
    if store is None:
        corpus = read_corpus(train.data)  # read and hashed once: the tokenizer, the token cache and the record
        tokenizer = build_tokenizer(train.tokenizer, text=corpus.text if train.tokenizer == "char" else None,
                                    bpe_file=train.tokenizer_file)
    else:
        tokenizer = store.tokenizer
    if init is not None:
        init.check_tokenizer(tokenizer)
    config.model.vocab_size = padded_vocab_size(tokenizer.vocab_size, train.pad_vocab_to)
    if train.decay_steps is None:  # fixed now, so a resume that raises max_steps does not stretch the schedule
        train.decay_steps = train.max_steps
    check_training_fits(config, runtime)
    console = RunLog(None, enabled=rank == 0)
    if store is None:
        tokens, train_tokens, val_tokens = load_data(config, corpus, tokenizer, console)
        config.corpus = corpus.record
    else:
        train_tokens, val_tokens = store_tokens(config, store, console)
        tokens, config.corpus = store.store.all_tokens, store.record
    hellaswag = hellaswag_examples(config, tokenizer)

    def create() -> Path:
        run = create_run_dir(train.out, config.preset)
        run.lock()
        config.train.out = str(run.path)
        run.write_config(config)
        save_tokenizer(tokenizer, run.tokenizer_file)
        return run.path

    run = RunDir(distributed.run_on_rank0(create, rank, world_size))  # the other ranks learn its name
    config.train.out = str(run.path)
    log = open_log(run, config, rank)
    log.begin_session(step=0)
    model = initial_model(config, runtime)
    if init is not None:
        init.checkpoint.load_into(model)
        for note in init.notes:
            log.info(note)
    trainer = build_trainer(config, runtime, model, train_tokens, val_tokens, tokenizer, run, log, hellaswag)
    describe(trainer, len(tokens), len(train_tokens), len(val_tokens),
             source=corpus.describe() if store is None else train.data)
    warning = warmup_warning(train.warmup_steps, train.max_steps)
    if warning is not None:
        log.warn(warning)
    return trainer, log


def check_out_outside_data(out: str | Path, data: str) -> None:
    """Refuse a run folder equal to, or inside, a --data folder: its logs and checkpoints would be written
    among the corpus (and a later run over that folder would read them as training text)."""
    folder = Path(data)
    if not data or not folder.is_dir():
        return
    corpus, run = folder.resolve(), Path(out).resolve()
    if run == corpus or corpus in run.parents:
        where = "is" if run == corpus else "is inside"
        raise UserError(f"--out {out} {where} the --data folder {data}; put the run outside the corpus "
                        "(nothing was written)")


def resumed_config(state: dict[str, Any], overrides: dict[str, Any], run_path: Path) -> RunConfig:
    """The run's config from its checkpoint with the given training flags applied, validated: a resume's edge."""
    config = RunConfig.from_dict(state["config"])
    if "init" in overrides:
        raise UserError("--init-from starts a new run; a resumed run continues from its own checkpoint")
    if "optimizer" in overrides and overrides["optimizer"] != config.train.optimizer:
        raise UserError(f"--optimizer {overrides['optimizer']}: the run was started with {config.train.optimizer} "
                        "and its checkpoint holds that optimizer's state; resume without --optimizer")
    for key in overrides:
        if key.replace("-", "_") in MODEL_KEYS:
            raise UserError(f"--{key.replace('_', '-')} changes the model's shape, which a resumed run cannot do")
    check_fixed_on_resume(config, overrides, run_path)
    apply_overrides(config, overrides)
    config.validate()
    return config


FIXED_ON_RESUME = {  # training settings a resumed run keeps whatever a flag says, and why
    "out": "a run continues in its own folder",
    "tokenizer": "the weights learned the checkpoint's tokenizer",
    "pad_vocab_to": "the embedding's rows are the checkpoint's",
    "val_fraction": "another split would train on the held-out text",
}


def check_fixed_on_resume(config: RunConfig, overrides: dict[str, Any], run_path: Path) -> None:
    """Name each flag a resume cannot honour, instead of recording a value the run does not use."""
    for key, why in FIXED_ON_RESUME.items():
        if key not in overrides:
            continue
        wanted, kept = overrides[key], str(run_path) if key == "out" else getattr(config.train, key)
        same = Path(str(wanted)).expanduser().resolve() == run_path.resolve() if key == "out" else wanted == kept
        if not same:
            raise UserError(f"--{key.replace('_', '-')} {wanted} cannot change on resume ({why}; the run has "
                            f"{kept}); resume without it, or start a new run")


def edited_settings(run: RunDir, config: RunConfig, overrides: dict[str, Any]) -> str | None:
    """A warning naming the training settings a hand-edited config.json holds that the resume does not use
    (the checkpoint's config, with the flags given, is the one the run continues with; flags are not named)."""
    try:
        on_disk = parse_json(run.config_file.read_text(encoding="utf-8")).get("train")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(on_disk, dict):
        return None
    used = config.to_dict()["train"]
    changed = [f"{key} {on_disk[key]!r} (using {used[key]!r})" for key in sorted(on_disk)
               if key in used and key not in (*overrides, "out") and on_disk[key] != used[key]]
    if not changed:
        return None
    return (f"{run.config_file} differs from the checkpoint's settings: {', '.join(changed)}; the checkpoint's are "
            "used: pass them as flags to change them")


def resume_run(run_dir: str | Path, overrides: dict[str, Any], *, rank: int = 0,
               world_size: int = 1) -> tuple[Trainer, RunLog]:
    """Continue a run from its newest good checkpoint; training settings may change (e.g. max_steps)."""
    run = RunDir(Path(run_dir))
    run.require_folder(checkpoint_flag=False)  # train has no --checkpoint: a file is pointed to its run's folder
    run.check_no_links()  # before its files are read or written: a received run may link them anywhere
    state, path, warnings = run.load_latest(required=RESUME_ENTRIES)
    check_checkpoint_fits_run(run, state, path)
    config = resumed_config(state, overrides, run.path)
    edited = edited_settings(run, config, overrides)  # the flags given are left out of the comparison
    config.train.out = str(run.path)
    saved_world_size = state.get("world_size", 1)
    if saved_world_size != world_size:  # before anything derived from the number of processes
        raise UserError(f"the checkpoint was written by {saved_world_size} process"
                        f"{'es' if saved_world_size > 1 else ''}, this run has {world_size}; resume with "
                        "the same number of processes (torchrun --nproc_per_node, or gptforge train --nproc)")
    resolve_accumulation(config, world_size)
    runtime = resolve_runtime(config.train, rank, world_size)
    check_training_fits(config, runtime)
    check_out_outside_data(run.path, config.train.data)
    tokenizer = tokenizer_from_dict(state["tokenizer"], bpe_file=config.train.tokenizer_file)
    check_tokenizer_file(run.tokenizer_file, tokenizer, path)
    console = RunLog(None, enabled=rank == 0)
    if config.corpus is not None and config.corpus.store:
        store = resumed_store_data(config.corpus, config.train, given_data="data" in overrides)
        train_tokens, val_tokens = store_tokens(config, store, console)
        tokens, source = store.store.all_tokens, config.train.data
    else:
        corpus = resume_corpus(config, given_data="data" in overrides)
        config.corpus = corpus.record
        tokens, train_tokens, val_tokens = load_data(config, corpus, tokenizer, console)
        source = corpus.describe()
    hellaswag = hellaswag_examples(config, tokenizer)
    check_trackers(config.train.tensorboard, config.train.wandb)
    distributed.run_on_rank0(run.lock, rank, world_size)  # before anything is written
    log = open_log(run, config, rank)
    log.begin_session(step=state["step"])
    for warning in [*warnings, *([edited] if edited else [])]:
        log.warn(warning)
    train = config.train
    if train.schedule != "constant" and train.decay_steps is not None and train.max_steps > train.decay_steps:
        log.info(f"the learning rate schedule ends at step {train.decay_steps}: later steps train at the lowest "
                 f"rate ({train.learning_rate * train.min_lr_ratio:.2e}); pass --decay-steps to stretch it")
    trainer = build_trainer(config, runtime, initial_model(config, runtime), train_tokens, val_tokens, tokenizer,
                            run, log, hellaswag)
    trainer.load_state_dict(state)
    if world_size > 1:  # each process picked the newest checkpoint it could read: they must have found the same
        newest, minus_oldest = distributed.max_over_ranks([trainer.step, -trainer.step], trainer.device)
        if newest != -minus_oldest:
            raise UserError(f"the processes found different newest checkpoints in {run.path} (steps "
                            f"{-minus_oldest:.0f} to {newest:.0f}); every process must see the same files: put "
                            "--out on a filesystem they all share")
    if rank == 0:
        run.write_config(config)
    log.info(f"resuming {run.path} from {path.name} at step {trainer.step} "
             f"({trainer.tokens_seen:,} tokens seen, {trainer.elapsed_s:.1f}s trained)")
    describe(trainer, len(tokens), len(train_tokens), len(val_tokens), source)
    return trainer, log


def check_checkpoint_fits_run(run: RunDir, state: dict, path: Path) -> None:
    """Refuse a checkpoint whose model is not the one the run's config.json describes.

    A resumed run takes its config from the checkpoint, so a `last.pt` copied in from another run would
    otherwise be trained on as if it belonged here and config.json rewritten to match it.
    """
    config_file = run.config_file
    try:
        run_config = parse_json(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return  # no config.json to compare with: the checkpoint's own config is all there is
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {config_file} ({exc}); restore it, or delete it to resume from the "
                        "checkpoint's own copy") from None
    run_model = run_config.get("model") if isinstance(run_config, dict) else None
    if not isinstance(run_model, dict):
        raise UserError(f"{config_file} is damaged: it has {json_name(run_model)} for \"model\", not the model's "
                        "settings; restore it, or delete it to resume from the checkpoint's own copy")
    checkpoint_model = RunConfig.from_dict(state.get("config")).to_dict()["model"]
    differences = [f"{key} {run_model.get(key)} in config.json vs {checkpoint_model.get(key)} in the checkpoint"
                   for key in sorted(MODEL_KEYS) if run_model.get(key) != checkpoint_model.get(key)]
    if differences:
        raise UserError(f"{path} holds another model than the run {run.path} ({', '.join(differences)}); "
                        "move it out of checkpoints/ or resume the run it came from")


def check_tokenizer_file(tokenizer_file: Path, tokenizer: Tokenizer, checkpoint: Path) -> None:
    """The checkpoint's own tokenizer is the one its weights learned: an edited tokenizer.json is refused.

    Trusting the file would train on another mapping of ids to text without a word. The file is compared
    as data, so a description of another tokenizer is named even where that tokenizer could not be built.
    """
    if not tokenizer_file.is_file():
        return
    try:
        on_disk = parse_json(tokenizer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {tokenizer_file} ({exc}); restore it, or delete it to resume with the "
                        "checkpoint's own copy") from None
    if on_disk != tokenizer.to_dict():
        found = on_disk.get("name") if isinstance(on_disk, dict) else None
        raise UserError(f"{tokenizer_file} (tokenizer {found!r}) differs from the {tokenizer.name} tokenizer saved "
                        f"in {checkpoint}, which its weights were trained with; restore the file, or delete it to "
                        "resume with the checkpoint's copy")


def resume_corpus(config: RunConfig, given_data: bool) -> Corpus:
    """Find the run's corpus again (its absolute path, from any directory) and refuse other text.

    A `--data` given on resume is read from the current directory; it must hold the same text.
    Checkpoints from before the corpus was recorded are trusted as they are.
    """
    saved = config.corpus
    if saved is None:
        return read_corpus(config.train.data)
    current = recheck_corpus(
        saved, data=config.train.data if given_data else None,
        gone="the run's corpus {path} is gone; pass --data with the same text",
        changed="the corpus {current} is not the text the run was trained on ({path}): sha256 {now}... now, "
                "{then}... in the checkpoint; resume with that text, or start a new run",
    )
    if not given_data:
        config.train.data = saved.path
    return current


def describe(trainer: Trainer, corpus_tokens: int, train_tokens: int, val_tokens: int, source: str) -> None:
    """The start-of-run report: where, on what, how big, and how the tokens flow. `source` says what the
    tokens came from (Corpus.describe: a folder's number of files and size)."""
    config, train, log = trainer.config, trainer.config.train, trainer.log
    per_rank_micro = train.batch_size * config.model.block_size
    runtime, run = trainer.runtime, trainer.run.path
    log.info(f"gptforge train | preset {config.preset} | run {run}")
    log.info(f"device {runtime.device} | dtype {runtime.precision.name} | compile {runtime.compile} | "
             f"processes {runtime.world_size}" + (f" ({runtime.strategy})" if runtime.world_size > 1 else ""))
    if runtime.strategy == "fsdp":
        log.info("no samples while training: a sharded model needs every process to generate; "
                 f"sample afterwards with: {gptforge_command()} sample --run {shlex.quote(str(run))}")
    log.info("model: " + " ".join(f"{k}={v}" for k, v in config.to_dict()["model"].items()))
    log.info("train: " + " ".join(f"{k}={v}" for k, v in config.to_dict()["train"].items()))
    log.info(parameter_table(trainer.model))
    batches_per_epoch = trainer.sampler.batches_per_epoch
    log.info(f"data: {source} | tokenizer {trainer.tokenizer.name} (vocab {trainer.tokenizer.vocab_size:,}, "
             f"model vocab {config.model.vocab_size:,}) | {corpus_tokens:,} tokens: {train_tokens:,} train, "
             f"{val_tokens:,} val")
    log.info(f"tokens per step: {trainer.tokens_per_step:,} = batch {train.batch_size} x block "
             f"{config.model.block_size} x accumulation {train.grad_accum} x processes {trainer.world_size} | "
             f"{per_rank_micro * trainer.world_size:,} tokens per micro-batch | "
             f"{batches_per_epoch:,} micro-batches per epoch | sampler {train.sampler}")


def finish_run(trainer: Trainer, reason: str, log: RunLog, started: float) -> TrainOutcome:
    """Write summary.txt and curves.png, show a sample, and say where everything is."""
    run = trainer.run
    train = trainer.config.train
    last = run.checkpoint_file("last", train.compress_checkpoints)
    if trainer.rank == 0:
        if 0 < trainer.step < train.max_steps:
            last_lr = trainer.learning_rate(trainer.step - 1)
            warning = stopped_in_warmup_warning(trainer.step, train.warmup_steps, last_lr, train.learning_rate)
            if warning is not None:
                log.warn(warning)
        counts = count_parameters(trainer.model)
        summary = [
            f"run: {run.path}",
            f"preset: {trainer.config.preset}",
            f"stopped: {reason}",
            f"steps: {trainer.step}",
            f"tokens seen: {trainer.tokens_seen:,} ({trainer.sampler.epoch:.2f} epochs)",
            *filter(None, [trainer.pass_loss.report()]),
            # one figure a line; --time-budget counts the first two together
            f"training time, all sessions: {trainer.training_s:.1f}s (without the first step of each)",
            f"first step of each session: {trainer.startup_s:.1f}s (compilation and warm-up)",
            f"wall time, this session: {time.time() - started:.1f}s",
            f"final training loss: {trainer.last_loss:.4f}",
            f"best loss ({'val' if trainer.evaluates else 'train'}): {trainer.best_loss:.4f}"
            + (f" at step {trainer.best_step}" if trainer.best_step is not None else ""),
            f"parameters: {counts.total:,}",
            f"checkpoints: {', '.join(str(path) for path in sorted(run.checkpoints())) or 'none'}",
        ]
        atomic_write_text(run.summary_file, "\n".join(summary) + "\n")
        if train.plot:
            try:
                from gptforge.train.plot import plot_run

                curves = plot_run(run.path)
                log.info(f"curves: {curves}")
            except UserError as exc:
                log.warn(f"no curves: {exc}")
        if trainer.stop_signal is None and trainer.can_sample:
            log.info(f"--- sample ---\n{trainer.sample(trainer.config.train.sample_tokens)}\n---")
        log.info("\n".join(summary))
        log.info(f"sample more with: {gptforge_command()} sample --run {shlex.quote(str(run.path))}")
    log.close()
    target_reached = None if trainer.config.train.target_loss is None else trainer.pass_loss.reached is not None
    return TrainOutcome(run_dir=run.path, reason=reason, signal=trainer.stop_signal,
                        last_checkpoint=last if last.is_file() else None, target_reached=target_reached,
                        require_target=trainer.config.train.require_target)


def train(config: RunConfig | None = None, *, resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> TrainOutcome:
    """Train a new run from `config`, or continue the run directory `resume`. The one call the CLI makes."""
    world = distributed.setup()  # under torchrun: join the other processes; alone: nothing to do
    try:
        outcome = _train(config, resume, overrides or {}, world)
        distributed.wait_for_all_ranks(world.world_size)
        return outcome
    finally:
        release_run_dirs()
        distributed.teardown()  # _train has returned: its trainer, which holds the process group, is gone


def _train(config: RunConfig | None, resume: str | Path | None, overrides: dict[str, Any],
           world: distributed.World) -> TrainOutcome:
    started = time.time()
    if resume is not None:
        trainer, log = resume_run(resume, overrides, rank=world.rank, world_size=world.world_size)
    else:
        assert config is not None
        trainer, log = start_run(config, rank=world.rank, world_size=world.world_size)
    try:
        reason = trainer.fit()
    except BaseException:
        log.close()
        raise
    return finish_run(trainer, reason, log, started)
