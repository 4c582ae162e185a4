"""QuantInstanceNorm{1,2,3}d against a plain-torch reference: fake-quant the input, then F.instance_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nn_reference import ref_fake_quant, sqnr_db

from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn import QuantInstanceNorm1d, QuantInstanceNorm2d, QuantInstanceNorm3d

CLASSES = {1: QuantInstanceNorm1d, 2: QuantInstanceNorm2d, 3: QuantInstanceNorm3d}
SHAPES = {1: (2, 3, 10), 2: (2, 3, 5, 6), 3: (1, 3, 3, 4, 5)}


def make_norm(dims: int, affine: bool, track: bool, **kwargs: object) -> torch.nn.Module:
    """A norm with non-trivial affine parameters and running statistics."""
    norm = CLASSES[dims](3, eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track, **kwargs)
    with torch.no_grad():
        if affine:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        if track:
            norm.running_mean.uniform_(-0.2, 0.2)
            norm.running_var.uniform_(0.5, 2.0)
    return norm


def reference(norm: torch.nn.Module, x: torch.Tensor, running: tuple | None) -> torch.Tensor:
    """F.instance_norm with the module's settings on ``x``, updating ``running`` (clones) like the module."""
    mean, var = running if running is not None else (None, None)
    use_input_stats = norm.training or not norm.track_running_stats
    return F.instance_norm(x, mean, var, norm.weight, norm.bias, use_input_stats, norm.momentum, norm.eps)


def running_clones(norm: torch.nn.Module) -> tuple | None:
    return (norm.running_mean.clone(), norm.running_var.clone()) if norm.track_running_stats else None


SETTINGS = [
    pytest.param(False, False, True, id="plain"),
    pytest.param(True, False, True, id="affine"),
    pytest.param(True, True, True, id="affine-tracked-train"),
    pytest.param(True, True, False, id="affine-tracked-eval"),
]


@pytest.mark.parametrize("static", [True, False], ids=["static-amax", "dynamic-amax"])
@pytest.mark.parametrize("affine,track,training", SETTINGS)
@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_matches_reference_exactly(dims: int, affine: bool, track: bool, training: bool, static: bool) -> None:
    torch.manual_seed(dims)
    norm = make_norm(dims, affine, track).train(training)
    x = torch.randn(SHAPES[dims]) * 2 + 0.5
    amax = x.abs().max()
    if static:
        amax = 0.7 * amax
        norm.input_quantizer.amax = amax
    running = running_clones(norm)
    expected = reference(norm, ref_fake_quant(x, amax), running)
    assert torch.equal(norm(x), expected)
    if track:  # running statistics are updated from the quantized input, as the reference did
        assert torch.equal(norm.running_mean, running[0])
        assert torch.equal(norm.running_var, running[1])


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_16bit_is_close_and_disabled_is_float(dims: int) -> None:
    """16-bit steps are amax/32767: SQNR well above 60 dB (8-bit: ~ 40 dB)."""
    torch.manual_seed(10 + dims)
    norm = make_norm(dims, affine=True, track=False, quant_desc_input=QuantDescriptor(num_bits=16))
    x = torch.randn(SHAPES[dims])
    expected = reference(norm, x, None)
    assert sqnr_db(expected, norm(x)) > 60
    norm.input_quantizer.disable()
    assert torch.equal(norm(x), expected)


def test_unbatched_input() -> None:
    torch.manual_seed(20)
    norm = make_norm(2, affine=True, track=False)
    x = torch.randn(3, 5, 6)
    expected = reference(norm, ref_fake_quant(x, x.abs().max()).unsqueeze(0), None).squeeze(0)
    assert torch.equal(norm(x), expected)


def test_float_settings_and_bias_flag_kept() -> None:
    norm = QuantInstanceNorm2d(4, eps=1e-2, momentum=None, affine=True, track_running_stats=True, bias=False,
                               dtype=torch.float64)
    assert (norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats) == \
        (4, 1e-2, None, True, True)
    assert norm.bias is None and norm.weight.dtype == torch.float64
    assert isinstance(norm, torch.nn.InstanceNorm2d)
