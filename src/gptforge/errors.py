"""The one exception type for mistakes a user can make (bad flag, missing file, bad checkpoint).

The CLI turns it into a single ``error: ...`` line and exit status 2; anything else is our bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""
