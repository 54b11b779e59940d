"""torch.compile must not change what is learned: the compiled training step gives the eager step's losses
(fp32 on the CPU, within bf16 rounding on a GPU) from the same weights and batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gptforge.config import apply_overrides, from_preset
from gptforge.data import make_sampler
from gptforge.device import resolve_runtime
from gptforge.train.session import initial_model
from gptforge.train.trainer import Trainer

STEPS = 3


# issue 17's training paths: Muon for the blocks' matrices, and the chunked output layer + loss
NEW_PATHS = pytest.param({"optimizer": "muon", "loss_chunks": 4}, id="muon-chunked",
                         marks=pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch < 2.9 has no Muon"))
PATHS = [pytest.param({}, id="adamw"), NEW_PATHS]


def losses_of(tmp_path: Path, device: str, dtype: str, use_compile: bool, paths: dict | None = None) -> list[float]:
    """Losses of STEPS optimizer steps (2 micro-batches each) of a 1-layer model on fixed random tokens."""
    config = from_preset("tiny")
    apply_overrides(config, {"device": device, "dtype": dtype, "compile": use_compile, "n_layer": 1,
                             "block_size": 16, "batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2,
                             "warmup_steps": 0, "sampler": "sequential", "progress": False, **(paths or {})})
    tokens = np.random.default_rng(0).integers(0, 65, size=4 * 17 * 2 * (STEPS + 1)).astype(np.uint16)
    runtime = resolve_runtime(config.train)
    sampler = make_sampler("sequential", tokens, 4, 16, config.train.seed)
    trainer = Trainer(config, initial_model(config, runtime), runtime, sampler)
    assert trainer.runtime.compile == use_compile
    return [trainer.train_step().loss for _ in range(STEPS)]


@pytest.mark.slow
@pytest.mark.parametrize("paths", PATHS)
def test_compiled_training_step_matches_eager_on_cpu(tmp_path: Path, paths: dict) -> None:
    eager = losses_of(tmp_path, "cpu", "float32", use_compile=False, paths=paths)
    try:
        compiled = losses_of(tmp_path, "cpu", "float32", use_compile=True, paths=paths)
    finally:
        # torch 2.4's inductor links its CPU kernels with -ffast-math, which turns on flush-to-zero for the
        # whole process (pytorch#126848, fixed in 2.5); later tests (hypothesis floats) need subnormals
        torch.set_flush_denormal(False)
    assert len(set(eager)) == STEPS  # the loss moves, so a wrong update would show
    assert compiled == pytest.approx(eager, abs=1e-4, rel=0)


@pytest.mark.gpu
@pytest.mark.parametrize("paths", PATHS)
def test_compiled_bf16_training_step_matches_eager_on_cuda(tmp_path: Path, paths: dict) -> None:
    eager = losses_of(tmp_path, "cuda", "bfloat16", use_compile=False, paths=paths)
    compiled = losses_of(tmp_path, "cuda", "bfloat16", use_compile=True, paths=paths)
    assert len(set(eager)) == STEPS
    assert compiled == pytest.approx(eager, rel=2e-2)  # bf16 keeps 8 bits of mantissa
    assert torch.cuda.max_memory_allocated() > 0
