"""How fast HellaSwag is scored: examples per second of `gptforge eval --hellaswag`'s scorer, by batch size.

    python benchmarks/bench_hellaswag.py --preset gpt2 --device cuda --examples 2000
    python benchmarks/bench_hellaswag.py --preset tiny --device cpu --file tests/fixtures/hellaswag_val_sample.jsonl

A randomly initialised model of the preset (GPT-2 vocabulary) scores the first --examples examples of the
file (repeated when the file is shorter), median of --repeats runs per batch size. The scores themselves
mean nothing here; the whole val set (10,042 examples) takes examples / rate seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from gptforge import hellaswag
from gptforge.config import MODEL_PRESETS
from gptforge.device import resolve_device
from gptforge.model import GPT
from gptforge.tokenizer import GPT2Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--file", help="a HellaSwag jsonl (default: found as `eval --hellaswag` finds it)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = resolve_device(args.device)
    examples = hellaswag.read_examples(hellaswag.find_hellaswag(args.file))
    examples = (examples * (args.examples // len(examples) + 1))[:args.examples]
    tokenizer = GPT2Tokenizer()
    config = MODEL_PRESETS[args.preset]
    config = type(config)(**{**vars(config), "vocab_size": 50304})
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(tokens)[0]

    print(f"{args.preset} on {device}, {len(examples)} examples, torch {torch.__version__}")
    for batch_size in args.batch_sizes:
        rates = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            hellaswag.score(forward, examples, tokenizer, config.block_size, device, batch_size=batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rates.append(len(examples) / (time.perf_counter() - started))
        rate = statistics.median(rates)
        print(f"batch {batch_size:3d}: {rate:10.2f} examples/s | the 10,042-example val set in "
              f"{hellaswag.HELLASWAG_VAL_EXAMPLES / rate:,.1f} s")


if __name__ == "__main__":
    main()
