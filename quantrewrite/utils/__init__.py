"""Helpers of the pytorch-quantization ``utils`` package: ``reduce_amax`` and ``quant_logging``.

Note the meaning of ``axis`` here: the dims to REDUCE (numpy's convention), the opposite of a
``QuantDescriptor``'s ``axis`` (the dims that keep their own amax).

Example:
    >>> x = torch.tensor([[1.0, -4.0], [-2.0, 3.0]])
    >>> reduce_amax(x).item()
    4.0
    >>> reduce_amax(x, axis=1).flatten().tolist()  # reduce dim 1: one amax per row
    [4.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantrewrite.utils import quant_logging

__all__ = ["quant_logging", "reduce_amax"]


def _reduced_dims(axis: int | Sequence[int], ndim: int) -> list[int]:
    dims = [axis] if isinstance(axis, int) and not isinstance(axis, bool) else list(axis)
    if len(dims) > ndim:
        raise ValueError(f"reduce_amax: cannot reduce more axes than the tensor's dim: axis={axis!r} on a "
                         f"{ndim}-D tensor")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -ndim <= d < ndim:
            raise ValueError(f"reduce_amax: axis {d!r} is out of range for a {ndim}-D tensor (axis={axis!r})")
        if d % ndim in out:
            raise ValueError(f"reduce_amax: dim {d % ndim} is named twice in axis={axis!r}")
        out.append(d % ndim)
    return out


def reduce_amax(input: torch.Tensor, axis: int | Sequence[int] | None = None, keepdims: bool = True) -> torch.Tensor:
    """max |input| over the dims in ``axis`` (all dims when None), without gradient.

    Args:
        input: the tensor (any dtype torch can ``abs``; the result keeps it).
        axis: the dims to REDUCE: None (every dim: a 0-d result), an int, or a sequence of ints.
        keepdims: keep the reduced dims with size 1. As in pytorch-quantization, a sequence of dims whose
            result has a single element is squeezed to 0-d even with ``keepdims``.

    Raises:
        ValueError: more dims than the tensor has, a dim out of range or named twice.
    """
    with torch.no_grad():
        magnitude = input.detach().abs()
        if axis is None:
            return magnitude.max()
        dims = _reduced_dims(axis, input.dim())
        if isinstance(axis, int):
            return magnitude.amax(dim=dims[0], keepdim=keepdims)
        out = magnitude.amax(dim=dims, keepdim=True) if dims else magnitude
        if not keepdims or out.numel() == 1:
            out = out.squeeze()
        return out
