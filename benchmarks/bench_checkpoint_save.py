"""How long a checkpoint save stops training, written in the foreground and in the background.

    python benchmarks/bench_checkpoint_save.py --preset gpt2 --device cuda --saves 3

Builds the trainer of a preset on synthetic tokens, takes one optimizer step (so AdamW's moments
exist), then times `Trainer.save` (the call training waits for) and the whole write, median of
`--saves` each way. The background save stops training only for the copy to host memory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gptforge.config import MODEL_PRESETS, from_preset
from gptforge.runlog import RunLog
from gptforge.tokenizer import CharTokenizer
from gptforge.trainer import Trainer


def time_saves(trainer: Trainer, background: bool, saves: int) -> tuple[float, float]:
    """Median seconds training waits per save, and median seconds until the file is on disk."""
    trainer.writer.background = background
    blocked, written = [], []
    for _ in range(saves):
        started = time.perf_counter()
        trainer.save()
        blocked.append(time.perf_counter() - started)
        trainer.writer.wait()
        written.append(time.perf_counter() - started)
    return statistics.median(blocked), statistics.median(written)


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
        trainer = Trainer(config, Path(scratch), CharTokenizer("ab"), tokens, tokens[:0], RunLog(None, enabled=False))
        trainer.train_step()
        checkpoint = Path(scratch) / "checkpoints" / "last.pt"
        print(f"{args.preset} on {trainer.device}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters")
        for background in (False, True):
            blocked, written = time_saves(trainer, background, args.saves)
            if background and not trainer.writer.background:
                print("background saves fell back to the foreground: a copy would take over half the free memory")
            print(f"{'background' if background else 'foreground'}: training waits {blocked:6.2f} s per save, "
                  f"the file is on disk after {written:6.2f} s ({checkpoint.stat().st_size / 1e9:.2f} GB; "
                  f"median of {args.saves})")


if __name__ == "__main__":
    main()
