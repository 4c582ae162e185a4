"""The calibrator base class: what every calibrator shares (settings, batch count, repr).

A calibrator watches tensors during calibration (``collect``) and then proposes an amax
(``compute_amax``). Calibrators never take part in autograd: they detach what they see.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

__all__ = ["_Calibrator", "normalize_axis"]


def _check_axis(axis: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if axis is None:
        return None
    dims = (axis,) if isinstance(axis, int) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if dims is None or not dims or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise ValueError(f"axis: expected None, an int or a non-empty tuple of ints, got {axis!r}")
    return dims


def normalize_axis(axis: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Map the kept dims ``axis`` (negative allowed) to sorted non-negative dims of an ``ndim``-D tensor.

    Raises:
        ValueError: a dim is out of range or named twice.
    """
    kept = []
    for d in axis:
        if not -ndim <= d < ndim:
            raise ValueError(f"axis {axis}: dim {d} is out of range for a {ndim}-D input")
        if d % ndim in kept:
            raise ValueError(f"axis {axis}: dim {d % ndim} is named twice")
        kept.append(d % ndim)
    return tuple(sorted(kept))


class _Calibrator(abc.ABC):
    """Base class of calibrators.

    Args:
        num_bits: bits of the quantizer the amax is for (an int >= 1).
        axis: None for one amax per tensor, or the dim(s) that keep their own amax (int or tuple of ints,
            negative allowed), as in ``QuantDescriptor``.
        unsigned: whether the quantizer is unsigned.
        owner: the qualified name of the quantizer this calibrator serves (a TensorQuantizer keeps it up to
            date, see ``TensorQuantizer.name``); messages about the calibrator start with it.
    """

    def __init__(self, num_bits: int = 8, axis: int | Sequence[int] | None = None, unsigned: bool = False, *,
                 owner: str | None = None):
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 1:
            raise ValueError(f"num_bits: expected an int >= 1, got {num_bits!r}")
        self._num_bits = num_bits
        self._axis = axis
        self._axis_dims = _check_axis(axis)
        self._unsigned = bool(unsigned)
        self._num_batches = 0
        self.owner = owner

    @property
    def subject(self) -> str:
        """How warnings and errors name this calibrator: ``"<quantizer name>: MaxCalibrator"`` when its owner is
        known, else the class name alone."""
        return f"{self.owner}: {type(self).__name__}" if self.owner else type(self).__name__

    @property
    def num_bits(self) -> int:
        """Bits of the quantizer the amax is for."""
        return self._num_bits

    @property
    def axis(self) -> int | Sequence[int] | None:
        """The dim(s) that keep their own amax, as given; None for per-tensor."""
        return self._axis

    @property
    def unsigned(self) -> bool:
        """Whether the quantizer is unsigned."""
        return self._unsigned

    @property
    def num_batches(self) -> int:
        """How many batches ``collect`` has seen since construction or the last ``reset``."""
        return self._num_batches

    def collect(self, x: torch.Tensor) -> None:
        """Record statistics of one batch. Never differentiable: ``x`` is detached. Integer tensors are cast to
        float32 (exact up to 2^24)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.subject}.collect: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{self.subject}.collect: expected a real number tensor, got {x.dtype}")
        if not x.is_floating_point():  # integer data (e.g. uint8 pixels): counted as float32, as the original does
            x = x.float()
        with torch.no_grad():
            self._collect(x.detach())
        self._num_batches += 1

    @abc.abstractmethod
    def _collect(self, x: torch.Tensor) -> None:
        """Record one detached batch (called under ``torch.no_grad``)."""

    def reset(self) -> None:
        """Forget everything collected."""
        self._num_batches = 0
        self._reset()

    @abc.abstractmethod
    def _reset(self) -> None:
        """Drop the collected statistics."""

    @abc.abstractmethod
    def compute_amax(self, *args, **kwargs) -> torch.Tensor | None:
        """The amax proposed from what was collected, or None when nothing was collected."""

    def _repr_fields(self) -> dict[str, object]:
        """Extra ``name: value`` pairs for ``__repr__``; subclasses extend it."""
        return {}

    def __repr__(self) -> str:
        fields = {"num_bits": self._num_bits, "axis": self._axis, "unsigned": self._unsigned}
        fields.update(self._repr_fields())
        fields["num_batches"] = self._num_batches
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"
