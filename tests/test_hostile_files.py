"""Files that are not what their names say: a pytorch_model.bin that would run code (refused in words that
do not suggest loading it unsafely, and never run), and a last.pt that is not a regular file (a FIFO, a
symlink loop or to nothing, a device): skipped with the same "skipping" warning as other damage,
without ever being opened (reading a FIFO would wait forever).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_main
from warm import WarmStarter

SUBPROCESS_TIMEOUT_S = 120


class Exploit:
    """Unpickling this creates a file: the stand-in for running any code."""

    def __init__(self, target: pathlib.Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.target,))


@pytest.fixture
def hostile_hf(tmp_path: Path) -> tuple[Path, Path]:
    """An HF folder whose config.json is fine and whose pytorch_model.bin would create `marker` when loaded."""
    folder, marker = tmp_path / "hf", tmp_path / "pwned"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2,
                                                    "vocab_size": 65, "n_positions": 16}))
    torch.save({"transformer.wte.weight": Exploit(marker)}, folder / "pytorch_model.bin")
    return folder, marker


def test_a_bin_that_would_run_code_is_refused_by_every_command(hostile_hf: tuple[Path, Path], tmp_path: Path,
                                                              data_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder, marker = hostile_hf
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3_000])
    commands = [["sample", "--hf", str(folder), "--device", "cpu"], ["eval", "--hf", str(folder), "--device", "cpu"],
                ["export", "--hf", str(folder), "--format", "hf", "--out", str(tmp_path / "out")],
                ["train", "--preset", "tiny", "--tokenizer", "char", "--data", str(corpus), "--device", "cpu",
                 "--init-from", f"hf:{folder}", "--out", str(tmp_path / "run")]]
    for argv in commands:
        status, _, err = run_main(argv, capsys)
        assert status == 2 and "Traceback" not in err, err
        lines = err.splitlines()
        assert len(lines) == 1 and "refused: this file would run code when loaded" in lines[0], err
        assert "it asks for" in lines[0] and "weights_only" not in lines[0], err  # names the call; no unsafe advice
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def fifo(path: Path) -> None:
    os.mkfifo(path)


NOT_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "FIFO": (fifo, "a named pipe (FIFO)"),
    "symlink loop": (lambda path: path.symlink_to(path.name), "a symbolic link that loops"),
    "symlink to nothing": (lambda path: path.symlink_to("gone.pt"), "which does not exist"),
    "device": (lambda path: path.symlink_to("/dev/zero"), "a device"),
}


@pytest.mark.parametrize("kind", sorted(NOT_FILES))
def test_a_last_pt_that_is_not_a_file_is_skipped_with_a_warning(kind: str, tiny_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                warm: WarmStarter) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    checkpoints = run / "checkpoints"
    (checkpoints / "last.pt").replace(checkpoints / "step-20.pt")
    make, description = NOT_FILES[kind]
    make(checkpoints / "last.pt")
    skipping = f"skipping {checkpoints / 'last.pt'}: it is"
    # a real process first, with a timeout: opening the FIFO would block it forever
    sample = warm.run([sys.executable, "-m", "gptforge", "sample", "--run", str(run), "--device", "cpu",
                       "--max-new-tokens", "2"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert sample.returncode == 0, sample.stderr
    assert f"warning: {skipping}" in sample.stderr and description in sample.stderr, sample.stderr
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--sample-tokens", "1"], capsys)
    assert status == 0, err
    assert skipping in out and description in out and "from step-20.pt at step 20" in out
