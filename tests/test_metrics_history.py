"""metrics.jsonl read back as one history: older runs' 0-based steps moved on, records a resume undid left out."""

import json
from pathlib import Path

from gptforge.train.metrics_history import history, read_history, sessions_before


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def train(step: int, loss: float = 1.0) -> dict:
    return {"kind": "train", "step": step, "loss": loss}


def test_an_older_runs_records_are_moved_one_step_on_and_a_resume_replaces_what_it_redid() -> None:
    """An older gptforge logged indices 0-4 and an eval after its 5th step as 4; today's code resumed the run from
    its checkpoint at step 4, so the old index 4 (step 5) and its eval were redone: the new ones are kept."""
    older = [train(0), train(1), train(2), train(3), train(4, 9.0), {"kind": "eval", "step": 4, "val_loss": 9.0},
             {"kind": "event", "message": "no step"}]
    resumed = [{"kind": "session", "session": 2, "step": 4}, train(5), {"kind": "eval", "step": 5, "val_loss": 2.0},
               train(6)]
    kept = history(older + resumed)
    assert [r["step"] for r in kept if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r for r in kept if r["kind"] == "eval"] == [{"kind": "eval", "step": 5, "val_loss": 2.0}]
    assert {"kind": "event", "message": "no step"} in kept
    assert all(r.get("loss") != 9.0 for r in kept)


def test_todays_records_keep_their_steps_and_each_step_is_kept_once() -> None:
    first = [{"kind": "session", "session": 1, "step": 0}, train(1), train(2), train(3, 9.0)]
    second = [{"kind": "session", "session": 2, "step": 2}, train(3), train(4)]
    third = [{"kind": "session", "session": 3, "step": 4}, train(5)]
    kept = history(first + second + third)
    assert [(r["step"], r["loss"]) for r in kept if r["kind"] == "train"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0),
                                                                              (5, 1.0)]
    assert [r["session"] for r in kept if r["kind"] == "session"] == [1, 2, 3]


def test_sessions_are_counted_from_their_records_and_an_older_run_counts_as_one(tmp_path: Path) -> None:
    assert sessions_before(tmp_path / "missing.jsonl") == 0
    today = [{"kind": "session", "session": 1, "step": 0}, train(1), {"kind": "session", "session": 2, "step": 1}]
    assert sessions_before(write(tmp_path / "today.jsonl", today)) == 2
    assert sessions_before(write(tmp_path / "older.jsonl", [train(0), *today[1:]])) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"kind": "tra\n' + json.dumps(today[0]) + "\n", encoding="utf-8")  # a cut first line
    assert sessions_before(broken) == 1
    assert read_history(broken) == [today[0]]
