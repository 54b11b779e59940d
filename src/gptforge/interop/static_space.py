"""`gptforge export --format static-space`: a Hugging Face Space with no server at all. The page runs the
ONNX export in the visitor's browser with onnxruntime-web (vendored from npm beside it, no CDN); static
Spaces are free for every account.

The page's files are package data (`static_space/`): index.html, style.css and three ES modules (the two
tokenizers, sampling, generation with the KV cache), plus onnxruntime-web's wasm build in `vendor/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gptforge.fileio import write_new_folder
from gptforge.interop.onnx_export import write_onnx_folder
from gptforge.trained_model import TrainedModel, best_loss_label

PAGE = Path(__file__).resolve().parent / "static_space"
PAGE_FILES = ("index.html", "style.css", "app.js", "tokenizers.js", "sampling.js", "generate.js")
VENDOR_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "VERSION",
                "NOTICE.md")


def _fact(value: object, spec: str = ",") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def static_readme(trained: TrainedModel, int8: bool) -> str:
    facts = trained.facts
    front_matter = {"title": f"gptforge {facts.preset}", "emoji": "🎭", "colorFrom": "indigo", "colorTo": "pink",
                    "sdk": "static", "app_file": "index.html", "pinned": False}
    header = "\n".join(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in front_matter.items())
    weights = "`model.onnx` (fp32) and `model.int8.onnx` (int8 weights)" if int8 else "`model.onnx` (fp32)"
    return f"""---
{header}
---

# gptforge: {facts.preset}, in your browser

A GPT-2-style language model trained from scratch with gptforge. The page runs it in the visitor's browser
with onnxruntime-web (WebAssembly): no server computes anything, so a static Space hosts it on any account.

| fact | value |
|---|---|
| preset | `{facts.preset}` |
| parameters | {_fact(facts.parameters)} |
| steps trained | {_fact(facts.steps)} |
| final training loss | {_fact(facts.final_loss, ".4f")} |
| {best_loss_label(facts)} | {_fact(facts.best_loss, ".4f")} |
| tokenizer | {trained.tokenizer.name} ({trained.tokenizer.vocab_size:,} tokens) |
| context length | {trained.config.model.block_size:,} tokens |

Files: {weights}, with the KV cache as an input and an output; `onnx_config.json`, `tokenizer.json`
(and `gpt2.tiktoken` for GPT-2's tokenizer), `facts.json`; the page (`index.html`, `app.js`,
`tokenizers.js`, `sampling.js`, `generate.js`, `style.css`) and onnxruntime-web in `vendor/`.

Try it locally: `python -m http.server` in this folder, then open http://localhost:8000/.
"""


def _write_static_space(trained: TrainedModel, folder: Path, int8: bool) -> None:
    write_onnx_folder(trained, folder, int8)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, folder / name)
    (folder / "vendor").mkdir()
    for name in VENDOR_FILES:
        shutil.copyfile(PAGE / "vendor" / name, folder / "vendor" / name)
    (folder / "README.md").write_text(static_readme(trained, int8), encoding="utf-8")


def export_static_space(trained: TrainedModel, out: Path, int8: bool = False) -> Path:
    """Write a static Space folder (new or empty `out`) that runs the model in the browser."""
    write_new_folder(Path(out), lambda staging: _write_static_space(trained, staging, int8), "the static Space")
    return Path(out)
