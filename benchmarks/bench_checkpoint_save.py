"""How long a checkpoint save stops training, written in the foreground and in the background.

    python benchmarks/bench_checkpoint_save.py --preset gpt2 --device cuda --saves 3

Builds the trainer of a preset on synthetic tokens, takes one optimizer step (so AdamW's moments
exist), then times, median of `--saves` each:
- `Trainer.save` in the foreground and in the background: how long the training thread waits, how long
  until the device has finished the copy (the same on CPU), and until the file is on disk;
- the copy to host memory alone, into fresh memory (how saves copied before host_buffers.py) and into the
  reused buffers (pinned on CUDA, queued without waiting), side by side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptforge.config import MODEL_PRESETS, from_preset
from gptforge.data import make_sampler
from gptforge.device import resolve_runtime
from gptforge.model import GPT
from gptforge.run_dir import RunDir
from gptforge.train.host_buffers import HostBuffers, map_tensors
from gptforge.train.trainer import Trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_saves(trainer: Trainer, background: bool, saves: int) -> tuple[float, float, float]:
    """Median seconds the training thread waits per save, until the copy is done, until the file is on disk."""
    trainer.writer.background = background
    blocked, copied, written = [], [], []
    for _ in range(saves):
        synchronize(trainer.device)
        started = time.perf_counter()
        trainer.save()
        blocked.append(time.perf_counter() - started)
        synchronize(trainer.device)
        copied.append(time.perf_counter() - started)
        trainer.writer.wait()
        written.append(time.perf_counter() - started)
    return statistics.median(blocked), statistics.median(copied), statistics.median(written)


def time_copies(trainer: Trainer, saves: int) -> tuple[float, float]:
    """Median seconds for a complete host copy of the state: into fresh memory, and into reused buffers."""
    state, buffers = trainer.state_dict(), HostBuffers()
    fresh, reused = [], []
    for _ in range(saves + 1):  # the first reused copy allocates its buffers: not counted
        synchronize(trainer.device)
        started = time.perf_counter()
        map_tensors(state, lambda _, tensor: tensor.detach().to("cpu", copy=True))
        fresh.append(time.perf_counter() - started)
        started = time.perf_counter()
        buffers.copy(state).wait()
        reused.append(time.perf_counter() - started)
    return statistics.median(fresh[1:]), statistics.median(reused[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    config = from_preset(args.preset)
    config.train.device, config.train.compile, config.train.batch_size = args.device, False, 1
    config.model.block_size = min(config.model.block_size, 64)
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, 4096).astype(np.uint32)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        runtime = resolve_runtime(config.train)
        sampler = make_sampler("sequential", tokens, 1, config.model.block_size, config.train.seed)
        trainer = Trainer(config, GPT(config.model).to(runtime.device), runtime, sampler, run=RunDir(Path(scratch)))
        trainer.train_step()
        checkpoint = trainer.run.checkpoint_file("last")
        print(f"{args.preset} on {trainer.device}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters; "
              f"medians of {args.saves}")
        for background in (False, True):
            blocked, copied, written = time_saves(trainer, background, args.saves)
            if background and not trainer.writer.background:
                print("background saves fell back to the foreground: a copy would take over half the free memory")
            print(f"{'background' if background else 'foreground'}: training thread waits {blocked:6.3f} s per save, "
                  f"copy done after {copied:6.3f} s, file on disk after {written:6.2f} s "
                  f"({checkpoint.stat().st_size / 1e9:.2f} GB)")
        fresh, reused = time_copies(trainer, args.saves)
        print(f"host copy of the state: {fresh:6.3f} s into fresh memory, {reused:6.3f} s into the reused "
              f"{'pinned ' if trainer.device.type == 'cuda' else ''}buffers (ratio {fresh / reused:.2f})")


if __name__ == "__main__":
    main()
