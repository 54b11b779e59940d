"""Sizes are checked from the config before anything is allocated: flags, a checkpoint's stored config and
an HF folder's config.json that ask for more memory than the machine has are one error line naming it.

The figures are lower bounds computed without building anything: the parameter count must equal a
built model's, and `summary` must describe a billion layers by building one block.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_one_error, examples, run_main, write_corpus
from gptforge import sizing
from gptforge.checkpoint import load_checkpoint, save_checkpoint
from gptforge.config import GPTConfig, from_preset, padded_vocab_size
from gptforge.errors import UserError
from gptforge.model import Block, count_parameters, meta_model
from gptforge.tokenizer import build_tokenizer

CORPUS_CHARS = 3_000
HUGE = "1000000000"


@settings(max_examples=examples(60))
@given(n_layer=st.integers(1, 4), n_head=st.integers(1, 4), head_width=st.integers(1, 16),
       vocab_size=st.integers(1, 300), block_size=st.integers(1, 64), bias=st.booleans())
def test_the_analytic_parameter_count_is_the_built_models(n_layer: int, n_head: int, head_width: int,
                                                           vocab_size: int, block_size: int, bias: bool) -> None:
    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_width, vocab_size=vocab_size,
                       block_size=block_size, bias=bias)
    model = meta_model(config)
    assert sizing.parameter_count(config) == count_parameters(model).total
    assert sizing.inference_memory(config).parts["weights"] == sum(p.numel() * 4 for p in model.parameters())


def assert_refused(status: int, err: str, *expected: str) -> None:
    assert_one_error(status, err, "GiB", *expected)


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    return write_corpus(tmp_path, data_dir, CORPUS_CHARS)


# every flag that scales what a training step allocates, at a size no machine has
OVERSIZE_FLAGS = [("--batch-size", HUGE), ("--pad-vocab-to", "1000000000000"), ("--n-layer", HUGE),
                  ("--n-embd", "1048576"), ("--block-size", HUGE)]


@pytest.mark.parametrize(("flag", "value"), OVERSIZE_FLAGS)
def test_train_refuses_an_oversize_run_before_creating_anything(flag: str, value: str, corpus: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
            "--no-progress", "--n-head", "1", "--out", str(out), flag, value]
    assert_refused(*run_main(argv, capsys)[::2], "training this model needs at least")
    assert not out.exists()


@pytest.mark.parametrize(("flag", "value"), [*OVERSIZE_FLAGS, ("--steps", "100000000000")])
def test_bench_refuses_an_oversize_model_before_allocating(flag: str, value: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--preset", "tiny", "--device", "cpu", "--n-head", "1", "--steps", "1", flag, value]
    assert_refused(*run_main(argv, capsys)[::2], "this benchmark needs at least")


def test_the_estimate_is_compared_with_the_memory_the_device_reports(corpus: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A run that fits a large machine is refused on a small one, with both numbers in the line."""
    argv = ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
            "--no-progress", "--max-steps", "1", "--sample-tokens", "1", "--eval-interval", "0", "--out",
            str(tmp_path / "run"), "--batch-size", "64"]
    vocab = padded_vocab_size(build_tokenizer("char", text=corpus.read_text()).vocab_size, 64)
    needed = sizing.training_memory(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab),
                                    64).total
    monkeypatch.setattr(sizing, "available_memory_bytes", lambda: needed - 1)
    assert_refused(*run_main(argv, capsys)[::2], f"{(needed - 1) / sizing.GIB:,.1f} GiB available",
                   f"{needed / sizing.GIB:,.1f} GiB")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(sizing, "available_memory_bytes", lambda: needed)
    assert run_main(argv, capsys)[0] == 0


