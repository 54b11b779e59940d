"""Training-step throughput of a preset's model on synthetic tokens: median ms per optimizer step.

    python benchmarks/bench_train_step.py --preset char-small --batch-sizes 12 24 48

Forward, backward, clipping and AdamW (foreach, as the trainer builds it, and fused), fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptforge.config import MODEL_PRESETS
from gptforge.model import GPT
from gptforge.train.optim import build_optimizer, param_groups


def median_step_seconds(preset: str, batch_size: int, fused: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    config = MODEL_PRESETS[preset]
    model = GPT(config)
    if fused:
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99), fused=True)
    else:
        optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.99), device_type="cpu")
    tokens = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1))
    times = []
    for _ in range(warmup + steps):
        started = time.perf_counter()
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="char-small", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[12, 24, 48])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    block_size = MODEL_PRESETS[args.preset].block_size
    print(f"{args.preset} (block {block_size}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    for fused in (False, True):
        for batch_size in args.batch_sizes:
            seconds = median_step_seconds(args.preset, batch_size, fused, args.steps, args.warmup)
            print(f"AdamW {'fused  ' if fused else 'foreach'} batch {batch_size:>3}: {seconds * 1000:7.1f} ms/step "
                  f"{batch_size * block_size / seconds:>9,.0f} tokens/s")


if __name__ == "__main__":
    main()
