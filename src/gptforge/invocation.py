"""How to run `gptforge` again from the user's shell, for the commands that messages suggest.

`make train` runs `.venv/bin/gptforge` without activating the virtual environment, so a hint that says
plain `gptforge sample ...` would fail as printed: a hint names the command that works where it is read.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _shown(path: Path) -> str:
    """`path` relative to the current directory when it lies below it, else absolute; quoted for a shell."""
    absolute = Path(os.path.abspath(path))
    try:
        return shlex.quote(str(absolute.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(absolute))


def gptforge_command() -> str:
    """`gptforge` when that name on PATH is this installation's script; else that script by its path (e.g.
    .venv/bin/gptforge); else this Python with `-m gptforge`."""
    beside = Path(sys.executable).parent / "gptforge"  # the script pip installed next to this interpreter
    on_path = shutil.which("gptforge")
    if on_path is not None and (not beside.is_file() or Path(on_path).resolve() == beside.resolve()):
        return "gptforge"
    if beside.is_file():
        return _shown(beside)
    return f"{_shown(Path(sys.executable))} -m gptforge"
