"""`gptforge train` and friends from the outside: flags, errors, run files, kill -9, SIGTERM/SIGINT.

Runs are a one-layer char model on a 20k-character slice of tiny Shakespeare, on the CPU. Subprocesses
get the test's GPTFORGE_DATA_DIR / GPTFORGE_CACHE_DIR through the environment.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import read_log, reap
from gptforge.checkpoint import load_checkpoint
from gptforge.cli import main
from gptforge.config import padded_vocab_size
from warm import WarmProcess, WarmStarter

CORPUS_CHARS = 20_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBPROCESS_TIMEOUT_S = 180


def write_corpus(folder: Path, data_dir: Path) -> Path:
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS]
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path, data_dir: Path) -> Path:
    return write_corpus(tmp_path, data_dir)


@pytest.fixture(autouse=True)
def run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without --out goes to ./runs; keep any such run out of the checkout."""
    monkeypatch.chdir(tmp_path)


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """`gptforge train` for a tiny model; later flags in `extra` win over these."""
    return ["train", "--preset", "tiny", "--data", str(corpus), "--tokenizer", "char", "--device", "cpu",
            "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
            "--log-interval", "1", "--eval-interval", "0", "--eval-batches", "2", "--sample-tokens", "4",
            "--no-progress", "--out", str(out), *extra]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`gptforge ARGV` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: --help and usage errors
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gptforge.cli", *args]


