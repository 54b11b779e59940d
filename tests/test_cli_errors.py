"""Every subcommand, given input it cannot use: exit status 2, exactly one `error: ...` line, no traceback.

One table drives the in-process cases (`gptforge.cli.main(argv)`, fast); a few run as real processes
too, where the interpreter's own exit path and stderr are what the user sees. A rejected command must
not leave anything behind: no run directory for `train`, nothing changed in a run it was pointed at,
no port bound by `serve`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import torch

from conftest import run_main
from gptforge.cli import build_parser
from warm import WarmStarter

SUBPROCESS_TIMEOUT_S = 120
CORPUS_CHARS = 20_000
MIXED_UTF8_PART = "plain UTF-8 text, then \u00e9t\u00e9 ".encode()  # a file that changes encoding after this


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_run: Path) -> dict[str, Path]:
    """The inputs the table names: good ones to pair with a bad flag, and bad files of every kind."""
    folder = tmp_path_factory.mktemp("inputs")
    files = {
        "corpus": (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS].encode(),
        "empty": b"",
        "latin1": "caf\u00e9 cr\u00e8me\n".encode("latin-1") * 50,
        "mixed": MIXED_UTF8_PART + "\u00e9t\u00e9 in Latin-1".encode("latin-1"),
        "unknown_chars": "\u65e5\u672c\u8a9e\n".encode() * 50,  # a char model of Shakespeare cannot encode these
        "one_char": b"A",
        "bad_toml": b"[train\nbatch_size = = 4\n",
        "unknown_key_toml": b'preset = "tiny"\ncolour = "blue"\n',
    }
    result = {"run": folder / "run", "missing": folder / "no-such-thing", "file": folder / "a-file.txt",
              "empty_dir": folder / "empty-dir", "full_dir": folder / "full-dir"}
    for name, data in files.items():
        result[name] = folder / f"{name}.{'toml' if name.endswith('toml') else 'txt'}"
        result[name].write_bytes(data)
    result["file"].write_text("not a folder\n", encoding="utf-8")
    result["empty_dir"].mkdir()
    result["full_dir"].mkdir()
    (result["full_dir"] / "keep.txt").write_text("precious\n", encoding="utf-8")
    shutil.copytree(tiny_run, result["run"])
    last = (tiny_run / "checkpoints" / "last.pt").read_bytes()
    result["truncated_ckpt"] = folder / "truncated.pt"
    result["truncated_ckpt"].write_bytes(last[: len(last) // 2])
    return result


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRAIN = ["train", "--preset", "tiny", "--data", "{corpus}", "--tokenizer", "char", "--device", "cpu",
         "--max-steps", "1", "--no-progress", "--out", "{out}"]
NO_GPU_HERE = f"cuda:{torch.cuda.device_count()}"  # a CUDA device this machine does not have

# id: (argv, text the error line must contain). `{name}` is a path from `paths`; `{out}` a fresh folder.
CASES: dict[str, tuple[list[str], str]] = {
    # --- train: model shape
    "train zero n_layer": ([*TRAIN, "--n-layer", "0"], "n_layer must be a positive integer"),
    "train negative n_embd": ([*TRAIN, "--n-embd", "-16"], "n_embd must be a positive integer"),
    "train zero n_head": ([*TRAIN, "--n-head", "0"], "n_head must be a positive integer"),
    "train zero block_size": ([*TRAIN, "--block-size", "0"], "block_size must be a positive integer"),
    "train block above the corpus": ([*TRAIN, "--block-size", "100000"], "block_size 100000 needs at least"),
    "train dropout 1": ([*TRAIN, "--dropout", "1"], "dropout must be in [0, 1)"),
    "train n_layer not a number": ([*TRAIN, "--n-layer", "two"], "n_layer must be an int"),
    # --- train: training settings
    "train negative batch": ([*TRAIN, "--batch-size", "-2"], "batch_size must be a positive integer"),
    "train zero max_steps": ([*TRAIN, "--max-steps", "0"], "max_steps must be a positive integer"),
    "train zero learning rate": ([*TRAIN, "--learning-rate", "0"], "learning_rate must be positive"),
    "train NaN learning rate": ([*TRAIN, "--learning-rate", "nan"], "learning_rate must be a float"),
    "train val_fraction 1": ([*TRAIN, "--val-fraction", "1"], "val_fraction must be in [0, 1)"),
    "train negative warmup": ([*TRAIN, "--warmup-steps", "-1"], "warmup_steps must be zero or more"),
    "train zero checkpoint interval": ([*TRAIN, "--checkpoint-interval", "0"], "checkpoint_interval must be"),
    "train negative keep": ([*TRAIN, "--keep-checkpoints", "-1"], "keep_checkpoints must be zero or more"),
    "train negative grad clip": ([*TRAIN, "--grad-clip", "-1"], "grad_clip must be zero or more"),
    "train zero target loss": ([*TRAIN, "--target-loss", "0"], "target_loss must be positive"),
    "train zero pad_vocab_to": ([*TRAIN, "--pad-vocab-to", "0"], "pad_vocab_to must be a positive integer"),
    "train tokens per step not a multiple": ([*TRAIN, "--tokens-per-step", "100"], "not a multiple"),
    "train unknown dtype": ([*TRAIN, "--dtype", "float8"], "unknown dtype 'float8'"),
    "train unknown schedule": ([*TRAIN, "--schedule", "linear"], "unknown schedule 'linear'"),
    "train unknown sampler": ([*TRAIN, "--sampler", "shuffled"], "unknown sampler 'shuffled'"),
    "train unknown tokenizer": ([*TRAIN, "--tokenizer", "bpe"], "unknown tokenizer 'bpe'"),
    "train absent GPU": ([*TRAIN, "--device", NO_GPU_HERE], "CUDA"),
    "train unknown init": ([*TRAIN, "--init-from", "gpt2"], "unknown init 'gpt2'"),
    "train missing init folder": ([*TRAIN, "--init-from", "hf:{missing}"], "model folder not found"),
    "train zero nproc": ([*TRAIN, "--nproc", "0"], "--nproc must be a positive integer"),
    # --- train: files
    "train non-UTF-8 corpus": ([*TRAIN, "--data", "{latin1}"], "is not UTF-8 text"),
    "train half-UTF-8 corpus": ([*TRAIN, "--data", "{mixed}"],
                                f"invalid byte 0xe9 at byte offset {len(MIXED_UTF8_PART)})"),
    "train missing GPT-2 tokenizer file": ([*TRAIN, "--tokenizer", "gpt2", "--tokenizer-file", "{missing}"],
                                           "GPT-2 tokenizer file not found"),
    "train wrong GPT-2 tokenizer file": ([*TRAIN, "--tokenizer", "gpt2", "--tokenizer-file", "{corpus}"],
                                         "sha256 mismatch"),
    "train missing config file": ([*TRAIN, "--config", "{missing}"], "config file not found"),
    "train unknown key in config": ([*TRAIN, "--config", "{unknown_key_toml}"], "unknown setting 'colour'"),
    "train unknown subcommand": (["trian"], "invalid choice: 'trian'"),
    # --- train --resume: the run it names is left exactly as it was
    "resume block size above the model's": (["train", "--resume", "{run}", "--block-size", "64"],
                                            "--block-size changes the model's shape"),
    "resume other width": (["train", "--resume", "{run}", "--n-embd", "64"], "--n-embd changes the model's shape"),
    "resume with init": (["train", "--resume", "{run}", "--init-from", "hf:{missing}"], "starts a new run"),
    "resume with config": (["train", "--resume", "{run}", "--config", "{unknown_key_toml}"], "drop --preset/--config"),
    "resume zero max_steps": (["train", "--resume", "{run}", "--max-steps", "0"], "max_steps must be a positive"),
    "resume a folder without checkpoints": (["train", "--resume", "{empty_dir}"], "no checkpoints/ folder"),
    "resume a file": (["train", "--resume", "{file}"], "is a file, not a run directory; pass the run's folder"),
    # --- summary
    "summary zero n_layer": (["summary", "--preset", "tiny", "--n-layer", "0"], "n_layer must be a positive"),
    "summary heads do not divide width": (["summary", "--n-embd", "30", "--n-head", "4"], "divisible by n_head"),
    "summary negative block": (["summary", "--block-size", "-1"], "block_size must be a positive integer"),
    "summary zero vocabulary": (["summary", "--vocab-size", "0"], "vocab_size must be a positive integer"),
    "summary dropout 2": (["summary", "--dropout", "2"], "dropout must be in [0, 1)"),
    "summary unknown preset": (["summary", "--preset", "gpt5"], "invalid choice: 'gpt5'"),
    "summary width not a number": (["summary", "--n-embd", "wide"], "n_embd must be an int"),
    # --- prepare
    "prepare missing file": (["prepare", "--data", "{missing}", "--tokenizer", "char"], "file not found"),
    "prepare empty file": (["prepare", "--data", "{empty}", "--tokenizer", "char"], "is empty"),
    "prepare non-UTF-8 file": (["prepare", "--data", "{latin1}", "--tokenizer", "gpt2"], "is not UTF-8 text"),
    "prepare unknown tokenizer": (["prepare", "--tokenizer", "bpe"], "invalid choice: 'bpe'"),
    "prepare wrong tokenizer file": (["prepare", "--data", "{corpus}", "--tokenizer-file", "{corpus}"],
                                     "sha256 mismatch"),
    "prepare folder without text": (["prepare", "--data", "{empty_dir}", "--tokenizer", "char"], "has no .txt files"),
    # --- plot
    "plot missing run": (["plot", "{missing}"], "not found"),
    "plot run without metrics": (["plot", "{empty_dir}"], "no metrics in"),
    "plot to a path under a file": (["plot", "{run}", "--out", "{file}/curves.png"], "could not write"),
    "plot without a run": (["plot"], "one of the arguments --run RUN is required"),
    "plot run given twice": (["plot", "--run", "{run}", "{run}"], "not allowed with argument"),
    # --- sample
    "sample negative length": (["sample", "--run", "{run}", "--max-new-tokens", "-1"], "max_new_tokens must be"),
    "sample negative top-k": (["sample", "--run", "{run}", "--top-k", "-1"], "top_k must be positive"),
    "sample top-p 0": (["sample", "--run", "{run}", "--top-p", "0"], "top_p must be in (0, 1]"),
    "sample NaN temperature": (["sample", "--run", "{run}", "--temperature", "nan"], "temperature must be"),
    "sample infinite temperature": (["sample", "--run", "{run}", "--temperature", "inf"], "temperature must be"),
    "sample seed out of range": (["sample", "--run", "{run}", "--seed", str(2**70)], "seed must be between"),
    "sample length not a number": (["sample", "--run", "{run}", "--max-new-tokens", "many"], "invalid int value"),
    "sample unknown device": (["sample", "--run", "{run}", "--device", "tpu"], "unknown device 'tpu'"),
    "sample absent GPU": (["sample", "--run", "{run}", "--device", NO_GPU_HERE], "CUDA"),
    "sample prompt and prompt file": (["sample", "--run", "{run}", "--prompt", "A", "--prompt-file", "{corpus}"],
                                      "not both"),
    "sample non-UTF-8 prompt file": (["sample", "--run", "{run}", "--prompt-file", "{latin1}"],
                                     "cannot read --prompt-file"),
    "sample missing HF folder": (["sample", "--hf", "{missing}"], "model folder not found"),
    "sample two model sources": (["sample", "--run", "{run}", "--checkpoint", "{truncated_ckpt}"], "not allowed with"),
    "sample no model source": (["sample"], "one of the arguments --run RUN --checkpoint --hf is required"),
    # --- chat
    "chat no model source": (["chat"], "one of the arguments --run RUN --checkpoint --hf is required"),
    "chat top-p 0": (["chat", "--run", "{run}", "--top-p", "0"], "top_p must be in (0, 1]"),
    "chat missing run": (["chat", "{missing}"], "not found"),
    # --- eval
    "eval zero batch": (["eval", "--run", "{run}", "--data", "{corpus}", "--batch-size", "0"], "--batch-size must be"),
    "eval zero batches": (["eval", "--run", "{run}", "--data", "{corpus}", "--max-batches", "0"], "--max-batches"),
    "eval val fraction 0": (["eval", "--run", "{run}", "--data", "{corpus}", "--val-fraction", "0"], "--val-fraction"),
    "eval val fraction 1.5": (["eval", "--run", "{run}", "--data", "{corpus}", "--val-fraction", "1.5"],
                              "--val-fraction"),
    "eval unknown split": (["eval", "--run", "{run}", "--split", "test"], "invalid choice: 'test'"),
    "eval characters the model lacks": (["eval", "--run", "{run}", "--data", "{unknown_chars}"],
                                        "not in this char tokenizer's vocabulary"),
    "eval one-token text": (["eval", "--run", "{run}", "--data", "{one_char}", "--split", "all"], "needs at least"),
    "eval missing data": (["eval", "--run", "{run}", "--data", "{missing}"], "file not found"),
    "eval truncated checkpoint": (["eval", "--checkpoint", "{truncated_ckpt}", "--data", "{corpus}"],
                                  "truncated.pt"),
    # --- serve: all refused before anything binds (see the test)
    "serve negative port": (["serve", "--run", "{run}", "--port", "-1"], "--port must be between 1 and 65535"),
    "serve port above 65535": (["serve", "--run", "{run}", "--port", "70000"], "--port must be between"),
    "serve port 0": (["serve", "--run", "{run}", "--port", "0"], "--port must be between"),
    "serve host that does not exist": (["serve", "--run", "{run}", "--host", "256.1.1.1"], "is not an address"),
    "serve zero concurrency": (["serve", "--run", "{run}", "--concurrency", "0"], "concurrency must be a positive"),
    "serve negative queue": (["serve", "--run", "{run}", "--queue-size", "-3"], "queue_size must be a positive"),
    "serve zero token cap": (["serve", "--run", "{run}", "--max-new-tokens-cap", "0"], "max_new_tokens must be"),
    "serve unknown device": (["serve", "--run", "{run}", "--device", "tpu"], "unknown device 'tpu'"),
    "serve missing run": (["serve", "--run", "{missing}"], "not found"),
    "serve truncated checkpoint": (["serve", "--checkpoint", "{truncated_ckpt}"], "truncated.pt"),
    # --- export
    "export unknown format": (["export", "--run", "{run}", "--format", "gguf", "--out", "{out}"],
                              "invalid choice: 'gguf'"),
    "export into a non-empty folder": (["export", "--run", "{run}", "--format", "space", "--out", "{full_dir}"],
                                       "is not empty"),
    "export onto a file": (["export", "--run", "{run}", "--format", "hf", "--out", "{file}"], "is not a folder"),
    "export push to a name without a user": (["export", "--run", "{run}", "--format", "hf", "--out", "{out}",
                                              "--push-to-hub", "just-a-name"], "--push-to-hub takes USER/NAME"),
    "export missing run": (["export", "--run", "{missing}", "--format", "hf", "--out", "{out}"], "not found"),
    "export truncated checkpoint": (["export", "--checkpoint", "{truncated_ckpt}", "--format", "hf", "--out",
                                     "{out}"], "truncated.pt"),
    "export without --out": (["export", "--run", "{run}", "--format", "hf"], "required: --out"),
    # --- bench (tiny preset: a mistake must be found before anything is timed)
    "bench negative steps": (["bench", "--preset", "tiny", "--steps", "-1"], "must be zero or more"),
    "bench nothing to measure": (["bench", "--preset", "tiny", "--steps", "0", "--generate-tokens", "0"],
                                 "nothing to measure"),
    "bench zero batch": (["bench", "--preset", "tiny", "--batch-size", "0"], "batch_size must be a positive"),
    "bench heads do not divide width": (["bench", "--preset", "tiny", "--n-embd", "30", "--n-head", "4"],
                                        "divisible by n_head"),
    "bench unknown device": (["bench", "--preset", "tiny", "--device", "tpu"], "unknown device 'tpu'"),
}


def fill(argv: list[str], paths: dict[str, Path], out: Path) -> list[str]:
    return [arg.format(out=out, **paths) for arg in argv]



def assert_one_error_line(status: int, err: str, expected: str) -> None:
    assert "Traceback" not in err, err
    assert status == 2, f"exit status {status}, not 2; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"


def test_the_table_covers_every_subcommand() -> None:
    parser = build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command").choices
    covered = {argv[0] for argv, _ in CASES.values()}
    assert set(subcommands) <= covered, f"no bad-input cases for {sorted(set(subcommands) - covered)}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(case: str, paths: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a run without --out would go to ./runs
    argv, expected = CASES[case]
    out = tmp_path / "out"
    bound: list[tuple] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda *args, **kwargs: bound.append(args) or (None, "", None))
    run_before = snapshot(paths["run"])
    full_before = snapshot(paths["full_dir"])
    status, _, err = run_main(fill(argv, paths, out), capsys)
    assert_one_error_line(status, err, expected)
    assert not bound, "serve bound a port before refusing its input"
    assert not out.exists(), "a rejected command left its output behind"
    assert list(tmp_path.iterdir()) == [], "a rejected command wrote into the working directory"
    assert snapshot(paths["run"]) == run_before, "a rejected command changed the run it read"
    assert snapshot(paths["full_dir"]) == full_before


# Real processes: the same contract through the interpreter's own exit, for a few commands of each kind. They
# come from the warm server (tests/warm.py), torch already imported; test_train_cli starts fresh interpreters.
PROCESS_CASES = ["train half-UTF-8 corpus", "resume block size above the model's", "sample NaN temperature",
                 "serve port above 65535", "export into a non-empty folder"]


@pytest.mark.slow
def test_real_processes_exit_2_with_one_error_line(paths: dict[str, Path], tmp_path: Path,
                                                    warm: WarmStarter) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = {}
    for case in PROCESS_CASES:
        folder = tmp_path / case.replace(" ", "-").replace("'", "")
        folder.mkdir()
        argv, _ = CASES[case]
        processes[case] = warm.popen([sys.executable, "-m", "gptforge.cli", *fill(argv, paths, folder / "out")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=folder)
    for case, process in processes.items():
        try:
            _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        finally:
            process.kill()
        assert_one_error_line(process.returncode, err, CASES[case][1])
