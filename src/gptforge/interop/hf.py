"""Hugging Face transformers' GPT2LMHeadModel format, to and from gptforge.

The parameter names are the same on both sides; HF's Conv1D layers store their weights as (in, out), so
those four matrices per block are transposed. Our vocabulary may be padded for speed; an export drops
the padding, so transformers sees a standard vocab-size GPT-2. A folder is what `save_pretrained` writes
(`config.json` and `model.safetensors`, or an older `pytorch_model.bin`), plus a tokenizer `AutoTokenizer`
loads: for the GPT-2 BPE the `vocab.json` / `merges.txt` pair, for characters a tokenizers-library
`tokenizer.json`. gptforge's own description of the tokenizer goes beside them in `gptforge_tokenizer.json`.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptforge.checkpoint import code_it_would_run
from gptforge.config import GPT2_VOCAB_SIZE, GPTConfig, RunConfig, TrainConfig
from gptforge.device import resolve_device
from gptforge.errors import UserError
from gptforge.fileio import write_new_folder, write_safetensors
from gptforge.interop.hub import fetch_model, first_line, is_hub_name
from gptforge.model import GPT, count_parameters, meta_model
from gptforge.sizing import check_fits, inference_memory
from gptforge.tokenizer import (
    GPT2_EOT_ID,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)
from gptforge.trained_model import TrainedModel

# Conv1D in transformers: y = x @ W with W (in, out); nn.Linear keeps (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers (the causal mask) that older transformers versions saved beside the weights.
NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias")
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "gptforge_tokenizer.json"  # gptforge's own description, under a name transformers leaves alone
# the tokenizers library's file, which AutoTokenizer reads; exports before gptforge_tokenizer.json put gptforge's
# own description there, and `--hf DIR` still reads those
HF_TOKENIZER_FILE = "tokenizer.json"
INIT_PREFIX = "hf:"
ENDOFTEXT = "<|endoftext|>"
EMBEDDING = "transformer.wte.weight"
POSITIONS = "transformer.wpe.weight"
LM_HEAD = "lm_head.weight"  # tied to the token embedding: transformers re-ties it, so it is stored once


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("the Hugging Face format needs safetensors: pip install 'gptforge[hf]'") from None
    return safetensors.torch


# --- weights ----------------------------------------------------------------------------------------


def load_hf_state_dict(model: GPT, hf_state: dict[str, torch.Tensor]) -> None:
    """Copy a transformers GPT-2 state dict into `model`, transposing Conv1D weights.

    The model's vocabulary may be larger (padded). The extra rows of the tied embedding get the mean of
    the real rows: a zero row would give those never-seen tokens logit 0, far above a trained GPT-2's
    typical logits, so they would take most of the probability and wreck the loss of a fine-tuning run.
    """
    ours = model.state_dict()
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith(NOT_WEIGHTS)}
    hf_state.setdefault(LM_HEAD, hf_state.get(EMBEDDING))
    missing = sorted(set(ours) - set(hf_state))
    unexpected = sorted(set(hf_state) - set(ours))
    if missing or unexpected:
        raise UserError(f"not a GPT-2 state dict matching this model: missing {missing[:4]}, "
                        f"unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name, target in ours.items():
            source = hf_state[name]
            if name.endswith(CONV1D_SUFFIXES):
                source = source.t()
            if name in (EMBEDDING, LM_HEAD) and source.shape[0] < target.shape[0]:
                target[: source.shape[0]].copy_(source)
                target[source.shape[0]:].copy_(source.mean(dim=0))
                continue
            if source.shape != target.shape:
                raise UserError(f"shape mismatch for {name}: checkpoint {tuple(source.shape)}, "
                                f"model {tuple(target.shape)}")
            target.copy_(source)


def to_hf_state_dict(model: GPT, vocab_size: int) -> dict[str, torch.Tensor]:
    """`model`'s weights as GPT2LMHeadModel holds them: Conv1D-transposed, `vocab_size` rows, biases.

    A model built with bias=False gets zero biases, which compute the same function, because
    GPT-2 always has them. lm_head is left out: it is the token embedding.
    """
    ours = model.state_dict()
    dtype = model.transformer.wte.weight.dtype
    hf_state = {}
    for name, shape_only in meta_model(dataclasses.replace(model.config, bias=True)).state_dict().items():
        if name == LM_HEAD:
            continue
        tensor = ours[name].detach().cpu() if name in ours else torch.zeros(shape_only.shape, dtype=dtype)
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        if name == EMBEDDING:
            tensor = tensor[:vocab_size]
        hf_state[name] = tensor.clone(memory_format=torch.contiguous_format)  # safetensors refuses views
    return hf_state


def _expected_shapes(shape: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a transformers GPT-2 of this shape stores, computed without allocating it."""
    return {name: tuple(tensor.t().shape if name.endswith(CONV1D_SUFFIXES) else tensor.shape)
            for name, tensor in meta_model(shape).state_dict().items() if name != LM_HEAD}


