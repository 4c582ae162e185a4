"""Row slices of a module's call or of a batch: how method "auto" scores on just enough data.

Method "auto" scores each owner module on a number of output values (its budget). When one call of the owner
holds more than that, the owner is run again on the first rows of its inputs instead of on all of them. That
is only done where "rows" mean the same thing everywhere: every tensor argument shares its leading size N and
every floating output leaf leads with N too, all with at least two dims (a conv's or a Linear's batch, a
sequence-first recurrent layer's steps). Any other argument (a tuple of hidden states, a 0-d or 1-d tensor, a
list of tensors) leaves the call whole. Non-tensor arguments (None, numbers, strings) pass unchanged. The
caller then checks, with ``rows_match``, that the cut call's output is the whole call's output cut alike (it
is not where rows interact: attention over a sequence-first input, a bidirectional recurrent layer, an
unbatched conv whose channels lead).

Example:
    >>> shared_rows((torch.zeros(8, 3), None), {"mask": torch.ones(8, 3)}, torch.zeros(8, 5))
    8
    >>> args, kwargs = take_rows((torch.zeros(8, 3), None), {"mask": torch.ones(8, 3)}, 0, 2)
    >>> args[0].shape, kwargs["mask"].shape
    (torch.Size([2, 3]), torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from quantrewrite.calib.output_error import floating_leaves

__all__ = ["ROW_TOLERANCE", "batch_rows", "rows_match", "shared_rows", "take_batch_rows", "take_rows"]

ROW_TOLERANCE = 1e-4  # a cut call's output may differ from the whole call's rows by this share of their max

_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _leading(values: list[Any], min_dims: int) -> int | None:
    """The leading size every tensor in ``values`` shares; None when a value is another kind of thing, a
    tensor has fewer than ``min_dims`` dims, the sizes differ, or there is no tensor."""
    size = None
    for value in values:
        if isinstance(value, _PLAIN):
            continue
        if not isinstance(value, torch.Tensor) or value.dim() < min_dims:
            return None
        if size is None:
            size = value.shape[0]
        elif value.shape[0] != size:
            return None
    return size


def shared_rows(args: tuple, kwargs: Mapping[str, Any], output: Any) -> int | None:
    """N when every tensor argument and every floating output leaf has two dims or more and leads with N (N >= 1),
    else None."""
    size = _leading([*args, *kwargs.values()], 2)
    leaves = floating_leaves(output)
    if not size or not leaves or any(leaf.dim() < 2 or leaf.shape[0] != size for leaf in leaves):
        return None
    return size


def take_rows(args: tuple, kwargs: Mapping[str, Any], start: int, stop: int) -> tuple[tuple, dict[str, Any]]:
    """The call's arguments cut to rows ``start:stop`` (valid where ``shared_rows`` gave a size)."""
    def cut(value: Any) -> Any:
        return value[start:stop] if isinstance(value, torch.Tensor) else value

    return tuple(cut(v) for v in args), {key: cut(v) for key, v in kwargs.items()}


def rows_match(cut: Any, whole: Any, start: int, stop: int, tolerance: float = ROW_TOLERANCE) -> bool:
    """Whether the floating leaves of ``cut`` equal rows ``start:stop`` of those of ``whole``, within
    ``tolerance`` times their largest magnitude (kernels may round differently for another batch size)."""
    cut_leaves, whole_leaves = floating_leaves(cut), floating_leaves(whole)
    if len(cut_leaves) != len(whole_leaves):
        return False
    for piece, leaf in zip(cut_leaves, whole_leaves):
        rows = leaf[start:stop]
        if piece.shape != rows.shape:
            return False
        if rows.numel() and not bool((piece - rows).abs().max() <= tolerance * rows.abs().max()):
            return False  # NaN compares False too
    return True


def batch_rows(batch: Any) -> int | None:
    """The rows of a batch as ``feed_batch`` feeds it (a tensor, a tuple/list of arguments, a dict of keyword
    arguments) when all its tensors share the leading size; else None."""
    if isinstance(batch, torch.Tensor):
        return _leading([batch], 1)
    if isinstance(batch, Mapping):
        return _leading(list(batch.values()), 1)
    if isinstance(batch, (tuple, list)):
        return _leading(list(batch), 1)
    return None


def take_batch_rows(batch: Any, count: int) -> Any:
    """The batch cut to its first ``count`` rows (valid where ``batch_rows`` gave a size); a list stays a list,
    any other sequence becomes a tuple."""
    if isinstance(batch, torch.Tensor):
        return batch[:count]
    if isinstance(batch, Mapping):
        return {key: value[:count] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    cut = [value[:count] if isinstance(value, torch.Tensor) else value for value in batch]
    return cut if isinstance(batch, list) else tuple(cut)
