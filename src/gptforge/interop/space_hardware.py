"""The hardware a Gradio Space can run on, what each needs from the account, and what it asks of the export.

Hugging Face's Spaces documentation (2026): a new Space that runs on compute needs a paid plan, except
ZeroGPU, which a free personal account may use for up to two Spaces; a static Space (no server at all) is
free for everyone and is written by ``export --format static-space`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

# PyTorch's own index of CPU-only wheels: a CPU Space then installs ~200 MB of torch, not ~6 GB of CUDA
CPU_WHEELS_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class SpaceHardware:
    """One choice of `export --format space --hardware`."""

    name: str  # what the command line takes
    flavor: str  # huggingface_hub's SpaceHardware value (the README's suggested_hardware, the hub's request)
    plan: str  # which account can host it, as a clause
    gpu: bool  # CUDA torch from PyPI; otherwise PyTorch's CPU-only wheels
    zero_gpu: bool = False  # generation inside @spaces.GPU: a GPU is attached only while it runs


HARDWARE = {spec.name: spec for spec in (
    SpaceHardware("zero-gpu", "zero-a10g", "a free personal account can host it (up to 2 ZeroGPU Spaces)", gpu=True,
                  zero_gpu=True),
    SpaceHardware("cpu-basic", "cpu-basic", "a new Gradio Space on it needs a paid plan (PRO or a team)", gpu=False),
    SpaceHardware("cpu-upgrade", "cpu-upgrade", "it needs a paid plan and is billed by the hour", gpu=False),
    SpaceHardware("t4-small", "t4-small", "it needs a paid plan and is billed by the hour", gpu=True),
    SpaceHardware("l4x1", "l4x1", "it needs a paid plan and is billed by the hour", gpu=True),
    SpaceHardware("a10g-small", "a10g-small", "it needs a paid plan and is billed by the hour", gpu=True),
    SpaceHardware("a100-large", "a100-large", "it needs a paid plan and is billed by the hour", gpu=True),
)}
DEFAULT_HARDWARE = "zero-gpu"  # the one a free account can host

# Seconds ZeroGPU reserves per generation: 1,000 new tokens (the demo's cap) of a GPT-2 124M take a few
# seconds on its GPU; a short reservation puts visitors earlier in ZeroGPU's queue.
ZERO_GPU_SECONDS = 30
