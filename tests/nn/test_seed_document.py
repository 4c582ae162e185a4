"""The three use cases of creating_custom_quantized_modules.rst, with the document's code as written.

Only the imports point at quantrewrite (the migration is a rename of the package). The class bodies below are
copied verbatim from the document, ``super(Cls, self)`` calls and ``_utils`` helpers included.
"""
# ruff: noqa: UP008  (the document's super(Cls, self) calls are kept as written)

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nn_reference import ref_fake_quant
from torch import nn
from torch.nn.modules import pooling

from quantrewrite import nn as quant_nn
from quantrewrite.descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QuantDescriptor
from quantrewrite.nn import TensorQuantizer
from quantrewrite.nn.modules import _utils


# ---------------------------------------------------------------------- use case 1, as in the document
class QuantMaxPool2d(pooling.MaxPool2d, _utils.QuantInputMixin):
    """Quantized 2D maxpool"""
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                return_indices=False, ceil_mode=False, **kwargs):
        super(QuantMaxPool2d, self).__init__(kernel_size, stride, padding, dilation,
                                            return_indices, ceil_mode)
        quant_desc_input = _utils.pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        self.init_quantizer(quant_desc_input)

    def forward(self, input):
        quant_input = self._input_quantizer(input)
        return super(QuantMaxPool2d, self).forward(quant_input)

    @property
    def input_quantizer(self):
        return self._input_quantizer


# ---------------------------------------------------------------------- use case 2, as in the document
class QuantLinear(nn.Linear, _utils.QuantMixin):

    def __init__(self, in_features, out_features, bias=True, **kwargs):
        super(QuantLinear, self).__init__(in_features, out_features, bias)
        quant_desc_input, quant_desc_weight = _utils.pop_quant_desc_in_kwargs(self.__class__, **kwargs)

        self.init_quantizer(quant_desc_input, quant_desc_weight)

    def forward(self, input):
        quant_input = self._input_quantizer(input)
        quant_weight = self._weight_quantizer(self.weight)

        output = F.linear(quant_input, quant_weight, bias=self.bias)

        return output

    @property
    def input_quantizer(self):
        return self._input_quantizer

    @property
    def weight_quantizer(self):
        return self._weight_quantizer


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
def test_user_quant_max_pool2d(static: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    if static:
        pool = QuantMaxPool2d(3, stride=2, padding=1, quant_desc_input=QuantDescriptor(num_bits=8, amax=1.5))
        amax = torch.tensor(1.5)
    else:
        pool = QuantMaxPool2d(3, stride=2, padding=1)
        amax = x.abs().max()
    assert isinstance(pool.input_quantizer, TensorQuantizer)
    assert torch.equal(pool(x), F.max_pool2d(ref_fake_quant(x, amax), 3, 2, 1))

    pool.input_quantizer.disable()
    assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1))
    with pytest.raises(TypeError, match="Unused keys"):
        QuantMaxPool2d(2, quant_desc_weight=QuantDescriptor())


def test_user_quant_linear_default_is_per_tensor_weight() -> None:
    """A user class inherits the mixin's defaults: 8-bit per-tensor for input AND weight (as in the original)."""
    torch.manual_seed(1)
    layer = QuantLinear(16, 8)
    assert layer.weight_quantizer.axis is None
    x = torch.randn(4, 16)
    w = layer.weight.detach()
    expected = F.linear(ref_fake_quant(x, x.abs().max()), ref_fake_quant(w, w.abs().max()), layer.bias)
    assert torch.equal(layer(x), expected)

    layer.input_quantizer.disable()
    layer.weight_quantizer.disable()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_user_quant_linear_honours_descriptors_and_matches_builtin() -> None:
    torch.manual_seed(2)
    layer = QuantLinear(16, 8, quant_desc_weight=QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW)
    x = torch.randn(3, 16)
    w = layer.weight.detach()
    expected = F.linear(ref_fake_quant(x, x.abs().max()), ref_fake_quant(w, w.abs().amax(dim=1, keepdim=True)),
                        layer.bias)
    assert torch.equal(layer(x), expected)
    builtin = quant_nn.QuantLinear(16, 8)
    builtin.load_state_dict(layer.state_dict())
    assert torch.equal(builtin(x), layer(x))
    with pytest.raises(TypeError, match="Unused keys"):
        QuantLinear(16, 8, quant_desc=QuantDescriptor())


def test_user_classes_get_from_float() -> None:
    torch.manual_seed(3)
    float_layer = nn.Linear(4, 2)
    layer = QuantLinear.from_float(float_layer)
    assert isinstance(layer, QuantLinear) and layer.weight is float_layer.weight
    x = torch.randn(2, 4)
    layer.input_quantizer.disable()
    layer.weight_quantizer.disable()
    assert torch.equal(layer(x), float_layer(x))
    pool = QuantMaxPool2d.from_float(nn.MaxPool2d(2))
    assert pool.kernel_size == 2 and isinstance(pool.input_quantizer, TensorQuantizer)


def test_tensor_quantizer_before_functional() -> None:
    """Use case 3 as written; float64 stays float64 (the grid is computed in float32, like fp16/bf16)."""
    torch.manual_seed(4)

    test_input = torch.randn(1, 5, 5, 5, dtype=torch.double)

    quantizer = TensorQuantizer(quant_nn.QuantLinear.default_quant_desc_input)

    quant_input = quantizer(test_input)

    out = F.adaptive_avg_pool2d(quant_input, 3)

    assert quant_input.dtype == torch.float64 and out.dtype == torch.float64
    assert out.shape == (1, 5, 3, 3)
    assert torch.equal(out, F.adaptive_avg_pool2d(ref_fake_quant(test_input, test_input.abs().max()), 3))

    quantizer.disable()
    assert torch.equal(F.adaptive_avg_pool2d(quantizer(test_input), 3), F.adaptive_avg_pool2d(test_input, 3))
