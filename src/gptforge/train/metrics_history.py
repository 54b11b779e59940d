"""A run's metrics.jsonl read back as one history, each step once, in today's step numbering.

"step N" means N optimizer steps done: the eval after the 500th update is step 500, as in the summary's
`steps: 500` and in the checkpoint saved then. Each session starts with a record
`{"kind": "session", "session": K, "step": S}`, S the step it starts from.

Two things make the raw file differ from the history:
- runs from before the numbering (no session record) logged the 0-based index of the step just taken;
  their records before the first session record are moved one step on;
- a resumed session starts again from its checkpoint's step S, so records of earlier sessions past S
  (written after that checkpoint and then lost in a crash or a kill) describe steps that were redone or
  undone: they are left out, so a resumed run draws every eval once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptforge.fileio import parse_json

SESSION = "session"


def read_metrics(path: Path) -> list[dict]:
    """Every JSON object in a metrics.jsonl, as written; a missing file gives none.

    Lines that do not parse are skipped: the last one may have been cut off by a crash mid-write,
    and the rest of the run's history is still worth plotting.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", errors="replace") as file:
        return [record for line in file for record in _parsed(line)]


def _parsed(line: str) -> list[dict]:
    """The JSON object on a line, or none for a line that is not one."""
    try:
        record = parse_json(line)
    except ValueError:  # cut off, or hostile (nested too deeply, a huge integer)
        return []
    return [record] if isinstance(record, dict) else []


def _step(record: dict) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def history(records: list[dict]) -> list[dict]:
    """The records in today's numbering, without those a later session's resume undid (module docstring)."""
    kept: list[dict[str, Any]] = []
    numbered = False  # whether a session record was seen: the records after it count steps done
    for record in records:
        step = _step(record)
        if record.get("kind") == SESSION:
            numbered = True
            if step is not None:
                kept = [r for r in kept if (_step(r) is None or _step(r) <= step)]
        elif step is not None and not numbered:
            record = {**record, "step": step + 1}
        kept.append(record)
    return kept


def read_history(path: Path) -> list[dict]:
    return history(read_metrics(path))


def sessions_before(path: Path) -> int:
    """How many sessions wrote a metrics.jsonl: one per session record, and one for an older gptforge's records
    before the first (it wrote none, so its resumes cannot be told apart). Only lines that can be session
    records are parsed: a long run's file holds millions of others."""
    records = []
    path = Path(path)
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                if not records or f'"{SESSION}"' in line:
                    records.extend(_parsed(line))
    sessions = sum(record.get("kind") == SESSION for record in records)
    if records and records[0].get("kind") != SESSION:
        sessions += 1
    return sessions
