"""Quant pooling modules against a plain-torch reference: fake-quant the input per tensor, then the functional."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nn_reference import ref_fake_quant, sqnr_db

from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn import (
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


def case(case_id: str, shape: tuple[int, ...], make: Callable[..., Any],
         reference: Callable[[torch.Tensor], Any]) -> Any:
    """A module factory (taking the quant kwargs) and its float functional reference, for one input shape."""
    return pytest.param(shape, make, reference, id=case_id)


CASES = [
    case("maxpool1d-pad", (2, 3, 9), lambda **kw: QuantMaxPool1d(3, stride=2, padding=1, **kw),
         lambda x: F.max_pool1d(x, 3, 2, 1)),
    case("maxpool2d", (2, 3, 6, 6), lambda **kw: QuantMaxPool2d(2, **kw), lambda x: F.max_pool2d(x, 2)),
    case("maxpool2d-dilation-ceil", (1, 2, 9, 8), lambda **kw: QuantMaxPool2d(3, 2, 0, 2, ceil_mode=True, **kw),
         lambda x: F.max_pool2d(x, 3, 2, 0, 2, ceil_mode=True)),
    case("maxpool2d-indices", (1, 2, 6, 6), lambda **kw: QuantMaxPool2d(2, return_indices=True, **kw),
         lambda x: F.max_pool2d(x, 2, return_indices=True)),
    case("maxpool3d", (1, 2, 4, 4, 6), lambda **kw: QuantMaxPool3d((2, 2, 3), **kw),
         lambda x: F.max_pool3d(x, (2, 2, 3))),
    case("avgpool1d-exclude-pad", (2, 3, 9),
         lambda **kw: QuantAvgPool1d(3, stride=2, padding=1, count_include_pad=False, **kw),
         lambda x: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False)),
    case("avgpool2d-ceil-divisor", (2, 3, 7, 7),
         lambda **kw: QuantAvgPool2d(3, stride=2, padding=1, ceil_mode=True, divisor_override=5, **kw),
         lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=5)),
    case("avgpool3d", (1, 2, 4, 4, 4), lambda **kw: QuantAvgPool3d(2, **kw), lambda x: F.avg_pool3d(x, 2)),
    case("adaptiveavgpool1d", (2, 3, 9), lambda **kw: QuantAdaptiveAvgPool1d(4, **kw),
         lambda x: F.adaptive_avg_pool1d(x, 4)),
    case("adaptiveavgpool2d-none", (2, 3, 7, 6), lambda **kw: QuantAdaptiveAvgPool2d((3, None), **kw),
         lambda x: F.adaptive_avg_pool2d(x, (3, None))),
    case("adaptiveavgpool3d", (1, 2, 5, 4, 6), lambda **kw: QuantAdaptiveAvgPool3d(2, **kw),
         lambda x: F.adaptive_avg_pool3d(x, 2)),
]


def values(out: Any) -> torch.Tensor:
    """The pooled values (max pooling with return_indices returns (values, indices))."""
    return out[0] if isinstance(out, tuple) else out


def assert_same(actual: Any, expected: Any) -> None:
    """torch.equal on a tensor or on each tensor of a tuple (max pooling with return_indices)."""
    if isinstance(expected, tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert torch.equal(a, e)
    else:
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
@pytest.mark.parametrize("shape,make,reference", CASES)
def test_matches_reference_exactly(shape: tuple[int, ...], make: Callable[..., Any],
                                   reference: Callable[[torch.Tensor], Any], static: bool) -> None:
    torch.manual_seed(0)
    pool = make()
    x = torch.randn(shape)
    amax = x.abs().max()
    if static:
        amax = 0.6 * amax  # below max|x|: clipping happens
        pool.input_quantizer.amax = amax
    assert_same(pool(x), reference(ref_fake_quant(x, amax)))


@pytest.mark.parametrize("shape,make,reference", CASES)
def test_16bit_is_close_and_disabled_is_float(shape: tuple[int, ...], make: Callable[..., Any],
                                              reference: Callable[[torch.Tensor], Any]) -> None:
    """16-bit steps are amax/32767: SQNR ~ 85 dB on Gaussian data (8-bit: ~ 40 dB)."""
    torch.manual_seed(1)
    pool = make(quant_desc_input=QuantDescriptor(num_bits=16))
    assert pool.input_quantizer.num_bits == 16
    x = torch.randn(shape)
    expected = reference(x)
    assert sqnr_db(values(expected), values(pool(x))) > 60
    pool.input_quantizer.disable()
    assert_same(pool(x), expected)


def test_unbatched_input() -> None:
    torch.manual_seed(2)
    pool = QuantMaxPool2d(2)
    x = torch.randn(3, 6, 6)
    assert torch.equal(pool(x), F.max_pool2d(ref_fake_quant(x, x.abs().max()), 2))


def test_input_only_modules_have_no_weight_quantizer() -> None:
    pool = QuantAvgPool2d(2)
    assert not hasattr(pool, "_weight_quantizer")
    with pytest.raises(TypeError, match="Unused keys"):
        QuantAvgPool2d(2, quant_desc_weight=QuantDescriptor(axis=0))


def test_gradient_flows_through_quantized_pooling() -> None:
    torch.manual_seed(3)
    pool = QuantAvgPool2d(2)
    pool.input_quantizer.amax = 1.0
    x = torch.tensor([[[[0.5, 2.0], [-0.25, 1.0]]]], requires_grad=True)
    pool(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[[[0.25, 0.0], [0.25, 0.25]]]]))  # 2.0 is clipped: no gradient
