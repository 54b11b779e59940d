"""Checkpoints that would take more memory than any state of their model: a .pt.gz that inflates without
end, a .pt file far larger than its model. Decompression stops at a cap derived from the run's model
(or from the memory available, for a file outside a run); such a file is damaged: `--resume` and
`--run` fall back to an older checkpoint and say so, `--checkpoint` is one error line.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_main
from gptforge import checkpoint
from gptforge.checkpoint import load_checkpoint, save_checkpoint, size_cap
from gptforge.config import RunConfig
from gptforge.run_dir import RunDir, load_checkpoint_file
from gptforge.sizing import STATE_BYTES_PER_PARAMETER, parameter_count

MIB = 1 << 20


def gzip_bomb(path: Path, inflated_mib: int) -> Path:
    """A valid gzip stream of `inflated_mib` MiB of zeros (a few hundred KB on disk)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    zeros = bytes(MIB)
    with path.open("wb") as file:
        for _ in range(inflated_mib):
            file.write(compressor.compress(zeros))
        file.write(compressor.flush())
    return path


def sparse_file(path: Path, mib: int) -> Path:
    """A file of `mib` MiB that takes no disk space."""
    with path.open("wb") as file:
        file.truncate(mib * MIB)
    return path


BOMBS = {"gzip bomb": lambda folder: gzip_bomb(folder / "last.pt.gz", 160),
         "oversize file": lambda folder: sparse_file(folder / "last.pt", 4096)}


OUTSIDE_A_RUN_CAP = {"gzip bomb": "half the memory available (64 MiB)",
                     "oversize file": "than the memory available (128 MiB)"}


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    checkpoints = copy / "checkpoints"
    (checkpoints / "last.pt").replace(checkpoints / "step-20.pt")  # the good checkpoint to fall back to
    return copy


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_resume_and_run_fall_back_past_a_bomb_and_say_so(bomb: str, run: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = BOMBS[bomb](run / "checkpoints")
    cap, bounded_by = size_cap(RunDir(run).state_bound())
    assert cap is not None and cap < 160 * MIB and "config.json" in bounded_by  # set by the model, not memory
    status, out, err = run_main(["sample", "--run", str(run), "--device", "cpu", "--max-new-tokens", "2"], capsys)
    assert status == 0 and f"warning: skipping {bad}" in err and "refused" in err, err
    status, out, err = run_main(["train", "--resume", str(run), "--max-steps", "21", "--sample-tokens", "1"], capsys)
    assert status == 0, err
    assert f"skipping {bad}" in out + err and "step-20.pt at step 20" in out + err


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_bomb_outside_a_run_is_bounded_by_memory_and_one_line_for_every_command(
        bomb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No run beside it to bound it: the memory available does (shrunk here to 128 MiB), halved for a .pt.gz,
    whose archive and tensors are in memory at once."""
    monkeypatch.setattr(checkpoint, "available_memory_bytes", lambda: 128 * MIB)
    bad = BOMBS[bomb](tmp_path)
    for argv in (["sample", "--checkpoint", str(bad), "--device", "cpu"],
                 ["eval", "--checkpoint", str(bad), "--device", "cpu"],
                 ["export", "--checkpoint", str(bad), "--format", "hf", "--out", str(tmp_path / "out")]):
        status, _, err = run_main(argv, capsys)
        assert status == 2 and "Traceback" not in err, err
        lines = err.splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and OUTSIDE_A_RUN_CAP[bomb] in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compress", [False, True])
def test_the_cap_leaves_room_for_every_real_checkpoint_of_the_model(compress: bool, tiny_run: Path,
                                                                    tmp_path: Path) -> None:
    """A real state (weights, AdamW moments after a step, RNGs) is well inside the cap its config.json sets,
    and loads through it; without the slack, twice the expected state still holds it."""
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    model = RunConfig.from_dict(state["config"]).model
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(tiny_run / "config.json", folder.parent / "config.json")
    path = save_checkpoint(state, folder / "last.pt", compress=compress)
    plain = save_checkpoint(state, tmp_path / "plain.pt")
    assert plain.stat().st_size <= 2 * parameter_count(model) * STATE_BYTES_PER_PARAMETER + MIB
    cap, _ = size_cap(RunDir(folder.parent).state_bound())
    assert cap is not None and plain.stat().st_size < cap
    loaded = load_checkpoint_file(path)
    assert torch.equal(loaded["model"]["lm_head.weight"], state["model"]["lm_head.weight"])


def deflated_archive(path: Path, inflated_mib: int) -> Path:
    """A torch.save archive rewritten with deflated entries: a zeros tensor of `inflated_mib` MiB, ~1 KB/MiB on
    disk. torch.load would inflate it whole; torch.save never writes a compressed entry."""
    plain = path.with_name(path.name + ".plain")
    torch.save({"model": {"w": torch.zeros(inflated_mib * MIB, dtype=torch.uint8)}, "format": 1}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry), zipfile.ZIP_DEFLATED)
    plain.unlink()
    return path


@pytest.mark.parametrize("name", ["last.pt", "step-30.pt"])
def test_resume_and_run_fall_back_past_a_deflated_zip_archive(name: str, run: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = deflated_archive(run / "checkpoints" / name, 8)
    assert bad.stat().st_size < MIB
    status, out, err = run_main(["sample", "--run", str(run), "--device", "cpu", "--max-new-tokens", "2"], capsys)
    assert status == 0 and f"warning: skipping {bad}" in err and "compressed inside the archive" in err, err


@pytest.mark.parametrize("gz", [False, True])
def test_a_deflated_archive_is_one_line_for_checkpoint_and_pytorch_model_bin(
        gz: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = deflated_archive(tmp_path / "bomb.pt", 4)
    if gz:
        bad = tmp_path / "bomb.pt.gz"
        bad.write_bytes(gzip.compress(deflated_archive(tmp_path / "inner.pt", 4).read_bytes()))
    status, _, err = run_main(["sample", "--checkpoint", str(bad), "--device", "cpu"], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "compressed inside the archive" in err, err
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8,
                                                "n_positions": 16, "vocab_size": 64}))
    deflated_archive(hf / "pytorch_model.bin", 4)
    status, _, err = run_main(["sample", "--hf", str(hf), "--device", "cpu"], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "compressed inside the archive" in err, err


@settings(max_examples=25, derandomize=True, deadline=None)
@given(sizes=st.lists(st.integers(0, 64 * 1024), min_size=1, max_size=5), cap=st.integers(1, 200 * 1024))
def test_stored_entries_are_held_to_the_cap_by_their_declared_sizes(sizes: list[int], cap: int) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, size in enumerate(sizes):
            archive.writestr(f"archive/data/{index}", bytes(size))
    if sum(sizes) > cap:
        with pytest.raises(checkpoint.BadCheckpoint, match="inflate to"):
            checkpoint.check_archive_size(buffer, cap, "the cap")
    else:
        checkpoint.check_archive_size(buffer, cap, "the cap")
        assert buffer.tell() == 0
