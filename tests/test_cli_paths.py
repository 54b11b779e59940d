"""The paths a new user takes through the command line: RUN as a flag or a word, URLs and hub names
given where files are expected, a YAML config."""

import socket
from pathlib import Path

import pytest

from conftest import run_main

EXTRA = {"export": ["--format", "hf", "--out", "unused"]}


@pytest.mark.parametrize("command", ["plot", "sample", "eval", "serve", "export"])
def test_every_command_that_reads_a_run_takes_run_as_a_flag_or_a_word(command: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-run")
    for argv in ([command, "--run", missing], [command, missing]):
        status, out, err = run_main([*argv, *EXTRA.get(command, [])], capsys)
        assert status == 2 and err == f"error: run directory {missing} not found; pass a folder made by " \
            "`gptforge train`\n", argv
    status, _, err = run_main([command, "--run", missing, missing, *EXTRA.get(command, [])], capsys)
    assert status == 2 and "not allowed with" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["plot", "sample", "eval", "serve", "export"])
def test_a_checkpoint_file_given_as_the_run_is_pointed_to_checkpoint(command: str, tiny_run: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tiny_run / "checkpoints" / "last.pt"
    status, _, err = run_main([command, str(checkpoint), *EXTRA.get(command, [])], capsys)
    hint = "pass the run's folder" if command == "plot" else f"pass the file as --checkpoint {checkpoint}"
    assert status == 2 and err == f"error: {checkpoint} is a file, not a run directory; {hint}\n"


def test_plot_writes_the_format_its_name_says(tiny_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    starts = {"curves.svg": b"<?xml", "curves.pdf": b"%PDF", "curves.PNG": b"\x89PNG"}
    for name, magic in starts.items():
        status, _, err = run_main(["plot", str(tiny_run), "--out", str(tmp_path / name)], capsys)
        assert status == 0, err
        assert (tmp_path / name).read_bytes().startswith(magic), name
    status, _, err = run_main(["plot", str(tiny_run), "--out", str(tmp_path / "curves.jpeg")], capsys)
    assert status == 2 and err == "error: cannot write a plot as curves.jpeg: name a .png, .svg or .pdf file\n"
    assert not (tmp_path / "curves.jpeg").exists()


def test_sample_and_plot_read_the_same_run_either_way(tiny_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--prompt", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0", "--device", "cpu"]
    as_flag, as_word = (run_main(["sample", *argv, *flags], capsys) for argv in (["--run", str(tiny_run)],
                                                                                  [str(tiny_run)]))
    assert as_flag == as_word and as_flag[0] == 0 and as_flag[1].startswith("ROMEO:")
    for name, argv in (("flag", ["--run", str(tiny_run)]), ("word", [str(tiny_run)])):
        status, out, err = run_main(["plot", *argv, "--out", str(tmp_path / f"{name}.png")], capsys)
        assert status == 0, err
        assert (tmp_path / f"{name}.png").stat().st_size > 0


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test, the way an offline machine would refuse it."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("url", ["https://example.com/corpus.txt", "http://example.com/a/b.txt",
                                 "s3://bucket/corpus.txt"])
@pytest.mark.parametrize("command", ["train", "prepare", "eval"])
def test_a_url_for_data_is_refused_in_one_line_without_the_network(url: str, command: str, tmp_path: Path,
                                                                   tiny_run: Path, no_network: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    extra = {"train": ["--preset", "tiny", "--tokenizer", "char", "--out", str(tmp_path / "run")],
             "prepare": ["--tokenizer", "char"], "eval": ["--run", str(tiny_run), "--device", "cpu"]}[command]
    status, _, err = run_main([command, "--data", url, *extra], capsys)
    assert status == 2
    assert err == (f"error: --data takes a named dataset, a text file or a folder, not a URL ({url}); gptforge "
                   "downloads only its named datasets: download the file (e.g. curl -LO URL) and pass its path\n")
    assert list(tmp_path.iterdir()) == []  # no run directory


@pytest.mark.parametrize("name,text", [("run.yaml", "model:\n  n_layer: 6\n"), ("run.yml", "max_steps: 10\n"),
                                       ("run.json", '{"max_steps": 10}'), ("run.cfg", "model:\n  n_layer: 6\n")])
def test_a_config_that_is_not_toml_is_one_line_saying_it_must_be_toml(name: str, text: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / name
    config.write_text(text, encoding="utf-8")
    status, _, err = run_main(["train", "--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--config takes a TOML file (`key = value` lines, optional [model] / [train] tables)" in err
    assert not (tmp_path / "run").exists()
