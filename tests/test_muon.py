"""--optimizer muon: Muon for the blocks' 2-D weights, AdamW for the rest, stepped, scheduled, scaled
and checkpointed as one optimizer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import run_main
from gptforge.config import RECIPES, WITHOUT_MUON, GPTConfig, from_preset
from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.train import optim
from gptforge.train.optim import MuonWithAdamW, build_optimizer, check_optimizer, hidden_matrices
from gptforge.train.session import train

if hasattr(torch.optim, "Muon"):  # the module subclasses it
    from gptforge.train.muon_fp32 import Float32Muon, orthogonalise, scaled_learning_rate

needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason=f"torch {torch.__version__} has no Muon")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=8, vocab_size=17, n_layer=2, n_head=2, n_embd=16))


def muon_for(model: GPT, learning_rate: float = 1e-2) -> MuonWithAdamW:
    optimizer = build_optimizer(model, learning_rate=learning_rate, weight_decay=0.1, betas=(0.9, 0.95),
                                device_type="cpu", optimizer="muon")
    assert isinstance(optimizer, MuonWithAdamW)
    return optimizer


def backward_on_batch(model: GPT, seed: int, scaler: torch.amp.GradScaler | None = None) -> None:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 17, (3, 9), generator=generator)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    (scaler.scale(loss) if scaler is not None else loss).backward()


@needs_muon
def test_muon_takes_exactly_the_blocks_2d_weights_and_adamw_the_rest():
    model = tiny_gpt()
    optimizer = muon_for(model)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    muon_names = {names[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    adamw_names = {names[id(p)] for group in optimizer.adamw.param_groups for p in group["params"]}
    expected_muon = {name for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2}
    assert muon_names == expected_muon
    assert len(muon_names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    assert adamw_names == set(names.values()) - expected_muon  # every other parameter, the tied head once
    assert "transformer.wte.weight" in adamw_names and "transformer.wpe.weight" in adamw_names
    adamw_decay = {group["name"]: group["weight_decay"] for group in optimizer.adamw.param_groups}
    assert adamw_decay == {"decay": 0.1, "no_decay": 0.0}  # GPT-2's split for what AdamW keeps


@needs_muon
def test_a_step_moves_hidden_matrices_by_muon_and_the_rest_by_adamw():
    model, reference = tiny_gpt(), tiny_gpt()
    optimizer = muon_for(model)
    hidden = {id(p) for p in hidden_matrices(model)}
    ref_hidden = hidden_matrices(reference)
    ref_other = [p for p in reference.parameters() if id(p) not in {id(q) for q in ref_hidden}]
    ref_muon = Float32Muon(ref_hidden, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ref_adamw = torch.optim.AdamW(optim.param_groups(reference, 0.1, exclude=frozenset(ref_hidden)), lr=1e-2,
                                  betas=(0.9, 0.95))
    for step in range(3):
        backward_on_batch(model, step)
        backward_on_batch(reference, step)
        optimizer.step()
        ref_muon.step()
        ref_adamw.step()
        optimizer.zero_grad(set_to_none=True)
        ref_muon.zero_grad()
        ref_adamw.zero_grad()
    for parameter, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(parameter, expected)
    assert {id(p) for p in optimizer.muon.state} == hidden
    assert all("momentum_buffer" in state for state in optimizer.muon.state.values())
    assert len(optimizer.adamw.state) == len(ref_other)


@needs_muon
def test_the_cpu_gets_float32_muon_and_a_gpu_torch_muon():
    assert type(muon_for(tiny_gpt()).muon) is Float32Muon
    model = tiny_gpt()
    gpu = build_optimizer(model, learning_rate=1e-2, weight_decay=0.1, betas=(0.9, 0.95), device_type="cuda",
                          optimizer="muon")
    assert type(gpu.muon) is torch.optim.Muon


@needs_muon
@pytest.mark.parametrize("shape", [(24, 8), (8, 24), (16, 16)])
def test_the_iteration_and_learning_rate_are_torch_muons(shape: tuple[int, int]):
    """In bfloat16, ``orthogonalise`` is torch's own Newton–Schulz to the bit; the learning-rate rules match."""
    torch_muon = pytest.importorskip("torch.optim._muon", reason="torch's Muon module moved")
    update = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = torch_muon._zeropower_via_newtonschulz(update, torch_muon_coefficients(), 5, 1e-7)
    assert torch.equal(orthogonalise(update.bfloat16(), torch_muon_coefficients(), 5, 1e-7), expected)
    for rule in (None, "original", "match_rms_adamw"):
        assert scaled_learning_rate(0.02, rule, torch.Size(shape)) == torch_muon._adjust_lr(0.02, rule,
                                                                                            torch.Size(shape))


