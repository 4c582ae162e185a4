"""Quantized instance normalization: QuantInstanceNorm{1,2,3}d (input quantized per tensor, no weight quantizer).

The affine weight and bias (when ``affine=True``) and the running statistics are kept in floating point, as in
pytorch-quantization.

Example:
    >>> norm = QuantInstanceNorm2d(3, affine=True)
    >>> norm(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = ["QuantInstanceNorm1d", "QuantInstanceNorm2d", "QuantInstanceNorm3d"]


class _QuantInstanceNormNd(QuantInputMixin):
    """Shared __init__ and forward; comes before the float class in the bases so its methods win."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device: Any = None, dtype: Any = None, *, bias: bool = True,
                 **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        # `bias` is keyword-only and recent (torch 2.13); pass it only when set, so older torch keeps working.
        extra = {} if bias else {"bias": False}
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **extra)
        self.init_quantizer(quant_desc_input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self._input_quantizer.transient(input))


@register_quant_module(nn.InstanceNorm1d)
class QuantInstanceNorm1d(_QuantInstanceNormNd, nn.InstanceNorm1d):
    """nn.InstanceNorm1d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.InstanceNorm2d)
class QuantInstanceNorm2d(_QuantInstanceNormNd, nn.InstanceNorm2d):
    """nn.InstanceNorm2d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.InstanceNorm3d)
class QuantInstanceNorm3d(_QuantInstanceNormNd, nn.InstanceNorm3d):
    """nn.InstanceNorm3d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
