"""What the command line names: MODEL (``module:factory`` or ``file.py:factory``), DATA and shapes.

Every problem raises a CLIError (exit status 1) or a UsageError (exit status 2, a malformed argument) whose
message fits on one line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantrewrite.cli.errors import CLIError, UsageError
from quantrewrite.cli.messages import first_line, load_refusal
from quantrewrite.descriptor import did_you_mean

__all__ = ["CLIError", "UsageError", "check_model_accepts", "describe_batch", "load_batches", "load_model",
           "parse_shape"]

RANDOM_PREFIX = "random:"
DEFAULT_BATCH_SIZE = 32
DEFAULT_RANDOM_BATCHES = 4
SEED = 0


def _raised(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


# ------------------------------------------------------------------------------------------------------ MODEL
def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise CLIError(f"MODEL: no such file: {path}")
    name = f"_quantrewrite_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"MODEL: cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise CLIError(f"MODEL: running {path} raised {_raised(error)}") from error
    return module


def _import_module(target: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current directory import
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        raise CLIError(f"MODEL: cannot import {target!r}: {first_line(error)}") from error
    except Exception as error:
        raise CLIError(f"MODEL: importing {target!r} raised {_raised(error)}") from error


def load_model(spec: str) -> nn.Module:
    """Call the factory ``spec`` names and return its model in eval mode.

    ``spec`` is ``package.module:factory`` or ``path/to/file.py:factory``; ``factory`` may be dotted
    (``module:Class.build``) and is called without arguments.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"MODEL: expected 'package.module:factory' or 'path/to/file.py:factory', got {spec!r}")
    module = _import_file(Path(target)) if _is_file(target) else _import_module(target)
    try:
        factory = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise CLIError(f"MODEL: {target} has no attribute {attr!r}{did_you_mean(attr, names)}") from None
    if not callable(factory):
        raise CLIError(f"MODEL: {spec} is a {type(factory).__name__}, not a callable that returns a model")
    try:
        model = factory()
    except Exception as error:
        raise CLIError(f"MODEL: {spec}() raised {_raised(error)}") from error
    if not isinstance(model, nn.Module):
        raise CLIError(f"MODEL: {spec}() returned a {type(model).__name__}, expected a torch.nn.Module")
    return model.eval()


# ------------------------------------------------------------------------------------------------------- DATA
def parse_shape(text: str, what: str) -> tuple[int, ...]:
    """``8x3x32x32`` (or ``8,3,32,32``) -> (8, 3, 32, 32); a UsageError naming ``what`` otherwise."""
    parts = text.replace(",", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"{what}: expected a shape like 8x3x32x32 (positive ints), got {text!r}")
    return shape


def describe_batch(batch: Any) -> str:
    """A short description of a batch: its shapes."""
    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, dict):
        return "a dict of " + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in batch.items())
    return "a tuple of " + ", ".join(str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__
                                    for v in batch)


def _check_batch(batch: Any, where: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(v, torch.Tensor) for v in batch):
        return tuple(batch)
    if isinstance(batch, dict) and batch and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in batch.items()):
        return batch
    raise CLIError(f"{where}: expected a tensor, a tuple of tensors or a dict of tensors, got "
                   f"{type(batch).__name__}")


def _load_file(path: Path, batch_size: int | None) -> list[Any]:
    if not path.is_file():
        raise CLIError(f"DATA: no such file: {path} (expected a .pt file, 'digits' or 'random:SHAPE')")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise CLIError(load_refusal(path, error)) from error
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise CLIError(f"DATA: {path} holds a tensor of shape {tuple(data.shape)}; expected samples along dim 0")
        return list(data.split(batch_size or DEFAULT_BATCH_SIZE))
    if isinstance(data, (list, tuple)):
        if not data:
            raise CLIError(f"DATA: {path} holds an empty {type(data).__name__}")
        if batch_size is not None:
            raise UsageError(f"--batch-size: {path} already holds a list of batches; it applies to a file "
                             "holding one tensor and to 'digits'")
        return [_check_batch(batch, f"DATA: {path}: batch {i}") for i, batch in enumerate(data)]
    raise CLIError(f"DATA: {path} holds a {type(data).__name__}; expected a tensor (split into batches along "
                   "dim 0) or a list of batches")


def load_batches(spec: str, batch_size: int | None = None, num_batches: int | None = None,
                 dtype: torch.dtype = torch.float32) -> list[Any]:
    """The calibration batches ``spec`` names.

    ``spec``: a ``.pt`` file (``torch.load(weights_only=True)``) holding one tensor, split along dim 0 into
    batches of ``batch_size`` (default 32), or a list of batches (tensors, tuples or dicts of tensors);
    ``digits``: the shipped 8x8 digits (train split) shaped (N, 1, 8, 8) for DigitsCNN, batches of
    ``batch_size`` (default 64); ``random:SHAPE``: ``num_batches`` (default 4) seeded normal batches of SHAPE,
    of ``dtype``.
    """
    if spec == "digits":
        from quantrewrite.demo_model import digits_batches

        return digits_batches("train", batch_size or 64)
    if spec.startswith(RANDOM_PREFIX):
        shape = parse_shape(spec[len(RANDOM_PREFIX):], "DATA random:SHAPE")
        if batch_size is not None:
            raise UsageError("--batch-size: random:SHAPE batches have the batch size SHAPE starts with")
        generator = torch.Generator().manual_seed(SEED)
        return [torch.randn(shape, generator=generator).to(dtype)
                for _ in range(num_batches or DEFAULT_RANDOM_BATCHES)]
    return _load_file(Path(spec), batch_size)


def check_model_accepts(model: nn.Module, batch: Any, what: str) -> None:
    """Run the float model on one batch; a CLIError naming the shapes if it does not accept it."""
    try:
        with torch.no_grad():
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, tuple):
                model(*batch)
            else:
                model(batch)
    except Exception as error:
        raise CLIError(f"the model does not accept {what} ({describe_batch(batch)}): {_raised(error)}") from error
