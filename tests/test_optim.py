import math

import pytest
import torch

from gptforge.errors import UserError
from gptforge.train import optim
from gptforge.train.optim import build_optimizer, learning_rate_at, param_groups, use_fused_adamw

MAX_LR, MIN_LR = 1e-3, 1e-4


def lr(step: int, schedule: str = "cosine", warmup_steps: int = 10, total_steps: int = 110) -> float:
    return learning_rate_at(step, max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=warmup_steps,
                            total_steps=total_steps, schedule=schedule)


class TiedToy(torch.nn.Module):
    """Embedding tied to the output layer, a LayerNorm and a biased Linear: the GPT-2 parameter kinds."""

    def __init__(self, vocab_size: int = 11, width: int = 6) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(vocab_size, width)
        self.ln = torch.nn.LayerNorm(width)
        self.fc = torch.nn.Linear(width, width)
        self.lm_head = torch.nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight


# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "constant", "onecycle"])
def test_warmup_is_linear_and_starts_above_zero(schedule):
    assert lr(0, schedule) == pytest.approx(MAX_LR / 10)
    assert lr(4, schedule) == pytest.approx(MAX_LR * 5 / 10)
    assert lr(9, schedule) == pytest.approx(MAX_LR)
    warmup = [lr(s, schedule) for s in range(10)]
    assert all(a < b for a, b in zip(warmup[:-1], warmup[1:], strict=True))


def test_cosine_exact_values():
    assert lr(10) == pytest.approx(MAX_LR)  # decay starts at the top
    assert lr(60) == pytest.approx((MAX_LR + MIN_LR) / 2)  # halfway: cos(pi/2) = 0
    expected = MIN_LR + (MAX_LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lr(35) == pytest.approx(expected)
    assert lr(110) == pytest.approx(MIN_LR)
    assert lr(10_000) == pytest.approx(MIN_LR)


def test_onecycle_decays_linearly_to_min():
    assert lr(10, "onecycle") == pytest.approx(MAX_LR)
    assert lr(60, "onecycle") == pytest.approx((MAX_LR + MIN_LR) / 2)
    assert lr(35, "onecycle") == pytest.approx(MAX_LR - 0.25 * (MAX_LR - MIN_LR))
    assert lr(110, "onecycle") == pytest.approx(MIN_LR)
    assert lr(500, "onecycle") == pytest.approx(MIN_LR)


def test_constant_holds_max_lr_after_warmup():
    assert [lr(s, "constant") for s in (10, 50, 110, 10_000)] == [MAX_LR] * 4


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_decay_is_monotonic_and_bounded(schedule):
    decay = [lr(s, schedule) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(decay[:-1], decay[1:], strict=True))
    assert min(decay) == pytest.approx(MIN_LR)
    assert max(decay) == pytest.approx(MAX_LR)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "onecycle"])
def test_no_warmup_starts_at_max_lr(schedule):
    assert lr(0, schedule, warmup_steps=0) == pytest.approx(MAX_LR)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize(("warmup_steps", "total_steps"), [(10, 10), (20, 10), (0, 0), (5, 0)])
def test_warmup_as_long_as_the_schedule_does_not_divide_by_zero(schedule, warmup_steps, total_steps):
    rates = [lr(s, schedule, warmup_steps, total_steps) for s in range(30)]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    # the schedule ends at total_steps whatever the warmup: a run resumed past its end trains at the lowest rate
    assert rates[total_steps:] == pytest.approx([MIN_LR] * (30 - total_steps))
    assert rates[:total_steps] == pytest.approx([MAX_LR * (s + 1) / warmup_steps for s in range(total_steps)])


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="unknown schedule 'linear'.*cosine"):
        lr(0, "linear")


# --- parameter groups and the optimizer ---------------------------------------------------------


def test_param_groups_decay_only_matrices():
    model = TiedToy()
    groups = {group["name"]: group for group in param_groups(model, weight_decay=0.1)}
    assert set(groups) == {"decay", "no_decay"}
    assert all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"])
    assert groups["decay"]["weight_decay"] == 0.1
    assert groups["no_decay"]["weight_decay"] == 0.0
    decayed_ids = {id(p) for p in groups["decay"]["params"]}
    assert decayed_ids == {id(model.wte.weight), id(model.fc.weight)}
    assert {id(p) for p in groups["no_decay"]["params"]} == {id(model.ln.weight), id(model.ln.bias),
                                                             id(model.fc.bias)}


