"""The CUDA paths: flash attention, fused AdamW, the GPU's random generator, DDP over NCCL and FSDP2 in bf16,
and a whole run on the GPU. Marked gpu: without CUDA they are skipped with the reason shown.

The same logic on the CPU: test_compile.py (compiled vs eager), test_optim.py (the fused choice),
test_checkpoint.py (RNG state), test_distributed.py (DDP and FSDP2 over gloo), test_device.py (dtype choice).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from conftest import tiny_char_config
from gptforge.checkpoint import capture_rng_state, restore_rng_state
from gptforge.config import GPTConfig
from gptforge.device import Precision
from gptforge.model import GPT
from gptforge.train import distributed
from gptforge.train.optim import build_optimizer
from gptforge.train.session import train

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)
SMALL = GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=256)  # head size 64, as GPT-2


def batch(config: GPTConfig, size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (size, config.block_size + 1), generator=generator)
    return tokens[:, :-1].to(CUDA), tokens[:, 1:].to(CUDA)


def model_on_gpu(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(SMALL).to(CUDA)


def test_the_training_forward_runs_on_flash_attention_in_bf16() -> None:
    """Restricted to the flash kernel, the model's attention must still run (it raises if flash cannot)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = model_on_gpu()
    x, y = batch(SMALL)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            _, flash_loss = model(x, y)
        with sdpa_kernel(SDPBackend.MATH):
            _, math_loss = model(x, y)
    assert flash_loss.item() == pytest.approx(math_loss.item(), rel=1e-2)
    flash_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_fused_adamw_is_chosen_and_updates_like_the_default_one() -> None:
    fused_model, reference = model_on_gpu(), model_on_gpu()
    fused = build_optimizer(fused_model, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cuda")
    assert fused.defaults.get("fused") is True
    plain = build_optimizer(reference, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    assert not plain.defaults.get("fused")
    for step in range(3):
        x, y = batch(SMALL, seed=step)
        for model, optimizer in ((fused_model, fused), (reference, plain)):
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(fused_model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_the_gpu_generator_survives_a_checkpoint() -> None:
    torch.cuda.manual_seed(3)
    torch.rand(7, device=CUDA)
    state = capture_rng_state(CUDA)
    expected = torch.rand(5, device=CUDA)
    torch.rand(11, device=CUDA)  # move it on
    restore_rng_state(state, CUDA)
    assert torch.equal(torch.rand(5, device=CUDA), expected)


@pytest.fixture
def nccl_group():
    """A one-process NCCL group: enough to run DDP's and FSDP2's CUDA code paths on one GPU."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.cuda.set_device(CUDA)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                         device_id=CUDA)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def accumulated_loss(forward: torch.nn.Module, parallel: torch.nn.Module, micro_batches: int) -> float:
    """One optimizer step's worth of forward/backward over `micro_batches`, syncing on the last only."""
    total = 0.0
    for micro_step in range(micro_batches):
        x, y = batch(SMALL, seed=micro_step)
        with distributed.gradient_sync(parallel, enabled=micro_step == micro_batches - 1):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = forward(x, y)
            (loss / micro_batches).backward()
        total += loss.item() / micro_batches
    return total


@pytest.mark.parametrize("use_compile", [False, True], ids=["eager", "compiled"])
def test_ddp_over_nccl_trains_like_the_bare_model(nccl_group, use_compile: bool) -> None:
    precision = Precision(CUDA, torch.bfloat16)
    bare, wrapped_model = model_on_gpu(), model_on_gpu()
    wrapped = distributed.wrap_model(wrapped_model, "ddp", precision, use_compile)
    assert isinstance(wrapped.parallel, torch.nn.parallel.DistributedDataParallel)
    expected = accumulated_loss(bare, bare, micro_batches=2)
    actual = accumulated_loss(wrapped.forward, wrapped.parallel, micro_batches=2)
    assert actual == pytest.approx(expected, rel=2e-2)
    for (name, a), b in zip(wrapped_model.named_parameters(), bare.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=2e-3, rtol=5e-2, msg=name)


def test_fsdp2_in_bf16_trains_like_the_bare_model_and_saves_plain_tensors(nccl_group) -> None:
    precision = Precision(CUDA, torch.bfloat16)
    bare, sharded = model_on_gpu(), model_on_gpu()
    wrapped = distributed.wrap_model(sharded, "fsdp", precision, use_compile=False)
    assert distributed.is_sharded(sharded)
    optimizer = build_optimizer(sharded, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cuda")
    expected = accumulated_loss(bare, bare, micro_batches=2)
    actual = accumulated_loss(wrapped.forward, wrapped.parallel, micro_batches=2)
    assert actual == pytest.approx(expected, rel=2e-2)
    assert distributed.clip_grad_norm(sharded, 1.0).item() == pytest.approx(
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0).item(), rel=5e-2)
    optimizer.step()
    weights, optimizer_state = distributed.full_state_dicts(sharded, optimizer)
    assert list(weights) == list(bare.state_dict())
    assert all(isinstance(t, torch.Tensor) and not hasattr(t, "full_tensor") for t in weights.values())
    assert len(optimizer_state["state"]) == len(list(bare.parameters()))


def test_a_run_on_the_gpu_trains_in_bf16_and_logs_memory(tmp_path: Path) -> None:
    config = tiny_char_config(tmp_path / "run", device="cuda", max_steps=30, log_interval=10,
                              learning_rate=3e-3, eval_interval=10, val_fraction=0.1)
    outcome = train(config)
    log = (outcome.run_dir / "train.log").read_text(encoding="utf-8")
    assert "dtype bfloat16 | compile True" in log
    assert "| mem " in log
    losses = [json.loads(line)["loss"] for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert losses[-1] < losses[0]