# --- reading a transformers folder ------------------------------------------------------------------


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _read_shape(path: Path) -> GPTConfig:
    """The model's shape from config.json, refusing what gptforge's GPT cannot compute exactly."""
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("model_type") != "gpt2":
        found = data.get("model_type") if isinstance(data, dict) else None
        raise UserError(f"{path} is not a GPT-2 config (model_type {found!r}, expected 'gpt2')")
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
        raise UserError(f"{path}: gptforge's GPT-2 cannot reproduce {bad[0]}={data.get(bad[0])!r} "
                        "(it has gelu_new, n_inner 4*n_embd, layer_norm_epsilon 1e-5 and tied embeddings)")
    shape = GPTConfig(block_size=data.get("n_positions", 1024), vocab_size=data.get("vocab_size", GPT2_VOCAB_SIZE),
                      n_layer=data.get("n_layer", 12), n_head=data.get("n_head", 12), n_embd=n_embd, dropout=0.0)
    try:
        shape.validate()
        check_fits(inference_memory(shape), torch.device("cpu"), "this model", "is the config.json right?")
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return shape


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The state dict from model.safetensors or, failing that, pytorch_model.bin (never running its code)."""
    path = next((folder / name for name in (SAFETENSORS_FILE, BIN_FILE) if (folder / name).is_file()), None)
    if path is None:
        raise UserError(f"no weights in {folder}: expected {SAFETENSORS_FILE} or {BIN_FILE} (sharded checkpoints "
                        "are not supported)")
    load = (_safetensors_torch().load_file if path.name == SAFETENSORS_FILE
            else lambda file: torch.load(file, map_location="cpu", weights_only=True))
    try:
        return path, load(str(path))
    except pickle.UnpicklingError as exc:
        forbidden = code_it_would_run(exc)
        if forbidden:  # torch's own text goes on to suggest loading it unsafely: not repeated here
            raise UserError(f"{path}: refused: this file would run code when loaded (it asks for {forbidden}); "
                            "use model.safetensors or a file you trust") from None
        raise UserError(f"cannot read the weights in {path}: not a PyTorch weights file") from None
    except Exception as exc:  # a corrupt or foreign file fails in each loader's own way (SafetensorError, pickle)
        raise UserError(f"cannot read the weights in {path}: {first_line(exc)}") from None


def _hf_names(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel names: GPT2Model checkpoints (the hub's gpt2) lack the `transformer.` prefix."""
    renamed = {}
    for name, tensor in state.items():
        if name.endswith(NOT_WEIGHTS) or name == LM_HEAD:  # lm_head is tied to wte, as transformers ties it
            continue
        renamed[name if name.startswith("transformer.") else f"transformer.{name}"] = tensor
    return renamed


def _gptforge_tokenizer(folder: Path) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
    """gptforge's tokenizer description: gptforge_tokenizer.json, or tokenizer.json where an older export wrote
    it there (a tokenizers-library tokenizer.json, which transformers writes, is not one)."""
    for path in (folder / TOKENIZER_FILE, folder / HF_TOKENIZER_FILE):
        if path.is_file():
            data = _read_json(path)
            if isinstance(data, dict) and data.get("name") in ("gpt2", "char"):
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
    expected = _expected_shapes(shape)
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


# --- fine-tuning: train --init-from hf:DIR ------------------------------------------------------------


