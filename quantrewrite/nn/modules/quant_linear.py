"""QuantLinear: nn.Linear with an 8-bit per-tensor input quantizer and an 8-bit per-row weight quantizer.

Example:
    >>> linear = QuantLinear(16, 4)
    >>> linear(torch.randn(2, 16)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR
from quantrewrite.nn.modules.quant_mixins import QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = [
    "Linear",
    "QuantLinear",
]


@register_quant_module(nn.Linear)
class QuantLinear(nn.Linear, QuantMixin):
    """nn.Linear whose input (per tensor) and weight (per output row, axis 0) are fake-quantized; bias is not."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    supports_parametrized_weight = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None, **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_features, out_features, bias, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input_quantizer.transient(input), self._weight_quantizer(self.weight), self.bias)


# pytorch-quantization's short names.
Linear = QuantLinear
