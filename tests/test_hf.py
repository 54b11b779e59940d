"""Hugging Face interop: export to and import from transformers' GPT2LMHeadModel folders.

The proofs are transformers itself: it loads what we export and computes the same logits, its
GPT2TokenizerFast encodes like tiktoken from the vocab.json / merges.txt we derive, and what it saves
we load, train from and sample from.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import require_transformers_models
from gptforge.cli import main
from gptforge.config import GPTConfig, RunConfig, from_preset
from gptforge.errors import UserError
from gptforge.generate import SamplingSettings, generate_ids
from gptforge.interop.hf_export import export_hf
from gptforge.interop.hf_read import read_hf_folder
from gptforge.interop.hf_weights import CONV1D_SUFFIXES
from gptforge.model import GPT
from gptforge.tokenizer import GPT2Tokenizer
from gptforge.train.session import resume_run, start_run
from gptforge.trained_model import ModelFacts, TrainedModel
from gptforge.use.load import load_trained
from warm import WarmStarter

transformers = pytest.importorskip("transformers", reason="transformers is in the dev and hf extras")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is in the dev and hf extras")

GPT2_VOCAB = 50257
SUBPROCESS_TIMEOUT_S = 120


def hf_logits(folder: Path, idx: torch.Tensor) -> torch.Tensor:
    require_transformers_models(transformers)
    model, info = transformers.GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    with torch.no_grad():
        return model.eval()(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(idx)[0]


def random_hf_folder(folder: Path, *, vocab_size: int = GPT2_VOCAB, n_positions: int = 64,
                     bin_format: bool = False) -> transformers.GPT2LMHeadModel:
    """A small randomly initialised transformers GPT-2 (every weight perturbed so each one matters)."""
    require_transformers_models(transformers)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    if bin_format:
        # transformers 5 always writes safetensors; write what older versions and the hub's gpt2 hold:
        # GPT2Model names (no "transformer." prefix) and the causal-mask buffers, in pytorch_model.bin
        (folder / "model.safetensors").unlink()
        state = {name.removeprefix("transformer."): tensor for name, tensor in model.state_dict().items()
                 if name != "lm_head.weight"}
        state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, n_positions, n_positions))
        torch.save(state, folder / "pytorch_model.bin")
    return model


def generate_ids_list(model: GPT, prompt_ids: list[int], settings: SamplingSettings) -> list[int]:
    return [int(tokens[0]) for tokens in generate_ids(model, prompt_ids, settings, GPT2_VOCAB)]


def write_corpus(folder: Path, data_dir: Path, chars: int = 20_000) -> Path:
    path = folder / "corpus.txt"
    path.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_run(tiny_run: Path) -> Path:
    """A tiny char model: vocabulary 65 padded to 128."""
    return tiny_run

@pytest.fixture(scope="module")
def char_export(char_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", "--run", str(char_run), "--format", "hf", "--out", str(out)]) == 0
    return out


# --- export -----------------------------------------------------------------------------------------------


def test_an_export_has_a_model_card_with_the_hubs_metadata_and_the_context_limit(char_run: Path,
                                                                                char_export: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(char_export / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "gptforge" in card.data.tags
    block_size = json.loads((char_export / "config.json").read_text())["n_positions"]
    assert f"| context length (`n_positions`) | {block_size:,} tokens |" in card.text
    assert "does not slide past `n_positions`" in card.text
    steps = torch.load(char_run / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert f"| steps trained | {steps:,} |" in card.text


def test_exported_char_run_loads_in_transformers_with_equal_logits(char_run: Path, char_export: Path,
                                                                   tmp_path: Path) -> None:
    trained = load_trained(run=char_run, device="cpu")
    assert trained.config.model.vocab_size == 128  # padded; the export is not
    config = json.loads((char_export / "config.json").read_text())
    assert config["vocab_size"] == 65 and config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_positions"], config["n_ctx"], config["n_embd"], config["n_layer"], config["n_head"]) == \
        (32, 32, 32, 2, 2)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["bos_token_id"] is None and config["eos_token_id"] is None
    assert json.loads((char_export / "gptforge_tokenizer.json").read_text()) == trained.tokenizer.to_dict()
    assert not (char_export / "vocab.json").exists()

    idx = torch.randint(0, 65, (3, 32), generator=torch.Generator().manual_seed(1))
    expected = our_logits(trained.model, idx)[..., :65]
    assert (hf_logits(char_export, idx) - expected).abs().max().item() <= 1e-4

    # the file holds what transformers' own save_pretrained writes: same names, same tensors
    transformers.GPT2LMHeadModel.from_pretrained(char_export).save_pretrained(tmp_path / "resaved")
    ours = safetensors_torch.load_file(char_export / "model.safetensors")
    theirs = safetensors_torch.load_file(tmp_path / "resaved" / "model.safetensors")
    assert set(ours) == set(theirs) and "lm_head.weight" not in ours
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_every_exported_file_is_readable_by_all_the_weights_too(char_run: Path, tmp_path: Path,
                                                                usual_umask: None) -> None:
    export_hf(load_trained(run=char_run, device="cpu"), tmp_path / "hf")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == 0o644  # safetensors' save_file alone makes it 0600
    assert set(modes.values()) == {0o644}, modes


def test_char_export_has_a_tokenizer_autotokenizer_loads_that_encodes_like_gptforge(char_run: Path,
                                                                                    char_export: Path) -> None:
    ours = load_trained(run=char_run, device="cpu").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(char_export)
    corpus = "".join(ours.chars) + "\n\nROMEO:\n  What, ho!  Is't so?\n" + "".join(reversed(ours.chars))
    ids = theirs(corpus)["input_ids"]
    assert ids == ours.encode(corpus)  # every character, newlines and runs of spaces included
    assert theirs.decode(ids) == corpus == ours.decode(ids)
    unknown = next(chr(c) for c in range(0x20, 0x3000) if chr(c) not in ours.chars)
    with pytest.raises(UserError):
        ours.encode(f"a{unknown}b")
    with pytest.raises(Exception, match="UNK"):  # refused, as gptforge refuses it, not mapped to some id
        theirs(f"a{unknown}b")


def test_text_generation_pipeline_runs_on_the_char_export_and_agrees_with_sample(
        char_run: Path, char_export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_transformers_models(transformers)
    generator = transformers.pipeline("text-generation", model=str(char_export), device="cpu")
    text = generator("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"]
    capsys.readouterr()
    assert main(["sample", "--run", str(char_run), "--prompt", "ROMEO:", "--max-new-tokens", "12",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert text + "\n" == capsys.readouterr().out  # greedy: the same 12 characters


def test_an_export_from_before_gptforge_tokenizer_json_still_loads_with_hf(char_run: Path, char_export: Path,
                                                                          tmp_path: Path) -> None:
    """Older exports put gptforge's description in tokenizer.json itself, and no tokenizer_config.json."""
    old = tmp_path / "old-export"
    shutil.copytree(char_export, old)
    (old / "gptforge_tokenizer.json").replace(old / "tokenizer.json")
    (old / "tokenizer_config.json").unlink()
    imported = load_trained(hf=old, device="cpu")
    assert imported.tokenizer.to_dict() == load_trained(run=char_run, device="cpu").tokenizer.to_dict()


