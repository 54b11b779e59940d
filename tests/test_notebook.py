"""The Colab quick-start notebook: stored clean, and it runs top to bottom headless on a CPU.

The run injects test settings after the notebook's `parameters` cell (as papermill does): pip is only
printed, not run (the install must find this checkout from notebooks/), 20 steps of a tiny model on the
CPU, no demo, runs in a temporary folder. Everything else is the notebook exactly as users get it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import gptforge

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
NEEDS = "the notebook test needs nbclient, nbformat and ipykernel (pip install -e '.[dev]')"

# The defaults users get; the executed test relies on these names.
PARAMETER_DEFAULTS = {"INSTALL": True, "INSTALL_FROM": None, "MAX_STEPS": None, "OVERRIDES": {}, "RUNS": "runs",
                      "SAVE_TO_DRIVE": False, "RESUME": None, "LAUNCH_DEMO": True}

# Small enough for seconds on two CPU cores; `device` keeps a GPU machine on the same path.
TEST_OVERRIDES = {
    "device": "cpu", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "batch_size": 8,
    "warmup_steps": 5, "log_interval": 5, "eval_interval": 10, "eval_batches": 2, "checkpoint_interval": 10,
    "sample_tokens": 50,
}


def read_cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tagged(cells: list, tag: str) -> list:
    found = [cell for cell in cells if tag in cell.get("metadata", {}).get("tags", [])]
    assert found, f"no cell tagged {tag!r} in {NOTEBOOK.name}"
    return found


def stream_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output["output_type"] == "stream")


def test_notebook_is_stored_without_outputs():
    dirty = [f"cell {i} ({cell.get('id', '?')})" for i, cell in enumerate(read_cells())
             if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{NOTEBOOK.name} was saved with outputs in {', '.join(dirty)}; clear them before "
                       "committing (Jupyter: Edit > Clear Outputs of All Cells; or "
                       f"`jupyter nbconvert --clear-output --inplace {NOTEBOOK.relative_to(NOTEBOOK.parents[1])}`)")


def test_parameters_cell_holds_the_documented_defaults():
    (cell,) = tagged(read_cells(), "parameters")
    assigned = {}
    for statement in ast.parse(source(cell)).body:
        assert isinstance(statement, ast.Assign), "the parameters cell should hold plain assignments only"
        assigned[statement.targets[0].id] = ast.literal_eval(statement.value)
    assert assigned == PARAMETER_DEFAULTS


@pytest.mark.parametrize(("installed_from", "installs"), [
    ("checkout", False), ("elsewhere", True), (None, True)])
def test_the_install_cell_keeps_an_editable_install_of_its_checkout(installed_from: str | None, installs: bool,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """pip would replace `pip install -e .` of this checkout with a copy; any other gptforge is reinstalled."""
    checkout = NOTEBOOK.parents[1]
    origins = {"checkout": checkout / "src" / "gptforge" / "__init__.py",
               "elsewhere": tmp_path / "site-packages" / "gptforge" / "__init__.py"}
    found = SimpleNamespace(origin=str(origins[installed_from])) if installed_from else None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: found)
    pip_calls: list[str] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: pip_calls.append(command[-1]))
    monkeypatch.chdir(NOTEBOOK.parent)
    (cell,) = tagged(read_cells(), "install")
    exec(source(cell), {"INSTALL": True, "INSTALL_FROM": None})
    assert pip_calls == ([f"{checkout}[app]"] if installs else [])


@pytest.fixture
def kernel_manager(tmp_path: Path):
    """A kernel running this interpreter, whatever `python3` kernel spec the user's Jupyter has."""
    pytest.importorskip("ipykernel", reason=NEEDS)
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return KernelManager(kernel_name="python3",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))


@pytest.mark.slow
def test_notebook_trains_plots_and_samples(tmp_path: Path, kernel_manager, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat", reason=NEEDS)
    nbclient = pytest.importorskip("nbclient", reason=NEEDS)
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no history written to the user's profile
    runs = tmp_path / "runs"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = tagged(notebook.cells, "parameters")
    test_values = {"MAX_STEPS": 20, "LAUNCH_DEMO": False, "RUNS": str(runs), "OVERRIDES": TEST_OVERRIDES}
    # the install cell runs, but the pip it starts only says what it would install
    dry_pip = "import subprocess\nsubprocess.run = lambda command, **kwargs: print('PIP', command[-1])\n"
    assignments = "\n".join(f"{name} = {value!r}" for name, value in test_values.items())
    injected = nbformat.v4.new_code_cell(dry_pip + assignments)
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(notebook.cells.index(parameters) + 1, injected)

    client = nbclient.NotebookClient(notebook, km=kernel_manager, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    failure = None
    try:
        client.execute()
    except CellExecutionError as exc:
        failure = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the kernel's traceback, without its colours
    if failure:
        pytest.fail(f"a notebook cell failed:\n{failure}", pytrace=False)

    assert not [o for cell in notebook.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    (run,) = runs.iterdir()
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "curves.png").is_file()
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["max_steps"] == 20 and config["model"]["n_layer"] == 2
    assert "steps: 20" in (run / "summary.txt").read_text(encoding="utf-8")

    (install,) = tagged(notebook.cells, "install")
    checkout = NOTEBOOK.parents[1]  # the checkout above notebooks/, unless gptforge is installed from it already
    from_checkout = checkout.resolve() in Path(gptforge.__file__).resolve().parents
    expected = "is already installed from" if from_checkout else f"PIP {checkout}[app]"
    assert expected in stream_text(install), stream_text(install)
    (train,) = tagged(notebook.cells, "train")
    assert "reached max_steps 20" in stream_text(train)
    (curves,) = tagged(notebook.cells, "curves")
    assert any("image/png" in output.get("data", {}) for output in curves.outputs)
    streamed, batched = tagged(notebook.cells, "sample")
    (shown,) = [output for output in streamed.outputs if output["output_type"] == "display_data"]  # one, updated
    assert len(streamed.outputs) == 2  # the facts line and the sample: not one output per piece of text
    _, prompt, completion = shown["data"]["text/plain"].partition("ROMEO:")
    assert prompt and completion.strip(), f"the streamed sample shows no text: {shown!r}"
    samples = stream_text(batched).split("--- sample ")[1:]
    assert len(samples) == 3, stream_text(batched)
    for sample in samples:
        _, prompt, completion = sample.partition("JULIET:")
        assert prompt and completion.strip(), f"an empty sample: {sample!r}"
    (demo,) = tagged(notebook.cells, "demo")
    assert not demo.outputs
