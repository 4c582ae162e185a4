"""Quantized padding modules: QuantZeroPad, QuantConstantPad, QuantReflectionPad and QuantReplicationPad in 1, 2
and 3 dimensions.

Each quantizes its input per tensor (``_input_quantizer``) and then pads with the float module's own forward.
Zero, reflection and replication padding only copy values or add zeros, so they commute with a quantizer: a
quantizer before the pad gives the same numbers as one after it. Off unless a config turns them on (``modules:
{ReflectionPad2d: {quantize: true}}``); the ``tensorrt`` placement rules (``pad_conv``) turn on the one before a
conv, in place of the conv's own input quantizer, so no Q/DQ pair sits between the pad and the conv.

Example:
    >>> pad = QuantReflectionPad2d(1)
    >>> pad(torch.randn(1, 3, 8, 8)).shape
    torch.Size([1, 3, 10, 10])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin
from quantrewrite.registry import register_quant_module

__all__ = [
    "QuantConstantPad1d",
    "QuantConstantPad2d",
    "QuantConstantPad3d",
    "QuantReflectionPad1d",
    "QuantReflectionPad2d",
    "QuantReflectionPad3d",
    "QuantReplicationPad1d",
    "QuantReplicationPad2d",
    "QuantReplicationPad3d",
    "QuantZeroPad1d",
    "QuantZeroPad2d",
    "QuantZeroPad3d",
]


class _QuantPadNd(QuantInputMixin):
    """Shared constructor and forward: the float class's own arguments plus ``quant_desc_input``; quantize the
    input, then pad (the next class in the MRO)."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    enabled_by_default = False  # the rewrite quantizes a pad only when a config or a placement rule asks for it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quant_desc_input = kwargs.pop("quant_desc_input", None) or self.default_quant_desc_input
        super().__init__(*args, **kwargs)
        self.init_quantizer(quant_desc_input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self._input_quantizer.transient(input))


@register_quant_module(nn.ZeroPad1d)
class QuantZeroPad1d(_QuantPadNd, nn.ZeroPad1d):
    """nn.ZeroPad1d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ZeroPad2d)
class QuantZeroPad2d(_QuantPadNd, nn.ZeroPad2d):
    """nn.ZeroPad2d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ZeroPad3d)
class QuantZeroPad3d(_QuantPadNd, nn.ZeroPad3d):
    """nn.ZeroPad3d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ConstantPad1d)
class QuantConstantPad1d(_QuantPadNd, nn.ConstantPad1d):
    """nn.ConstantPad1d with an 8-bit per-tensor input quantizer (the pad value itself is not quantized)."""


@register_quant_module(nn.ConstantPad2d)
class QuantConstantPad2d(_QuantPadNd, nn.ConstantPad2d):
    """nn.ConstantPad2d with an 8-bit per-tensor input quantizer (the pad value itself is not quantized)."""


@register_quant_module(nn.ConstantPad3d)
class QuantConstantPad3d(_QuantPadNd, nn.ConstantPad3d):
    """nn.ConstantPad3d with an 8-bit per-tensor input quantizer (the pad value itself is not quantized)."""


@register_quant_module(nn.ReflectionPad1d)
class QuantReflectionPad1d(_QuantPadNd, nn.ReflectionPad1d):
    """nn.ReflectionPad1d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ReflectionPad2d)
class QuantReflectionPad2d(_QuantPadNd, nn.ReflectionPad2d):
    """nn.ReflectionPad2d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ReflectionPad3d)
class QuantReflectionPad3d(_QuantPadNd, nn.ReflectionPad3d):
    """nn.ReflectionPad3d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ReplicationPad1d)
class QuantReplicationPad1d(_QuantPadNd, nn.ReplicationPad1d):
    """nn.ReplicationPad1d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ReplicationPad2d)
class QuantReplicationPad2d(_QuantPadNd, nn.ReplicationPad2d):
    """nn.ReplicationPad2d with an 8-bit per-tensor input quantizer."""


@register_quant_module(nn.ReplicationPad3d)
class QuantReplicationPad3d(_QuantPadNd, nn.ReplicationPad3d):
    """nn.ReplicationPad3d with an 8-bit per-tensor input quantizer."""
