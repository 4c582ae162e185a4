"""How far a layer's (or a model's) output moved from its float reference: the two views method "auto" scores.

* absolute: Σ (y − y_ref)², every element alike;
* relative: Σ over feature vectors of ‖y − y_ref‖² / ‖y_ref‖², a feature vector being one row of a Linear's
  output (one token) or the channels at one position of a conv's output (``feature_dim``). A vector's energy
  counts as at least ``ENERGY_FLOOR`` times the mean vector energy, so near-zero vectors do not dominate.

Outputs may be tensors or (nested) tuples, lists and mappings (a Hugging Face ``ModelOutput`` is one); only
floating tensors count.

Example:
    >>> reference = Reference(torch.ones(2, 4), dim=-1)
    >>> reference.errors(torch.ones(2, 4) * 1.5)  # (relative, absolute)
    (0.5, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ENERGY_FLOOR", "VIEWS", "Reference", "feature_dim", "floating_leaves", "squared_error"]

ENERGY_FLOOR = 1e-2
VIEWS = ("relative", "absolute")  # the order of ``Reference.errors``; method "auto" breaks ties by it

# Modules whose output is (batch, channels, *positions): a feature vector runs along dim 1. Other modules
# (Linear, LayerNorm, attention, recurrent layers) put the features in the last dim.
_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.modules.pooling._MaxPoolNd,
                  nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                  nn.modules.pooling._AdaptiveMaxPoolNd)


def floating_leaves(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of ``output`` in a fixed order (None, ints and strings are skipped)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in floating_leaves(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in floating_leaves(value)]
    return []


def feature_dim(module: nn.Module, output: Any) -> int:
    """The dim that holds one feature vector of ``module``'s output: 1 for conv-like outputs, else -1."""
    leaves = floating_leaves(output)
    channel_first = isinstance(module, _CHANNEL_FIRST) and bool(leaves) and leaves[0].dim() >= 3
    return 1 if channel_first else -1


def squared_error(output: Any, reference: list[torch.Tensor]) -> float:
    """Σ (output − reference)² over the floating tensors (``reference``: ``floating_leaves`` of the float run).

    inf when the outputs do not match in number or shapes (a detector's list of boxes changes length).
    """
    leaves = floating_leaves(output)
    if len(leaves) != len(reference) or any(o.shape != r.shape for o, r in zip(leaves, reference)):
        return math.inf
    return sum(float(torch.sub(o.float(), r.float()).square_().sum()) for o, r in zip(leaves, reference))


class Reference:
    """A float output and its feature-vector energies, to score outputs against it in both views."""

    def __init__(self, output: Any, dim: int):
        self.leaves = [t.float() for t in floating_leaves(output)]
        self.dim = dim
        self.energies = [self._energy(t) for t in self.leaves]
        self.numel = sum(t.numel() for t in self.leaves)

    def _vectors(self, squared: torch.Tensor) -> torch.Tensor:
        return squared.sum(self.dim, keepdim=True) if squared.dim() else squared

    def _energy(self, leaf: torch.Tensor) -> torch.Tensor:
        energy = self._vectors(leaf.square())
        floor = ENERGY_FLOOR * float(energy.mean()) if energy.numel() else 0.0
        return energy.clamp_min_(max(floor, torch.finfo(torch.float32).tiny))

    def errors(self, output: Any) -> tuple[float, float]:
        """(relative, absolute) error of ``output`` against this reference (the order of ``VIEWS``)."""
        absolute = relative = 0.0
        for leaf, reference, energy in zip(floating_leaves(output), self.leaves, self.energies):
            squared = torch.sub(leaf.float(), reference).square_()
            absolute += float(squared.sum())
            relative += float(self._vectors(squared).div_(energy).sum())
        return relative, absolute
