"""`gptforge export --format onnx`: onnxruntime's logits equal gptforge's and greedy continuations are the
same tokens, for a char model and a GPT-2-tokenizer model (tiny ones), the cache included."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_main
from gptforge.generate import SamplingSettings, generate_text
from gptforge.model import GPT, GPTConfig
from gptforge.tokenizer import GPT2Tokenizer
from gptforge.trained_model import TrainedModel
from gptforge.use.load import load_trained

pytest.importorskip("onnxscript", reason="the ONNX export needs onnx and onnxscript (the onnx extra)")
pytest.importorskip("onnxruntime", reason="the ONNX checks need onnxruntime (the onnx extra)")

from gptforge.interop.onnx_export import export_onnx  # noqa: E402
from gptforge.interop.onnx_run import OnnxModel  # noqa: E402


@pytest.fixture(scope="module")
def char_model(tiny_run: Path) -> TrainedModel:
    return load_trained(run=tiny_run, device="cpu")


@pytest.fixture(scope="module")
def gpt2_model(char_model: TrainedModel) -> TrainedModel:
    """An untrained GPT-2-tokenizer model, vocabulary padded to 50,304 as the presets do."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    run_config = dataclasses.replace(char_model.config, model=config)
    return TrainedModel(model=GPT(config).eval(), tokenizer=GPT2Tokenizer(), config=run_config,
                        source=char_model.source, facts=dataclasses.replace(char_model.facts, tokenizer="gpt2"))


@pytest.fixture(scope="module")
def exports(char_model, gpt2_model, tmp_path_factory) -> dict[str, tuple[TrainedModel, Path]]:
    out = tmp_path_factory.mktemp("onnx")
    return {name: (trained, export_onnx(trained, out / name, int8=name == "char"))
            for name, trained in (("char", char_model), ("gpt2", gpt2_model))}


PROMPTS = {"char": "ROMEO:\nWhat say", "gpt2": "To be, or not to be: that is"}


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_logits_equal_gptforges_with_and_without_the_cache(name, exports) -> None:
    trained, folder = exports[name]
    onnx = OnnxModel(folder)
    ids = trained.tokenizer.encode(PROMPTS[name])
    with torch.no_grad():
        expected = trained.model(torch.tensor([ids]))[0][..., :trained.tokenizer.vocab_size].numpy()
    whole, present = onnx.run(np.array([ids]), onnx.empty_past())
    assert whole.shape == expected.shape and present.shape[4] == len(ids)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-4)
    # the same positions fed in two calls, the second one reading the first one's cache
    first, past = onnx.run(np.array([ids[:5]]), onnx.empty_past())
    rest, _ = onnx.run(np.array([ids[5:]]), past)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["char", "gpt2"])
def test_greedy_continuation_is_gptforges_past_the_context_too(name, exports) -> None:
    trained, folder = exports[name]
    new_tokens = trained.config.model.block_size + 20  # the window slides at least once
    settings = SamplingSettings(max_new_tokens=new_tokens, temperature=0.0, stop_at_eot=False)
    expected = generate_text(trained.model, trained.tokenizer, PROMPTS[name], settings)[0]
    ids = list(OnnxModel(folder).greedy_ids(trained.tokenizer.encode(PROMPTS[name]), new_tokens))
    assert trained.tokenizer.decode(ids) == expected


def test_the_folder_holds_the_tokenizer_and_the_facts(exports, data_dir) -> None:
    trained, folder = exports["gpt2"]
    assert (folder / "gpt2.tiktoken").read_bytes() == (data_dir / "gpt2.tiktoken").read_bytes()
    config = json.loads((folder / "onnx_config.json").read_text())
    assert config | {"format": "gptforge-onnx"} == config
    assert (config["vocab_size"], config["eot_id"], config["block_size"]) == (50257, 50256, 32)
    char, char_folder = exports["char"]
    assert json.loads((char_folder / "tokenizer.json").read_text()) == char.tokenizer.to_dict()
    assert not (char_folder / "gpt2.tiktoken").exists()


def test_int8_is_smaller_and_close(exports) -> None:
    trained, folder = exports["char"]
    assert (folder / "model.int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size
    ids = np.array([trained.tokenizer.encode(PROMPTS["char"])])
    full, _ = OnnxModel(folder).run(ids, OnnxModel(folder).empty_past())
    int8 = OnnxModel(folder, "model.int8.onnx")
    quantized, _ = int8.run(ids, int8.empty_past())
    assert np.abs(quantized - full).max() < 0.5  # int8 weights move logits a little, not everywhere


def test_cli_export_onnx(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "onnx"
    status, stdout, _ = run_main(["export", "--run", str(tiny_run), "--format", "onnx", "--out", str(out)], capsys)
    assert status == 0 and f"wrote {out}" in stdout
    assert {path.name for path in out.iterdir()} == {"model.onnx", "onnx_config.json", "tokenizer.json",
                                                      "facts.json"}
    status, _, err = run_main(["export", "--run", str(tiny_run), "--format", "onnx", "--out", str(out)], capsys)
    assert status == 2 and err.startswith("error: ") and "not empty" in err
