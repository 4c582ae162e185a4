"""Quantized layer normalization: QuantLayerNorm (input quantized per tensor; the body stays float).

Off unless a config turns it on (``modules: {LayerNorm: {quantize: true}}``): TensorRT wants a LayerNorm's
input quantized only where a conv feeds it, which the ``tensorrt`` placement rules decide.

Example:
    >>> norm = QuantLayerNorm(8)
    >>> norm(torch.randn(2, 8)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = ["QuantLayerNorm"]


@register_quant_module(nn.LayerNorm)
class QuantLayerNorm(QuantInputMixin, nn.LayerNorm):
    """nn.LayerNorm with an 8-bit per-tensor input quantizer; weight, bias and the normalization stay float."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    enabled_by_default = False  # the rewrite quantizes it only when a config asks for it

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.init_quantizer(quant_desc_input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self._input_quantizer.transient(input))
