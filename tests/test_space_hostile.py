"""An exported Space meets what a received folder can hold: a cut-off model.safetensors is one `error:` line from
its app.py (and from load_trained), and its config.json holds no path of the machine that exported it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_error, tiny_char_config
from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.interop.space import portable_config
from gptforge.use.load import load_trained


@pytest.fixture(scope="module")
def space(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("space") / "space"
    assert main(["export", "--run", str(tiny_run), "--format", "space", "--hardware", "cpu-basic",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture
def cut_space(space: Path, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(space, tmp_path / "space"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5])
def test_a_cut_off_model_safetensors_is_a_user_error(keep: float, space: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(space, tmp_path / "space"))
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(UserError, match="cannot read the weights in .*model.safetensors") as caught:
        load_trained(space=copy, device="cpu")
    assert "\n" not in str(caught.value)


def test_the_space_app_py_says_one_line_for_a_cut_off_model(cut_space: Path) -> None:
    """app.py as the Space runs it, with its own copy of gptforge: no traceback, exit status 2."""
    result = subprocess.run([sys.executable, "app.py"], cwd=cut_space, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "GRADIO_ANALYTICS_ENABLED": "False"})
    assert_one_error(result.returncode, result.stderr, "model.safetensors")


def test_a_space_holds_no_path_of_this_machine(space: Path, tiny_run: Path, data_dir: Path) -> None:
    machine = [str(tiny_run.parent), str(data_dir), str(Path.home())]
    for path in space.iterdir():
        if path.is_file() and path.suffix in (".json", ".md", ".py", ".txt"):
            text = path.read_text(encoding="utf-8")
            assert not [where for where in machine if where in text], (path.name, machine)


def test_portable_config_keeps_names_not_paths(tmp_path: Path) -> None:
    config = tiny_char_config(tmp_path / "runs" / "mine", data=str(tmp_path / "corpora" / "poems.txt"),
                              tokenizer_file=str(tmp_path / "ranks" / "gpt2.tiktoken"),
                              init=f"hf:{tmp_path / 'models' / 'gpt2'}")
    train = portable_config(config)["train"]
    assert (train["out"], train["tokenizer_file"], train["data"], train["init"]) == (None, None, "poems.txt",
                                                                                      "hf:gpt2")
    assert str(tmp_path) not in repr(portable_config(config))
    named = portable_config(tiny_char_config(tmp_path / "r", data="shakespeare"))
    assert named["train"]["data"] == "shakespeare"


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (the system can reuse it later, not within the test)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


@pytest.mark.parametrize("kind", ["hf", "space"])
def test_the_next_export_removes_a_killed_exports_staging_folder(kind: str, tiny_run: Path, tmp_path: Path) -> None:
    import os

    out = tmp_path / "exported"
    dead = tmp_path / f".exported.staging-{dead_pid()}.abc123"
    live = tmp_path / f".exported.staging-{os.getpid()}.def456"  # an export in flight: this very process
    other = tmp_path / ".exported.notes"  # not a staging folder's name: never touched
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half of the weights")
    assert main(["export", "--run", str(tiny_run), "--format", kind, "--out", str(out)]) == 0
    assert out.is_dir() and not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, live.name, other.name])
