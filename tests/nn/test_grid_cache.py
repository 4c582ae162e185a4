"""The cached grid of a static amax (``_grid_cache``) and the per-shape plans of a grid are never stale: every
way of changing amax, and every change of the weight, reaches the forward and the straight-through backward.
References: ``fake_tensor_quant`` on a fresh copy of amax, and the mask ``|x| <= amax`` computed by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from quantrewrite import _kernels
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn import QuantLinear, TensorQuantizer
from quantrewrite.tensor_quant import _PLANS_PER_GRID, fake_tensor_quant


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def check_forward_backward(quantizer: TensorQuantizer, x: torch.Tensor) -> None:
    """Output and input gradient equal the references computed from the quantizer's current amax."""
    amax = quantizer.amax.detach().float().clone()
    xr = x.clone().requires_grad_()
    grad = randn(*x.shape, seed=7)
    out = quantizer(xr)
    out.backward(grad)
    assert torch.equal(bits(out), bits(fake_tensor_quant(x, amax, 8, False, False)))
    expected_grad = torch.where(x.abs() <= amax, grad, torch.zeros(()))
    assert torch.equal(bits(xr.grad), bits(expected_grad))


def _set_buffer(quantizer: TensorQuantizer, value: torch.Tensor) -> None:
    quantizer._amax = value  # nn.Module.__setattr__ replaces the registered buffer object


CHANGES: dict[str, Callable[[TensorQuantizer], None]] = {
    "in_place_mul": lambda q: q.amax.mul_(0.5),
    "setter_copy": lambda q: setattr(q, "amax", q.amax * 0.25),
    "data_fill": lambda q: q._amax.data.fill_(0.3),
    "data_one_channel": lambda q: q._amax.data.view(-1)[-1].mul_(0.1),
    "data_replaced": lambda q: setattr(q._amax, "data", q._amax.detach() * 0.5),
    "data_replaced_same_values": lambda q: setattr(q._amax, "data", q._amax.detach().clone()),
    "data_dtype_double": lambda q: setattr(q._amax, "data", q._amax.detach().double() * 0.5),
    "buffer_replaced": lambda q: _set_buffer(q, q.amax.detach() * 0.5),
    "module_double": lambda q: q.double(),
    "load_state_dict": lambda q: q.load_state_dict({"_amax": q.amax.detach() * 0.75}),
}


@pytest.mark.parametrize("axis", [None, (0,)], ids=["per-tensor", "axis0"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_every_amax_change_reaches_forward_and_backward(change: str, axis: tuple[int, ...] | None) -> None:
    x = randn(4, 6, 3, 3) * 2
    reduce = (1, 2, 3)
    amax = x.abs().amax() if axis is None else x.abs().amax(dim=reduce, keepdim=True)
    quantizer = TensorQuantizer(QuantDescriptor(axis=axis, amax=amax.tolist()))
    check_forward_backward(quantizer, x)  # builds and caches the grid
    check_forward_backward(quantizer, x)  # served from the cache
    before = quantizer.amax.detach().clone()
    with torch.no_grad():
        CHANGES[change](quantizer)
    if change == "module_double" or change == "data_dtype_double":
        assert quantizer.amax.dtype == torch.float64
    if change not in ("data_replaced_same_values", "module_double"):
        assert not torch.equal(quantizer.amax.float(), before)  # the change is real
    check_forward_backward(quantizer, x)


def test_unchanged_amax_reuses_one_grid_and_one_plan_per_shape() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.5))
    for seed in range(3):
        check_forward_backward(quantizer, randn(5, 7, seed=seed))
    cache = quantizer._grid_cache
    grid = cache.grid
    assert list(grid.plans) == [((5, 7), True)]
    check_forward_backward(quantizer, randn(7, 5))
    assert quantizer._grid_cache is cache and set(grid.plans) == {((5, 7), True), ((7, 5), True)}


def test_many_shapes_keep_the_plans_bounded_and_right() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=(0,), amax=[[1.0], [2.0], [0.5]]))
    for width in range(1, 2 * _PLANS_PER_GRID + 3):
        check_forward_backward(quantizer, randn(3, width, seed=width) * 2)
    assert len(quantizer._grid_cache.grid.plans) <= _PLANS_PER_GRID


@pytest.mark.parametrize("axis", [None, (0,)], ids=["per-tensor", "axis0"])
def test_serial_and_parallel_kernels_around_the_threshold(axis: tuple[int, ...] | None) -> None:
    # Up to SERIAL_MAX elements the kernels run on the calling thread, above it in parallel: same bits.
    for numel in (_kernels.SERIAL_MAX - 64, _kernels.SERIAL_MAX, _kernels.SERIAL_MAX + 64):
        x = randn(64, numel // 64, seed=numel) * 2
        amax = torch.tensor(1.5) if axis is None else torch.linspace(0.5, 2.5, 64).reshape(64, 1)
        quantizer = TensorQuantizer(QuantDescriptor(axis=axis, amax=amax.tolist()))
        check_forward_backward(quantizer, x)  # clipped: the masking backward too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_input_device_change_rebuilds_the_grid() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = randn(10) * 2
    cpu = quantizer(x)
    assert torch.equal(quantizer(x.cuda()).cpu(), cpu)
    assert quantizer._grid_cache.device == 0
    assert torch.equal(quantizer(x), cpu)


def _linear_with_weight_amax() -> QuantLinear:
    torch.manual_seed(5)
    module = QuantLinear(6, 4)
    module.input_quantizer.disable()
    module.weight_quantizer.amax = module.weight.detach().abs().amax(dim=1, keepdim=True)
    return module


def _expected(module: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    weight = fake_tensor_quant(module.weight.detach(), module.weight_quantizer.amax, 8, False, False)
    return nn.functional.linear(x, weight, module.bias.detach())


def test_training_steps_quantize_the_current_weight() -> None:
    # Optimizer steps move the weight (some past amax: the masking backward) and change no cached grid.
    module = _linear_with_weight_amax().train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    x = randn(3, 6)
    for _ in range(3):
        out = module(x)
        assert torch.equal(bits(out), bits(_expected(module, x)))
        optimizer.zero_grad()
        (out * randn(3, 4, seed=1)).sum().backward()
        weight = module.weight.detach().clone()
        inside = weight.abs() <= module.weight_quantizer.amax
        grad_weight = module.weight.grad.clone()
        assert bool((grad_weight[~inside] == 0).all())
        optimizer.step()
        assert not torch.equal(module.weight.detach(), weight)
    state = {name: value.clone() * 0.5 for name, value in module.state_dict().items()}
    module.load_state_dict(state)
    assert torch.equal(bits(module(x)), bits(_expected(module, x)))
