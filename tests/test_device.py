"""Device and precision choice, including the GPU branches (faked: the decision is pure logic)."""

import pytest
import torch

from gptforge.device import Precision, resolve_device, resolve_dtype
from gptforge.errors import UserError


@pytest.fixture
def gpu_of_capability(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability, on which torch also claims (emulated) bf16."""
    def fake(capability: tuple[int, int]) -> torch.device:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        return torch.device("cuda", 0)
    return fake


@pytest.mark.parametrize(("capability", "expected"), [
    ((9, 0), torch.bfloat16),  # H100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((7, 5), torch.float16),  # T4: bf16 only emulated
    ((7, 0), torch.float16),  # V100
])
def test_auto_dtype_is_bf16_from_ampere_on_and_fp16_with_loss_scaling_before(gpu_of_capability, capability,
                                                                              expected) -> None:
    dtype = resolve_dtype("auto", gpu_of_capability(capability))
    assert dtype == expected
    assert Precision(torch.device("cuda", 0), dtype).needs_loss_scaling == (expected == torch.float16)


def test_asking_for_bf16_on_a_gpu_without_it_says_what_to_use(gpu_of_capability) -> None:
    with pytest.raises(UserError, match="--dtype float16"):
        resolve_dtype("bfloat16", gpu_of_capability((7, 5)))
    assert resolve_dtype("float16", gpu_of_capability((7, 5))) == torch.float16


def test_cpu_trains_in_fp32_unless_asked() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert not Precision(cpu, torch.float32).needs_loss_scaling
    assert Precision(cpu, torch.bfloat16).name == "bfloat16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_gpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")
