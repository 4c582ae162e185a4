"""Argument types of the command line (no torch here: the parser is built without it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_at_least"]


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an int >= ``minimum``; ``why`` is added to the message of a value below it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}{why}, got {value}")
        return value

    return parse
