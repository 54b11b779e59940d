"""gptforge's training step against nanoGPT's, side by side: same shape, same device, one process.

    python benchmarks/bench_vs_nanogpt.py --device cpu --preset shakespeare-char-cpu --steps 30
    python benchmarks/bench_vs_nanogpt.py --device cuda --preset gpt2 --batch-size 16 --dtype bfloat16 --compile

gptforge's side is the real `Trainer.train_step` (data, autocast, loss scaling, clipping, AdamW or
Muon, the step's host sync). nanoGPT's side is its `model.py`, imported from --nanogpt-dir (never
copied here), stepped the way its train.py's loop does: get_batch from a token array, autocast in the
dtype gptforge resolved (none in fp32), loss / accumulation, GradScaler, clipping, its own
configure_optimizers (fused AdamW on CUDA), zero_grad. Steps alternate, one of each in turn, so the
ratio is one run's figure on one machine's state. The ratio is nanoGPT's median step time over
gptforge's: above 1, gptforge is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from gptforge.bench import synthetic_trainer
from gptforge.config import RunConfig, apply_overrides, from_preset, padded_vocab_size
from gptforge.device import synchronize
from gptforge.train.trainer import Trainer

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_nanogpt(folder: Path) -> ModuleType:
    """nanoGPT's model.py as a module, from its own folder."""
    path = folder / "model.py"
    if not path.is_file():
        sys.exit(f"error: no nanoGPT model.py in {folder} (pass --nanogpt-dir)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_step(nanogpt: ModuleType, config: RunConfig, trainer: Trainer) -> Callable[[], None]:
    """One nanoGPT train.py iteration on random windows of synthetic tokens, as a closure."""
    model_config, train = config.model, config.train
    device, precision = trainer.device, trainer.precision
    shape = nanogpt.GPTConfig(block_size=model_config.block_size, vocab_size=model_config.vocab_size,
                              n_layer=model_config.n_layer, n_head=model_config.n_head, n_embd=model_config.n_embd,
                              dropout=model_config.dropout, bias=model_config.bias)
    with contextlib.redirect_stdout(io.StringIO()):  # its parameter counts and fused-AdamW notice
        model = nanogpt.GPT(shape).to(device)
        optimizer = model.configure_optimizers(train.weight_decay, train.learning_rate,
                                               (train.beta1, train.beta2), device.type)
    forward = torch.compile(model) if trainer.runtime.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)
    autocast = (contextlib.nullcontext if precision.dtype == torch.float32 else
                lambda: torch.autocast(device.type, dtype=precision.dtype))
    data = np.random.default_rng(1).integers(0, model_config.vocab_size, 1_000_000).astype(np.uint16)
    block, batch = model_config.block_size, train.batch_size

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(data) - block, (batch,))
        x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in starts])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    batches = [get_batch()]

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = train.learning_rate
        for _ in range(train.grad_accum):
            with autocast():
                _, loss = forward(*batches[0])
                loss = loss / train.grad_accum
            batches[0] = get_batch()
            scaler.scale(loss).backward()
        if train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt-dir", type=Path, default=REPO_ROOT.parent / "shared" / "peers" / "nanoGPT",
                        help="folder holding nanoGPT's model.py (default: ../shared/peers/nanoGPT from the repo)")
    parser.add_argument("--preset", default="shakespeare-char-cpu", help="gptforge model preset or recipe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (both sides)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile both models")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--optimizer", default="adamw", help="gptforge's side only: adamw or muon")
    parser.add_argument("--loss-chunks", type=int, default=1, help="gptforge's side only")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first (compilation)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    config = from_preset(args.preset)
    overrides = {"device": args.device, "dtype": args.dtype, "compile": args.compile, "optimizer": args.optimizer,
                 "loss_chunks": args.loss_chunks, "batch_size": args.batch_size, "block_size": args.block_size}
    apply_overrides(config, {key: value for key, value in overrides.items() if value is not None})
    config.model.vocab_size = padded_vocab_size(config.model.vocab_size, config.train.pad_vocab_to)
    nanogpt = load_nanogpt(args.nanogpt_dir)
    trainer = synthetic_trainer(config, args.warmup + args.steps)
    torch.manual_seed(0)
    nano = nanogpt_step(nanogpt, config, trainer)
    ours_times, nano_times = [], []
    for index in range(args.warmup + args.steps):
        ours, theirs = timed(trainer.train_step, trainer.device), timed(nano, trainer.device)
        if index >= args.warmup:
            ours_times.append(ours)
            nano_times.append(theirs)
    tokens = trainer.tokens_per_step
    ours_s, nano_s = statistics.median(ours_times), statistics.median(nano_times)
    result = {
        "preset": args.preset, "device": str(trainer.device), "dtype": trainer.precision.name,
        "compile": trainer.runtime.compile, "batch_size": config.train.batch_size,
        "block_size": config.model.block_size,
        "vocab_size": config.model.vocab_size, "optimizer": args.optimizer, "loss_chunks": args.loss_chunks,
        "steps": args.steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "gptforge_ms": ours_s * 1000, "nanogpt_ms": nano_s * 1000,
        "gptforge_tokens_per_s": tokens / ours_s, "nanogpt_tokens_per_s": tokens / nano_s,
        "speedup": nano_s / ours_s,
    }
    print(f"{args.preset} on {result['device']} ({result['dtype']}, compile {result['compile']}, torch "
          f"{result['torch']}, {result['threads']} threads): batch {result['batch_size']} x block "
          f"{result['block_size']}, median of {args.steps} interleaved steps")
    print(f"gptforge  {result['gptforge_ms']:9.1f} ms/step {result['gptforge_tokens_per_s']:>12,.0f} tokens/s "
          f"({args.optimizer}, loss chunks {args.loss_chunks})")
    print(f"nanoGPT   {result['nanogpt_ms']:9.1f} ms/step {result['nanogpt_tokens_per_s']:>12,.0f} tokens/s")
    print(f"speedup   {result['speedup']:.3f}x (nanoGPT's step time / gptforge's)")
    if args.json:
        args.json.write_text(json.dumps(result) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
