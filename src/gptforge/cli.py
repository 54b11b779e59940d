"""The `gptforge` command: each subcommand parses its flags and calls one plain function.

Mistakes a user can make end as one `error: ...` line on stderr with exit status 2; a traceback
means a bug in gptforge.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import textwrap
import threading
import typing
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from gptforge.config import (
    PRESETS,
    RECIPES,
    GPTConfig,
    RunConfig,
    TrainConfig,
    build_config,
    choices_of,
    field_types,
    from_preset,
    help_of,
    load_toml,
    padded_vocab_size,
    preset_table,
)
from gptforge.errors import UserError
from gptforge.interop.export import FORMATS as EXPORT_FORMATS
from gptforge.interop.space_hardware import DEFAULT_HARDWARE as DEFAULT_SPACE_HARDWARE
from gptforge.interop.space_hardware import HARDWARE as SPACE_HARDWARE

if typing.TYPE_CHECKING:
    import torch

    from gptforge.generate import SamplingSettings
    from gptforge.trained_model import TrainedModel


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line (with a hint) rather than usage text."""

    def error(self, message: str) -> typing.NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# Flags whose name says more than the config key they set.
FLAG_NAMES = {"init": "--init-from"}


def add_config_flags(parser: argparse.ArgumentParser, classes: Sequence[type], skip: Collection[str] = (),
                     only: Collection[str] | None = None, shown: RunConfig | None = None) -> None:
    """One `--flag` per config field (the key with dashes); absent flags leave the preset's value, which
    the help shows when `shown` (the preset's config) is given."""
    for cls in classes:
        group = parser.add_argument_group(f"{'model' if cls is GPTConfig else 'training'} settings")
        defaults = cls() if shown is None else (shown.model if cls is GPTConfig else shown.train)
        for name, annotation in field_types(cls).items():
            if name in skip or (only is not None and name not in only):
                continue
            flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
            default = getattr(defaults, name)
            help_text = f"{help_of(cls, name)} (default: {default})"
            args = typing.get_args(annotation)
            if annotation is bool or (bool in args):
                group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                   help=help_text)
            else:
                group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)


def given_overrides(args: argparse.Namespace, names: set[str]) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in names}


# --- train --------------------------------------------------------------------------------------

TARGET_NOT_REACHED = 3  # --require-target's exit status; 2 is a usage error

