"""QuantConv{1,2,3}d and QuantConvTranspose{1,2,3}d against a plain-torch reference (exact where deterministic)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nn_reference import ref_fake_quant, sqnr_db
from torch import nn

from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn import (
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantConvTranspose1d,
    QuantConvTranspose2d,
    QuantConvTranspose3d,
)

CONV = {1: (QuantConv1d, F.conv1d), 2: (QuantConv2d, F.conv2d), 3: (QuantConv3d, F.conv3d)}
DECONV = {1: (QuantConvTranspose1d, F.conv_transpose1d), 2: (QuantConvTranspose2d, F.conv_transpose2d),
          3: (QuantConvTranspose3d, F.conv_transpose3d)}


def per_channel_amax(w: torch.Tensor) -> torch.Tensor:
    """max |w| over every dim but 0, shaped [C, 1, ...] to broadcast against w."""
    return w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)


def quantized_operands(module: nn.Module, x: torch.Tensor, static: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference fake-quantized (input, weight). ``static`` sets an amax below max|.|, so clipping happens."""
    in_amax = x.abs().max()
    w_amax = per_channel_amax(module.weight)
    if static:
        in_amax, w_amax = 0.6 * in_amax, 0.7 * w_amax
        module.input_quantizer.amax = in_amax
        module.weight_quantizer.amax = w_amax
    return ref_fake_quant(x, in_amax), ref_fake_quant(module.weight.detach(), w_amax)


def case(case_id: str, dims: int, shape: tuple[int, ...], **kwargs: Any) -> Any:
    """One parametrised module: (dims, constructor kwargs, input shape), with a readable id."""
    return pytest.param(dims, kwargs, shape, id=case_id)


CONV_CASES = [
    case("1d-stride2-groups2", 1, (2, 4, 9), in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
         groups=2),
    case("2d-dilation2-groups2", 2, (2, 4, 7, 7), in_channels=4, out_channels=6, kernel_size=3, padding=2,
         dilation=2, groups=2),
    case("2d-nobias-same", 2, (1, 3, 6, 6), in_channels=3, out_channels=5, kernel_size=3, padding="same",
         bias=False),
    case("3d-stride", 3, (1, 2, 4, 6, 6), in_channels=2, out_channels=4, kernel_size=(2, 3, 3), stride=(1, 2, 2),
         padding=1),
]


