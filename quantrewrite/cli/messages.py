"""Other libraries' messages as the command line shows them: plain text (no terminal colour codes), whole
sentences, and what to do (no torch here: ``--help`` must not import it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["first_line", "load_refusal", "plain_text", "warning_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour / style codes (torch wraps warnings in them)
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", re.DOTALL)
_SAVE_HINT = ("quantrewrite reads .pt files with torch.load(weights_only=True), which loads only tensors and "
              "lists, tuples and dicts of them: save torch tensors instead, e.g. "
              "torch.save(torch.from_numpy(array), 'calib.pt')")
_PACKAGE = Path(__file__).resolve().parents[1]  # quantrewrite/


def plain_text(text: str) -> str:
    """``text`` without terminal escape codes."""
    return _ANSI.sub("", text)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, as plain text (its type's name if it has none)."""
    lines = [line.strip() for line in plain_text(str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_refusal(path: Path, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``error``, in whole sentences, with what to do."""
    text = plain_text(str(error))
    found = _UNSUPPORTED_GLOBAL.search(text)
    if found:
        name = found.group(1)
        what = "numpy arrays" if name.split(".")[0] == "numpy" else "objects that are not tensors"
        return f"DATA: {path} holds {what} (its pickle needs {name}); {_SAVE_HINT}"
    detail = _UNPICKLER_ERROR.search(text)
    if "weights only load failed" in text.lower():
        reason = " ".join(detail.group(1).split()) if detail else first_line(error)
        return (f"DATA: cannot load {path} with torch.load(weights_only=True) (WeightsUnpickler error: "
                f"{reason}): is it a file written by torch.save? {_SAVE_HINT}")
    return (f"DATA: cannot load {path} with torch.load(weights_only=True) ({type(error).__name__}: "
            f"{first_line(error)}): expected a file written by torch.save holding a tensor or a list of batches")


def warning_line(message: object, category: type[Warning], filename: str, lineno: int) -> str:
    """One line for a warning: quantrewrite's own as they are; another library's (torch, ...) or the user's
    code's with its class and the place it points to, so it is not taken for quantrewrite's."""
    text = "; ".join(line.strip() for line in plain_text(str(message)).strip().splitlines() if line.strip())
    path = Path(filename).resolve() if filename else None
    if path is not None and _PACKAGE in path.parents:
        return text
    origin = category.__module__.split(".")[0]
    if origin in ("builtins", "warnings") and path is not None and "site-packages" in path.parts:
        origin = path.parts[path.parts.index("site-packages") + 1]  # a library's code raised a plain warning
    source = f" from {origin}" if origin not in ("builtins", "warnings", "__main__") else ""
    where = f" at {os.path.basename(filename)}:{lineno}" if filename else ""
    return f"{category.__name__}{source}{where}: {text}"
