"""`gptforge bench`: how fast a configuration trains and generates on this machine, measured, not claimed.

Training is timed through the real `Trainer.train_step` (data, autocast, loss scaling, clipping, the
optimizer and its one host sync) on synthetic tokens, so the figure is what a run would see.
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptforge.config import GPTConfig, RunConfig
from gptforge.data import make_sampler
from gptforge.device import memory_gb, resolve_runtime, synchronize
from gptforge.errors import UserError
from gptforge.generate import SamplingSettings, generate_ids
from gptforge.model import count_parameters
from gptforge.sizing import check_fits, training_memory
from gptforge.train.session import initial_model
from gptforge.train.trainer import Trainer

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, without sparsity) by a name fragment of the GPU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
# Above this many parameters a CPU takes seconds to minutes per step: the run says so before it starts.
CPU_HEAVY_PARAMETERS = 20_000_000

Progress = Callable[[str], None]


def _silent(line: str) -> None:
    pass


@dataclass
class BenchResult:
    preset: str
    device: str
    dtype: str
    compile: bool
    attention: str
    batch_size: int
    block_size: int
    grad_accum: int
    parameters: int
    flops_per_token: float
    step_ms: float | None
    first_step_s: float | None  # compilation and warm-up included
    tokens_per_s: float | None
    mfu: float | None  # fraction of the peak, None when the peak is unknown
    peak_tflops: float | None
    peak_memory_gb: float | None
    generate_tokens: int
    cached_tokens_per_s: float | None
    uncached_tokens_per_s: float | None
    torch: str
    machine: str


def flops_per_token(config: GPTConfig, parameters: int) -> float:
    """6N + 12 * n_layer * n_embd * T (forward and backward), N excluding the position embeddings."""
    non_position = parameters - config.block_size * config.n_embd
    return 6 * non_position + 12 * config.n_layer * config.n_embd * config.block_size


def known_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS.items() if fragment in name), None)


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """Force one scaled_dot_product_attention kernel, or let PyTorch choose ('auto')."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel(backends[name])


def peak_memory_gb(device: torch.device) -> float | None:
    """GPU: peak allocated by torch. CPU: this process's peak resident memory (Linux reports KiB)."""
    if device.type == "cuda":
        return memory_gb(device)
    if device.type == "cpu":
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9
    return None


def time_training(trainer: Trainer, steps: int, warmup: int, progress: Progress = _silent) -> tuple[float, float]:
    """Seconds of the first step (compilation happens there) and the median of the `steps` after `warmup`;
    each step's time goes to `progress` as it ends."""
    times = []
    for step in range(1, warmup + steps + 1):
        synchronize(trainer.device)
        started = time.perf_counter()
        trainer.train_step()
        synchronize(trainer.device)
        times.append(time.perf_counter() - started)
        kind = "warm-up" if step <= warmup else "timed"
        progress(f"step {step}/{warmup + steps} ({kind}): {times[-1]:,.2f} s")
    return times[0], statistics.median(times[warmup:])


def time_generation(trainer: Trainer, new_tokens: int, use_cache: bool, vocab_size: int) -> float:
    """Tokens per second for `new_tokens` after a 16-token prompt (sampling with top-k 200)."""
    prompt = list(range(16))
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=1.0, top_k=200, seed=0, use_cache=use_cache)
    synchronize(trainer.device)
    started = time.perf_counter()
    with trainer.precision.autocast():
        produced = sum(1 for _ in generate_ids(trainer.model, prompt, settings, vocab_size))
    synchronize(trainer.device)
    return produced / (time.perf_counter() - started)


SYNTHETIC_BYTES_PER_TOKEN = 12  # drawn as int64, kept as uint32


def synthetic_trainer(config: RunConfig, steps: int) -> Trainer:
    """The run's real Trainer (no run folder, tokenizer or val split) on random tokens, enough for `steps` steps.

    The memory it needs, the synthetic tokens included, is checked first: a huge --steps or --batch-size is
    one error line rather than an allocation that fails."""
    model, train = config.model, config.train
    runtime = resolve_runtime(train)
    tokens_needed = train.batch_size * model.block_size * train.grad_accum * (steps + 1) + 1
    estimate = training_memory(model, train.batch_size, loss_chunks=train.loss_chunks,
                               activation_bytes=runtime.precision.dtype.itemsize)
    estimate.parts["synthetic tokens"] = tokens_needed * SYNTHETIC_BYTES_PER_TOKEN
    check_fits(estimate, runtime.device, "this benchmark", "use a smaller --batch-size, --block-size, --steps or model")
    generator = np.random.default_rng(0)
    tokens = generator.integers(0, model.vocab_size, size=tokens_needed, dtype=np.int64).astype(np.uint32)
    sampler = make_sampler(train.sampler, tokens, train.batch_size, model.block_size, train.seed)
    return Trainer(config, initial_model(config, runtime), runtime, sampler)


