"""Checks of resolved descriptors against the model's tensors, run while planning (before anything changes).

A config is validated on its own when it is loaded; what only the model can tell (a weight ``axis`` that the
weight does not have, a static ``amax`` that does not fit the weight) is checked here, for every quantized
module, and reported like the other config errors: the YAML path of the rule that set the field, the layers
it breaks, and the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from quantrewrite.config import QuantConfig, QuantConfigError
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.parametrized import effective_weights

__all__ = ["check_weights"]

_SHOWN = 3  # layer names listed per problem


@dataclass
class _Problem:
    expected: str
    value: object
    layers: list[str] = field(default_factory=list)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """The quantizer's rule for a static amax: it broadcasts to the tensor without growing it (extra leading
    dims of size 1 allowed)."""
    extra = len(shape) - len(target)
    if extra > 0:
        if any(size != 1 for size in shape[:extra]):
            return False
        shape = shape[extra:]
    return all(a in (1, t) for a, t in zip(shape[::-1], target[::-1]))


def _weight_problem(desc: QuantDescriptor, weight: torch.Tensor) -> tuple[str, str, object] | None:
    """(field, expected, value) for the first field of ``desc`` that does not fit ``weight``, or None."""
    dims = weight.dim()
    for axis in desc.axis or ():
        if not -dims <= axis < dims:
            return "axis", f"an axis of the {dims}-D weight (-{dims}..{dims - 1})", axis
    if desc.amax is not None:
        shape = tuple(np.shape(desc.amax))
        if not _broadcasts_to(shape, tuple(weight.shape)):
            return "amax", f"an amax that broadcasts to the weight's shape {list(weight.shape)}", list(shape)
    return None


def check_weights(config: QuantConfig, modules: list[tuple[str, nn.Module, QuantDescriptor | None,
                                                            tuple[str, ...]]]) -> None:
    """Raise one QuantConfigError listing every resolved weight descriptor that does not fit its weight.

    Args:
        config: the config the descriptors were resolved from (it locates the rule that set a field).
        modules: (qualified name, float module, resolved weight descriptor or None, Resolution.rules).
    """
    problems: dict[tuple[str, str], _Problem] = {}
    for name, module, desc, rules in modules:
        if desc is None:
            continue
        for tensor_name, weight in effective_weights(module):
            found = _weight_problem(desc, weight)
            if found is None:
                continue
            field_name, expected, value = found
            origin = config.origin(rules, "weight", field_name)
            path, where = origin if origin is not None else ("", f" (the default of {type(module).__name__})")
            layer = f"{name}.{tensor_name}" if tensor_name != "weight" else name
            problem = problems.setdefault((path, expected + where), _Problem(expected, value))
            problem.layers.append(f"{layer or '<root>'} ({type(module).__name__} {list(weight.shape)})")
    if not problems:
        return
    errors = []
    for (path, expected_where), problem in problems.items():
        where = expected_where[len(problem.expected):]
        layers = problem.layers
        shown = ", ".join(layers[:_SHOWN]) + (f" and {len(layers) - _SHOWN} more" if len(layers) > _SHOWN else "")
        errors.append((path, f"expected {problem.expected}, got {problem.value!r}, for {shown}{where}"))
    raise QuantConfigError(errors)
