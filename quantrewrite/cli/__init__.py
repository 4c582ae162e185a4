"""The ``quantrewrite`` command: ``plan``, ``quantize``, ``validate`` and ``demo``.

Run ``quantrewrite --help`` (or ``python -m quantrewrite --help``). ``main(argv)`` runs it in-process and
returns the exit status: 0, 1 for an error in the input, 2 for a malformed command line; an error is one line
``quantrewrite: error: ...`` on stderr (``--debug`` raises it with its traceback instead).

Example:
    >>> main(["validate", "int8_default"])
    OK: preset int8_default (version 1): ...
    0
"""

from __future__ import annotations

from quantrewrite.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