def test_param_groups_count_tied_weights_once():
    model = TiedToy(vocab_size=11, width=6)
    groups = param_groups(model, weight_decay=0.1)
    grouped = sum(p.numel() for group in groups for p in group["params"])
    assert grouped == sum(p.numel() for p in model.parameters())
    assert grouped == 11 * 6 + (6 + 6) + (6 * 6 + 6)  # the tied lm_head adds nothing


def test_param_groups_skip_frozen_parameters_and_empty_groups():
    model = TiedToy()
    for parameter in (model.ln.weight, model.ln.bias, model.fc.bias):
        parameter.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert [group["name"] for group in groups] == ["decay"]


def test_build_optimizer_carries_weight_decay_and_hyperparameters():
    model = TiedToy()
    optimizer = build_optimizer(model, learning_rate=3e-4, weight_decay=0.1, betas=(0.9, 0.95),
                                device_type="cpu", eps=1e-6)
    assert isinstance(optimizer, torch.optim.AdamW)
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {"decay": 0.1, "no_decay": 0.0}
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4 and group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6
    assert not optimizer.defaults.get("fused")


def test_fused_adamw_only_on_cuda_when_available(monkeypatch):
    assert use_fused_adamw("cpu") is False
    assert use_fused_adamw("mps") is False
    assert use_fused_adamw("cuda") is optim.adamw_accepts_fused()
    monkeypatch.setattr(optim, "adamw_accepts_fused", lambda: True)
    assert use_fused_adamw("cuda") is True
    monkeypatch.setattr(optim, "adamw_accepts_fused", lambda: False)
    assert use_fused_adamw("cuda") is False


def test_build_optimizer_passes_fused_when_chosen(monkeypatch):
    """The CUDA branch, checked on CPU: the decision reaches torch's AdamW as fused=True."""
    seen = {}

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            seen.update(kwargs)
            super().__init__(params, **{k: v for k, v in kwargs.items() if k != "fused"})

    monkeypatch.setattr(optim, "adamw_accepts_fused", lambda: True)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    build_optimizer(TiedToy(), learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cuda")
    assert seen.get("fused") is True
    seen.clear()
    build_optimizer(TiedToy(), learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    assert "fused" not in seen


def test_optimizer_steps_tied_weight_once():
    """A tied tensor listed twice would get two AdamW updates per step; listed once it matches a reference."""
    torch.manual_seed(0)
    model = TiedToy()
    reference = TiedToy()
    reference.load_state_dict(model.state_dict())
    for m in (model, reference):
        m.zero_grad()
        (m.lm_head(m.fc(m.ln(m.wte(torch.tensor([1, 2, 3]))))) ** 2).sum().backward()
    build_optimizer(model, learning_rate=0.1, weight_decay=0.0, betas=(0.9, 0.95), device_type="cpu").step()
    torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.0, betas=(0.9, 0.95)).step()
    assert torch.allclose(model.wte.weight, reference.wte.weight)


@pytest.mark.parametrize("warmup_steps,max_steps", [(100, 60), (100, 100), (100, 101), (30, 100), (26, 100),
                                                    (25, 100), (5, 60), (0, 10)])
def test_warmup_warning_says_so_exactly_when_the_peak_is_missed_or_late(warmup_steps, max_steps):
    peak_reached = any(learning_rate_at(step, max_lr=1.0, min_lr=0.1, warmup_steps=warmup_steps,
                                        total_steps=max_steps, schedule="cosine") == 1.0 for step in range(max_steps))
    warning = optim.warmup_warning(warmup_steps, max_steps)
    assert (warning is not None) == (warmup_steps > max_steps / 4)
    if warning is not None:
        assert ("never reaches its peak" in warning) == (not peak_reached)
        assert f"--warmup-steps {max(1, max_steps // 10)}" in warning
