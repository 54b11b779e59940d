"""The flagship's memorization on a CPU: how fast a small model learns a few thousand characters by heart.

    python benchmarks/memorize_proxy.py                                   # the recipe as it stands
    python benchmarks/memorize_proxy.py --try learning_rate=1e-2 --try learning_rate=1e-2,warmup_steps=300

`shakespeare-gpt2` trains GPT-2 124M until the mean training loss over a pass of tiny Shakespeare is
below 0.1: memorization, not generalization. This proxy keeps the recipe's training settings (schedule,
warmup, weight decay, betas, clipping, sampler, target) and shrinks the rest: nanoGPT's CPU character model
(4 layers, 4 heads, 128 wide) on the first 2,048 characters, 2 x 64 tokens per step (an epoch is 15 steps, as the
flagship's is 20), 1,000 steps, and a learning rate 10 times the recipe's (a small model takes a higher
one: on this proxy 3e-3 memorizes and 1e-2 does not, as 3e-4 does and 6e-4 and above do not for GPT-2 124M
on an H200). Seconds per run on two CPU cores. Each `--try` overrides settings for one run; every run
prints when one batch and when the mean over a pass first fell below the target.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gptforge.config import RunConfig, apply_overrides, from_preset
from gptforge.data import find_dataset
from gptforge.train.session import train

PROXY = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "tokenizer": "char", "batch_size": 2,
         "max_steps": 1000, "device": "cpu", "compile": False, "progress": False, "sample_tokens": 1,
         "checkpoint_interval": 100_000, "log_interval": 100_000}
PROXY_CHARS = 2048
LEARNING_RATE_SCALE = 10


def proxy_config(corpus: Path, out: Path, **overrides: Any) -> RunConfig:
    """The flagship recipe on the proxy's model and data; `overrides` last."""
    config = from_preset("shakespeare-gpt2")
    config.train.decay_steps = None  # the schedule spans the proxy's own max_steps, unless overridden
    return apply_overrides(config, {**PROXY, "learning_rate": config.train.learning_rate * LEARNING_RATE_SCALE,
                                    "data": str(corpus), "out": str(out), **overrides})


def write_corpus(folder: Path, chars: int = PROXY_CHARS) -> Path:
    text = find_dataset("shakespeare")[0].read_text(encoding="utf-8")[:chars]
    path = folder / "proxy.txt"
    path.write_text(text, encoding="utf-8")
    return path


def parse_try(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="KEY=VALUE,...",
                        help="settings for one run (repeatable); none: the recipe as it stands")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: several runs side by side share a small machine best)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = write_corpus(Path(scratch))
        for settings in [parse_try(text) for text in args.tries] or [{}]:
            for seed in args.seeds:
                started = time.perf_counter()
                run_dir = Path(scratch) / f"run-{time.monotonic_ns()}"
                with contextlib.redirect_stdout(io.StringIO()):  # the run's own log: only its summary is wanted here
                    train(proxy_config(corpus, run_dir, seed=seed, **settings))
                report = next(line for line in (run_dir / "summary.txt").read_text(encoding="utf-8").splitlines()
                              if line.startswith("target loss"))
                print(f"{settings or 'recipe'} seed {seed}: {report} [{time.perf_counter() - started:.0f}s]",
                      flush=True)


if __name__ == "__main__":
    main()
