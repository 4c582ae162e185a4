"""``reset_logger_handler``: the pytorch-quantization helper for scripts whose log lines print twice."""

from __future__ import annotations

import logging

__all__ = ["reset_logger_handler"]


def reset_logger_handler() -> None:
    """Remove every handler of the root logger (quantrewrite itself never adds one)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