def read_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    """metrics.jsonl records; a line being written right now (cut off) is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def latest_step(run_dir: Path) -> int:
    return max((r["step"] for r in read_records(run_dir, "train")), default=0)


def assert_one_error_line(status: int, err: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not different, f"tensors differ: {different}"


# --- subprocesses ----------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This process's environment (GPTFORGE_* included) with this process's torch thread count (float32 sums
    on the CPU depend on how many threads split them, and some results here are compared bit for bit), and
    Python's default buffered stdout, as a user's shell gives it (PYTHONUNBUFFERED would change that)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def start_training(warm: WarmStarter, argv: list[str], log_dir: Path) -> tuple[WarmProcess, Path, Path]:
    """`gptforge ARGV` in a warm-started process, its output in files (a pipe nobody reads would block it)."""
    stdout_path, stderr_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = warm.popen(cli(*argv), stdout=stdout, stderr=stderr, env=child_env())
    return process, stdout_path, stderr_path


def wait_until(condition: Callable[[], bool], process: WarmProcess, what: str, stderr_path: Path,
               timeout_s: float = SUBPROCESS_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"gptforge exited with {process.returncode} before {what}:\n"
                        f"{stderr_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def test_kill_9_between_saves_then_resume_matches_an_uninterrupted_run(
        tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], warm: WarmStarter) -> None:
    run_dir = tmp_path / "killed"
    # a constant schedule after warmup, so max_steps (changed on resume) does not change any learning rate;
    # dropout and the random sampler make the result depend on the restored RNG and sampler position
    settings = ["--schedule", "constant", "--warmup-steps", "3", "--checkpoint-interval", "2", "--dropout", "0.1",
                "--sampler", "random"]
    process, _, stderr_path = start_training(warm, train_args(corpus, run_dir, *settings, "--max-steps", "1000000"),
                                             tmp_path)
    try:
        last = run_dir / "checkpoints" / "last.pt"
        wait_until(lambda: last.is_file() and latest_step(run_dir) >= 5, process, "step 5 and a checkpoint",
                   stderr_path)
    finally:
        process.kill()  # SIGKILL: no handler runs, nothing is flushed or saved
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL

    saved_step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert saved_step >= 2 and saved_step % 2 == 0
    # past every step the killed session logged: it may have run ahead of a save still being written
    total_steps = max(saved_step + 3, latest_step(run_dir))
    status, out, err = run_main(["train", "--resume", str(run_dir), "--max-steps", str(total_steps)], capsys)
    assert status == 0, err
    assert f"from last.pt at step {saved_step}" in out

    reference_dir = tmp_path / "reference"
    status, _, err = run_main(train_args(corpus, reference_dir, *settings, "--max-steps", str(total_steps)), capsys)
    assert status == 0, err

    reference = {r["step"]: r["loss"] for r in read_records(reference_dir, "train")}
    assert sorted(reference) == list(range(1, total_steps + 1))  # "step N": N steps done
    interrupted = read_records(run_dir, "train")
    assert {r["step"] for r in interrupted} == set(reference)
    # every step, whether from the killed session, redone after the kill or new, has the reference's loss
    assert [(r["step"], r["loss"]) for r in interrupted] == [(r["step"], reference[r["step"]]) for r in interrupted]
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert final["step"] == total_steps
    assert_same_tensors(final["model"], model_tensors(reference_dir / "checkpoints" / "last.pt"))


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143),
                                                pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_and_exits_128_plus_signal(tmp_path: Path, corpus: Path, signum: int,
                                                                   status: int, warm: WarmStarter) -> None:
    run_dir = tmp_path / "run"
    process, stdout_path, stderr_path = start_training(
        warm,         train_args(corpus, run_dir, "--max-steps", "1000000", "--checkpoint-interval", "1000"), tmp_path)
    try:
        wait_until(lambda: latest_step(run_dir) >= 3, process, "step 3", stderr_path)
        process.send_signal(signum)
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        reap(process)
    stdout, stderr = stdout_path.read_text(errors="replace"), stderr_path.read_text(errors="replace")
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in stdout
    last = run_dir / "checkpoints" / "last.pt"
    assert str(last) in stdout  # it says where it saved
    state = load_checkpoint(last)
    records = read_records(run_dir, "train")
    assert 4 <= state["step"] < 1000  # saved by the signal, not by checkpoint_interval
    assert state["step"] == records[-1]["step"]  # the last logged step is the saved one
    assert f"stopped by {name} after {state['step']} steps" in stdout
    assert state["tokens_seen"] == records[-1]["tokens_seen"]
    assert f"stopped: stopped by {name}" in (run_dir / "summary.txt").read_text(encoding="utf-8")


def stdout_is_blocked(pid: int, run_dir: Path, seen: dict[str, float]) -> bool:
    """Whether training has stopped making progress because its stdout pipe is full."""
    count, now = len(read_records(run_dir)), time.monotonic()
    if count != seen.get("count"):
        seen.update(count=count, since=now)
        return False
    stalled_s = now - seen["since"]
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()  # Linux: where the process sleeps in the kernel
    except OSError:
        wchan = ""
    if wchan not in ("", "0"):
        return "pipe_write" in wchan and stalled_s > 0.2
    return stalled_s > 1.0


@pytest.mark.slow
def test_signal_while_blocked_writing_to_a_full_stdout_pipe_still_saves_and_exits_143(
        tmp_path: Path, corpus: Path, warm: WarmStarter) -> None:
    """`gptforge train | tee log` (or a job runner's pipe) that is momentarily not read, then SIGTERM."""
    run_dir = tmp_path / "run"
    read_end, write_end = os.pipe()
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # full after a few dozen log lines
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = warm.popen(
            cli(*train_args(corpus, run_dir, "--max-steps", "1000000", "--checkpoint-interval", "1000")),
            stdout=write_end, stderr=stderr, env=child_env())
    os.close(write_end)
    os.set_blocking(read_end, False)
    output = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                return
            if not chunk:
                return
            output.extend(chunk)

    try:
        # read its output until training runs (signal handlers installed), then stop reading
        wait_until(lambda: drain() or latest_step(run_dir) >= 3, process, "step 3", stderr_path)
        seen: dict[str, float] = {}
        wait_until(lambda: stdout_is_blocked(process.pid, run_dir, seen), process, "a full stdout pipe",
                   stderr_path)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            drain()
            time.sleep(0.02)
        drain()
    finally:
        reap(process)
        os.close(read_end)
    stderr = stderr_path.read_text(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert process.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in output.decode(errors="replace")
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == read_records(run_dir, "train")[-1]["step"]


# --- a finished run, configured by a TOML file and flags -------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(folder, data_dir)
    toml = folder / "run.toml"
    toml.write_text(f"""
preset = "tiny"

[model]
n_layer = 1
n_embd = 32
n_head = 2
block_size = 16

[train]
data = {json.dumps(str(corpus))}
tokenizer = "char"
device = "cpu"
batch_size = 2
tokens_per_step = 64
max_steps = 6
learning_rate = 0.002
seed = 7
log_interval = 1
eval_interval = 3
eval_batches = 2
checkpoint_interval = 2
keep_checkpoints = 2
sample_tokens = 4
""", encoding="utf-8")
    run_dir = folder / "run"
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse fixtures are not active yet
        patch.setenv("GPTFORGE_DATA_DIR", str(data_dir))
        patch.setenv("GPTFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.chdir(folder)
        status = main(["train", "--config", str(toml), "--learning-rate", "0.003", "--seed", "11",
                       "--no-progress", "--out", str(run_dir)])
    assert status == 0
    return run_dir


def test_toml_sets_values_and_flags_override_them(finished_run: Path) -> None:
    config = json.loads((finished_run / "config.json").read_text(encoding="utf-8"))
    assert config["preset"] == "tiny"
    model, train = config["model"], config["train"]
    assert (model["n_layer"], model["n_embd"], model["n_head"], model["block_size"]) == (1, 32, 2, 16)  # file
    assert (train["batch_size"], train["max_steps"], train["eval_interval"]) == (2, 6, 3)  # file
    assert train["learning_rate"] == 0.003  # flag over file (0.002)
    assert train["seed"] == 11  # flag over the preset's default
    assert train["keep_checkpoints"] == 2


def test_config_json_is_fully_resolved(finished_run: Path) -> None:
    config = json.loads((finished_run / "config.json").read_text(encoding="utf-8"))
    text = (finished_run.parent / "corpus.txt").read_text(encoding="utf-8")
    assert config["model"]["vocab_size"] == padded_vocab_size(len(set(text)), 64)  # from the char tokenizer
    assert config["train"]["grad_accum"] == 2  # 64 tokens per step / (batch 2 x block 16)
    assert config["train"]["out"] == str(finished_run)
    assert load_checkpoint(finished_run / "checkpoints" / "last.pt")["config"] == config


def test_finished_run_has_metrics_log_summary_and_curves(finished_run: Path) -> None:
    train_steps = [r["step"] for r in read_records(finished_run, "train")]
    assert train_steps == list(range(1, 7))
    assert [r["step"] for r in read_records(finished_run, "eval")] == [3, 6]
    log = (finished_run / "train.log").read_text(encoding="utf-8")
    assert "step 1 | epoch" in log and "step 6 | epoch" in log
    summary = (finished_run / "summary.txt").read_text(encoding="utf-8")
    assert "stopped: reached max_steps 6" in summary
    assert "steps: 6\n" in summary
    best = min(read_records(finished_run, "eval"), key=lambda r: r["val_loss"])
    last_train = read_records(finished_run, "train")[-1]
    assert f"tokens seen: {6 * 64:,}" in summary
    assert f"final training loss: {last_train['loss']:.4f}" in summary
    assert f"best loss (val): {best['val_loss']:.4f} at step {best['step']}\n" in summary
    assert re.search(r"^training time, all sessions: \d+\.\ds \(without the first step of each\)$", summary, re.M)
    assert re.search(r"^first step of each session: \d+\.\ds \(compilation and warm-up\)$", summary, re.M)
    assert re.search(r"^wall time, this session: \d+\.\ds$", summary, re.M)
    assert str(finished_run / "checkpoints" / "best.pt") in summary
    assert (finished_run / "curves.png").read_bytes().startswith(PNG_MAGIC)
    assert (finished_run / "tokenizer.json").is_file()


def test_the_log_opens_with_the_setup_and_ends_with_a_sample(finished_run: Path) -> None:
    log = read_log(finished_run)
    text = (finished_run.parent / "corpus.txt").read_text(encoding="utf-8")
    start = log.split("step 1 | epoch")[0]
    assert "device cpu | dtype float32 | compile False | processes 1" in start
    assert "Total parameters:" in start and "transformer.h.0" in start  # the parameter table
    assert f"{len(text):,} tokens:" in start  # the whole corpus, then the train / val split
    assert "tokens per step: 64 = batch 2 x block 16 x accumulation 2 x processes 1" in start
    assert "micro-batches per epoch" in start
    sample = re.search(r"--- sample ---\n(.*)\n---", log, re.DOTALL)
    assert sample is not None and sample.group(1), "no sample at the end of the run"
    assert set(sample.group(1)) <= set(text)  # a char model writes the corpus's characters


def test_best_checkpoint_holds_the_step_with_the_lowest_val_loss(finished_run: Path) -> None:
    evals = read_records(finished_run, "eval")
    best = min(evals, key=lambda r: r["val_loss"])
    state = load_checkpoint(finished_run / "checkpoints" / "best.pt")
    assert state["step"] == best["step"]  # saved after that step's update
    assert state["best_loss"] == pytest.approx(best["val_loss"])


def test_keep_checkpoints_leaves_the_two_newest_step_files(finished_run: Path) -> None:
    checkpoints = finished_run / "checkpoints"
    # saved after steps 2, 4 and 6 (checkpoint_interval) and at improved evals (3 and 6): newest two are 4 and 6
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-4.pt", "step-6.pt"]
    assert load_checkpoint(checkpoints / "step-4.pt")["step"] == 4
    assert load_checkpoint(checkpoints / "step-6.pt")["step"] == 6
    assert load_checkpoint(checkpoints / "last.pt")["step"] == 6


def test_out_dir_with_checkpoints_is_refused_and_left_alone(
        tmp_path: Path, finished_run: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "existing"
    shutil.copytree(finished_run, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    status, _, err = run_main(train_args(corpus, run_dir, "--max-steps", "2"), capsys)
    assert_one_error_line(status, err)
    assert "--resume" in err
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


# --- bad input: one line on stderr, status 2, nothing created ------------------------------------------------


BAD_TRAIN_INPUTS = {
    "unknown flag": (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    "zero batch size": (["--batch-size", "0"], "batch_size must be a positive integer"),
    "non-integer batch size": (["--batch-size", "abc"], "batch_size must be an int"),
    "heads do not divide width": (["--n-embd", "30", "--n-head", "4"], "divisible by n_head"),
    "unknown preset": (["--preset", "gpt5"], "invalid choice: 'gpt5'"),
    "unknown device": (["--device", "tpu"], "unknown device 'tpu'"),
    "missing data file": (["--data", "/no/such/file.txt"], "file not found"),
    "empty data file": (["--data", "{empty}"], "is empty"),
    "broken TOML": (["--config", "{bad_toml}"], "cannot parse config file"),
    # a CUDA device this machine does not have: cuda:0 without a GPU, cuda:N with N GPUs
    "absent CUDA device": (["--device", f"cuda:{torch.cuda.device_count()}"], "CUDA"),
    "negative seed with the random sampler": (["--sampler", "random", "--seed", "-1"], "seed must be between 0 and"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_INPUTS))
def test_bad_train_input_is_one_error_line(case: str, tmp_path: Path, corpus: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    empty, bad_toml = tmp_path / "empty.txt", tmp_path / "bad.toml"
    empty.write_text("", encoding="utf-8")
    bad_toml.write_text("[train\nbatch_size = = 4\n", encoding="utf-8")
    flags, message = BAD_TRAIN_INPUTS[case]
    flags = [flag.format(empty=empty, bad_toml=bad_toml) for flag in flags]
    run_dir = tmp_path / "run"
    status, _, err = run_main(train_args(corpus, run_dir, "--max-steps", "2", *flags), capsys)
    assert_one_error_line(status, err)
    assert message in err
    assert not run_dir.exists(), "a rejected command must not create its run directory"


def test_resume_of_a_missing_run_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["train", "--resume", str(tmp_path / "no-such-run")], capsys)
    assert_one_error_line(status, err)
    assert "no-such-run" in err and "not found" in err


def test_resume_with_a_preset_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(["train", "--resume", str(tmp_path), "--preset", "tiny"], capsys)
    assert_one_error_line(status, err)
    assert "--preset" in err


def test_real_process_errors_exit_2_without_traceback(tmp_path: Path, corpus: Path) -> None:
    for flags, message in ((["--no-such-flag"], "unrecognized arguments"),
                           (["--n-embd", "30", "--n-head", "4"], "divisible by n_head")):
        result = subprocess.run(cli(*train_args(corpus, tmp_path / "run", *flags)), capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT_S, env=child_env())
        assert result.returncode == 2, result.stderr
        assert_one_error_line(result.returncode, result.stderr)
        assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_help_lists_the_main_flags() -> None:
    result = subprocess.run(cli("train", "--help"), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    for flag in ("--max-steps", "--batch-size", "--n-embd", "--n-head", "--seed", "--device", "--resume",
                 "--target-loss", "--preset", "--config"):
        assert flag in result.stdout, flag


# --- other subcommands and options --------------------------------------------------------------------------


def test_summary_counts_gpt2_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["summary", "--preset", "gpt2"], capsys)
    assert status == 0
    assert "Total parameters: 124,475,904" in out  # vocabulary padded to 50,304
    status, out, _ = run_main(["summary", "--preset", "gpt2", "--vocab-size", "50257"], capsys)
    assert status == 0
    assert "Total parameters: 124,439,808" in out


def test_prepare_counts_shakespeare_gpt2_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(["prepare", "--data", "shakespeare", "--tokenizer", "gpt2"], capsys)
    assert status == 0, err
    assert "338,025 tokens" in out


def test_compressed_checkpoints_are_written_and_resume(tmp_path: Path, corpus: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    status, _, err = run_main(train_args(corpus, run_dir, "--max-steps", "3", "--checkpoint-interval", "2",
                                         "--compress-checkpoints"), capsys)
    assert status == 0, err
    checkpoints = run_dir / "checkpoints"
    assert not (checkpoints / "last.pt").exists()
    assert (checkpoints / "last.pt.gz").read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(checkpoints / "last.pt.gz") as file:
        assert file.read(2) == b"PK"  # a torch zip archive inside
    assert load_checkpoint(checkpoints / "last.pt.gz")["step"] == 3

    status, out, err = run_main(["train", "--resume", str(run_dir), "--max-steps", "5"], capsys)
    assert status == 0, err
    assert "from last.pt.gz at step 3" in out
    assert not (checkpoints / "last.pt").exists()
    assert load_checkpoint(checkpoints / "last.pt.gz")["step"] == 5
    assert [r["step"] for r in read_records(run_dir, "train")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("config_file", [None, "max_steps = 2\n", 'preset = "tiny"\n'], ids=["flags", "toml", "named"])
def test_no_preset_picks_the_recipe_for_this_machine(config_file: str | None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Neither --preset nor a `preset` key in --config: the machine's recipe, and the command says so."""
    expected = "shakespeare-gpt2" if torch.cuda.is_available() else "shakespeare-char-cpu"
    run_dir = tmp_path / "run"
    toml = []
    if config_file is not None:
        (tmp_path / "settings.toml").write_text(config_file, encoding="utf-8")
        toml = ["--config", str(tmp_path / "settings.toml")]
    status, out, err = run_main(["train", *toml, "--max-steps", "2", "--n-layer", "1", "--n-embd", "32", "--n-head",
                                 "2", "--block-size", "16", "--eval-batches", "2", "--sample-tokens", "8",
                                 "--no-compile", "--out", str(run_dir)], capsys)
    assert status == 0, err
    if config_file == 'preset = "tiny"\n':
        assert "no --preset given" not in out
        expected = "tiny"
    else:
        assert f"no --preset given: using {expected}" in out
    assert json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["preset"] == expected
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
