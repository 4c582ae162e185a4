"""Quant module families. Importing this package registers every built-in Quant class in the registry."""

from quantrewrite.nn.modules.clip import Clip
from quantrewrite.nn.modules.quant_attention import QuantMultiheadAttention
from quantrewrite.nn.modules.quant_conv import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
)
from quantrewrite.nn.modules.quant_instancenorm import QuantInstanceNorm1d, QuantInstanceNorm2d, QuantInstanceNorm3d
from quantrewrite.nn.modules.quant_linear import QuantLinear
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.nn.modules.quant_pooling import (
    QuantAdaptiveAvgPool1d,
    QuantAdaptiveAvgPool2d,
    QuantAdaptiveAvgPool3d,
    QuantAvgPool1d,
    QuantAvgPool2d,
    QuantAvgPool3d,
    QuantMaxPool1d,
    QuantMaxPool2d,
    QuantMaxPool3d,
)
from quantrewrite.nn.modules.tensor_quantizer import CalibrationError, TensorQuantizer

__all__ = [
    "CalibrationError",
    "Clip",
    "QuantAdaptiveAvgPool1d",
    "QuantAdaptiveAvgPool2d",
    "QuantAdaptiveAvgPool3d",
    "QuantAvgPool1d",
    "QuantAvgPool2d",
    "QuantAvgPool3d",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose1d",
    "QuantConvTranspose2d",
    "QuantConvTranspose3d",
    "QuantInputMixin",
    "QuantInstanceNorm1d",
    "QuantInstanceNorm2d",
    "QuantInstanceNorm3d",
    "QuantLinear",
    "QuantMaxPool1d",
    "QuantMaxPool2d",
    "QuantMaxPool3d",
    "QuantMixin",
    "QuantMultiheadAttention",
    "TensorQuantizer",
    "pop_quant_desc_in_kwargs",
]
