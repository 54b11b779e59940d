"""`gptforge export --format onnx`: the model with a KV cache, for onnxruntime (Python, or the browser's
onnxruntime-web), beside the tokenizer's files.

Exporter: torch.onnx with dynamo (torch.export). It traces this module, the same tensors and operations as
gptforge's own model, with no other dependency than onnx and onnxscript, and dynamic batch, sequence and
cache lengths; Optimum's GPT-2 exporter would need transformers, Optimum and a detour through
`--format hf`, and would give transformers' cache layout instead of one tensor a page can hold.

The graph's interface (what the page and `onnx_run` rely on):
  input_ids  int64 (batch, sequence)
  past       float32 (n_layer, 2, batch, n_head, past_length, head_dim): keys and values of the earlier tokens
  logits     float32 (batch, sequence, vocab_size): the tokenizer's tokens only (no padded rows)
  present    float32 (n_layer, 2, batch, n_head, past_length + sequence, head_dim)
A first call passes a past of length 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gptforge.errors import UserError
from gptforge.fileio import write_json, write_new_folder
from gptforge.model import GPT
from gptforge.paths import GPT2_BPE_FILENAME
from gptforge.tokenizer import GPT2Tokenizer
from gptforge.trained_model import TrainedModel

MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
OPSET = 18


class CachedGPT(nn.Module):
    """gptforge's GPT with its KV cache as an input and an output, as ONNX wants state: nothing kept inside."""

    def __init__(self, model: GPT, vocab_size: int) -> None:
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        transformer = self.model.transformer
        B, T = input_ids.shape
        past_length = past.shape[4]
        positions = torch.arange(T, device=input_ids.device) + past_length  # (T,)
        x = transformer.wte(input_ids) + transformer.wpe(positions)  # (B, T, C)
        key_positions = torch.arange(past_length + T, device=input_ids.device)
        visible = key_positions[None, :] <= positions[:, None]  # (T, past + T): earlier tokens and itself
        presents = []
        for layer, block in enumerate(transformer.h):
            attn = block.attn
            C, heads = attn.n_embd, attn.n_head
            q, k, v = attn.c_attn(block.ln_1(x)).split(C, dim=2)
            q = q.view(B, T, heads, C // heads).transpose(1, 2)  # (B, nh, T, hs)
            k = torch.cat([past[layer, 0], k.view(B, T, heads, C // heads).transpose(1, 2)], dim=2)
            v = torch.cat([past[layer, 1], v.view(B, T, heads, C // heads).transpose(1, 2)], dim=2)
            presents.append(torch.stack([k, v]))  # (2, B, nh, past + T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # (B, nh, T, hs)
            x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        logits = self.model.lm_head(transformer.ln_f(x))[..., : self.vocab_size]
        return logits, torch.stack(presents)


def empty_past(model: GPT, batch: int = 1, length: int = 0) -> torch.Tensor:
    config = model.config
    return torch.zeros(config.n_layer, 2, batch, config.n_head, length, config.n_embd // config.n_head)


def _onnx_modules() -> None:
    for module, hint in (("onnx", "onnx"), ("onnxscript", "onnxscript")):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--format onnx needs {hint}: pip install 'gptforge[onnx]'") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantizer report progress on stdout, warnings and the root logger: a user
    exporting a model needs none of it (an error still raises)."""
    loggers = [logging.getLogger(), logging.getLogger("torch")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(trained: TrainedModel, path: Path) -> None:
    """Trace the cached model with torch.export and write it as one ONNX file (weights inside)."""
    _onnx_modules()
    model = trained.model.float().eval()
    wrapper = CachedGPT(model, trained.tokenizer.vocab_size).eval()
    batch, sequence, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past")
    example = (torch.zeros(2, 3, dtype=torch.long), empty_past(model, batch=2, length=4))
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(
            wrapper, example, dynamo=True, opset_version=OPSET, input_names=["input_ids", "past"],
            output_names=["logits", "present"], verbose=False,
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "past": {2: batch, 4: past}})
        program.save(str(path), external_data=False)


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the matrix weights (activations stay float32)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise UserError("--int8 needs onnxruntime: pip install 'gptforge[onnx]'") from None
    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def model_facts(trained: TrainedModel, int8: bool) -> dict:
    """What a runner needs besides the graph: the cache's shape, the context, the tokenizer's specials."""
    config = trained.model.config
    tokenizer = trained.tokenizer
    return {
        "format": "gptforge-onnx", "version": 1, "n_layer": config.n_layer, "n_head": config.n_head,
        "head_dim": config.n_embd // config.n_head, "block_size": config.block_size,
        "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.name, "eot_id": tokenizer.eot_id,
        "start_ids": tokenizer.start_ids(), "model_files": [MODEL_FILE, INT8_MODEL_FILE] if int8 else [MODEL_FILE],
    }


def write_onnx_folder(trained: TrainedModel, folder: Path, int8: bool) -> None:
    export_graph(trained, folder / MODEL_FILE)
    if int8:
        quantize_int8(folder / MODEL_FILE, folder / INT8_MODEL_FILE)
    write_json(folder / "onnx_config.json", model_facts(trained, int8))
    write_json(folder / "tokenizer.json", trained.tokenizer.to_dict())
    write_json(folder / "facts.json", {**trained.facts.to_dict(), "checkpoint": None})
    if isinstance(trained.tokenizer, GPT2Tokenizer):
        if trained.tokenizer.ranks_file is None:
            raise UserError(f"the ONNX folder needs the GPT-2 ranks as a file: pass --tokenizer-file "
                            f"{GPT2_BPE_FILENAME} or set GPTFORGE_DATA_DIR to a folder holding it")
        shutil.copyfile(trained.tokenizer.ranks_file, folder / GPT2_BPE_FILENAME)


def export_onnx(trained: TrainedModel, out: Path, int8: bool = False) -> Path:
    """Write the ONNX folder `out` (new or empty): model.onnx (and model.int8.onnx), onnx_config.json,
    tokenizer.json, facts.json and, for GPT-2's tokenizer, its ranks."""
    write_new_folder(Path(out), lambda staging: write_onnx_folder(trained, staging, int8), "the ONNX model")
    return Path(out)
