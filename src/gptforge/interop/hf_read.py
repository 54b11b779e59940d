"""Read and check a folder in transformers' GPT-2 format (what `save_pretrained` writes).

A folder holds `config.json` and `model.safetensors` (or an older `pytorch_model.bin`), plus a tokenizer
`AutoTokenizer` loads; gptforge's own description of its tokenizer goes beside them in
`gptforge_tokenizer.json`. Every problem with a folder is a UserError naming the file, found before any
model is built.
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptforge.checkpoint import BadCheckpoint, check_archive_size, code_it_would_run, size_cap
from gptforge.config import GPT2_VOCAB_SIZE, GPTConfig, RunConfig, TrainConfig, choices_of, json_name, short_repr
from gptforge.device import resolve_device
from gptforge.errors import UserError
from gptforge.fileio import read_json
from gptforge.interop.hf_weights import NOT_WEIGHTS, POSITIONS, hf_safetensors, hf_shapes, load_hf_state_dict
from gptforge.interop.hub import first_line
from gptforge.model import GPT, TIED_LM_HEAD, count_parameters
from gptforge.paths import find_gpt2_ranks, keep_gpt2_ranks
from gptforge.sizing import check_fits, inference_memory
from gptforge.tokenizer import GPT2_EOT_ID, GPT2Tokenizer, bytes_to_unicode, tokenizer_from_dict
from gptforge.trained_model import ModelFacts, TrainedModel

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "gptforge_tokenizer.json"  # gptforge's own description, under a name transformers leaves alone
# the tokenizers library's file, which AutoTokenizer reads; exports before gptforge_tokenizer.json put gptforge's
# own description there, and `--hf DIR` still reads those
HF_TOKENIZER_FILE = "tokenizer.json"
HF_VOCAB_FILE = "vocab.json"  # transformers' GPT2Tokenizer: each token spelled in GPT-2's byte alphabet, its rank


@dataclass
class HFCheckpoint:
    """A transformers GPT-2 folder, read and checked: its shape, its weights (HF layout, CPU)."""

    folder: Path
    config_file: Path
    weights_file: Path
    shape: GPTConfig  # exact vocabulary, block_size = n_positions
    state: dict[str, torch.Tensor]
    tokenizer: dict[str, Any] | None  # gptforge's tokenizer description, when an export from gptforge put one there
    tokenizer_file: Path | None  # the file it came from

    def load_into(self, model: GPT) -> None:
        """Copy the weights into `model`, padding its vocabulary and cropping its positions as needed."""
        state = {**self.state, POSITIONS: self.state[POSITIONS][: model.config.block_size]}
        load_hf_state_dict(model, state)


def _read_shape(path: Path) -> GPTConfig:
    """The model's shape from config.json, refusing what gptforge's GPT cannot compute exactly."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("model_type") != "gpt2":
        found = data.get("model_type") if isinstance(data, dict) else None
        raise UserError(f"{path} is not a GPT-2 config (model_type {short_repr(found)}, expected 'gpt2')")
    _check_numbers(path, data)
    # transformers' GPT2Config defaults, for keys a config leaves out
    n_embd = data.get("n_embd", 768)
    unsupported = [
        ("activation_function", data.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh")),
        ("n_inner", data.get("n_inner") in (None, 4 * n_embd)),
        ("layer_norm_epsilon", data.get("layer_norm_epsilon", 1e-5) == 1e-5),
        ("scale_attn_weights", data.get("scale_attn_weights", True) is True),
        ("scale_attn_by_inverse_layer_idx", data.get("scale_attn_by_inverse_layer_idx", False) is False),
        ("tie_word_embeddings", data.get("tie_word_embeddings", True) is True),
    ]
    bad = [key for key, ok in unsupported if not ok]
    if bad:
        raise UserError(f"{path}: gptforge's GPT-2 cannot reproduce {bad[0]}={short_repr(data.get(bad[0]))} "
                        "(it has gelu_new, n_inner 4*n_embd, layer_norm_epsilon 1e-5 and tied embeddings)")
    shape = GPTConfig(block_size=data.get("n_positions", 1024), vocab_size=data.get("vocab_size", GPT2_VOCAB_SIZE),
                      n_layer=data.get("n_layer", 12), n_head=data.get("n_head", 12), n_embd=n_embd, dropout=0.0)
    try:
        shape.validate()
        check_fits(inference_memory(shape), torch.device("cpu"), "this model", "is the config.json right?")
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return shape


_WHOLE_NUMBERS = ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")


def _check_numbers(path: Path, data: dict[str, Any]) -> None:
    """Refuse a shape key that is not a number (null, {}, "12", true) before any arithmetic on it: a hand-made
    or hostile config.json is one line naming the key, not a TypeError deep in the model's sizing."""
    for key, value in data.items():
        if key in _WHOLE_NUMBERS or (key == "n_inner" and value is not None):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif key == "layer_norm_epsilon":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            kind = "a number" if key == "layer_norm_epsilon" else "a whole number"
            raise UserError(f"{path}: {key} is {json_name(value)} ({short_repr(value)}), not {kind}")


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The state dict from model.safetensors or, failing that, pytorch_model.bin (never running its code)."""
    path = next((folder / name for name in (SAFETENSORS_FILE, BIN_FILE) if (folder / name).is_file()), None)
    if path is None:
        raise UserError(f"no weights in {folder}: expected {SAFETENSORS_FILE} or {BIN_FILE} (sharded checkpoints "
                        "are not supported)")
    load = hf_safetensors().load_file if path.name == SAFETENSORS_FILE else _load_bin
    try:
        return path, load(str(path))
    except pickle.UnpicklingError as exc:
        forbidden = code_it_would_run(exc)
        if forbidden:  # torch's own text goes on to suggest loading it unsafely: not repeated here
            raise UserError(f"{path}: refused: this file would run code when loaded (it asks for {forbidden}); "
                            "use model.safetensors or a file you trust") from None
        raise UserError(f"cannot read the weights in {path}: not a PyTorch weights file") from None
    except UserError:
        raise
    except Exception as exc:  # a corrupt or foreign file fails in each loader's own way (SafetensorError, pickle)
        raise UserError(f"cannot read the weights in {path}: {first_line(exc)}") from None


def _load_bin(file: str) -> dict[str, Any]:
    """pytorch_model.bin through torch.load, its zip archive's sizes checked first (as checkpoints' are)."""
    try:
        with open(file, "rb") as stream:
            check_archive_size(stream, *size_cap(None))
    except BadCheckpoint as exc:
        raise UserError(f"cannot read the weights in {file}: {exc}") from None
    return torch.load(file, map_location="cpu", weights_only=True)


def _hf_names(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel names: GPT2Model checkpoints (the hub's gpt2) lack the `transformer.` prefix."""
    renamed = {}
    for name, tensor in state.items():
        if name.endswith(NOT_WEIGHTS) or name == TIED_LM_HEAD:  # lm_head is tied to wte, as transformers ties it
            continue
        renamed[name if name.startswith("transformer.") else f"transformer.{name}"] = tensor
    return renamed


