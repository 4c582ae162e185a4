"""`from quantrewrite import nn as quant_nn`: TensorQuantizer and every Quant module.

The pytorch-quantization import path.
"""

from quantrewrite.nn import modules
from quantrewrite.nn.modules import (
    CalibrationError,
    Clip,
    QuantAdaptiveAvgPool1d,
    QuantAdaptiveAvgPool2d,
    QuantAdaptiveAvgPool3d,
    QuantAvgPool1d,
    QuantAvgPool2d,
    QuantAvgPool3d,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
    QuantInputMixin,
    QuantInstanceNorm1d,
    QuantInstanceNorm2d,
    QuantInstanceNorm3d,
    QuantLinear,
    QuantMaxPool1d,
    QuantMaxPool2d,
    QuantMaxPool3d,
    QuantMixin,
    QuantMultiheadAttention,
    TensorQuantizer,
    pop_quant_desc_in_kwargs,
)

__all__ = list(modules.__all__)
