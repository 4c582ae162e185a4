"""The straight-through backward's fast path: the forward kernel also tells whether some |x| > amax (or NaN);
when none is, the backward passes the incoming gradient on untouched. Checked against independent references:
the mask ``|x| <= amax`` computed with numpy, and the kernels' plain forward for the values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantrewrite import _kernel_loader, _kernels
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.tensor_quant import fake_tensor_quant, prepare_grid, tensor_quant


@pytest.fixture(autouse=True)
def fused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUANTREWRITE_EAGER", raising=False)
    assert _kernel_loader.wait_loaded()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def reference_outside(x: torch.Tensor, amax: torch.Tensor) -> bool:
    return bool(np.any(~(np.abs(x.numpy()) <= amax.numpy())))  # NaN compares False: outside


def views() -> list[tuple[str, tuple[int, ...], torch.Tensor, tuple[int, int, int]]]:
    """(name, shape, amax shaped to broadcast, kernel view): per-tensor rows plus a tail, a small serial
    tensor, per-channel on dim 0 (serial, and parallel above ``SERIAL_MAX`` elements) and on dim 1."""
    big = 3 * _kernels.ROW + 77
    return [
        ("per-tensor rows+tail", (big,), torch.tensor(1.5), (1, 1, big)),
        ("per-tensor serial", (37,), torch.tensor(1.5), (1, 1, 37)),
        ("axis 0", (16, 8, 3, 3), torch.linspace(0.5, 2.5, 16).reshape(16, 1, 1, 1), (1, 16, 72)),
        ("axis 0 parallel", (64, 8, 9, 9), torch.linspace(0.5, 2.5, 64).reshape(64, 1, 1, 1), (1, 64, 648)),
        ("axis 1", (4, 6, 5), torch.linspace(0.5, 2.5, 6).reshape(1, 6, 1), (4, 6, 5)),
    ]


def place(x: torch.Tensor, index: int, value: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[index] = value
    return x


@pytest.mark.parametrize("fake", [True, False], ids=["fake", "integer"])
@pytest.mark.parametrize("case", views(), ids=lambda case: case[0])
def test_clipped_flag_and_values_match_the_references(case, fake: bool) -> None:
    _, shape, amax, view = case
    grid = prepare_grid(amax, 8)
    amax_full = amax.expand(shape).contiguous()
    gen = torch.Generator().manual_seed(3)
    inside = (torch.rand(shape, generator=gen) * 2 - 1) * amax_full  # every |x| <= amax
    last = inside.numel() - 1
    at_amax = place(place(inside, 0, amax_full.view(-1)[0]), last, -amax_full.view(-1)[last])  # inclusive
    above = place(inside, last // 2, torch.nextafter(amax_full.view(-1)[last // 2], torch.tensor(9.0)))
    below = place(inside, last, -torch.nextafter(amax_full.view(-1)[last], torch.tensor(9.0)))
    nan = place(inside, last, torch.tensor(float("nan")))
    for x, expected in ((inside, False), (at_amax, False), (above, True), (below, True), (nan, True)):
        assert reference_outside(x, amax_full) == expected  # the reference agrees with the intent
        out, plain = torch.empty_like(x), torch.empty_like(x)
        inv = grid.inv_scale_host if fake else grid.scale_host
        negative, clipped = _kernels.quant_find_clipped_into(x, out, view, grid.scale_host, inv, grid.amax_host,
                                                             grid.min_bound, grid.max_bound, fake)
        if fake:
            _kernels.fake_quant_into(x, plain, view, grid.scale_host, inv, grid.min_bound, grid.max_bound)
        else:
            _kernels.quant_into(x, plain, view, grid.scale_host, grid.min_bound, grid.max_bound)
        assert clipped == expected
        assert negative == bool((x < 0).any())
        assert torch.equal(bits(out), bits(plain))


def test_zero_amax_and_unsigned_negatives() -> None:
    x = torch.zeros(40)
    grid = prepare_grid(torch.tensor(0.0), 8)
    out = torch.empty_like(x)
    args = (grid.scale_host, grid.inv_scale_host, grid.amax_host, grid.min_bound, grid.max_bound, True)
    assert _kernels.quant_find_clipped_into(x, out, (1, 1, 40), *args) == (False, False)  # |0| <= 0
    assert _kernels.quant_find_clipped_into(place(x, 5, torch.tensor(-1e-3)), out, (1, 1, 40), *args) == (True, True)
    unsigned = prepare_grid(torch.tensor(1.0), 8, unsigned=True)
    y = place(torch.rand(40), 7, torch.tensor(-0.5))
    flags = _kernels.quant_find_clipped_into(y, out, (1, 1, 40), unsigned.scale_host, unsigned.inv_scale_host,
                                             unsigned.amax_host, unsigned.min_bound, unsigned.max_bound, True)
    assert flags == (True, False)  # negative found by its own loop; |-0.5| <= 1 is inside


def ste_reference(x: torch.Tensor, amax: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    inside = np.abs(x.detach().float().numpy()) <= amax.numpy()
    return torch.from_numpy(np.where(inside, grad.float().numpy(), np.float32(0)))


@pytest.mark.parametrize("path", ["fused", "eager"])
@pytest.mark.parametrize("clip", [False, True], ids=["nothing-clipped", "some-clipped"])
@pytest.mark.parametrize("fn", ["fake", "integer"])
def test_gradient_is_the_straight_through_estimator(path: str, clip: bool, fn: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "eager":
        monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(32, 4, 3, 3, generator=gen)
    amax = x0.abs().amax(dim=(1, 2, 3), keepdim=True) * (0.8 if clip else 1.0)
    grad = torch.randn(x0.shape, generator=gen)
    x = x0.clone().requires_grad_()
    out = fake_tensor_quant(x, amax, 8) if fn == "fake" else tensor_quant(x, amax, 8)[0]
    out.backward(grad)
    assert torch.equal(bits(x.grad), bits(ste_reference(x0, amax, grad)))
    assert bool((x.grad == 0).any()) == clip
    # the fast path is taken exactly where it applies (the eager path always masks)
    assert out.grad_fn.clipped == (clip or path == "eager")


def test_weight_quantizer_calibrated_with_max_passes_the_gradient_through() -> None:
    conv_weight = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(6)))
    quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, axis=(0,)))
    quantizer.amax = conv_weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)  # what max calibration gives
    grad = torch.randn(conv_weight.shape)
    out = quantizer(conv_weight)
    out.backward(grad)
    assert not out.grad_fn.clipped
    assert torch.equal(bits(conv_weight.grad), bits(grad))
    with torch.no_grad():  # an optimizer step moves one weight past its channel's amax
        conv_weight[3, 0, 0, 0] = quantizer.amax[3].item() * 1.5
    conv_weight.grad = None
    out = quantizer(conv_weight)
    out.backward(grad)
    assert out.grad_fn.clipped
    assert torch.equal(bits(conv_weight.grad), bits(ste_reference(conv_weight, quantizer.amax, grad)))


def test_half_precision_inputs_and_nan() -> None:
    x0 = torch.randn(300, generator=torch.Generator().manual_seed(7)).half()
    amax = x0.float().abs().max()
    grad = torch.randn(300).half()
    x = x0.clone().requires_grad_()
    fake_tensor_quant(x, amax, 8).backward(grad)
    assert torch.equal(x.grad, grad)
    x_nan = place(x0, 11, torch.tensor(float("nan"))).requires_grad_()
    fake_tensor_quant(x_nan, amax, 8).backward(grad)
    assert x_nan.grad[11].item() == 0.0  # NaN is outside: masked
    assert torch.equal(x_nan.grad.float(), ste_reference(x_nan, amax, grad))