def _gptforge_tokenizer(folder: Path) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
    """gptforge's tokenizer description: gptforge_tokenizer.json, or tokenizer.json where an older export wrote
    it there (a tokenizers-library tokenizer.json, which transformers writes, is not one)."""
    for path in (folder / TOKENIZER_FILE, folder / HF_TOKENIZER_FILE):
        if path.is_file():
            data = read_json(path)
            if isinstance(data, dict) and data.get("name") in choices_of(TrainConfig, "tokenizer"):
                return path, data
    return None, None


def read_hf_folder(folder: str | Path) -> HFCheckpoint:
    """Read and check a transformers GPT-2 folder; every problem is a UserError naming the file."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"Hugging Face model folder not found: {folder}")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"no {CONFIG_FILE} in {folder}: not a transformers model folder")
    shape = _read_shape(config_file)
    weights_file, raw_state = _read_weights(folder)
    if not isinstance(raw_state, dict) or not all(isinstance(v, torch.Tensor) for v in raw_state.values()):
        raise UserError(f"{weights_file} does not hold a state dict of tensors")
    state = _hf_names(raw_state)
    expected = hf_shapes(shape)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{weights_file} is not a GPT-2 of the shape in {CONFIG_FILE}: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    for name, size in expected.items():
        if tuple(state[name].shape) != size:
            raise UserError(f"shape mismatch in {weights_file}: {name} is {tuple(state[name].shape)}, "
                            f"{CONFIG_FILE} implies {size}")
    tokenizer_file, tokenizer = _gptforge_tokenizer(folder)
    return HFCheckpoint(folder=folder, config_file=config_file, weights_file=weights_file, shape=shape,
                        state=state, tokenizer=tokenizer, tokenizer_file=tokenizer_file)


def gpt2_ranks_from_vocab(folder: Path) -> bytes | None:
    """GPT-2's ranks file (gpt2.tiktoken's bytes) rebuilt from the folder's vocab.json, or None without one.

    The ranks are the vocabulary itself; merges.txt only repeats them. Whether they are GPT-2's exactly is
    the caller's check (the file's sha256), so a folder with another BPE is never taken for GPT-2."""
    try:
        vocab = read_json(folder / HF_VOCAB_FILE)
        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        ranks = sorted((rank, bytes(byte_of[char] for char in token)) for token, rank in vocab.items()
                       if rank != GPT2_EOT_ID)
        return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in ranks)
    except (UserError, AttributeError, KeyError, TypeError, ValueError):
        return None


def _gpt2_tokenizer(folder: Path, tokenizer_file: str | None) -> GPT2Tokenizer:
    """GPT-2's tokenizer: from `tokenizer_file`, the data dir or the cache, else from the folder's own
    vocab.json (kept in the cache when it is GPT-2's), so an export loads offline with nothing passed."""
    if tokenizer_file is None and find_gpt2_ranks() is None:
        contents = gpt2_ranks_from_vocab(folder)
        if contents is not None:
            keep_gpt2_ranks(contents)
    return GPT2Tokenizer(tokenizer_file)


def load_hf_folder(folder: str | Path, device: str = "auto", tokenizer_file: str | None = None) -> TrainedModel:
    """A transformers GPT-2 folder as a TrainedModel: GPT-2's tokenizer, or the gptforge tokenizer described in it."""
    checkpoint = read_hf_folder(folder)
    described = checkpoint.tokenizer
    if described is None or (isinstance(described, dict) and described.get("name") == "gpt2"):
        tokenizer = _gpt2_tokenizer(checkpoint.folder, tokenizer_file)
    else:
        tokenizer = tokenizer_from_dict(described, bpe_file=tokenizer_file)
    if tokenizer.vocab_size != checkpoint.shape.vocab_size:
        raise UserError(f"{checkpoint.config_file} has a vocabulary of {checkpoint.shape.vocab_size:,} tokens, "
                        f"the {tokenizer.name} tokenizer {tokenizer.vocab_size:,}; copy the tokenizer.json of the "
                        f"gptforge run it came from to {checkpoint.folder / TOKENIZER_FILE}")
    config = RunConfig(preset=f"hf:{checkpoint.folder.name}", model=checkpoint.shape,
                       train=TrainConfig(tokenizer=tokenizer.name, tokenizer_file=tokenizer_file))
    model = GPT(config.model)
    checkpoint.load_into(model)
    model.to(resolve_device(device)).eval()
    facts = ModelFacts(preset=config.preset, parameters=count_parameters(model).total, tokenizer=tokenizer.name,
                       block_size=config.model.block_size, checkpoint=str(checkpoint.weights_file))
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=checkpoint.weights_file, facts=facts)
