"""The one exception type for mistakes a user can make (bad flag, missing file, bad checkpoint).

The CLI turns it into a single ``error: ...`` line and exit status 2; anything else is our bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """What the CLI does with a UserError, for a script of its own (an exported Space's app.py): one
    `error: ...` line on stderr and exit status 2, no traceback."""
    try:
        yield
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
