"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback.

Anything a user can cause (bad YAML, a missing file, an impossible grid) raises UserError; the CLI
prints `error: <message>` and exits 2. Programming errors stay ordinary exceptions.
"""


class UserError(Exception):
    """An error caused by the user's input; its message is printed as one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always a single line
