"""Quantized pooling: QuantMaxPool, QuantAvgPool and QuantAdaptiveAvgPool in 1, 2 and 3 dimensions.

Pooling has no weight: each class quantizes its input per tensor (``_input_quantizer``) and then runs the float
module's own forward, so every float setting (ceil_mode, return_indices, divisor_override, ...) keeps working.

Example:
    >>> pool = QuantMaxPool2d(2)
    >>> pool(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.common_types import _size_1_t, _size_2_t, _size_3_t, _size_any_opt_t, _size_any_t

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "QuantAdaptiveAvgPool1d",
    "QuantAdaptiveAvgPool2d",
    "QuantAdaptiveAvgPool3d",
    "QuantAvgPool1d",
    "QuantAvgPool2d",
    "QuantAvgPool3d",
    "QuantMaxPool1d",
    "QuantMaxPool2d",
    "QuantMaxPool3d",
]


class _QuantPoolNd(QuantInputMixin):
    """Shared forward: quantize the input, then the float pooling (the next class in the MRO)."""

    def forward(self, input: torch.Tensor) -> Any:
        return super().forward(self._input_quantizer.transient(input))


class _QuantMaxPoolNd(_QuantPoolNd):
    """The MaxPool{1,2,3}d constructor (the same signature in every dimension) plus the quant kwargs."""

    def __init__(self, kernel_size: _size_any_t, stride: _size_any_t | None = None, padding: _size_any_t = 0,
                 dilation: _size_any_t = 1, return_indices: bool = False, ceil_mode: bool = False,
                 **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.init_quantizer(quant_desc_input)


class _QuantAdaptiveAvgPoolNd(_QuantPoolNd):
    """The AdaptiveAvgPool{1,2,3}d constructor (the same signature in every dimension) plus the quant kwargs."""

    def __init__(self, output_size: _size_any_opt_t, **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(output_size)
        self.init_quantizer(quant_desc_input)


@register_quant_module(nn.MaxPool1d)
class QuantMaxPool1d(_QuantMaxPoolNd, nn.MaxPool1d):
    """nn.MaxPool1d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.MaxPool2d)
class QuantMaxPool2d(_QuantMaxPoolNd, nn.MaxPool2d):
    """nn.MaxPool2d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.MaxPool3d)
class QuantMaxPool3d(_QuantMaxPoolNd, nn.MaxPool3d):
    """nn.MaxPool3d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.AvgPool1d)
class QuantAvgPool1d(_QuantPoolNd, nn.AvgPool1d):
    """nn.AvgPool1d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, kernel_size: _size_1_t, stride: _size_1_t | None = None, padding: _size_1_t = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        self.init_quantizer(quant_desc_input)


@register_quant_module(nn.AvgPool2d)
class QuantAvgPool2d(_QuantPoolNd, nn.AvgPool2d):
    """nn.AvgPool2d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, kernel_size: _size_2_t, stride: _size_2_t | None = None, padding: _size_2_t = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
                 **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.init_quantizer(quant_desc_input)


@register_quant_module(nn.AvgPool3d)
class QuantAvgPool3d(_QuantPoolNd, nn.AvgPool3d):
    """nn.AvgPool3d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR

    def __init__(self, kernel_size: _size_3_t, stride: _size_3_t | None = None, padding: _size_3_t = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
                 **kwargs: Any) -> None:
        quant_desc_input = pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.init_quantizer(quant_desc_input)


@register_quant_module(nn.AdaptiveAvgPool1d)
class QuantAdaptiveAvgPool1d(_QuantAdaptiveAvgPoolNd, nn.AdaptiveAvgPool1d):
    """nn.AdaptiveAvgPool1d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.AdaptiveAvgPool2d)
class QuantAdaptiveAvgPool2d(_QuantAdaptiveAvgPoolNd, nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


@register_quant_module(nn.AdaptiveAvgPool3d)
class QuantAdaptiveAvgPool3d(_QuantAdaptiveAvgPoolNd, nn.AdaptiveAvgPool3d):
    """nn.AdaptiveAvgPool3d with an 8-bit per-tensor input quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR


# pytorch-quantization's short names.
MaxPool1d = QuantMaxPool1d
MaxPool2d = QuantMaxPool2d
MaxPool3d = QuantMaxPool3d
AvgPool1d = QuantAvgPool1d
AvgPool2d = QuantAvgPool2d
AvgPool3d = QuantAvgPool3d
AdaptiveAvgPool1d = QuantAdaptiveAvgPool1d
AdaptiveAvgPool2d = QuantAdaptiveAvgPool2d
AdaptiveAvgPool3d = QuantAdaptiveAvgPool3d
