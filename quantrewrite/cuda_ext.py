"""The functions of pytorch-quantization's compiled ``cuda_ext`` module, on any device.

The original shipped them as a CUDA extension; here they are thin wrappers of ``tensor_quant`` (fused CPU
kernel or eager torch), with the same signatures and numbers. Nothing is compiled.

Example:
    >>> from quantrewrite import cuda_ext
    >>> cuda_ext.fake_tensor_quant(torch.tensor([0.3, -1.0]), torch.tensor(1.0)).tolist()
    [0.29921260476112366, -1.0]
"""

from __future__ import annotations

import torch

from quantrewrite.tensor_quant import fake_e4m3_quant
from quantrewrite.tensor_quant import fake_tensor_quant as _fake_tensor_quant

__all__ = ["fake_e4m3fy", "fake_tensor_quant", "fake_tensor_quant_", "fake_tensor_quant_with_axis"]


def fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
                      narrow_range: bool = True) -> torch.Tensor:
    """Per-tensor fake quantization (amax a scalar tensor); see ``tensor_quant.fake_tensor_quant``."""
    return _fake_tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)


def fake_tensor_quant_(inputs: torch.Tensor, amax: torch.Tensor, num_bits: int = 8, unsigned: bool = False,
                       narrow_range: bool = True) -> torch.Tensor:
    """In-place ``fake_tensor_quant``: writes the result into ``inputs`` and returns it."""
    with torch.no_grad():
        inputs.copy_(_fake_tensor_quant(inputs, amax, num_bits, unsigned, narrow_range))
    return inputs


def fake_tensor_quant_with_axis(inputs: torch.Tensor, amax: torch.Tensor, axis: int, num_bits: int = 8,
                                unsigned: bool = False, narrow_range: bool = True) -> torch.Tensor:
    """Per-channel fake quantization: ``amax`` holds one value per index of dim ``axis`` (any shape with that
    many elements)."""
    axis = axis % inputs.dim()
    if amax.numel() != inputs.shape[axis]:
        raise ValueError(f"fake_tensor_quant_with_axis: amax has {amax.numel()} values for dim {axis} of size "
                         f"{inputs.shape[axis]}")
    shape = [1] * inputs.dim()
    shape[axis] = inputs.shape[axis]
    return _fake_tensor_quant(inputs, amax.reshape(shape), num_bits, unsigned, narrow_range)


def fake_e4m3fy(inputs: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP8 E4M3 value, saturating at ±448 (no scaling)."""
    return fake_e4m3_quant(inputs, 448.0)
