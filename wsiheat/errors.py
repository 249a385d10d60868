"""User-facing errors.

Every problem caused by the user's input (a missing file, a file that is not a
slide, bad parameters, ...) is raised as :class:`WsiheatError` with a one-line
message that names the file and the problem. The CLI prints that line and
exits with status 2, without a traceback. Any other exception is a bug.
"""

from __future__ import annotations


class WsiheatError(Exception):
    """A user error with a one-line message naming the file and the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
