"""Runs written by an older gptforge still resume, sample and evaluate: the run folder, config keys and
checkpoint format are a contract (fixtures/README.md says how the old run was made)."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_main
from gptforge.train.metrics_history import read_history, read_metrics

FIXTURES = Path(__file__).parent / "fixtures"
OLD_RUN = FIXTURES / "run-28d40e9"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old-run"
    shutil.copytree(OLD_RUN, run)
    return run


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def test_a_run_from_commit_28d40e9_resumes_to_the_same_losses(old_run: Path, data_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Steps 4-5 after resuming the old step-4 checkpoint equal those of the old code's uninterrupted run:
    weights, optimizer, sampler position and RNG all came back."""
    status, out, err = run_main(["train", "--resume", str(old_run), "--max-steps", "6", "--no-progress",
                                 "--data", str(data_dir / "tinyshakespeare.txt")], capsys)
    assert status == 0, err
    assert "from last.pt at step 4" in out
    expected = [json.loads(line) for line in
                (FIXTURES / "run-28d40e9-continued-metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    resumed = records(old_run, "train") + records(old_run, "eval")
    for kind in ("train", "eval"):
        old = [record for record in expected if record["kind"] == kind]
        new = [record for record in resumed if record["kind"] == kind]
        assert [r["step"] for r in new] == [r["step"] + 1 for r in old]  # the old code numbered steps from 0
        key = "loss" if kind == "train" else "val_loss"
        assert [r[key] for r in new] == pytest.approx([r[key] for r in old], rel=1e-6)


def test_an_old_runs_metrics_read_back_in_todays_numbering_each_step_once(
        old_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As if the old session had logged steps 5 and 6 (its indices 4 and 5) and lost their checkpoint: the
    resume from step 4 redoes them, and the history (and the plot) holds each step once, the redone ones."""
    old_records = (FIXTURES / "run-28d40e9-continued-metrics.jsonl").read_text(encoding="utf-8")
    (old_run / "metrics.jsonl").write_text(old_records, encoding="utf-8")
    status, _, err = run_main(["train", "--resume", str(old_run), "--max-steps", "6", "--no-progress",
                               "--data", str(data_dir / "tinyshakespeare.txt")], capsys)
    assert status == 0, err
    raw = read_metrics(old_run / "metrics.jsonl")
    assert [r["step"] for r in raw if r["kind"] == "eval"] == [5, 6]  # the old index 5 and today's step 6
    kept = read_history(old_run / "metrics.jsonl")
    assert [r["step"] for r in kept if r["kind"] == "train"] == [5, 6]
    assert [r["step"] for r in kept if r["kind"] == "eval"] == [6]
    assert [r for r in kept if r["kind"] == "session"] == [r for r in raw if r["kind"] == "session"]
    assert [r["session"] for r in kept if r["kind"] == "session"] == [2]
    redone = [r for r in raw if r["kind"] == "train"][2:]
    assert [r for r in kept if r["kind"] == "train"] == redone
    assert "--- resumed at step 4 (session 2) ---" in (old_run / "train.log").read_text(encoding="utf-8")


def test_a_run_from_commit_28d40e9_samples_and_evaluates(old_run: Path, data_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(["sample", "--run", str(old_run), "--max-new-tokens", "12", "--seed", "1",
                                 "--device", "cpu"], capsys)
    assert status == 0 and len(out.strip()) >= 1, err
    status, out, err = run_main(["eval", "--run", str(old_run), "--device", "cpu", "--max-batches", "2",
                                 "--data", str(data_dir / "tinyshakespeare.txt")], capsys)
    assert status == 0 and "perplexity" in out, err
