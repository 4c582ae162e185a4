"""Quantized convolutions: QuantConv{1,2,3}d and QuantConvTranspose{1,2,3}d.

Each class subclasses its float module (so ``isinstance(m, nn.Conv2d)`` holds and every float setting keeps
working) and quantizes its input per tensor and its weight per channel on axis 0 before the float module's own
convolution. The bias is never quantized.

Weight axis 0 is the output channel of a convolution weight ``[Cout, Cin/groups, k...]`` and the INPUT channel
of a transposed-convolution weight ``[Cin, Cout/groups, k...]`` (what TensorRT's deconvolution expects).

Example:
    >>> conv = QuantConv2d(3, 8, 3, padding=1)
    >>> conv(torch.randn(1, 3, 16, 16)).shape
    torch.Size([1, 8, 16, 16])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.common_types import _size_1_t, _size_2_t, _size_3_t

from quantrewrite.descriptor import (
    QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_PER_TENSOR,
)
from quantrewrite.nn.modules.quant_mixins import QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
]

_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _QuantConvNd(QuantMixin):
    """Shared forward of QuantConv{1,2,3}d; comes before the float class in the bases so its forward wins."""

    supports_parametrized_weight = True  # the forward reads self.weight: a parametrized weight is evaluated

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The float module's _conv_forward applies padding_mode ("reflect", "circular", ...) as nn.Conv does.
        weight = self._weight_quantizer(self.weight)
        return self._conv_forward(self._input_quantizer.transient(input), weight, self.bias)


class _QuantConvTransposeNd(QuantMixin):
    """Shared forward of QuantConvTranspose{1,2,3}d, mirroring the float forward (output_size included)."""

    _num_spatial_dims: int
    supports_parametrized_weight = True

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._num_spatial_dims, self.dilation)
        conv_transpose = _CONV_TRANSPOSE[self._num_spatial_dims]
        return conv_transpose(self._input_quantizer.transient(input), self._weight_quantizer(self.weight), self.bias,
                              self.stride, self.padding, output_padding, self.groups, self.dilation)


@register_quant_module(nn.Conv1d)
class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """nn.Conv1d with an 8-bit per-tensor input quantizer and an 8-bit per-output-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_1_t, stride: _size_1_t = 1,
                 padding: str | _size_1_t = 0, dilation: _size_1_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


@register_quant_module(nn.Conv2d)
class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """nn.Conv2d with an 8-bit per-tensor input quantizer and an 8-bit per-output-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


@register_quant_module(nn.Conv3d)
class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """nn.Conv3d with an 8-bit per-tensor input quantizer and an 8-bit per-output-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_3_t, stride: _size_3_t = 1,
                 padding: str | _size_3_t = 0, dilation: _size_3_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


@register_quant_module(nn.ConvTranspose1d)
class QuantConvTranspose1d(_QuantConvTransposeNd, nn.ConvTranspose1d):
    """nn.ConvTranspose1d with an 8-bit per-tensor input and an 8-bit per-input-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL
    _num_spatial_dims = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_1_t, stride: _size_1_t = 1,
                 padding: _size_1_t = 0, output_padding: _size_1_t = 0, groups: int = 1, bias: bool = True,
                 dilation: _size_1_t = 1, padding_mode: str = "zeros", device: Any = None, dtype: Any = None,
                 **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


@register_quant_module(nn.ConvTranspose2d)
class QuantConvTranspose2d(_QuantConvTransposeNd, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with an 8-bit per-tensor input and an 8-bit per-input-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL
    _num_spatial_dims = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: _size_2_t = 0, output_padding: _size_2_t = 0, groups: int = 1, bias: bool = True,
                 dilation: _size_2_t = 1, padding_mode: str = "zeros", device: Any = None, dtype: Any = None,
                 **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


@register_quant_module(nn.ConvTranspose3d)
class QuantConvTranspose3d(_QuantConvTransposeNd, nn.ConvTranspose3d):
    """nn.ConvTranspose3d with an 8-bit per-tensor input and an 8-bit per-input-channel weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL
    _num_spatial_dims = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_3_t, stride: _size_3_t = 1,
                 padding: _size_3_t = 0, output_padding: _size_3_t = 0, groups: int = 1, bias: bool = True,
                 dilation: _size_3_t = 1, padding_mode: str = "zeros", device: Any = None, dtype: Any = None,
                 **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        self.init_quantizer(quant_desc_input, quant_desc_weight)


# pytorch-quantization's short names.
Conv1d = QuantConv1d
Conv2d = QuantConv2d
Conv3d = QuantConv3d
ConvTranspose1d = QuantConvTranspose1d
ConvTranspose2d = QuantConvTranspose2d
ConvTranspose3d = QuantConvTranspose3d