def announce(config: RunConfig, trainer: Trainer, steps: int, warmup: int, generate_tokens: int) -> str:
    """What is about to be measured, and on a CPU with a big model, that each step will take a while."""
    parameters = count_parameters(trainer.model).total
    line = (f"bench: {config.preset} ({parameters:,} parameters) on {trainer.device}: {warmup} warm-up and {steps} "
            f"timed steps of {trainer.tokens_per_step:,} tokens, then {generate_tokens} generated tokens")
    if trainer.device.type == "cpu" and parameters > CPU_HEAVY_PARAMETERS:
        line += (f"\nnote: {config.preset} is a GPU benchmark; on a CPU each of its steps takes seconds to minutes "
                 "(--preset tiny measures in seconds)")
    return line


def run_bench(config: RunConfig, *, steps: int, warmup: int, attention: str, generate_tokens: int,
              peak_tflops: float | None, progress: Progress = _silent) -> BenchResult:
    """Build the run's trainer on synthetic tokens, time training steps, then generation (`config` validated,
    as config.build_config gives it); what it does goes to `progress`, a line at a time."""
    if attention not in ATTENTION_BACKENDS:
        raise UserError(f"unknown attention backend {attention!r}; choose {', '.join(ATTENTION_BACKENDS)}")
    if steps < 0 or warmup < 0 or generate_tokens < 0:
        raise UserError("--steps, --warmup and --generate-tokens must be zero or more")
    if steps == 0 and generate_tokens == 0:
        raise UserError("nothing to measure: --steps and --generate-tokens are both 0")
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise UserError(f"--peak-tflops must be a positive, finite number, got {peak_tflops}")
    model, train = config.model, config.train
    vocab_size = model.vocab_size
    trainer = synthetic_trainer(config, steps + warmup)
    progress(announce(config, trainer, steps if steps else 0, warmup if steps else 0, generate_tokens))
    with attention_backend(attention):
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        first_step, step_seconds = time_training(trainer, steps, warmup, progress) if steps else (None, None)
        memory = peak_memory_gb(trainer.device)
        cached = uncached = None
        if generate_tokens:
            progress(f"generating {generate_tokens} tokens with the KV cache, then without it")
            time_generation(trainer, 8, True, vocab_size)  # warm-up
            cached = time_generation(trainer, generate_tokens, True, vocab_size)
            uncached = time_generation(trainer, generate_tokens, False, vocab_size)
    parameters = count_parameters(trainer.model).total
    per_token = flops_per_token(model, parameters)
    tokens_per_s = trainer.tokens_per_step / step_seconds if step_seconds else None
    peak = peak_tflops or known_peak_tflops(trainer.device)
    mfu = per_token * tokens_per_s / (peak * 1e12) if (peak and tokens_per_s) else None
    return BenchResult(
        preset=config.preset, device=str(trainer.device), dtype=trainer.precision.name,
        compile=trainer.runtime.compile, attention=attention, batch_size=train.batch_size,
        block_size=model.block_size, grad_accum=train.grad_accum, parameters=parameters,
        flops_per_token=per_token, step_ms=step_seconds * 1000 if step_seconds else None, first_step_s=first_step,
        tokens_per_s=tokens_per_s, mfu=mfu, peak_tflops=peak, peak_memory_gb=memory,
        generate_tokens=generate_tokens, cached_tokens_per_s=cached, uncached_tokens_per_s=uncached,
        torch=torch.__version__, machine=_machine_name(trainer.device),
    )


def _machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = " ".join(part for part in (platform.machine(), platform.processor()) if part)
    return f"{cpu} ({torch.get_num_threads()} threads)"


def format_table(result: BenchResult) -> str:
    def show(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [
        ("configuration", f"{result.preset}: {result.parameters:,} parameters, batch {result.batch_size} x block "
                          f"{result.block_size} x accumulation {result.grad_accum}"),
        ("device", f"{result.machine} | {result.device} | {result.dtype} | compile {result.compile} | "
                   f"attention {result.attention} | torch {result.torch}"),
        ("step time (median)", f"{show(result.step_ms, ',.1f')} ms"),
        ("first step", f"{show(result.first_step_s, ',.2f')} s (compilation and warm-up included)"),
        ("training throughput", f"{show(result.tokens_per_s, ',.0f')} tokens/s"),
        ("FLOPs per token", f"{result.flops_per_token:,.0f}"),
        ("MFU", "n/a (pass --peak-tflops)" if result.mfu is None
         else f"{result.mfu:.1%} of {result.peak_tflops:g} TFLOP/s"),
        ("peak memory", f"{show(result.peak_memory_gb, '.2f')} GB"),
    ]
    if result.generate_tokens:
        speedup = (result.cached_tokens_per_s / result.uncached_tokens_per_s) if result.uncached_tokens_per_s else None
        rows.append((f"generation, {result.generate_tokens} new tokens",
                     f"{show(result.cached_tokens_per_s, ',.1f')} tokens/s with the KV cache, "
                     f"{show(result.uncached_tokens_per_s, ',.1f')} without ({show(speedup, '.1f')}x)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

