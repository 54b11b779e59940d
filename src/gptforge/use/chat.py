"""`gptforge chat`: a prompt loop that keeps the model loaded and streams each continuation.

Loading a model and starting Python cost seconds that `gptforge sample` pays on every prompt; here
they are paid once. The models are base models, not chat models: each line is continued on its own,
with no memory of the lines before. A line that starts with "/" is a command that changes the
sampling settings. Ctrl-C stops a continuation and returns to the prompt; Ctrl-C at the prompt, end
of input (Ctrl-D) or /quit leave.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TextIO

from gptforge.errors import UserError
from gptforge.generate import SamplingSettings, stream_text
from gptforge.trained_model import TrainedModel

HELP = """commands: /temp T (0 is greedy), /topk K (0 or off), /topp P (or off), /max N (new tokens),
/seed N (or off: a new draw each time), /settings, /help, /quit; any other line is a prompt to continue"""


def _or_off(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """A value that "off" (or "none") turns off."""
    return lambda text: None if text.lower() in ("off", "none") else kind(text)


# command -> (setting, parser of its value)
COMMANDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "/temp": ("temperature", float),
    "/topk": ("top_k", _or_off(int)),
    "/topp": ("top_p", _or_off(float)),
    "/max": ("max_new_tokens", int),
    "/seed": ("seed", _or_off(int)),
}
QUIT = ("/quit", "/exit", "/q")


def describe(settings: SamplingSettings) -> str:
    return (f"temperature {settings.temperature}, top-k {settings.top_k or 'off'}, top-p {settings.top_p or 'off'}, "
            f"max {settings.max_new_tokens} new tokens, seed {settings.seed if settings.seed is not None else 'off'}")


def apply_command(line: str, settings: SamplingSettings) -> SamplingSettings:
    """The settings after a /command; a bad one is a UserError and changes nothing."""
    name, _, value = line.strip().partition(" ")
    if name not in COMMANDS:
        raise UserError(f"unknown command {name}; /help lists them")
    field, parse = COMMANDS[name]
    value = value.strip()
    if not value:
        raise UserError(f"{name} needs a value, e.g. {name} {getattr(settings, field) or 'off'}")
    try:
        parsed = parse(value)
    except ValueError:
        raise UserError(f"{name}: {value!r} is not a number") from None
    if field == "top_k" and parsed is not None and parsed <= 0:
        parsed = None  # /topk 0 turns it off, as --top-k 0 does
    changed = dataclasses.replace(settings, **{field: parsed})
    changed.validate()
    return changed


def chat(trained: TrainedModel, settings: SamplingSettings, read: Callable[[str], str] = input,
         out: TextIO | None = None) -> None:
    """Read prompts with `read` until the user leaves; stream each continuation to `out` (stdout)."""
    out = out or sys.stdout
    out.write(f"chat with {trained.source} ({trained.tokenizer.name} tokenizer); {describe(settings)}\n{HELP}\n")
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        command = line.strip().split(" ", 1)[0]
        try:
            if command in QUIT:
                return
            if command == "/help":
                out.write(HELP + "\n")
            elif command == "/settings":
                out.write(describe(settings) + "\n")
            elif command.startswith("/"):
                settings = apply_command(line, settings)
                out.write(describe(settings) + "\n")
            elif line:
                _continue(trained, line, settings, out)
        except UserError as exc:
            out.write(f"error: {exc}\n")


def _continue(trained: TrainedModel, prompt: str, settings: SamplingSettings, out: TextIO) -> None:
    trained.tokenizer.encode(prompt)  # an unknown character is an error before anything is written
    out.write(prompt)
    try:
        for piece in stream_text(trained.model, trained.tokenizer, prompt, settings):
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