def torch_muon_coefficients() -> tuple[float, float, float]:
    return torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)]).defaults["ns_coefficients"]


@needs_muon
def test_float32_muon_steps_as_torch_muon_does_but_without_bfloat16_rounding():
    """Three steps from the same start: Float32Muon lands within bfloat16's rounding of torch's Muon, and its
    iteration agrees with the same iteration in float64 to float32 precision."""
    shape = (24, 8)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    settings = {"lr": 0.05, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    optimizers = Float32Muon([ours], **settings), torch.optim.Muon([theirs], **settings)
    for step in range(3):
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(10 + step))
        for parameter, optimizer in zip((ours, theirs), optimizers, strict=True):
            parameter.grad = grad.clone()
            optimizer.step()
    moved = (theirs - start).norm()
    assert (ours - theirs).norm() < 0.02 * moved  # bfloat16 keeps 8 bits of mantissa
    assert not torch.equal(ours, theirs)  # and it is not torch's bfloat16 iteration
    update = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    coefficients = torch_muon_coefficients()
    exact = orthogonalise(update.double(), coefficients, 5, 1e-7)
    torch.testing.assert_close(orthogonalise(update, coefficients, 5, 1e-7).double(), exact, atol=1e-5, rtol=1e-5)


@needs_muon
def test_setting_the_learning_rate_reaches_both_optimizers():
    optimizer = muon_for(tiny_gpt())
    for group in optimizer.param_groups:
        group["lr"] = 0.123
    assert [g["lr"] for g in optimizer.adamw.param_groups + optimizer.muon.param_groups] == [0.123] * 3
    assert optimizer.muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


@needs_muon
def test_state_dict_round_trip_continues_to_the_same_bits():
    model = tiny_gpt()
    optimizer = muon_for(model)
    for step in range(3):
        backward_on_batch(model, step)
        optimizer.step()
        optimizer.zero_grad()
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    parameters = sum(len(group["params"]) for group in saved_state["param_groups"])
    assert sorted(saved_state["state"]) == list(range(parameters))  # one optimizer's layout, numbered across both
    resumed = tiny_gpt(seed=1)
    resumed.load_state_dict(saved_model)
    resumed_optimizer = muon_for(resumed, learning_rate=5.0)  # the saved groups' lr wins
    resumed_optimizer.load_state_dict(saved_state)
    for step in range(3, 6):
        for m, o in ((model, optimizer), (resumed, resumed_optimizer)):
            backward_on_batch(m, step)
            o.step()
            o.zero_grad()
    for parameter, expected in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(parameter, expected)


@needs_muon
def test_adamw_state_is_refused_by_muon_with_a_user_error():
    model = tiny_gpt()
    adamw = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    with pytest.raises(UserError, match="--optimizer the run was started with"):
        muon_for(model).load_state_dict(adamw.state_dict())


@needs_muon
def test_grad_scaler_steps_both_and_skips_both_on_inf():
    """fp16's loss scaler unscales every group, then steps or skips the combined optimizer as a whole."""
    model, reference = tiny_gpt(), tiny_gpt()
    optimizer, ref_optimizer = muon_for(model), muon_for(reference)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    backward_on_batch(model, 0, scaler)
    backward_on_batch(reference, 0)
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    ref_optimizer.step()
    for parameter, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(parameter, expected)
    optimizer.zero_grad()
    before = copy.deepcopy(model.state_dict())
    backward_on_batch(model, 1, scaler)
    hidden_matrices(model)[0].grad[0, 0] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 10
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_older_torch_gets_one_line_naming_the_version(monkeypatch, capsys):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(UserError, match=r"needs torch >= 2\.9"):
        check_optimizer("muon", sharded=False)
    check_optimizer("adamw", sharded=False)
    status, _, err = run_main(["train", "--preset", "tiny", "--optimizer", "muon", "--max-steps", "1",
                               "--device", "cpu"], capsys)
    assert status == 2
    assert err.strip().count("\n") == 0 and "needs torch >= 2.9" in err


