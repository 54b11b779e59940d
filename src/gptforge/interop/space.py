"""Export a trained model as a Hugging Face Space, and load it back inside that Space.

The folder holds plain files (safetensors weights, JSON config and tokenizer), a three-line ``app.py``
and a copy of the gptforge package itself, so the Space runs the same demo as ``gptforge serve`` and
needs only gptforge's dependencies from PyPI (requirements.txt), not a published gptforge.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from gptforge.config import RunConfig
from gptforge.device import resolve_device
from gptforge.errors import UserError
from gptforge.fileio import read_json, safetensors_torch, write_json, write_new_folder, write_safetensors
from gptforge.interop.hub import first_line
from gptforge.interop.space_hardware import (
    CPU_WHEELS_INDEX,
    DEFAULT_HARDWARE,
    HARDWARE,
    ZERO_GPU_SECONDS,
    SpaceHardware,
)
from gptforge.model import GPT, TIED_LM_HEAD, TOKEN_EMBEDDING
from gptforge.paths import GPT2_BPE_FILENAME
from gptforge.tokenizer import GPT2Tokenizer, tokenizer_from_dict
from gptforge.trained_model import ModelFacts, TrainedModel, best_loss_label

WEIGHTS_FILE = "model.safetensors"

SPACE_APP = '''"""A gptforge demo as a Hugging Face Space; locally: pip install -r requirements.txt && python app.py"""

from pathlib import Path

from gptforge.errors import one_line_errors
from gptforge.use.app import NO_UPLOADS, build_demo
from gptforge.use.load import load_trained

if __name__ == "__main__":
    with one_line_errors():  # a damaged file in this folder: one `error:` line and exit status 2
        demo = build_demo(load_trained(space=Path(__file__).resolve().parent))
    demo.launch(max_file_size=NO_UPLOADS)
'''

ZERO_GPU_APP = '''"""A gptforge demo as a ZeroGPU Space; locally: pip install -r requirements.txt && python app.py

On ZeroGPU, `device="auto"` is CUDA: the weights go to the GPU when the app starts, as ZeroGPU asks, and a GPU
is attached only while a generation decorated with spaces.GPU runs. On a machine without a GPU, "auto" is
the CPU and spaces.GPU leaves the function as it is.
"""

import spaces  # first: on ZeroGPU it prepares torch before anything else imports it

from pathlib import Path

from gptforge.errors import one_line_errors
from gptforge.use.app import NO_UPLOADS, build_demo
from gptforge.use.load import load_trained

if __name__ == "__main__":
    with one_line_errors():  # a damaged file in this folder: one `error:` line and exit status 2
        trained = load_trained(space=Path(__file__).resolve().parent, device="auto")
    demo = build_demo(trained, gpu_task=spaces.GPU(duration={seconds}))
    demo.launch(max_file_size=NO_UPLOADS)
'''


def space_app(hardware: SpaceHardware) -> str:
    """app.py for a Space on `hardware`."""
    return ZERO_GPU_APP.format(seconds=ZERO_GPU_SECONDS) if hardware.zero_gpu else SPACE_APP


def _space_safetensors() -> Any:
    return safetensors_torch("exporting or loading a Space", "pip install safetensors")


def _installed_version(package: str, hint: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise UserError(f"{package} is not installed: {hint}") from None


def space_requirements(gradio_version: str, hardware: SpaceHardware) -> list[str]:
    """gptforge's own runtime dependencies (from its installed metadata), the demo's gradio and safetensors;
    `spaces` for ZeroGPU, and PyTorch's CPU-only wheels for a Space without a GPU."""
    requirements = [r for r in metadata.requires("gptforge") or [] if "extra ==" not in r]
    requirements += [f"gradio=={gradio_version}", "safetensors>=0.4"]
    if hardware.zero_gpu:
        requirements.append(f"spaces>={_installed_version('spaces', 'pip install spaces (ZeroGPU)')}")
    # an extra index, not a replacement: gradio is on PyPI only; torch's `+cpu` local versions sort first
    return requirements if hardware.gpu else [f"--extra-index-url {CPU_WHEELS_INDEX}", *requirements]


def _fact(value: Any, spec: str = ",") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def space_readme(trained: TrainedModel, gradio_version: str, offline_tokenizer: bool,
                 hardware: SpaceHardware = HARDWARE[DEFAULT_HARDWARE]) -> str:
    """README.md: the Spaces front matter, then what the model is."""
    facts = trained.facts
    preset = facts.preset
    front_matter = {
        "title": f"gptforge {preset}", "emoji": "🎭", "colorFrom": "indigo", "colorTo": "pink",
        "sdk": "gradio", "sdk_version": gradio_version, "app_file": "app.py", "pinned": False,
        "suggested_hardware": hardware.flavor,
    }
    # JSON scalars are valid YAML, and quoting keeps odd preset names from breaking the header.
    header = "\n".join(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in front_matter.items())
    tokenizer_note = ""
    if trained.tokenizer.name == "gpt2":
        tokenizer_note = (f"\nThe GPT-2 tokenizer's ranks are in `{GPT2_BPE_FILENAME}`, so nothing is downloaded.\n"
                          if offline_tokenizer else
                          "\nThe GPT-2 tokenizer's ranks are downloaded by tiktoken when the Space starts.\n")
    return f"""---
{header}
---

# gptforge: {preset}

A GPT-2-style language model trained from scratch with gptforge.
Type the start of a text and it writes the rest.

| fact | value |
|---|---|
| preset | `{preset}` |
| parameters | {_fact(facts.parameters)} |
| steps trained | {_fact(facts.steps)} |
| tokens seen | {_fact(facts.tokens_seen)} |
| final training loss | {_fact(facts.final_loss, ".4f")} |
| {best_loss_label(facts)} | {_fact(facts.best_loss, ".4f")} |
| tokenizer | {trained.tokenizer.name} ({trained.tokenizer.vocab_size:,} tokens) |
| context length | {trained.config.model.block_size:,} tokens |

Files: `{WEIGHTS_FILE}` (weights; `lm_head` is tied to `transformer.wte` and stored once), `config.json`
(the training run's config), `tokenizer.json`, `facts.json` (the table above), `app.py` and `gptforge/`
(the gptforge package the demo runs on).
{tokenizer_note}
Hardware: `{hardware.flavor}`; {hardware.plan}.{_zero_gpu_note(hardware)}
Run it locally: `pip install -r requirements.txt && python app.py` (no GPU needed).
"""


