"""The command line's own errors (no torch here: the parser and ``--help`` import only this)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CLIError", "UsageError"]


class CLIError(Exception):
    """A problem with the user's input, reported as one line and exit status 1.

    Attributes:
        details: lines printed under the error line, one problem each (e.g. every quantizer that cannot be
            exported); empty for a one-line error.
    """

    exit_code = 1

    def __init__(self, message: str, details: Iterable[str] = ()):
        super().__init__(message)
        self.details = list(details)


class UsageError(CLIError):
    """A malformed command line (exit status 2, as argparse's own errors)."""

    exit_code = 2