def _conv_reference(functional: Callable[..., torch.Tensor], conv: nn.Module, qx: torch.Tensor,
                    qw: torch.Tensor) -> torch.Tensor:
    return functional(qx, qw, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
@pytest.mark.parametrize("dims,kwargs,shape", CONV_CASES)
def test_conv_matches_reference_exactly(dims: int, kwargs: dict[str, Any], shape: tuple[int, ...],
                                        static: bool) -> None:
    torch.manual_seed(0)
    quant_cls, functional = CONV[dims]
    conv = quant_cls(**kwargs)
    x = torch.randn(shape)
    qx, qw = quantized_operands(conv, x, static)
    assert torch.equal(conv(x), _conv_reference(functional, conv, qx, qw))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv_padding_mode(padding_mode: str) -> None:
    torch.manual_seed(1)
    conv = QuantConv2d(3, 4, 3, padding=(1, 2), padding_mode=padding_mode)
    x = torch.randn(2, 3, 6, 7)
    qx, qw = quantized_operands(conv, x, static=True)
    padded = F.pad(qx, (2, 2, 1, 1), mode=padding_mode)
    assert torch.equal(conv(x), F.conv2d(padded, qw, conv.bias))


# groups, dilation and output_padding all exercised
DECONV_CASES = [
    case("1d-groups2-outpad", 1, (2, 4, 5), in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
         output_padding=1, groups=2),
    case("2d-groups2-dilation2-outpad", 2, (2, 4, 4, 5), in_channels=4, out_channels=6, kernel_size=3, stride=2,
         padding=1, output_padding=1, groups=2, dilation=2),
    case("2d-nobias", 2, (1, 3, 3, 3), in_channels=3, out_channels=2, kernel_size=2, stride=2, bias=False),
    case("3d-groups2", 3, (1, 4, 2, 3, 3), in_channels=4, out_channels=2, kernel_size=2, stride=2, groups=2),
]


def _deconv_reference(functional: Callable[..., torch.Tensor], deconv: nn.Module, qx: torch.Tensor,
                      qw: torch.Tensor, output_padding: Any = None) -> torch.Tensor:
    output_padding = deconv.output_padding if output_padding is None else output_padding
    return functional(qx, qw, deconv.bias, deconv.stride, deconv.padding, output_padding, deconv.groups,
                      deconv.dilation)


@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
@pytest.mark.parametrize("dims,kwargs,shape", DECONV_CASES)
def test_conv_transpose_matches_reference_exactly(dims: int, kwargs: dict[str, Any],
                                                  shape: tuple[int, ...], static: bool) -> None:
    torch.manual_seed(2)
    quant_cls, functional = DECONV[dims]
    deconv = quant_cls(**kwargs)
    x = torch.randn(shape)
    qx, qw = quantized_operands(deconv, x, static)
    assert torch.equal(deconv(x), _deconv_reference(functional, deconv, qx, qw))


@pytest.mark.parametrize("full_size", [False, True], ids=["spatial-size", "full-size"])
def test_conv_transpose_output_size(full_size: bool) -> None:
    torch.manual_seed(3)
    deconv = QuantConvTranspose2d(4, 6, 3, stride=3, padding=1, groups=2, dilation=2)
    x = torch.randn(2, 4, 4, 5)
    qx, qw = quantized_operands(deconv, x, static=True)
    # minimum size per dim: (in - 1) * stride - 2 * padding + dilation * (k - 1) + 1 -> 12 and 15
    spatial = [14, 15]
    out = deconv(x, output_size=[2, 6, *spatial] if full_size else spatial)
    assert out.shape == (2, 6, 14, 15)
    assert torch.equal(out, _deconv_reference(F.conv_transpose2d, deconv, qx, qw, output_padding=(2, 0)))
    with pytest.raises(ValueError, match="valid sizes"):
        deconv(x, output_size=[20, 20])


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_conv_transpose_weight_amax_is_per_input_channel(dims: int) -> None:
    """Weight [Cin, Cout/g, k...]: axis 0 is Cin; a calibrated amax has shape [Cin, 1, ...]."""
    torch.manual_seed(4)
    quant_cls, _ = DECONV[dims]
    deconv = quant_cls(4, 6, 3, groups=2)
    assert deconv.weight.shape[:2] == (4, 3)
    assert deconv.weight_quantizer.axis == (0,)
    quantizer = deconv.weight_quantizer
    quantizer.disable_quant()
    quantizer.enable_calib()
    deconv(torch.randn(1, 4, *([3] * dims)))
    quantizer.load_calib_amax()
    quantizer.disable_calib()
    quantizer.enable_quant()
    assert quantizer.amax.shape == (4,) + (1,) * (dims + 1)
    assert torch.equal(quantizer.amax, per_channel_amax(deconv.weight))


def test_conv_transpose_rejects_non_zeros_padding_mode() -> None:
    deconv = QuantConvTranspose2d(2, 2, 3, padding_mode="zeros")
    deconv.padding_mode = "reflect"
    with pytest.raises(ValueError, match="Only `zeros` padding mode"):
        deconv(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("family,dims,kwargs,shape",
                         [pytest.param("conv", *c.values, id=f"conv-{c.id}") for c in CONV_CASES]
                         + [pytest.param("deconv", *c.values, id=f"deconv-{c.id}") for c in DECONV_CASES])
def test_16bit_is_close_to_float(family: str, dims: int, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    """16-bit steps are amax/32767: SQNR ~ 80+ dB; 8-bit gives ~ 35-45 dB, so 60 dB separates them."""
    torch.manual_seed(5)
    quant_cls, functional = (CONV if family == "conv" else DECONV)[dims]
    module = quant_cls(**kwargs, quant_desc_input=QuantDescriptor(num_bits=16),
                       quant_desc_weight=QuantDescriptor(num_bits=16, axis=0))
    x = torch.randn(shape)
    reference = _conv_reference if family == "conv" else _deconv_reference
    float_out = reference(functional, module, x, module.weight)
    quant_out = module(x)
    assert sqnr_db(float_out, quant_out) > 60
    module.input_quantizer.disable()
    module.weight_quantizer.disable()
    assert torch.equal(module(x), float_out)


def test_conv_backward_reaches_weight_and_input() -> None:
    torch.manual_seed(6)
    conv = QuantConv2d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None and conv.bias.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("quant_cls", [QuantConv2d, QuantConvTranspose2d], ids=["conv2d", "convtranspose2d"])
def test_cuda_matches_reference(quant_cls: type) -> None:
    torch.manual_seed(7)
    module = quant_cls(4, 6, 3, groups=2).cuda()
    x = torch.randn(2, 4, 6, 6, device="cuda")
    qx, qw = quantized_operands(module, x, static=True)
    # The fake quantization is elementwise: exactly the reference, and the same as on the CPU.
    assert torch.equal(module.input_quantizer(x), qx)
    assert torch.equal(module.weight_quantizer(module.weight), qw)
    cpu_weight = module.weight.detach().cpu()
    assert torch.equal(qw.cpu(), ref_fake_quant(cpu_weight, 0.7 * per_channel_amax(cpu_weight)))
    if quant_cls is QuantConv2d:
        expected = _conv_reference(F.conv2d, module, qx, qw)
    else:
        expected = _deconv_reference(F.conv_transpose2d, module, qx, qw)
    torch.testing.assert_close(module(x), expected)  # cuDNN may pick another algorithm: close, not equal