def _zero_gpu_note(hardware: SpaceHardware) -> str:
    if not hardware.zero_gpu:
        return ""
    return (f" Each generation holds a GPU for at most {ZERO_GPU_SECONDS} s (`@spaces.GPU`); "
            "off Spaces the decorator does nothing.")


def _write_space(trained: TrainedModel, folder: Path, hardware: SpaceHardware) -> None:
    gradio_version = _installed_version("gradio", "pip install 'gptforge[app]' so the Space can name its version")
    weights = {name: tensor.detach().to("cpu").contiguous()
               for name, tensor in trained.model.state_dict().items() if name != TIED_LM_HEAD}
    write_safetensors(folder / WEIGHTS_FILE, weights, _space_safetensors())
    facts = dataclasses.replace(trained.facts, checkpoint=None).to_dict()  # not a path on this machine
    config = portable_config(trained.config)
    for name, data in (("config.json", config), ("tokenizer.json", trained.tokenizer.to_dict()),
                       ("facts.json", facts)):
        write_json(folder / name, data)
    ranks = trained.tokenizer.ranks_file if isinstance(trained.tokenizer, GPT2Tokenizer) else None
    if ranks is not None:
        shutil.copyfile(ranks, folder / GPT2_BPE_FILENAME)
    (folder / "app.py").write_text(space_app(hardware), encoding="utf-8")
    source = Path(__file__).resolve().parents[1]  # the gptforge package, its subpackages included
    for module in sorted(source.rglob("*.py")):  # file by file: a failed copy is an OSError of its own
        target = folder / "gptforge" / module.relative_to(source)  # (copytree gathers them into a list)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module, target)
    requirements = space_requirements(gradio_version, hardware)
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    readme = space_readme(trained, gradio_version, ranks is not None, hardware)
    (folder / "README.md").write_text(readme, encoding="utf-8")


def portable_config(config: RunConfig) -> dict[str, Any]:
    """The run's config as a Space holds it: no path of this machine (the run folder, the corpus, the tokenizer
    ranks the Space carries itself, the --init-from folder), names only where the setting says what was used."""
    data = config.to_dict()
    data.pop("corpus", None)
    train = data["train"]
    train["out"] = train["tokenizer_file"] = None
    if Path(train["data"]).name != train["data"]:  # a named dataset stays; a file or folder keeps its name
        train["data"] = Path(train["data"]).name
    if train["init"].startswith("hf:"):
        train["init"] = f"hf:{Path(train['init'][3:]).name}"
    return data


def hardware_named(name: str) -> SpaceHardware:
    if name not in HARDWARE:
        raise UserError(f"unknown Space hardware {name!r}; choose one of {', '.join(HARDWARE)}")
    return HARDWARE[name]


def export_space(trained: TrainedModel, out: Path, hardware: str = DEFAULT_HARDWARE) -> Path:
    """Write a folder ready to push as a Hugging Face Space on `hardware`; `out` must be new or empty.

    Files are written to a hidden folder beside `out` and moved into place at the end, so a
    failed export leaves neither a half-written Space nor anything changed.
    """
    spec = hardware_named(hardware)
    write_new_folder(Path(out), lambda staging: _write_space(trained, staging, spec), "the Space")
    return Path(out)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing; is {path.parent} a folder written by `gptforge export --format space`?")
    return read_json(path)


def load_space(folder: str | Path, device: str = "auto", tokenizer_file: str | None = None) -> TrainedModel:
    """The TrainedModel of an exported Space folder (what its app.py serves), with lm_head re-tied.

    The GPT-2 ranks the export put in the folder win over ``tokenizer_file``, which helps a Space whose
    export found none.
    """
    folder = Path(folder)
    config = RunConfig.from_dict(_read_json(folder / "config.json"))
    ranks = folder / GPT2_BPE_FILENAME
    tokenizer = tokenizer_from_dict(_read_json(folder / "tokenizer.json"),
                                    bpe_file=ranks if ranks.is_file() else tokenizer_file)
    facts = ModelFacts.from_dict(_read_json(folder / "facts.json"), folder / "facts.json")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise UserError(f"{weights_path} is missing; export the Space again")
    try:
        weights = _space_safetensors().load_file(str(weights_path))
    except Exception as exc:  # cut off or foreign: safetensors' own SafetensorError, or an OSError
        raise UserError(f"cannot read the weights in {weights_path}: {first_line(exc)}; export the Space "
                        "again") from None
    if TOKEN_EMBEDDING not in weights:
        raise UserError(f"{weights_path} has no {TOKEN_EMBEDDING}; it is not a gptforge Space")
    weights[TIED_LM_HEAD] = weights[TOKEN_EMBEDDING]
    model = GPT(config.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"the weights in {weights_path} do not fit config.json: {first_line(exc)}") from None
    model.to(resolve_device(device)).eval()
    facts.checkpoint = str(weights_path)
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, source=weights_path, facts=facts)