def test_round_trip_gives_back_identical_weights(char_run: Path, char_export: Path, data_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    original = load_trained(run=char_run, device="cpu")
    imported = load_trained(hf=char_export, device="cpu")
    assert imported.tokenizer.to_dict() == original.tokenizer.to_dict()  # from gptforge_tokenizer.json
    ours, back = original.model.state_dict(), imported.model.state_dict()
    assert set(ours) == set(back)
    for name, tensor in ours.items():
        expected = tensor[:65] if name in ("transformer.wte.weight", "lm_head.weight") else tensor
        assert torch.equal(back[name], expected), name

    # the CLI reads the folder like a run: greedy samples are the same text
    args = ["--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]
    capsys.readouterr()
    assert main(["sample", "--run", str(char_run), *args]) == 0
    from_run = capsys.readouterr().out
    assert main(["sample", "--hf", str(char_export), *args]) == 0
    assert capsys.readouterr().out == from_run
    assert main(["eval", "--hf", str(char_export), "--max-batches", "2", "--device", "cpu"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_padded_bias_free_gpt2_model_exports_a_standard_gpt2(tmp_path: Path, data_dir: Path) -> None:
    """Vocabulary 50304 -> 50257, zero biases for a bias=False model, and GPT-2's tokenizer files."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=16, bias=False)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tokenizer = GPT2Tokenizer()
    trained = TrainedModel(model=model, tokenizer=tokenizer, config=RunConfig(model=model.config),
                           source=tmp_path / "none", facts=ModelFacts())
    out = tmp_path / "hf"
    export_hf(trained, out)

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == GPT2_VOCAB and config["bos_token_id"] == config["eos_token_id"] == 50256
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    weights = safetensors_torch.load_file(out / "model.safetensors")
    assert weights["transformer.wte.weight"].shape == (GPT2_VOCAB, 16)
    assert not weights["transformer.h.0.attn.c_attn.bias"].any() and not weights["transformer.ln_f.bias"].any()

    idx = torch.randint(0, GPT2_VOCAB, (2, 64), generator=torch.Generator().manual_seed(2))
    expected = our_logits(model, idx)[..., :GPT2_VOCAB]
    assert (hf_logits(out, idx) - expected).abs().max().item() <= 1e-4

    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50_000
    assert len(json.loads((out / "vocab.json").read_text(encoding="utf-8"))) == GPT2_VOCAB
    hf_tokenizer = transformers.GPT2TokenizerFast.from_pretrained(out)
    assert hf_tokenizer.eos_token_id == 50256 and hf_tokenizer.decode([50256]) == "<|endoftext|>"
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = hf_tokenizer(text)["input_ids"]
    assert len(ids) == 338_025
    assert ids == tokenizer.encode(text)
    assert transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids

    generator = transformers.pipeline("text-generation", model=str(out), device="cpu")
    prompt = "First Citizen:"
    generated = generator(prompt, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    greedy = SamplingSettings(max_new_tokens=8, temperature=0, stop_at_eot=False)
    assert list(generated) == [*tokenizer.encode(prompt), *generate_ids_list(model, tokenizer.encode(prompt), greedy)]


def test_export_into_a_non_empty_folder_touches_nothing(char_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--run", str(char_run), "--format", "hf", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging folder left behind


# --- import -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bin_format", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path: Path, bin_format: bool) -> None:
    folder = tmp_path / "gpt2"
    hf_model = random_hf_folder(folder, bin_format=bin_format)
    trained = load_trained(hf=folder, device="cpu")
    assert trained.tokenizer.name == "gpt2"
    assert trained.source.name == ("pytorch_model.bin" if bin_format else "model.safetensors")
    idx = torch.randint(0, GPT2_VOCAB, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf_model(idx).logits
    assert (our_logits(trained.model, idx) - expected).abs().max().item() <= 1e-4


def test_init_from_export_then_resume_does_not_reapply_it(char_export: Path, tmp_path: Path, data_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "init"
    shutil.copytree(char_export, folder)
    config = from_preset("tiny")
    for key, value in {"tokenizer": "char", "device": "cpu", "progress": False, "max_steps": 2, "batch_size": 2,
                       "plot": False, "eval_interval": 0, "sample_tokens": 4, "init": f"hf:{folder}",
                       "out": str(tmp_path / "run")}.items():
        setattr(config.train, key, value)
    config.model.n_layer, config.model.n_embd, config.model.block_size = 1, 64, 16  # replaced / cropped
    trainer, log = start_run(config)
    assert (config.model.n_layer, config.model.n_embd, config.model.block_size) == (2, 32, 16)
    source = read_hf_folder(folder).state
    for name, tensor in trainer.model.state_dict().items():
        if name == "lm_head.weight":
            continue
        expected = source[name].t() if name.endswith(CONV1D_SUFFIXES) else source[name]
        if name == "transformer.wpe.weight":
            expected = expected[:16]
        if name == "transformer.wte.weight":
            assert torch.equal(tensor[65:], source[name].mean(dim=0).expand(128 - 65, -1))  # padding: mean row
            tensor = tensor[:65]
        assert torch.equal(tensor, expected), name
    trainer.fit()
    log.close()
    assert "position embeddings cropped from 32" in (tmp_path / "run" / "train.log").read_text()

    shutil.rmtree(folder)  # a resumed run needs only its own checkpoint
    assert main(["train", "--resume", str(tmp_path / "run"), "--init-from", f"hf:{folder}"]) == 2
    assert "a resumed run continues from its own checkpoint" in capsys.readouterr().err
    resumed, log = resume_run(tmp_path / "run", {})
    log.close()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed.model.state_dict()[name], saved[name]) for name in saved)


def run_train(warm: WarmStarter, *args: str) -> subprocess.CompletedProcess[str]:
    return warm.run([sys.executable, "-m", "gptforge.cli", "train", *args], capture_output=True, text=True,
                    timeout=SUBPROCESS_TIMEOUT_S)


@pytest.mark.slow
def test_train_init_from_hf_cli(tmp_path: Path, data_dir: Path, warm: WarmStarter) -> None:
    folder = tmp_path / "gpt2"
    random_hf_folder(folder)
    corpus = write_corpus(tmp_path, data_dir)
    common = ["--preset", "tiny", "--init-from", f"hf:{folder}", "--data", str(corpus), "--device", "cpu",
              "--max-steps", "2", "--block-size", "32", "--batch-size", "2", "--eval-interval", "0",
              "--sample-tokens", "4", "--no-progress"]

    refused = run_train(warm, *common, "--tokenizer", "char", "--out", str(tmp_path / "char"))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert "config.json has a vocabulary of 50,257 tokens" in refused.stderr and "--tokenizer gpt2" in refused.stderr
    assert not (tmp_path / "char").exists()

    done = run_train(warm, *common, "--tokenizer", "gpt2", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "model shape from" in log and "n_embd 32 -> 16" in log and "cropped from 64" in log
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["n_embd"] == 16 and saved["model"]["vocab_size"] == 50304
    assert saved["train"]["init"] == f"hf:{folder}"


@pytest.mark.slow
def test_finetune_recipe_trains_from_a_gpt2_folder(tmp_path: Path, warm: WarmStarter) -> None:
    folder = tmp_path / "gpt2"
    random_hf_folder(folder)
    done = run_train(warm, "--preset", "shakespeare-finetune", "--init-from", f"hf:{folder}", "--block-size", "32",
                     "--batch-size", "2", "--max-steps", "3", "--eval-interval", "3", "--eval-batches", "2",
                     "--sample-tokens", "4", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == "shakespeare-finetune" and config["train"]["learning_rate"] == 1e-4
    assert config["train"]["data"] == "shakespeare" and config["train"]["tokenizer"] == "gpt2"
    assert config["model"]["n_embd"] == 16  # the folder's shape, not GPT-2 124M's
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    assert [record["step"] for record in evals] == [3]


# --- errors -----------------------------------------------------------------------------------------------


def test_finetune_recipe_needs_init_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "shakespeare-finetune", "--out", str(tmp_path / "run")]) == 2
    assert "--init-from hf:DIR" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    config = from_preset("shakespeare-finetune")
    config.train.init = "hf:gpt2"
    config.validate()


def break_folder(folder: Path, how: str) -> Path:
    """`folder` (a transformers GPT-2) broken one way; returns the file the error must name."""
    config_file = folder / "config.json"
    if how == "missing folder":
        shutil.rmtree(folder)
        return folder
    if how == "no config.json":
        config_file.unlink()
        return folder
    config = json.loads(config_file.read_text())
    if how == "not gpt2":
        config["model_type"] = "llama"
    if how == "shape mismatch":
        config["n_embd"] = 32
    config_file.write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    if how == "no weights":
        weights.unlink()
        return folder
    if how == "corrupt weights":
        weights.write_bytes(b"not safetensors")
    return config_file if how == "not gpt2" else weights


@pytest.mark.parametrize("how", ["missing folder", "no config.json", "not gpt2", "no weights", "shape mismatch",
                                 "corrupt weights"])
def test_bad_folder_is_one_line_naming_the_file(tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "gpt2"
    random_hf_folder(folder, vocab_size=97, n_positions=16)
    named = break_folder(folder, how)
    with pytest.raises(UserError) as raised:
        read_hf_folder(folder)
    assert str(named) in str(raised.value) and "\n" not in str(raised.value)
    capsys.readouterr()
    assert main(["sample", "--hf", str(folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(named) in err