CONFIG_NAMES = {f.name for f in dataclasses.fields(GPTConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}


@contextlib.contextmanager
def sigterm_exits_143() -> Iterator[None]:
    """SIGTERM outside the training steps (start-up, the final sample) ends the command as Ctrl-C does:
    through the clean-up on the way out (no temporary file left) with status 143, not killed outright.
    The trainer's own handler takes over while it trains."""
    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_train(args: argparse.Namespace) -> int:
    with sigterm_exits_143():
        return _cmd_train(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from gptforge.device import is_main_process
    from gptforge.train.distributed import launch_local, without_flag
    from gptforge.train.session import train

    overrides = given_overrides(args, CONFIG_NAMES)
    if args.resume:
        if args.preset or args.config:
            raise UserError("--resume continues a run with its own config; drop --preset/--config")
        if args.nproc is not None:
            return launch_local(args.nproc, without_flag(args.argv, "--nproc"))
        outcome = train(resume=args.resume, overrides=overrides)
    else:
        config = build_config(args.preset, args.config, overrides, processes=args.nproc)
        named = args.preset is not None or (args.config is not None and "preset" in load_toml(args.config))
        if not named and args.nproc is None and is_main_process():
            print(f"no --preset given: using {config.preset} "
                  f"({'a CUDA GPU is available' if config.preset == 'shakespeare-gpt2' else 'no CUDA GPU in use'})")
        if args.nproc is not None:  # validated above: a bad flag is one error line, not a report from torchrun
            return launch_local(args.nproc, without_flag(args.argv, "--nproc"))
        outcome = train(config)
    if outcome.signal:
        return 128 + outcome.signal
    if outcome.target_reached is False and outcome.require_target:
        return TARGET_NOT_REACHED
    return 0


# --- summary / prepare / plot / sample ------------------------------------------------------------


def cmd_summary(args: argparse.Namespace) -> int:
    from gptforge.model import meta_model, parameter_table

    overrides = given_overrides(args, {f.name for f in dataclasses.fields(GPTConfig)})
    config = build_config(args.preset, flags={**overrides, "pad_vocab_to": args.pad_vocab_to})
    if "vocab_size" not in overrides:
        config.model.vocab_size = padded_vocab_size(config.model.vocab_size, args.pad_vocab_to)
    layers = config.model.n_layer
    # one block on the meta device, scaled: no weights allocated, and a billion layers cost what one does
    model = meta_model(dataclasses.replace(config.model, n_layer=1))
    print(f"{args.preset}: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config.model).items()))
    print(repr(model).replace("(0): Block(", f"(0-{layers - 1}): {layers} x Block(", 1) if layers > 1 else model)
    print(parameter_table(model, n_layer=layers))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from gptforge.data import load_tokens, read_corpus
    from gptforge.documents import is_record_source
    from gptforge.tokenizer import build_tokenizer

    if args.out is not None or is_record_source(args.data):
        return prepare_token_store(args)
    corpus = read_corpus(args.data)
    tokenizer = build_tokenizer(args.tokenizer, text=corpus.text if args.tokenizer == "char" else None,
                                bpe_file=args.tokenizer_file)
    tokens, cache_path = load_tokens(corpus, tokenizer, progress=True)
    print(f"{corpus.describe()}: {len(tokens):,} tokens ({tokenizer.name} tokenizer, vocabulary "
          f"{tokenizer.vocab_size:,})")
    print(f"cache: {cache_path}")
    return 0


def prepare_token_store(args: argparse.Namespace) -> int:
    from gptforge.documents import open_source
    from gptforge.store_writer import cached_store, prepare_store
    from gptforge.tokenizer import GPT2Tokenizer

    if args.tokenizer != "gpt2":
        raise UserError("a token store holds GPT-2 tokens; the char tokenizer reads text files in memory "
                        "(prepare --data FILE.txt --tokenizer char, without --out)")
    source = open_source(args.data, text_field=args.text_field, hf_config=args.hf_config, split=args.split)
    tokenizer = GPT2Tokenizer(args.tokenizer_file)
    if args.out is None:
        store = cached_store(source, tokenizer, args.val_fraction, workers=args.workers)
    else:
        store = prepare_store(source, Path(args.out), tokenizer, val_fraction=args.val_fraction,
                              shard_tokens=args.shard_tokens, workers=args.workers)
    tokens, documents = store.manifest["tokens"], store.manifest["documents"]
    print(f"{args.data}: {tokens['train'] + tokens['val']:,} tokens of {documents['train'] + documents['val']:,} "
          f"documents in {len(store.manifest['shards'])} shards (train {tokens['train']:,}, val {tokens['val']:,}; "
          f"{tokenizer.name} tokenizer)")
    print(f"store: {store.path}  (train with: gptforge train --data {store.path})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gptforge.train.plot import plot_run

    print(plot_run(args.run, Path(args.out) if args.out else None))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from gptforge.generate import generate_text, stream_text
    from gptforge.sizing import check_fits, inference_memory
    from gptforge.trained_model import autocast_for
    from gptforge.use.load import load_trained

    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("pass --prompt or --prompt-file, not both")
    prompt = args.prompt or ""
    if args.prompt_file is not None:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --prompt-file {args.prompt_file}: {exc}") from None
    if args.num_samples <= 0:
        raise UserError(f"--num-samples must be positive, got {args.num_samples}")
    settings = sampling_settings(args)
    trained = load_trained(run=args.run, checkpoint=args.checkpoint, hf=args.hf, device=args.device,
                           tokenizer_file=args.tokenizer_file)
    if prompt:
        trained.tokenizer.encode(prompt)  # an unknown character is a clear error before anything prints
    check_fits(inference_memory(trained.config.model, args.num_samples, weights=False),
               trained.model.lm_head.weight.device, f"generating {args.num_samples:,} samples at once",
               "pass a smaller --num-samples")
    with autocast_for(trained.model) or contextlib.nullcontext():
        if args.num_samples == 1:
            sys.stdout.write(prompt)
            for piece in stream_text(trained.model, trained.tokenizer, prompt, settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(generate_text(trained.model, trained.tokenizer, prompt, settings,
                                                   args.num_samples)):
                print(f"--- sample {i + 1} ---\n{prompt}{text}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from gptforge.trained_model import autocast_for
    from gptforge.use.chat import chat
    from gptforge.use.load import load_trained

    settings = sampling_settings(args)
    trained = load_trained(run=args.run, checkpoint=args.checkpoint, hf=args.hf, device=args.device,
                           tokenizer_file=args.tokenizer_file)
    with autocast_for(trained.model) or contextlib.nullcontext():
        chat(trained, settings)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gptforge.use.evaluate import DEFAULT_VAL_FRACTION, evaluate_text, own_val_fraction, trained_corpus
    from gptforge.use.load import load_trained

    trained = load_trained(run=args.run, checkpoint=args.checkpoint, hf=args.hf, device=args.device,
                           tokenizer_file=args.tokenizer_file)
    if args.hellaswag is not None:
        return eval_hellaswag(trained, args)
    data = args.data if args.data is not None else trained_corpus(trained)
    val_fraction = (own_val_fraction(trained, args.split, args.val_fraction) if args.data is None
                    else args.val_fraction if args.val_fraction is not None else DEFAULT_VAL_FRACTION)
    result = evaluate_text(trained, data, split=args.split, val_fraction=val_fraction,
                           batch_size=args.batch_size, max_batches=args.max_batches)
    print(f"{data} ({args.split} split, {result.tokens:,} tokens in {result.windows:,} windows of "
          f"{trained.config.model.block_size}): loss {result.loss:.4f} | perplexity {result.perplexity:,.2f}")
    return 0


def eval_hellaswag(trained: TrainedModel, args: argparse.Namespace) -> int:
    from gptforge import hellaswag
    from gptforge.trained_model import autocast_for

    if args.data is not None:
        raise UserError("--hellaswag scores HellaSwag's own text: leave out --data")
    hellaswag.check_tokenizer(trained.tokenizer)
    path = hellaswag.find_hellaswag(args.hellaswag or None)
    examples = hellaswag.read_examples(path)
    if args.max_batches is not None:
        if args.max_batches <= 0:
            raise UserError(f"--max-batches must be positive, got {args.max_batches}")
        examples = examples[:args.max_batches * args.batch_size]
    model = trained.model

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        with autocast_for(model) or contextlib.nullcontext():
            return model(tokens)[0]

    result = hellaswag.score(forward, examples, trained.tokenizer, trained.config.model.block_size,
                             model.lm_head.weight.device, batch_size=args.batch_size, progress=True)
    print(f"HellaSwag {path} ({result.examples:,} examples): acc {result.acc:.4f} | acc_norm {result.acc_norm:.4f}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gptforge.use.app import DemoLimits, serve
    from gptforge.use.load import load_trained

    limits = DemoLimits(max_new_tokens=args.max_new_tokens_cap, concurrency=args.concurrency,
                        queue_size=args.queue_size)
    limits.validate()
    trained = load_trained(run=args.run, checkpoint=args.checkpoint, hf=args.hf, device=args.device,
                           tokenizer_file=args.tokenizer_file)
    serve(trained, host=args.host, port=args.port, share=args.share, limits=limits)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gptforge.interop.export import check_export_flags, export_model, hub_target
    from gptforge.use.load import load_trained

    check_export_flags(args.format, args.hardware, args.int8)
    if args.push_to_hub:
        from gptforge.interop.hub import check_can_push

        check_can_push(args.push_to_hub)  # before anything is exported
    trained = load_trained(run=args.run, checkpoint=args.checkpoint, hf=args.hf, device="cpu",
                           tokenizer_file=args.tokenizer_file)
    print(export_model(trained, args.format, Path(args.out), hardware=args.hardware, int8=args.int8))
    if args.push_to_hub:
        from gptforge.interop.hub import push_folder

        print(f"pushed to {push_folder(Path(args.out), args.push_to_hub, hub_target(args.format, args.hardware))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from gptforge.bench import format_table, run_bench

    model_overrides = given_overrides(args, {f.name for f in dataclasses.fields(GPTConfig)})
    train_flags = {name: getattr(args, name) for name in BENCH_TRAIN_FLAGS if hasattr(args, name)}
    config = build_config(args.preset, flags={**model_overrides, **train_flags})
    if "vocab_size" not in model_overrides:
        config.model.vocab_size = padded_vocab_size(config.model.vocab_size, config.train.pad_vocab_to)
    result = run_bench(config, steps=args.steps, warmup=args.warmup, attention=args.attention,
                       generate_tokens=args.generate_tokens, peak_tflops=args.peak_tflops,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(result))
    if args.json:
        from gptforge.fileio import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(dataclasses.asdict(result), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


BENCH_TRAIN_FLAGS = ("batch_size", "grad_accum", "dtype", "compile", "device", "pad_vocab_to", "optimizer",
                     "loss_chunks")


def add_run_argument(group: argparse._MutuallyExclusiveGroup, help_text: str) -> None:
    """`--run RUN` or a bare RUN: every command that reads a run takes both spellings."""
    group.add_argument("--run", metavar="RUN", help=help_text)
    group.add_argument("run_path", nargs="?", metavar="RUN", help="the same as --run RUN")


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                        help=f"(default: {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, metavar="K", help="0 disables (default: 200)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling (default: off)")
    parser.add_argument("--seed", type=int, default=None, help="for repeatable samples")


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    from gptforge.generate import SamplingSettings

    settings = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k or None, top_p=args.top_p, seed=args.seed,
                                stop=getattr(args, "stop", None))
    settings.validate()
    return settings


def add_model_source(parser: argparse.ArgumentParser, device: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    add_run_argument(source, "run directory (its newest good checkpoint)")
    source.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file")
    source.add_argument("--hf", metavar="DIR", help="a transformers GPT-2 folder (config.json and model.safetensors "
                        "or pytorch_model.bin)")
    if device:
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument("--tokenizer-file", metavar="PATH", help="gpt2.tiktoken, for offline use")


# --- the parser ------------------------------------------------------------------------------------


def preset_asking_for_help(argv: Sequence[str]) -> str | None:
    """The preset of `train --preset X --help`, whose values that help shows as the defaults."""
    if "train" not in argv or not {"-h", "--help"} & set(argv):
        return None
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--preset")
    preset = finder.parse_known_args(argv)[0].preset
    return preset if preset in PRESETS else None


def build_parser(train_preset: str | None = None, help_asked: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `train_preset` makes `train --help` show that preset's values as defaults.

    The preset table (train --help's epilog) is built only when help is asked for: it imports torch (which
    recipes can use Muon), a second of start-up every other command need not pay."""
    parser = Parser(prog="gptforge", description="Train GPT-2-style language models from scratch, sample from them, "
                    "and inspect them.")
    parser.add_argument("--version", action="version", version=f"gptforge {__import__('gptforge').__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    shown = "the defaults shown are " + (
        f"{train_preset}'s" if train_preset else "the base values; `train --preset X --help` shows X's")
    train = commands.add_parser("train", help="train a model (new run or --resume RUN)",
                                description=textwrap.fill(
                                    "Train a GPT. Settings come from --preset, then --config FILE.toml, then flags. "
                                    "With no preset: shakespeare-gpt2 on a CUDA GPU, else shakespeare-char-cpu; "
                                    f"{shown}."),
                                epilog=preset_table() if help_asked else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--preset", choices=PRESETS, help=f"recipe or model preset (recipes: {', '.join(RECIPES)})")
    train.add_argument("--config", metavar="FILE.toml", help="TOML file with settings (flat keys or [model]/[train])")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest good "
                       "checkpoint; training flags (e.g. --max-steps) may change")
    train.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine, one per GPU "
                       "(or N on the CPU): starts torchrun; for several machines run torchrun yourself "
                       "(docs/multi-gpu.md)")
    add_config_flags(train, [GPTConfig, TrainConfig], skip={"vocab_size"},
                     shown=from_preset(train_preset) if train_preset else None)
    train.set_defaults(func=cmd_train)

    summary = commands.add_parser("summary", help="print a model's structure and parameter counts")
    summary.add_argument("--preset", choices=PRESETS, default="gpt2", help="model preset or recipe (default: gpt2)")
    summary.add_argument("--pad-vocab-to", type=int, default=64, metavar="N",
                         help="pad the vocabulary to a multiple of N unless --vocab-size is given (default: 64)")
    add_config_flags(summary, [GPTConfig])
    summary.set_defaults(func=cmd_summary)

    prepare = commands.add_parser("prepare", help="tokenize a corpus: into the cache, or streamed into a sharded "
                                  "token store (--out) for corpora larger than memory")
    prepare.add_argument("--data", default="shakespeare",
                         help="named dataset (shakespeare, fineweb-edu), text file, folder, .jsonl[.gz], .parquet "
                         "or hf:NAME (default: shakespeare)")
    prepare.add_argument("--tokenizer", choices=choices_of(TrainConfig, "tokenizer"), default="gpt2",
                         help="(default: gpt2)")
    prepare.add_argument("--tokenizer-file", metavar="PATH", help="gpt2.tiktoken, for offline use")
    store = prepare.add_argument_group("token store (with --out, or for JSONL, Parquet and hf:NAME sources)")
    store.add_argument("--out", metavar="STORE", help="write a token store (shards + manifest.json) into this new "
                       "folder; a stopped prepare continues when run again (default: without --out, a text file "
                       "is tokenized into the cache, documents into a store in the cache)")
    store.add_argument("--text-field", default="text", help="the text's field in JSONL / column in Parquet / "
                       "dataset records (default: text)")
    store.add_argument("--hf-config", metavar="NAME", help="the Hugging Face dataset's configuration (e.g. "
                       "sample-10BT)")
    store.add_argument("--split", default="train", help="the Hugging Face dataset's split (default: train)")
    store.add_argument("--val-fraction", type=float, default=0.01, help="documents held out as the val split "
                       "(default: 0.01)")
    store.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                       help="tokens per shard (default: 100,000,000, 200 MB of uint16)")
    store.add_argument("--workers", type=int, default=None, metavar="N",
                       help="tokenizing processes (default: one per CPU core)")
    prepare.set_defaults(func=cmd_prepare)

    plot = commands.add_parser("plot", help="draw RUN/curves.png from RUN/metrics.jsonl")
    add_run_argument(plot.add_mutually_exclusive_group(required=True), "run directory")
    plot.add_argument("--out", metavar="FILE", help="where to write: a .png, .svg or .pdf file (default: "
                      "RUN/curves.png)")
    plot.set_defaults(func=cmd_plot)

    sample = commands.add_parser("sample", help="generate text from a trained model, streamed to the terminal")
    add_model_source(sample)
    sample.add_argument("--prompt", help="text to continue (default: start from the end-of-text token)")
    sample.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file")
    add_sampling_flags(sample, max_new_tokens=500)
    sample.add_argument("--num-samples", type=int, default=1, metavar="S", help="(default: 1)")
    sample.add_argument("--stop", metavar="TEXT", help="stop when this text is generated")
    sample.set_defaults(func=cmd_sample)

    chat = commands.add_parser("chat", help="a prompt loop: the model stays loaded, each line is continued "
                               "(streamed); /temp 0.7, /topk, /max, /quit change or end it",
                               description="Continue each line you type, streamed, with the model loaded once. "
                               "Lines starting with / change the sampling settings (/help lists them).")
    add_model_source(chat)
    add_sampling_flags(chat, max_new_tokens=200)
    chat.set_defaults(func=cmd_chat)

    evaluate = commands.add_parser("eval", help="loss and perplexity of a trained model on any text, or its "
                                   "HellaSwag accuracy")
    add_model_source(evaluate)
    evaluate.add_argument("--data", help="named dataset, text file or folder (default: the text the model was "
                          "trained on, found where its run recorded it; shakespeare for --hf)")
    evaluate.add_argument("--split", choices=["val", "train", "all"], default="val",
                          help="which part of the text (default: val, the last --val-fraction of it)")
    evaluate.add_argument("--val-fraction", type=float, default=None,
                          help="(default: the run's own on its corpus, else 0.1)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    evaluate.add_argument("--max-batches", type=int, default=None, help="stop after N batches (default: all)")
    evaluate.add_argument("--hellaswag", nargs="?", const="", metavar="FILE",
                          help="score HellaSwag val (acc, acc_norm) instead of a text's loss; FILE defaults to "
                          "hellaswag_val.jsonl in GPTFORGE_DATA_DIR or the cache, else it is downloaded. "
                          "--batch-size counts examples (4 rows each)")
    evaluate.set_defaults(func=cmd_eval)

    serve = commands.add_parser("serve", help="web demo of a trained model (Gradio; pip install 'gptforge[app]')")
    add_model_source(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine)")
    serve.add_argument("--port", type=int, default=7860, help="(default: 7860)")
    serve.add_argument("--share", action="store_true", help="ask Gradio for a public share link (default: off)")
    serve.add_argument("--max-new-tokens-cap", type=int, default=1000, metavar="N",
                       help="most tokens one request may generate (default: 1000)")
    serve.add_argument("--concurrency", type=int, default=2, help="requests generated at once (default: 2)")
    serve.add_argument("--queue-size", type=int, default=64, help="requests that may wait (default: 64)")
    serve.set_defaults(func=cmd_serve)

    bench = commands.add_parser("bench", help="measure training and generation speed (tokens/s, MFU, memory)",
                                description="Times optimizer steps of the real training step on synthetic tokens "
                                "(median after warm-up), then generation with and without the KV cache; each "
                                "step's time is printed as it ends. The default preset, gpt2 (124M), is a GPU "
                                "benchmark: on a CPU, --preset tiny measures in seconds.")
    bench.add_argument("--preset", choices=PRESETS, default="gpt2", help="model preset or recipe (default: gpt2)")
    bench.add_argument("--steps", type=int, default=20, help="timed optimizer steps (default: 20; 0 skips training)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed steps first, compilation included (default: 5)")
    bench.add_argument("--attention", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"],
                       help="scaled_dot_product_attention kernel (default: auto, PyTorch's choice)")
    bench.add_argument("--generate-tokens", type=int, default=256, metavar="N",
                       help="new tokens for the generation timing (default: 256; 0 skips it)")
    bench.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                       help="the device's peak TFLOP/s for MFU (default: known for H100/H200, A100, L4, T4)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    add_config_flags(bench, [GPTConfig])
    add_config_flags(bench, [TrainConfig], only=BENCH_TRAIN_FLAGS)
    bench.set_defaults(func=cmd_bench)

    export = commands.add_parser("export", help="write a trained model in another format")
    add_model_source(export, device=False)
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True,
                        help="space: a folder ready to push as a Hugging Face (Gradio) Space; hf: a transformers "
                        "GPT2LMHeadModel folder with a tokenizer AutoTokenizer loads; onnx: the model with a KV "
                        "cache for onnxruntime, and the tokenizer's files; static-space: a Space whose page runs "
                        "the ONNX model in the visitor's browser (free for every account)")
    export.add_argument("--int8", action="store_true",
                        help="--format onnx or static-space: also write model.int8.onnx (weights quantized to int8)")
    export.add_argument("--hardware", choices=list(SPACE_HARDWARE), default=None,
                        help=f"--format space: the Space's hardware (default {DEFAULT_SPACE_HARDWARE}, the one a "
                        "free account can host); decides spaces.GPU, CUDA or CPU-only torch, and what a push "
                        "requests")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (must be new or empty)")
    export.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload the folder to the Hugging Face hub "
                        "as that model (hf, onnx) or Space (space on its --hardware; static-space), created if "
                        "needed; needs a token (hf auth login or HF_TOKEN)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv_seen = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(preset_asking_for_help(argv_seen), help_asked=bool({"-h", "--help"} & set(argv_seen)))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` hands them on to torchrun
    if getattr(args, "run_path", None) is not None:
        args.run = args.run_path
    try:
        return args.func(args)
    except UserError as exc:
        from gptforge.device import is_main_process

        if is_main_process():  # every process of a multi-process run stops with the same error; say it once
            sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:
        from gptforge.fileio import name_too_long

        message = name_too_long(exc)  # None for any other OSError: a bug to report, with its traceback
        if message is None:
            raise
        sys.stderr.write(f"error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
