"""Run an exported ONNX folder with onnxruntime: what the browser page does, in Python, to check the export
against gptforge's own generation (and to time it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gptforge.errors import UserError
from gptforge.fileio import read_json
from gptforge.interop.onnx_export import MODEL_FILE


class OnnxModel:
    """An ONNX folder's graph in an onnxruntime session, with its cache's shape from onnx_config.json."""

    def __init__(self, folder: str | Path, model_file: str = MODEL_FILE, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError("running an ONNX export needs onnxruntime: pip install 'gptforge[onnx]'") from None
        folder = Path(folder)
        self.config = read_json(folder / "onnx_config.json")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(folder / model_file), options,
                                                    providers=["CPUExecutionProvider"])

    def empty_past(self, batch: int = 1) -> np.ndarray:
        c = self.config
        return np.zeros((c["n_layer"], 2, batch, c["n_head"], 0, c["head_dim"]), dtype=np.float32)

    def run(self, input_ids: np.ndarray, past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, T, vocab) and the cache grown by T positions."""
        logits, present = self.session.run(None, {"input_ids": input_ids.astype(np.int64), "past": past})
        return logits, present

    def greedy_ids(self, prompt: list[int], max_new_tokens: int) -> Iterator[int]:
        """The most likely next token, step by step, with the cache; past the context the window slides by
        a quarter of it and the cache is rebuilt, as gptforge's generate_ids does."""
        block_size = self.config["block_size"]
        context = list(prompt[-block_size:])
        logits, past = self.run(np.array([context]), self.empty_past())
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            yield token
            context.append(token)
            if len(context) > block_size:
                context = context[-(block_size - block_size // 4):]
                logits, past = self.run(np.array([context]), self.empty_past())
            else:
                logits, past = self.run(np.array([[token]]), past)
