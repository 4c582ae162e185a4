"""QuantLinear against a plain-torch reference: fake-quant input per tensor, weight per row, then F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nn_reference import ref_fake_quant, sqnr_db

from quantrewrite.descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QuantDescriptor
from quantrewrite.nn import QuantLinear


def reference_operands(linear: QuantLinear, x: torch.Tensor, static: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fake-quantized (input, weight); ``static`` sets an amax below max|.| so clipping happens."""
    in_amax = x.abs().max()
    w_amax = linear.weight.detach().abs().amax(dim=1, keepdim=True)
    if static:
        in_amax, w_amax = 0.5 * in_amax, 0.8 * w_amax
        linear.input_quantizer.amax = in_amax
        linear.weight_quantizer.amax = w_amax
    return ref_fake_quant(x, in_amax), ref_fake_quant(linear.weight.detach(), w_amax)


CASES = [
    pytest.param(16, 8, True, (4, 16), id="2d-input"),
    pytest.param(12, 5, True, (2, 3, 12), id="3d-input"),
    pytest.param(7, 9, False, (6, 7), id="nobias"),
]


@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
@pytest.mark.parametrize("in_features,out_features,bias,shape", CASES)
def test_matches_reference_exactly(in_features: int, out_features: int, bias: bool, shape: tuple[int, ...],
                                   static: bool) -> None:
    torch.manual_seed(0)
    linear = QuantLinear(in_features, out_features, bias=bias)
    x = torch.randn(shape)
    qx, qw = reference_operands(linear, x, static)
    assert torch.equal(linear(x), F.linear(qx, qw, linear.bias))


def test_defaults_are_per_tensor_input_and_per_row_weight() -> None:
    linear = QuantLinear(3, 2)
    assert linear.input_quantizer.axis is None
    assert linear.weight_quantizer.quant_desc is QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    assert linear.weight_quantizer.axis == (0,)


def test_bias_is_not_quantized() -> None:
    torch.manual_seed(1)
    linear = QuantLinear(4, 3)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([0.123456, -1.5e-3, 7.654321]))
    out = linear(torch.zeros(1, 4))
    assert torch.equal(out[0], linear.bias.detach())


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 16)], ids=["2d-input", "3d-input"])
def test_16bit_is_close_to_float(shape: tuple[int, ...]) -> None:
    """16-bit steps are amax/32767: SQNR ~ 80+ dB, while 8-bit stays near 40 dB."""
    torch.manual_seed(2)
    linear = QuantLinear(16, 8, quant_desc_input=QuantDescriptor(num_bits=16),
                         quant_desc_weight=QuantDescriptor(num_bits=16, axis=0))
    x = torch.randn(shape)
    float_out = F.linear(x, linear.weight, linear.bias)
    assert sqnr_db(float_out, linear(x)) > 60
    eight_bit = QuantLinear(16, 8)
    eight_bit.load_state_dict(linear.state_dict())
    assert sqnr_db(float_out, eight_bit(x)) < 60  # the threshold separates 16 from 8 bits


def test_disabled_quantizers_give_float_result() -> None:
    torch.manual_seed(3)
    linear = QuantLinear(5, 4)
    x = torch.randn(3, 5)
    linear.input_quantizer.disable()
    linear.weight_quantizer.disable()
    assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))


def test_straight_through_gradient() -> None:
    """Input elements clipped by a static amax get no gradient (STE); the others get the float gradient."""
    torch.manual_seed(4)
    linear = QuantLinear(3, 2)
    linear.input_quantizer.amax = 1.0
    x = torch.tensor([[0.5, -2.0, 1.0]], requires_grad=True)
    linear(x).sum().backward()
    qw = ref_fake_quant(linear.weight.detach(), linear.weight.detach().abs().amax(dim=1, keepdim=True))
    expected = qw.sum(dim=0, keepdim=True) * torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(x.grad, expected)
    assert linear.weight.grad is not None and linear.bias.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
def test_cuda_matches_reference(static: bool) -> None:
    torch.manual_seed(5)
    linear = QuantLinear(16, 8).cuda()
    x = torch.randn(4, 16, device="cuda")
    qx, qw = reference_operands(linear, x, static)
    # The fake quantization is elementwise: exactly the reference (CPU and CUDA must agree).
    assert torch.equal(linear.weight_quantizer(linear.weight), qw)
    assert torch.equal(linear.input_quantizer(x), qx)
    torch.testing.assert_close(linear(x), F.linear(qx, qw, linear.bias))
