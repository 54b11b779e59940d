"""`gptforge sample` and `gptforge eval` on a tiny model trained once for this module."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_main
from gptforge.cli import main
from gptforge.use.evaluate import evaluate_text
from gptforge.use.load import load_trained
from warm import WarmStarter


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path) -> Path:
    return tiny_run

def run_cli(warm: WarmStarter, *args: str) -> subprocess.CompletedProcess:
    return warm.run([sys.executable, "-m", "gptforge.cli", *args], capture_output=True, text=True, timeout=120)


def test_sample_streams_a_continuation(run_dir, warm) -> None:
    args = ["sample", "--run", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]
    result = run_cli(warm, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout.rstrip("\n")) > len("ROMEO:") + 20
    again = run_cli(warm, *args)
    assert again.stdout == result.stdout  # --seed repeats


def test_sample_several_from_a_checkpoint_and_prompt_file(run_dir, tmp_path, capsys) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("KING:", encoding="utf-8")
    code = main(["sample", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--prompt-file", str(prompt),
                 "--num-samples", "3", "--max-new-tokens", "10", "--temperature", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("--- sample") == 3
    assert out.count("KING:") == 3
    samples = [part.split("\n", 1)[1] for part in out.split("--- sample")[1:]]
    assert len(set(samples)) == 1  # greedy: all three the same


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", "日本"], "not in this char tokenizer's vocabulary"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "2"], "top_p"),
    (["--num-samples", "0"], "num-samples"),
    (["--prompt-file", "/no/such/prompt.txt"], "prompt-file"),
])
def test_sample_bad_input_is_one_error_line(run_dir, args, message, warm) -> None:
    result = run_cli(warm, "sample", "--run", str(run_dir), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_sample_needs_a_model_source(run_dir, tmp_path, capsys) -> None:
    for args in ([], ["--run", str(tmp_path / "nothing")], ["--checkpoint", str(tmp_path / "none.pt")]):
        status, _, err = run_main(["sample", *args], capsys)  # in this process: the same main, no start-up
        assert status == 2, args
        assert err.startswith("error:") and err.count("\n") == 1


def test_eval_matches_a_direct_computation(run_dir, tmp_path) -> None:
    text = "ROMEO:\nWhat light through yonder window breaks?\n" * 5
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8")
    trained = load_trained(run=run_dir, device="cpu")
    result = evaluate_text(trained, str(path), split="all", batch_size=2, progress=False)
    ids = torch.tensor(trained.tokenizer.encode(text))
    block = trained.config.model.block_size
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            window = ids[start : start + block + 1]
            logits, _ = trained.model(window[None, :-1])
            real = logits[0, :, : trained.tokenizer.vocab_size]  # padded vocabulary rows are not tokens
            total += torch.nn.functional.cross_entropy(real, window[1:], reduction="sum").item()
            count += len(window) - 1
    assert result.tokens == len(ids) - 1 == count
    assert result.loss == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_eval_cli_reports_loss_and_perplexity(run_dir, capsys, warm) -> None:
    result = run_cli(warm, "eval", "--run", str(run_dir), "--data", "shakespeare", "--max-batches", "2")
    assert result.returncode == 0, result.stderr
    assert "loss" in result.stdout and "perplexity" in result.stdout
    status, _, err = run_main(["eval", "--run", str(run_dir), "--data", "/no/such/file.txt"], capsys)
    assert status == 2 and err.startswith("error:") and err.count("\n") == 1
