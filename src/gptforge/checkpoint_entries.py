"""What a gptforge checkpoint holds, entry by entry, checked before anything is restored from it.

A file in gptforge's format whose entries are missing or of the wrong type (hand-edited, written by a buggy
tool, or hostile) is refused as a damaged checkpoint, so resume falls back to the next good one and sample,
eval and export say in one line what is wrong, instead of a KeyError or TypeError from deep in a restore.
Every entry present is checked; which must be present depends on the caller: a resume needs RESUME_ENTRIES,
sample, eval and export need USE_ENTRIES (older checkpoints lack `startup_s`, `pass_loss`, `world_size`,
`best_loss_split` and `best_step`: they are never required).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch

from gptforge.config import RunConfig, json_name
from gptforge.errors import UserError

Check = Callable[[Any], bool]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(key, str) for key in value)


def _tensors(value: Any) -> bool:
    return _table(value) and bool(value) and all(isinstance(tensor, torch.Tensor) for tensor in value.values())


def _optimizer(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("state"), dict)
            and isinstance(value.get("param_groups"), list)
            and all(isinstance(group, dict) and isinstance(group.get("params"), list)
                    for group in value["param_groups"]))


def _sampler(value: Any) -> bool:
    return _table(value) and all(_whole(number) for number in value.values())


def _milestone(value: Any) -> bool:
    return value is None or (_table(value) and set(value) == {"step", "loss", "training_s", "tokens", "epoch"}
                             and all(_number(number) for number in value.values()))


def _pass_loss(value: Any) -> bool:
    return (_table(value) and isinstance(value.get("losses"), list) and all(map(_number, value["losses"]))
            and _number(value.get("best_mean")) and "target" in value
            and _milestone(value.get("first_batch_below")) and _milestone(value.get("reached")))


def _rng(value: Any) -> bool:
    if not _table(value):
        return False
    python, numpy = value.get("python", [0, [], None]), value.get("numpy", [torch.zeros(1), 0, 0, 0.0])
    cuda = value.get("cuda", [])
    return (isinstance(value.get("torch", torch.zeros(1)), torch.Tensor)
            and isinstance(cuda, list) and all(isinstance(state, torch.Tensor) for state in cuda)
            and isinstance(python, (list, tuple)) and len(python) == 3 and isinstance(python[1], (list, tuple))
            and isinstance(numpy, (list, tuple)) and len(numpy) == 4 and isinstance(numpy[0], torch.Tensor))


def _tokenizer(value: Any) -> bool:
    name = value.get("name") if isinstance(value, dict) else None
    return name == "gpt2" or (name == "char" and isinstance(value.get("chars"), str))


# name: (check, what it should be)
ENTRIES: dict[str, tuple[Check, str]] = {
    "model": (_tensors, "a non-empty table of tensors"),
    "config": (_table, "a table of settings"),
    "tokenizer": (_tokenizer, "a gpt2 or char tokenizer description"),
    "optimizer": (_optimizer, "an optimizer state (state and param_groups)"),
    "scaler": (_table, "a table"),
    "step": (_whole, "a whole number"),
    "tokens_seen": (_whole, "a whole number"),
    "elapsed_s": (_number, "a number"),
    "best_loss": (_number, "a number"),
    "last_loss": (_number, "a number"),
    "sampler": (_sampler, "a table of whole numbers"),
    "rng": (_rng, "the random generators' states"),
    "startup_s": (_number, "a number"),
    "pass_loss": (_pass_loss, "the pass-loss rule's state"),
    "world_size": (lambda value: _whole(value) and value >= 1, "a positive whole number"),
    "best_loss_split": (lambda value: value in ("train", "val"), "train or val"),
    "best_step": (lambda value: value is None or _whole(value), "a whole number or null"),
}


USE_ENTRIES = ("model", "config", "tokenizer")
RESUME_ENTRIES = (*USE_ENTRIES, "optimizer", "scaler", "step", "tokens_seen", "elapsed_s", "best_loss", "last_loss",
                  "sampler", "rng")


def entry_problem(state: dict[str, Any], required: Collection[str] = ()) -> str | None:
    """Why `state` (a dict in gptforge's format) cannot be used, or None when each of `required` is there and
    every entry present is what it should be; the reason names the entry."""
    missing = [name for name in required if name not in state]
    if missing:
        return f"its {missing[0]!r} entry is missing"
    for name, (check, wanted) in ENTRIES.items():
        if name in state and not check(state[name]):
            return f"its {name!r} entry is {json_name(state[name])}, not {wanted}"
    if "config" in state:
        try:
            RunConfig.from_dict(state["config"])
        except UserError as exc:
            return f"its 'config' entry is not a run's config ({exc})"
    return None
