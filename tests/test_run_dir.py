"""The run folder (run_dir.py): checkpoints listed newest first, the newest good one loaded past corrupt ones,
step-N files pruned, new folders created without ever reusing a trained run."""

import os
import pathlib

import pytest

from gptforge import run_dir
from gptforge.checkpoint import save_checkpoint
from gptforge.errors import UserError
from gptforge.run_dir import RunDir, create_run_dir
from test_checkpoint import make_state


def make_run(tmp_path: pathlib.Path, names: list[str]) -> pathlib.Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for index, name in enumerate(names):
        path = save_checkpoint({**make_state(index), "name": name}, run / "checkpoints" / name.removesuffix(".gz"),
                               compress=name.endswith(".gz"))
        os.utime(path, (1_000_000 + index, 1_000_000 + index))
    return run


def test_candidates_are_newest_first(tmp_path):
    run = make_run(tmp_path, ["best.pt", "step-100.pt", "step-20.pt.gz", "step-3.pt", "last.pt"])
    (run / "checkpoints" / "notes.txt").write_text("ignored")
    (run / "checkpoints" / ".last.pt.abcd.tmp").write_bytes(b"leftover")
    names = [p.name for p in RunDir(run).checkpoints()]
    assert names == ["last.pt", "step-100.pt", "step-20.pt.gz", "step-3.pt", "best.pt"]


def test_candidates_prefer_the_newer_of_plain_and_gzip(tmp_path):
    run = make_run(tmp_path, ["last.pt", "last.pt.gz"])
    assert [p.name for p in RunDir(run).checkpoints()] == ["last.pt.gz", "last.pt"]


def test_load_latest_falls_back_past_a_corrupt_last(tmp_path):
    run = make_run(tmp_path, ["best.pt", "step-10.pt", "step-20.pt", "last.pt"])
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    state, path, warnings = RunDir(run).load_latest()
    assert path.name == "step-20.pt" and state["name"] == "step-20.pt"
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping {last}: ")


def test_load_latest_takes_last_when_it_is_good(tmp_path):
    run = make_run(tmp_path, ["step-10.pt", "last.pt"])
    state, path, warnings = RunDir(run).load_latest()
    assert path.name == "last.pt" and state["name"] == "last.pt" and warnings == []


def test_load_latest_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        RunDir(tmp_path / "nope").load_latest()
    with pytest.raises(UserError, match="no checkpoints/ folder"):
        RunDir(tmp_path).load_latest()
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="no checkpoints in"):
        RunDir(tmp_path).load_latest()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="none of the 2 checkpoints") as raised:
        RunDir(tmp_path).load_latest()
    assert "\n" not in str(raised.value)


def test_prune_keeps_the_newest_k_step_files(tmp_path):
    run = make_run(tmp_path, ["step-5.pt", "step-40.pt", "step-300.pt.gz", "step-1000.pt", "last.pt", "best.pt"])
    directory = run / "checkpoints"
    RunDir(run).prune_step_checkpoints(keep=2)
    assert sorted(p.name for p in directory.iterdir()) == ["best.pt", "last.pt", "step-1000.pt", "step-300.pt.gz"]
    RunDir(run).prune_step_checkpoints(keep=5)
    assert len(list(directory.iterdir())) == 4
    RunDir(run).prune_step_checkpoints(keep=0)
    assert sorted(p.name for p in directory.iterdir()) == ["best.pt", "last.pt"]
    RunDir(tmp_path / "missing").prune_step_checkpoints(keep=1)  # nothing to prune is fine


def test_create_run_dir_with_out(tmp_path):
    out = tmp_path / "a" / "b"
    assert create_run_dir(str(out), "tiny").path == out and out.is_dir()
    assert create_run_dir(str(out), "tiny").path == out  # an empty existing folder is fine
    (out / "checkpoints").mkdir()
    assert create_run_dir(str(out), "tiny").path == out  # so is an empty checkpoints/ (crashed before saving)
    (out / "checkpoints" / "last.pt").write_bytes(b"model")
    with pytest.raises(UserError, match=r"--resume .*another --out"):
        create_run_dir(str(out), "tiny")
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"model"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="cannot create run directory"):
        create_run_dir(str(a_file), "tiny")


def test_create_run_dir_default_names_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_dir.time, "strftime", lambda fmt: "20240102-030405")
    first, second, third = (create_run_dir(None, "tiny").path for _ in range(3))
    assert first == pathlib.Path("runs/20240102-030405-tiny")
    assert second == pathlib.Path("runs/20240102-030405-tiny-2")
    assert third == pathlib.Path("runs/20240102-030405-tiny-3")
    assert all(p.is_dir() for p in (first, second, third))


# --- random number generators --------------------------------------------------------------------
