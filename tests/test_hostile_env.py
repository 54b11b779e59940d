"""Hostile environment and names: RANK/LOCAL_RANK/WORLD_SIZE that no launcher set, a path component over the
filesystem's 255 bytes, --compile where no compiler is installed. Each is one `error:` line before the run folder
exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_one_error, examples, run_main
from gptforge.device import check_compiler
from gptforge.errors import UserError

ENV_SETTINGS = settings(max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
LAUNCHER = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def not_an_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--max-steps", "1", "--device",
            "cpu", "--no-progress", *extra]


@ENV_SETTINGS
@given(name=st.sampled_from(["RANK", "LOCAL_RANK", "WORLD_SIZE"]),
       value=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
       .filter(not_an_integer))
def test_a_launcher_variable_that_is_not_an_integer_is_one_line(name: str, value: str, no_launcher: pytest.MonkeyPatch,
                                                               corpus: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    no_launcher.setenv(name, value)
    status, _, err = run_main(train_argv(corpus, tmp_path / "never"), capsys)
    assert_one_error(status, err, name, "not an integer")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "0"},
                                 {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1"}],
                         ids=["world-only", "no-rendezvous", "no-master"])
def test_several_processes_not_started_by_a_launcher_are_one_line(env: dict[str, str], no_launcher: pytest.MonkeyPatch,
                                                                  corpus: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        no_launcher.setenv(name, value)
    status, _, err = run_main(train_argv(corpus, tmp_path / "never"), capsys)
    assert_one_error(status, err, "MASTER_ADDR", "a launcher did not start this process")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"WORLD_SIZE": "0"}, {"WORLD_SIZE": "-3"}, {"LOCAL_RANK": "-1"},
                                 {"RANK": "5", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}],
                         ids=["rank-1-of-1", "world-0", "world-negative", "local-negative", "rank-past-world"])
def test_a_rank_outside_its_world_is_one_line(env: dict[str, str], no_launcher: pytest.MonkeyPatch, corpus: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        no_launcher.setenv(name, value)
    status, _, err = run_main(train_argv(corpus, tmp_path / "never"), capsys)
    assert_one_error(status, err, "no process of a launched run")
    assert not (tmp_path / "never").exists()


# --- a path component over 255 bytes ------------------------------------------------------------------------------

LONG = "n" * 300


@pytest.mark.parametrize("where", ["out", "out-parent", "data", "run", "config", "export-out"])
def test_a_name_over_255_bytes_is_one_line(where: str, corpus: Path, tiny_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(os.listdir(tmp_path))
    argv = {
        "out": train_argv(corpus, tmp_path / LONG),
        "out-parent": train_argv(corpus, tmp_path / LONG / "run"),
        "data": train_argv(tmp_path / f"{LONG}.txt", tmp_path / "never"),
        "run": ["sample", "--run", str(tmp_path / LONG), "--max-new-tokens", "1", "--device", "cpu"],
        "config": ["train", "--config", str(tmp_path / f"{LONG}.toml"), "--data", str(corpus), "--out",
                   str(tmp_path / "never")],
        "export-out": ["export", "--run", str(tiny_run), "--format", "hf", "--out", str(tmp_path / LONG)],
    }[where]
    status, _, err = run_main(argv, capsys)
    assert_one_error(status, err)
    assert "too long" in err and len(err) < 300, err
    assert sorted(os.listdir(tmp_path)) == before


def test_the_limit_is_in_bytes_not_characters(corpus: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    name = "文" * 100  # 100 characters, 300 bytes in UTF-8: over the limit only in bytes
    status, _, err = run_main(train_argv(corpus, tmp_path / "runs" / name), capsys)
    assert_one_error(status, err)
    assert "too long" in err.lower() and not list((tmp_path / "runs").glob("*")), err


# --- --compile without a compiler -----------------------------------------------------------------------------


def test_compile_on_the_cpu_without_a_cxx_compiler_is_one_line_before_the_run_folder(
        monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torch._inductor import cpp_builder, exc

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    status, _, err = run_main(train_argv(corpus, tmp_path / "never", "--compile"), capsys)
    assert_one_error(status, err, "--compile needs a C++ compiler", "--no-compile")
    assert not (tmp_path / "never").exists()


def test_compile_on_the_cpu_with_the_compiler_torch_finds_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    check_compiler(torch.device("cpu"))


@pytest.mark.parametrize("found", [None, "cc"], ids=["none", "cc"])
def test_compile_on_cuda_asks_for_the_c_compiler_triton_uses(found: str | None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr("gptforge.device.shutil.which", lambda name: f"/usr/bin/{name}" if name == found else None)
    if found is None:
        with pytest.raises(UserError, match="a C compiler"):
            check_compiler(torch.device("cuda"))
    else:
        check_compiler(torch.device("cuda"))
