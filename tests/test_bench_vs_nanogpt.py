"""benchmarks/bench_vs_nanogpt.py runs both steps on one shape and reports a ratio that follows from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_vs_nanogpt.py"
NANOGPT = REPO.parent / "shared" / "peers" / "nanoGPT"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


@pytest.mark.skipif(not (NANOGPT / "model.py").is_file(), reason=f"nanoGPT's model.py is not at {NANOGPT}")
def test_both_steps_run_on_the_same_shape_and_the_ratio_follows(tmp_path: Path):
    out = tmp_path / "result.json"
    done = run_script("--nanogpt-dir", str(NANOGPT), "--device", "cpu", "--preset", "tiny", "--batch-size", "2",
                      "--steps", "2", "--warmup", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert (result["batch_size"], result["block_size"], result["device"]) == (2, 32, "cpu")
    tokens = 2 * 32
    assert result["gptforge_tokens_per_s"] == pytest.approx(tokens / result["gptforge_ms"] * 1000)
    assert result["nanogpt_tokens_per_s"] == pytest.approx(tokens / result["nanogpt_ms"] * 1000)
    assert result["speedup"] == pytest.approx(result["nanogpt_ms"] / result["gptforge_ms"])
    assert "speedup" in done.stdout and "nanoGPT" in done.stdout


def test_a_missing_nanogpt_folder_is_one_error_line(tmp_path: Path):
    done = run_script("--nanogpt-dir", str(tmp_path), "--device", "cpu", "--preset", "tiny", "--steps", "1")
    assert done.returncode != 0
    assert done.stderr.strip() == f"error: no nanoGPT model.py in {tmp_path} (pass --nanogpt-dir)"
