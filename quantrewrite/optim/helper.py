"""Parameter grouping and freezing by name pattern, and in-place weight quantization (pytorch-quantization's
``optim.helper``).

Patterns are regular expressions searched (``re.search``) in the names of ``model.named_parameters()``.

Example:
    >>> groups = group_parameters(model, [["conv1"], ["fc"]], lrs=[0.01, 0.001])
    >>> optimizer = torch.optim.SGD(groups, lr=0.1)
    >>> freeze_parameters(model, [r"\\.bias$"])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["freeze_parameters", "group_parameters", "match_parameters", "quant_weight_inplace"]

logger = logging.getLogger(__name__)


def _compiled(patterns: Sequence[str], where: str) -> list[re.Pattern]:
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        raise TypeError(f"{where}: expected a list of regular expressions, got {patterns!r}")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as error:
            raise ValueError(f"{where}: bad pattern {pattern!r}: {error}") from error
    return compiled


def _matching(model: nn.Module, patterns: Sequence[str], where: str) -> Iterator[tuple[str, nn.Parameter]]:
    compiled = _compiled(patterns, where)
    for name, param in model.named_parameters():
        if any(pattern.search(name) for pattern in compiled):
            yield name, param


def match_parameters(model: nn.Module, patterns: Sequence[str]) -> Iterator[nn.Parameter]:
    """Yield each parameter whose name contains a match of any pattern (once, even if several match)."""
    compiled = _compiled(patterns, "match_parameters")  # checked now, not at the first next()

    def matches() -> Iterator[nn.Parameter]:  # the model is only read when the caller iterates
        for name, param in model.named_parameters():
            if any(pattern.search(name) for pattern in compiled):
                yield param

    return matches()


def group_parameters(model: nn.Module, patterns_list: Sequence[Sequence[str]], lrs: Sequence[float] | None = None,
                     momentums: Sequence[float] | None = None,
                     weight_decays: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per list of patterns, with optional per-group lr/momentum/weight_decay.

    The pattern lists should select disjoint parameters (torch optimizers refuse a parameter in two groups).

    Raises:
        TypeError: ``patterns_list`` is not a list of lists, or an option list has another length.
    """
    for index, patterns in enumerate(patterns_list):
        if not isinstance(patterns, list):
            raise TypeError(f"group_parameters: patterns_list[{index}] must be a list of patterns (patterns_list "
                            f"must be list of list of patterns), got {patterns!r}")
    groups: list[dict[str, Any]] = [{"params": match_parameters(model, p)} for p in patterns_list]
    for key, values in (("lr", lrs), ("momentum", momentums), ("weight_decay", weight_decays)):
        if values is None:
            continue
        if len(values) != len(groups):
            raise TypeError(f"group_parameters: {len(values)} {key} values for {len(groups)} pattern lists (the "
                            "lengths must match)")
        for group, value in zip(groups, values):
            group[key] = value
    return groups


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches a pattern; returns their names."""
    frozen = []
    for name, param in _matching(model, patterns, "freeze_parameters"):
        param.requires_grad_(False)
        frozen.append(name)
    logger.info("froze %d parameter(s): %s", len(frozen), ", ".join(frozen))
    return frozen


def quant_weight_inplace(model: nn.Module) -> list[str]:
    """Replace each Quant module's weight by its weight quantizer's output, in place; returns the module names.

    Useful for relax-and-round schemes. A quantizer with ``fake_quant=False`` writes integers into the weight:
    only do that for inference.
    """
    done = []
    for name, module in model.named_modules():
        quantizer = getattr(module, "_weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if quantizer is None or not isinstance(weight, torch.Tensor):
            continue
        if not quantizer.fake_quant:
            logger.warning("quant_weight_inplace: %s has a real (integer) weight quantizer; its weight becomes "
                           "integers: use this for inference only", name or "<root>")
        with torch.no_grad():
            weight.copy_(quantizer(weight))
        done.append(name)
    return done
