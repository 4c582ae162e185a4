"""QuantHFConv1D: Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2 and its family) with quantizers.

Conv1D is a linear layer whose weight is stored transposed relative to ``nn.Linear``: ``[in_features,
out_features]``, and ``y = x @ W + b``. One scale per output feature is therefore **axis 1** of its weight (an
amax of shape ``[1, out_features]``, ``W.abs().amax(dim=0)``), and the exported DequantizeLinear of the weight
carries ``axis=1``.

Configs give weight axes in ``nn.Linear``'s convention for this layer (``config_weight_axes``): the presets'
``weight: {axis: 0}`` ("one scale per output channel") becomes axis 1 of the Conv1D weight, so one config
quantizes a GPT-2 and a BERT alike, per output feature. A descriptor given to the constructor or to
``from_float`` is used as is (axes of the real ``[in, out]`` weight).

Importing this module imports transformers; the registry imports it only when a model holds a Conv1D (the
class exists, so transformers is already imported). ``import quantrewrite`` never imports transformers.

Example:
    >>> layer = QuantHFConv1D(nf=8, nx=16)      # 16 inputs, 8 outputs, weight [16, 8]
    >>> layer(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 8])
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from quantrewrite.nn.modules.quant_mixins import QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = ["QUANT_DESC_8BIT_HF_CONV1D_WEIGHT_PER_CHANNEL", "QuantHFConv1D"]

# One scale per output feature: axis 1 of the [in, out] weight.
QUANT_DESC_8BIT_HF_CONV1D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=1)


@register_quant_module(Conv1D)
class QuantHFConv1D(Conv1D, QuantMixin):
    """Conv1D whose input (per tensor) and weight (per output feature, axis 1) are fake-quantized; bias is not."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_HF_CONV1D_WEIGHT_PER_CHANNEL
    # Weight axis i of a config (nn.Linear's [out, in] convention) is axis config_weight_axes[i] of this weight.
    config_weight_axes = (1, 0)
    supports_parametrized_weight = True

    def __init__(self, nf: int, nx: int, **kwargs: Any) -> None:
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        super().__init__(nf, nx)
        self.init_quantizer(quant_desc_input, quant_desc_weight)

    @staticmethod
    def linear_features(module: Conv1D) -> tuple[int, int]:
        """(in, out) features: placement rules treat the layer as the GEMM it is, like nn.Linear."""
        return module.nx, module.nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = self._input_quantizer.transient(x)
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self._weight_quantizer(self.weight))
        return out.view(size_out)
