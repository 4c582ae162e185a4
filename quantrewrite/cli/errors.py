"""The command line's own errors (no torch here: the parser and ``--help`` import only this)."""

from __future__ import annotations

__all__ = ["CLIError", "UsageError"]


class CLIError(Exception):
    """A problem with the user's input, reported as one line and exit status 1."""

    exit_code = 1


class UsageError(CLIError):
    """A malformed command line (exit status 2, as argparse's own errors)."""

    exit_code = 2