@needs_muon
def test_fsdp_is_refused_before_and_when_the_optimizer_is_built(monkeypatch):
    with pytest.raises(UserError, match="--parallel ddp"):
        check_optimizer("muon", sharded=True)
    check_optimizer("adamw", sharded=True)
    monkeypatch.setattr(optim, "is_sharded", lambda model: True)
    with pytest.raises(UserError, match="FSDP holds shards"):
        muon_for(tiny_gpt())


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="unknown optimizer 'sgd'; choose adamw or muon"):
        build_optimizer(tiny_gpt(), learning_rate=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu",
                        optimizer="sgd")


def test_resume_cannot_switch_the_optimizer(tiny_run: Path):
    with pytest.raises(UserError, match="started with adamw"):
        train(resume=tiny_run, overrides={"optimizer": "muon"})


def test_a_muon_recipe_falls_back_to_its_adamw_settings_where_torch_has_no_muon(monkeypatch):
    recipe = RECIPES["shakespeare-char-cpu"]
    fallback = recipe[WITHOUT_MUON]
    assert recipe["optimizer"] == "muon" and fallback["optimizer"] == "adamw"
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    old_torch = from_preset("shakespeare-char-cpu").train
    for key, value in fallback.items():
        assert getattr(old_torch, key) == value, key
    assert old_torch.batch_size == recipe["batch_size"]  # the rest of the recipe still applies
    monkeypatch.undo()
    if hasattr(torch.optim, "Muon"):
        new_torch = from_preset("shakespeare-char-cpu").train
        for key in fallback:
            assert getattr(new_torch, key) == recipe[key], key
    assert RECIPES["shakespeare-char-cpu"][WITHOUT_MUON] == fallback  # building a config changes no recipe


def test_asking_a_muon_recipe_for_adamw_gives_its_adamw_settings():
    recipe = RECIPES["shakespeare-char-cpu"]
    adamw = from_preset("shakespeare-char-cpu", optimizer="adamw").train
    for key, value in recipe[WITHOUT_MUON].items():
        assert getattr(adamw, key) == value, key


def test_the_cli_passes_the_optimizer_to_the_recipe(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    status, _, err = run_main(["train", "--preset", "shakespeare-char-cpu", "--optimizer", "adamw", "--max-steps", "1",
                               "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--eval-batches", "1",
                               "--sample-tokens", "2", "--out", str(run_dir)], capsys)
    assert status == 0, err
    train_settings = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train"]
    expected = {**RECIPES["shakespeare-char-cpu"][WITHOUT_MUON], "max_steps": 1}
    assert {key: train_settings[key] for key in expected} == expected


@needs_muon
@pytest.mark.gpu
def test_on_cuda_muon_steps_with_fused_adamw_and_resumes_to_the_same_bits():
    model = tiny_gpt().cuda()
    optimizer = build_optimizer(model, learning_rate=1e-2, weight_decay=0.1, betas=(0.9, 0.95), device_type="cuda",
                                optimizer="muon")
    assert optimizer.adamw.defaults.get("fused") is optim.adamw_accepts_fused()
    tokens = torch.randint(0, 17, (3, 9), generator=torch.Generator().manual_seed(0)).cuda()

    def step(m: GPT, o: MuonWithAdamW) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = m(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        o.step()
        o.zero_grad()

    step(model, optimizer)
    resumed = tiny_gpt(seed=1).cuda()
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = build_optimizer(resumed, learning_rate=1e-2, weight_decay=0.1, betas=(0.9, 0.95),
                                        device_type="cuda", optimizer="muon")
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(2):
        step(model, optimizer)
        step(resumed, resumed_optimizer)
    for parameter, expected in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(parameter, expected)