@dataclass
class FineTuneInit:
    """The checkpoint a new run starts from, and what the run's config took from it (for the log)."""

    checkpoint: HFCheckpoint
    notes: list[str]

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """The run's tokenizer must be the one the checkpoint was trained with, or every id means another token."""
        vocab = self.checkpoint.shape.vocab_size
        if vocab != tokenizer.vocab_size:
            hint = "train with --tokenizer gpt2" if vocab == GPT2_VOCAB_SIZE else "use the tokenizer it learned"
            raise UserError(f"{self.checkpoint.config_file} has a vocabulary of {vocab:,} tokens but this run's "
                            f"{tokenizer.name} tokenizer has {tokenizer.vocab_size:,}; {hint}")
        saved = self.checkpoint.tokenizer
        if saved is not None and saved != tokenizer.to_dict():
            raise UserError(f"{self.checkpoint.tokenizer_file} describes another tokenizer than this "
                            f"run's {tokenizer.name} tokenizer (for char: another corpus' characters)")


def prepare_init(config: RunConfig) -> FineTuneInit | None:
    """For init hf:DIR (or hf:NAME, a hub model fetched into huggingface_hub's cache when no folder NAME is
    here), read it and give the run its model shape; None for a run from scratch.

    Called before anything is created, so a bad folder leaves nothing behind. The run keeps its own
    dropout and may use fewer positions (a smaller --block-size crops the position embeddings).
    """
    if not config.train.init.startswith(INIT_PREFIX):
        return None
    source = config.train.init[len(INIT_PREFIX):]
    checkpoint = read_hf_folder(fetch_model(source) if is_hub_name(source) else source)
    model, shape = config.model, checkpoint.shape
    adopted = {"n_layer": shape.n_layer, "n_head": shape.n_head, "n_embd": shape.n_embd, "bias": True,
               "block_size": min(model.block_size, shape.block_size)}
    changed = [f"{key} {getattr(model, key)} -> {value}" for key, value in adopted.items()
               if getattr(model, key) != value]
    for key, value in adopted.items():
        setattr(model, key, value)
    notes = [f"init: fine-tuning {checkpoint.weights_file}; model shape from {checkpoint.config_file}"
             + (f" (replaces the run's {', '.join(changed)})" if changed else "")]
    if model.block_size < shape.block_size:
        notes.append(f"init: block_size {model.block_size}: position embeddings cropped from {shape.block_size}")
    return FineTuneInit(checkpoint=checkpoint, notes=notes)


# --- inference: sample / eval / serve --hf DIR ----------------------------------------------------------


def load_hf_folder(folder: str | Path, device: str = "auto", tokenizer_file: str | None = None) -> TrainedModel:
    """A transformers GPT-2 folder as a TrainedModel: GPT-2's tokenizer, or the gptforge tokenizer described in it."""
    checkpoint = read_hf_folder(folder)
    if checkpoint.tokenizer is not None:
        tokenizer = tokenizer_from_dict(checkpoint.tokenizer, bpe_file=tokenizer_file)
    else:
        tokenizer = GPT2Tokenizer(tokenizer_file)
    if tokenizer.vocab_size != checkpoint.shape.vocab_size:
        raise UserError(f"{checkpoint.config_file} has a vocabulary of {checkpoint.shape.vocab_size:,} tokens, "
                        f"the {tokenizer.name} tokenizer {tokenizer.vocab_size:,}; copy the tokenizer.json of the "
                        f"gptforge run it came from to {checkpoint.folder / TOKENIZER_FILE}")
    config = RunConfig(preset=f"hf:{checkpoint.folder.name}", model=checkpoint.shape,
                       train=TrainConfig(tokenizer=tokenizer.name, tokenizer_file=tokenizer_file))
    model = GPT(config.model)
    checkpoint.load_into(model)
    model.to(resolve_device(device)).eval()
    facts = {"preset": config.preset, "parameters": count_parameters(model).total, "tokenizer": tokenizer.name,
             "block_size": config.model.block_size, "checkpoint": str(checkpoint.weights_file)}
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=checkpoint.weights_file, facts=facts)


# --- export -------------------------------------------------------------------------------------------