def test_a_checkpoint_whose_config_asks_for_too_much_is_one_line_for_every_command(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A small file whose stored config says n_embd 65536 and 48 layers must not be built."""
    state = load_checkpoint(next((tiny_run / "checkpoints").glob("last.pt*")))
    state["config"]["model"].update(n_embd=65536, n_layer=4800, n_head=1)
    bomb = save_checkpoint(state, tmp_path / "big.pt")
    for argv in (["sample", "--checkpoint", str(bomb), "--device", "cpu", "--max-new-tokens", "2"],
                 ["eval", "--checkpoint", str(bomb), "--device", "cpu"],
                 ["export", "--checkpoint", str(bomb), "--format", "hf", "--out", str(tmp_path / "hf")]):
        assert_refused(*run_main(argv, capsys)[::2], "big.pt needs at least")
    assert not (tmp_path / "hf").exists()


def test_a_resume_that_raises_the_batch_beyond_memory_is_refused(tiny_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert_refused(*run_main(["train", "--resume", str(run), "--batch-size", HUGE], capsys)[::2],
                   "training this model")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_hf_config_that_asks_for_too_much_is_refused_before_reading_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 65536, "n_layer": 4800,
                                                    "n_head": 1, "vocab_size": 65, "n_positions": 64}))
    (folder / "pytorch_model.bin").write_bytes(b"never read")
    assert_refused(*run_main(["sample", "--hf", str(folder), "--device", "cpu"], capsys)[::2], "config.json")


def test_sample_refuses_more_samples_than_memory_holds(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sample", "--run", str(tiny_run), "--device", "cpu", "--num-samples", "100000000000", "--prompt", "A"]
    status, out, err = run_main(argv, capsys)
    assert_refused(status, err, "--num-samples")
    assert out == ""


def test_summary_builds_one_block_for_a_billion_layers(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    built = []
    original = Block.__init__

    def counting(self: Block, *args: object, **kwargs: object) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Block, "__init__", counting)
    status, out, err = run_main(["summary", "--preset", "gpt2", "--n-layer", HUGE], capsys)
    assert status == 0, err
    expected = sizing.parameter_count(dataclasses.replace(GPTConfig(vocab_size=50304), n_layer=int(HUGE)))
    assert f"Total parameters: {expected:,}" in out
    assert f"{int(HUGE) - 1}): {HUGE} x Block(" in out
    assert len(built) == 1 and len(out.splitlines()) < 80


def test_summary_of_a_model_counts_what_building_it_counts(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["summary", "--preset", "gpt2-medium"], capsys)
    model = meta_model(GPTConfig(n_layer=24, n_head=16, n_embd=1024, vocab_size=50304))
    assert status == 0 and f"Total parameters: {count_parameters(model).total:,}" in out
    assert torch.device("meta") == next(model.parameters()).device


def test_on_a_gpu_the_free_memory_it_reports_is_what_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch's logic, on any machine: free bytes from torch.cuda.mem_get_info, not the host's."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * sizing.GIB, 80 * sizing.GIB))
    monkeypatch.setattr(sizing, "available_memory_bytes", lambda: 1000 * sizing.GIB)
    assert sizing.device_memory_bytes(torch.device("cuda", 0)) == 3 * sizing.GIB
    estimate = sizing.MemoryEstimate({"weights": 4 * sizing.GIB})
    with pytest.raises(UserError, match=r"needs at least 4\.0 GiB .* but cuda:0 has 3\.0 GiB available"):
        sizing.check_fits(estimate, torch.device("cuda", 0), "this", "smaller")


@pytest.mark.gpu
def test_a_run_beyond_the_gpu_is_refused_naming_its_free_memory(corpus: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cuda",
            "--no-progress", "--out", str(out), "--batch-size", HUGE]
    assert_refused(*run_main(argv, capsys)[::2], "cuda:0 has")
    assert not out.exists()


def test_loss_chunks_shrink_the_logits_estimate() -> None:
    model = from_preset("gpt2").model
    whole, chunked = sizing.training_memory(model, 16), sizing.training_memory(model, 16, loss_chunks=8)
    assert chunked.parts["logits"] * 8 == whole.parts["logits"]
    assert chunked.parts["activations"] == whole.parts["activations"]


def test_activations_are_counted_at_the_autocast_width(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Under bf16 autocast a block keeps bf16 activations: counted as fp32 they would refuse batches that fit.
    The training check passes the run's precision (here float32 on the CPU, so 4 bytes)."""
    model = from_preset("gpt2").model
    fp32, bf16 = sizing.training_memory(model, 16), sizing.training_memory(model, 16, activation_bytes=2)
    assert bf16.parts["activations"] * 2 == fp32.parts["activations"]
    assert bf16.parts["logits"] == fp32.parts["logits"]
    seen = []
    real = sizing.training_memory
    monkeypatch.setattr("gptforge.train.session.training_memory",
                        lambda *args: seen.append(args[-1]) or real(*args))
    status, _, err = run_main(["train", "--preset", "tiny", "--tokenizer", "char", "--device", "cpu",
                               "--dtype", "float32", "--max-steps", "1", "--out", str(tmp_path / "run")], capsys)
    assert status == 0 and seen == [4], err
