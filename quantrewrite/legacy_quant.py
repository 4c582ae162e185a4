"""pytorch-quantization's remaining quantization functions, under their names.

* ``TensorQuantFunction`` / ``FakeTensorQuantFunction`` / ``LegacyFakeTensorQuantFunction``: ``.apply(x, amax,
  num_bits=8, unsigned=False, narrow_range=True)`` run ``tensor_quant`` / ``fake_tensor_quant`` (the legacy
  function was the original's pure-torch fallback; the numbers are the same).
* ``scaled_e4m3(x, amax=None, E=4, M=3)``: FP8 E4M3 fake quantization with scale 448 / amax (no scaling when
  amax is None); inputs with |x| < 2^-24 become 0 and the values saturate at ±448 (in scaled units).
* ``fake_affine_tensor_quant(x, min_range, max_range, num_bits=8)``: asymmetric (gemmlowp-style) fake
  quantization of an activation, step = (max - min) / (2^b - 1), zero point round(min / step) + 2^(b-1),
  straight-through gradient inside [min_range, max_range].

Example:
    >>> fake_affine_tensor_quant(torch.tensor([0.0, 0.5, 1.2]), torch.tensor(0.0), torch.tensor(1.0), 2).tolist()
    [0.0, 0.6666666865348816, 1.0]
"""

from __future__ import annotations

import torch

from quantrewrite.tensor_quant import AMAX_EPSILON, fake_e4m3_quant, fake_tensor_quant, tensor_quant

__all__ = [
    "FakeAffineTensorQuantFunction",
    "FakeTensorQuantFunction",
    "LegacyFakeTensorQuantFunction",
    "ScaledE4M3Function",
    "TensorQuantFunction",
    "fake_affine_tensor_quant",
    "legacy_fake_tensor_quant",
    "scaled_e4m3",
]


class _ApplyAs:
    """A stand-in for a torch.autograd.Function class: ``.apply`` calls the function it wraps."""

    def __init__(self, function, name: str):
        self.apply = function
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<{self.__name__}: use .apply(...)>"


TensorQuantFunction = _ApplyAs(tensor_quant, "TensorQuantFunction")
FakeTensorQuantFunction = _ApplyAs(fake_tensor_quant, "FakeTensorQuantFunction")
LegacyFakeTensorQuantFunction = _ApplyAs(fake_tensor_quant, "LegacyFakeTensorQuantFunction")


def legacy_fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor | float, num_bits: int = 8,
                             unsigned: bool = False, narrow_range: bool = True) -> torch.Tensor:
    """The original's pure-torch fake quantization: the same numbers as ``fake_tensor_quant``."""
    return fake_tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)


def scaled_e4m3(inputs: torch.Tensor, amax: torch.Tensor | float | None = None, E: int = 4,
                M: int = 3) -> torch.Tensor:
    """FP8 E4M3 fake quantization: round x * 448 / amax to E4M3 (saturating), divide back.

    Args:
        inputs: the tensor.
        amax: the range that maps to 448; None rounds x itself to E4M3.
        E, M: exponent and mantissa bits; only (4, 3) exists.

    Raises:
        NotImplementedError: another (E, M).
    """
    if (E, M) != (4, 3):
        raise NotImplementedError(f"scaled_e4m3: only E=4, M=3 is supported, got E={E}, M={M}")
    outputs = fake_e4m3_quant(inputs, 448.0 if amax is None else amax)
    tiny = inputs.abs() < AMAX_EPSILON
    return torch.where(tiny, torch.zeros((), dtype=outputs.dtype, device=outputs.device), outputs)


ScaledE4M3Function = _ApplyAs(scaled_e4m3, "ScaledE4M3Function")


class _FakeAffineQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, min_range, max_range, num_bits):
        ctx.save_for_backward(inputs, min_range, max_range)
        step = (max_range - min_range) / (2.0**num_bits - 1)
        min_bound = -(2.0 ** (num_bits - 1))
        max_bound = 2.0 ** (num_bits - 1) - 1
        zero_point = torch.round(min_range / step) - min_bound
        quantized = torch.clamp(torch.round(inputs / step) - zero_point, min_bound, max_bound)
        return (quantized + zero_point) * step

    @staticmethod
    def backward(ctx, grad):
        inputs, min_range, max_range = ctx.saved_tensors
        inside = (inputs >= min_range) & (inputs <= max_range)
        return torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None, None


def fake_affine_tensor_quant(inputs: torch.Tensor, min_range: torch.Tensor | float, max_range: torch.Tensor | float,
                             num_bits: int = 8) -> torch.Tensor:
    """Asymmetric fake quantization over [min_range, max_range] (per tensor); see the module docstring.

    Raises:
        ValueError: max_range <= min_range, or num_bits < 1.
    """
    min_range = torch.as_tensor(min_range, dtype=torch.float32, device=inputs.device)
    max_range = torch.as_tensor(max_range, dtype=torch.float32, device=inputs.device)
    if not bool((max_range > min_range).all()):
        raise ValueError(f"fake_affine_tensor_quant: max_range {max_range.tolist()} must exceed min_range "
                         f"{min_range.tolist()}")
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 1:
        raise ValueError(f"fake_affine_tensor_quant: num_bits must be an int >= 1, got {num_bits!r}")
    return _FakeAffineQuant.apply(inputs, min_range, max_range, num_bits)


FakeAffineTensorQuantFunction = _ApplyAs(fake_affine_tensor_quant, "FakeAffineTensorQuantFunction")
