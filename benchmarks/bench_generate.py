"""Generation speed with and without the KV cache: tokens/s for N new tokens, median of several runs.

    python benchmarks/bench_generate.py --preset gpt2 --new-tokens 256 --repeats 3

Weights are random (speed does not depend on them); the vocabulary is GPT-2's padded to 50,304.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import torch

from gptforge.config import MODEL_PRESETS, padded_vocab_size
from gptforge.generate import SamplingSettings, generate_ids
from gptforge.model import GPT


def time_generation(model: GPT, prompt: list[int], new_tokens: int, use_cache: bool, vocab: int) -> float:
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0, top_k=200, seed=0, use_cache=use_cache)
    started = time.perf_counter()
    produced = sum(1 for _ in generate_ids(model, prompt, settings, vocab))
    elapsed = time.perf_counter() - started
    assert produced == new_tokens
    return new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = dataclasses.replace(MODEL_PRESETS[args.preset], vocab_size=padded_vocab_size(50257, 64))
    torch.manual_seed(0)
    model = GPT(config).to(args.device).eval()
    prompt = torch.randint(0, 50257, (args.prompt_tokens,)).tolist()
    time_generation(model, prompt, 8, True, 50257)  # warm-up
    results = {}
    for use_cache in (True, False):
        runs = [time_generation(model, prompt, args.new_tokens, use_cache, 50257) for _ in range(args.repeats)]
        results["cached" if use_cache else "uncached"] = statistics.median(runs)
    report = {
        "preset": args.preset, "device": args.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens, "repeats": args.repeats,
        "cached_tokens_per_s": round(results["cached"], 1), "uncached_tokens_per_s": round(results["uncached"], 1),
        "speedup": round(results["cached"] / results["uncached"], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
