"""`gptforge export --format space`: the folder, loading it back, never overwriting, and its app.py serving."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.interop.space import export_space, load_space
from gptforge.interop.space_hardware import HARDWARE, ZERO_GPU_SECONDS
from gptforge.trained_model import TrainedModel
from gptforge.use import app
from gptforge.use.load import load_trained

SPACE_FILES = {"app.py", "requirements.txt", "README.md", "model.safetensors", "config.json", "tokenizer.json",
               "facts.json", "gptforge"}


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> TrainedModel:
    return load_trained(run=run_dir, device="cpu")


def front_matter(readme: str) -> dict:
    """The YAML header of a Spaces README, parsed with PyYAML when it is installed."""
    assert readme.startswith("---\n")
    header = readme.split("---\n", 2)[1]
    try:
        import yaml
    except ImportError:
        return {key: json.loads(value) for key, value in (line.split(": ", 1) for line in header.splitlines())}
    return yaml.safe_load(header)


def test_export_writes_a_space_folder(trained, tmp_path) -> None:
    out = export_space(trained, tmp_path / "space")
    assert out == tmp_path / "space"
    assert {path.name for path in out.iterdir()} == SPACE_FILES  # char model: no gpt2.tiktoken
    expected = trained.config.to_dict()
    del expected["corpus"]  # where the corpus lies on this machine is not the Space's business
    expected["train"]["out"] = None  # nor where the run folder is (test_space_hostile.py: no path at all)
    assert json.loads((out / "config.json").read_text()) == expected
    assert json.loads((out / "tokenizer.json").read_text()) == trained.tokenizer.to_dict()
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert not any(line.startswith("gptforge") for line in requirements)  # not on PyPI: the package is copied
    assert {"torch>=2.4", "tiktoken>=0.5", f"gradio=={version('gradio')}"} <= set(requirements)
    assert (out / "gptforge" / "use" / "app.py").read_text() == Path(app.__file__).read_text()
    # the default is ZeroGPU, the hardware a free account can host: generation decorated with spaces.GPU
    assert f"spaces>={version('spaces')}" in requirements
    assert not any(line.startswith("--") for line in requirements)  # CUDA torch from PyPI
    app_py = (out / "app.py").read_text()
    assert app_py.index("import spaces") < app_py.index("from gptforge")  # before torch is imported
    assert f"gpu_task=spaces.GPU(duration={ZERO_GPU_SECONDS})" in app_py
    assert not list(tmp_path.glob(".space.*"))  # no staging folder left behind


def test_every_file_is_readable_by_all_the_weights_too(trained, tmp_path, usual_umask) -> None:
    out = export_space(trained, tmp_path / "space")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == 0o644  # safetensors' save_file alone makes it 0600
    assert set(modes.values()) == {0o644}, modes


def test_a_cpu_space_takes_pytorchs_cpu_wheels_and_no_spaces_decorator(trained, tmp_path) -> None:
    from packaging.requirements import Requirement

    out = export_space(trained, tmp_path / "space", hardware="cpu-basic")
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert requirements[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    names = {Requirement(line).name for line in requirements[1:]}  # every other line is a requirement
    assert "torch" in names and "spaces" not in names
    assert "spaces" not in (out / "app.py").read_text()
    assert "build_demo(load_trained(space=" in (out / "app.py").read_text()
    assert front_matter((out / "README.md").read_text(encoding="utf-8"))["suggested_hardware"] == "cpu-basic"


@pytest.mark.parametrize("name", sorted(HARDWARE))
def test_every_hardware_is_one_the_hub_knows(name, trained, tmp_path) -> None:
    from huggingface_hub import SpaceHardware

    assert HARDWARE[name].flavor in {flavor.value for flavor in SpaceHardware}
    if HARDWARE[name].gpu and not HARDWARE[name].zero_gpu:
        out = export_space(trained, tmp_path / "space", hardware=name)
        assert not any(line.startswith("--") for line in (out / "requirements.txt").read_text().splitlines())
        assert "spaces" not in (out / "app.py").read_text()


def test_unknown_hardware_is_refused(trained, tmp_path) -> None:
    with pytest.raises(UserError, match="unknown Space hardware 'tpu'"):
        export_space(trained, tmp_path / "space", hardware="tpu")
    assert not (tmp_path / "space").exists()


def test_off_spaces_the_zero_gpu_decorator_leaves_generation_as_it_is(trained, monkeypatch) -> None:
    """What the exported app.py relies on to run on a machine without a GPU."""
    import spaces

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def generate() -> None: ...

    assert spaces.GPU(duration=ZERO_GPU_SECONDS)(generate) is generate


def test_the_demo_serves_the_gpu_task_it_is_given(trained) -> None:
    calls = []

    def gpu_task(handler):
        def on_gpu(*args):
            calls.append(args[0])
            yield from handler(*args)
        return on_gpu

    demo = app.build_demo(trained, gpu_task=gpu_task)
    [generate] = [fn.fn for fn in demo.fns.values() if fn.api_name == "generate"]
    assert list(generate("ROMEO:", 3, 0, 0, 1.0, 1))[-1].startswith("ROMEO:")
    assert calls == ["ROMEO:"]


def test_readme_front_matter_describes_a_gradio_space(trained, tmp_path) -> None:
    from importlib.metadata import version

    readme = (export_space(trained, tmp_path / "space") / "README.md").read_text(encoding="utf-8")
    meta = front_matter(readme)
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == version("gradio")
    assert meta["app_file"] == "app.py"
    assert meta["pinned"] is False
    assert meta["suggested_hardware"] == "zero-a10g"  # ZeroGPU, in huggingface_hub's words
    assert {"title", "emoji", "colorFrom", "colorTo"} <= set(meta)
    assert f"{trained.facts.parameters:,}" in readme


def test_weights_are_stored_once_and_load_back_to_the_same_logits(trained, tmp_path) -> None:
    from safetensors import safe_open

    out = export_space(trained, tmp_path / "space")
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    assert "transformer.wte.weight" in names
    assert "lm_head.weight" not in names  # tied to wte: written once
    loaded = load_space(out, device="cpu")
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    tokens = torch.randint(0, trained.tokenizer.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens)[0], trained.model(tokens)[0], rtol=0, atol=0)
    assert loaded.tokenizer.to_dict() == trained.tokenizer.to_dict()
    assert loaded.facts.parameters == trained.facts.parameters
    assert loaded.source == out / "model.safetensors"


def test_gpt2_space_carries_the_tokenizer_ranks(trained, tmp_path, data_dir) -> None:
    from gptforge.tokenizer import GPT2Tokenizer

    gpt2 = TrainedModel(model=trained.model, tokenizer=GPT2Tokenizer(), config=trained.config,
                        source=trained.source, facts=trained.facts)
    out = export_space(gpt2, tmp_path / "space")
    assert (out / "gpt2.tiktoken").read_bytes() == (data_dir / "gpt2.tiktoken").read_bytes()
    assert "nothing is downloaded" in (out / "README.md").read_text(encoding="utf-8")


def test_export_into_a_non_empty_folder_is_refused_and_touches_nothing(trained, tmp_path) -> None:
    out = tmp_path / "space"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_space(trained, out)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert [path.name for path in tmp_path.iterdir()] == ["space"]


def test_export_into_an_empty_folder_is_fine(trained, tmp_path) -> None:
    (tmp_path / "space").mkdir()
    assert {path.name for path in export_space(trained, tmp_path / "space").iterdir()} == SPACE_FILES


def test_load_space_says_what_is_missing(trained, tmp_path) -> None:
    out = export_space(trained, tmp_path / "space")
    (out / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_space(out)


def test_cli_export(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "space"
    assert main(["export", "--run", str(run_dir), "--format", "space", "--out", str(out)]) == 0
    assert {path.name for path in out.iterdir()} == SPACE_FILES
    capsys.readouterr()
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(["export", "--run", str(run_dir), "--format", "space", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float) -> int:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a CI proxy must not see localhost
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with status {process.returncode}:\n{process.stdout.read()}")
        try:
            with direct.open(url, timeout=2) as response:
                return response.status
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"app.py did not answer at {url} within {timeout_s}s")


@pytest.mark.slow
@pytest.mark.xdist_group("servers")  # with the other tests that pick a free port, on one worker
@pytest.mark.parametrize("hardware", ["zero-gpu", "cpu-basic"])
def test_exported_app_py_serves_the_demo(trained, tmp_path, hardware) -> None:
    """Runs app.py with this project's Python (no GPU: the ZeroGPU one runs as it would on a laptop); the
    Space imports its own copy of gptforge (a clean-venv install from requirements.txt was checked by hand:
    see docs/deploy.md)."""
    out = export_space(trained, tmp_path / "space", hardware=hardware)
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    which = subprocess.run([sys.executable, "-c", "import gptforge; print(gptforge.__file__)"], cwd=out,
                           capture_output=True, text=True, check=True)
    assert Path(which.stdout.strip()).resolve() == (out / "gptforge" / "__init__.py").resolve()  # the copy wins
    process = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/", process, timeout_s=90) == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_cli_export_chooses_the_hardware_and_refuses_it_for_other_formats(run_dir, tmp_path, capsys) -> None:
    out = tmp_path / "space"
    assert main(["export", "--run", str(run_dir), "--format", "space", "--hardware", "cpu-basic",
                 "--out", str(out)]) == 0
    assert "cpu-basic" in capsys.readouterr().out
    assert (out / "requirements.txt").read_text().startswith("--extra-index-url ")
    assert main(["export", "--run", str(run_dir), "--format", "hf", "--hardware", "cpu-basic",
                 "--out", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == "error: --hardware is for --format space (a Gradio Space), not --format hf\n"
    assert not (tmp_path / "hf").exists()