def hf_config(model_config: GPTConfig, vocab_size: int, eot_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json as transformers' GPT2Config writes it, for this model with its unpadded vocabulary."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": model_config.block_size,
        "n_ctx": model_config.block_size,
        "n_embd": model_config.n_embd,
        "n_layer": model_config.n_layer,
        "n_head": model_config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": model_config.dropout,
        "embd_pdrop": model_config.dropout,
        "attn_pdrop": model_config.dropout,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (openai/gpt-2 encoder.py), the alphabet of vocab.json."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in stand_ins]
    stand_ins.update({byte: chr(256 + index) for index, byte in enumerate(others)})
    return stand_ins


def _merge_pair(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: BPE on its bytes with the merges ranked before it."""
    parts = [bytes([byte]) for byte in token]
    while len(parts) > 2:
        candidates = [(ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1)]
        best_rank, i = min(candidates)
        if best_rank >= rank:
            raise ValueError(f"token {token!r} of rank {rank} cannot be built from earlier merges")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def gpt2_vocab_and_merges(token_bytes: list[bytes]) -> tuple[dict[str, int], list[str]]:
    """vocab.json and merges.txt (without its header) from BPE ranks (`token_bytes[rank]`).

    tiktoken keeps only the ranks; transformers wants the merges, in rank order, which each multi-byte
    token's own BPE run recovers.
    """
    alphabet = bytes_to_unicode()
    spell = lambda token: "".join(alphabet[byte] for byte in token)
    ranks = {token: rank for rank, token in enumerate(token_bytes)}
    vocab = {spell(token): rank for rank, token in enumerate(token_bytes)}
    merges = [" ".join(map(spell, _merge_pair(token, rank, ranks)))
              for rank, token in enumerate(token_bytes) if len(token) > 1]
    return vocab, merges


def _write_gpt2_tokenizer(tokenizer: GPT2Tokenizer, folder: Path, max_length: int) -> None:
    # GPT2Tokenizer keeps its tiktoken Encoding private; reading the ranks from it (not from a file
    # found again on disk) exports exactly the tokenizer the model was trained with.
    encoding = tokenizer._encoding
    vocab, merges = gpt2_vocab_and_merges([encoding.decode_single_token_bytes(rank) for rank in range(GPT2_EOT_ID)])
    vocab[ENDOFTEXT] = GPT2_EOT_ID
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length,
                                                   "add_prefix_space": False, "errors": "replace", **special})
    _write_json(folder / "special_tokens_map.json", special)


def char_tokenizer_json(tokenizer: CharTokenizer) -> dict[str, Any]:
    """The tokenizers library's description of a character tokenizer, for AutoTokenizer.

    Every character is its own piece (the pattern matches any one code point, newlines included) and its
    own word in a WordLevel vocabulary with gptforge's ids; decoding fuses the pieces with nothing between
    them. The unknown-token name is in no vocabulary, so a character the corpus lacked is refused, as
    gptforge refuses it, rather than silently mapped to some id.
    """
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {char: index for index, char in enumerate(tokenizer.chars)},
                  "unk_token": "<unk>"},
    }


def _write_char_tokenizer(tokenizer: CharTokenizer, folder: Path, max_length: int) -> None:
    _write_json(folder / HF_TOKENIZER_FILE, char_tokenizer_json(tokenizer))
    # no clean-up of "spaces before punctuation" on decode: the text must come back exactly
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                   "model_max_length": max_length,
                                                   "clean_up_tokenization_spaces": False})


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_hf(trained: TrainedModel, folder: Path) -> None:
    tokenizer, model = trained.tokenizer, trained.model
    dtype = model.transformer.wte.weight.dtype
    write_safetensors(folder / SAFETENSORS_FILE, to_hf_state_dict(model, tokenizer.vocab_size), _safetensors_torch())
    _write_json(folder / CONFIG_FILE, hf_config(model.config, tokenizer.vocab_size, tokenizer.eot_id, dtype))
    _write_json(folder / "generation_config.json", {"_from_model_config": True, "bos_token_id": tokenizer.eot_id,
                                                    "eos_token_id": tokenizer.eot_id})
    if isinstance(tokenizer, GPT2Tokenizer):
        _write_gpt2_tokenizer(tokenizer, folder, model.config.block_size)
    else:
        _write_char_tokenizer(tokenizer, folder, model.config.block_size)
    save_tokenizer(tokenizer, folder / TOKENIZER_FILE)  # what `--hf DIR` rebuilds gptforge's tokenizer from


def export_hf(trained: TrainedModel, out: str | Path) -> None:
    """Write `out` as a folder `GPT2LMHeadModel.from_pretrained` and `AutoTokenizer.from_pretrained` load.

    Files are written to a hidden folder beside `out` and moved into place at the end, so a failed
    export leaves nothing half-written.
    """
    write_new_folder(Path(out), lambda staging: _write_hf(trained, staging), "the model")
