"""User errors versus bugs.

A :class:`SplitcError` is a mistake in what the user gave us (a file, a flag, a
target); the CLI prints it as one line and exits with code 2, no traceback. Any
other exception is a bug in splitc and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["SplitcError", "USER_ERROR_EXIT_CODE"]

USER_ERROR_EXIT_CODE = 2


class SplitcError(Exception):
    """A user-facing error: what is wrong, where, and what to do.

    Args:
        message: what is wrong, naming the file / node / flag involved.
        hint: what the user should do about it (optional, appended after "; ").
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())
