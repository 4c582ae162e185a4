"""Clip: the learnable clamp of learn_amax quantizers; its gradients against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantrewrite.nn.modules.clip import Clip, clip


def hand_grads(x: torch.Tensor, grad: torch.Tensor, lo: float, hi: float) -> tuple[list[float], float, float]:
    """grad_x passes strictly inside (lo, hi); grad_lo sums where x <= lo, grad_hi where x >= hi."""
    grad_x = [g if lo < v < hi else 0.0 for v, g in zip(x.tolist(), grad.tolist())]
    grad_lo = sum(g for v, g in zip(x.tolist(), grad.tolist()) if v <= lo)
    grad_hi = sum(g for v, g in zip(x.tolist(), grad.tolist()) if v >= hi)
    return grad_x, grad_lo, grad_hi


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 2.0), (-0.5, 0.5), (0.0, 1.0)], ids=["asym", "sym", "relu-like"])
def test_forward_and_gradients(lo: float, hi: float) -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.3, 0.5, 1.0, 1.9, 2.0, 5.0], requires_grad=True)
    grad = torch.arange(1.0, 11.0) ** 2
    module = Clip(lo, hi, learn_min=True, learn_max=True)
    out = module(x)
    assert torch.equal(out, x.detach().clamp(lo, hi))
    out.backward(grad)
    grad_x, grad_lo, grad_hi = hand_grads(x.detach(), grad, lo, hi)
    assert x.grad.tolist() == grad_x
    assert module.clip_value_min.grad.item() == grad_lo
    assert module.clip_value_max.grad.item() == grad_hi
    assert module.clip_value_min.grad.shape == ()


def test_bounds_at_exact_values_go_to_the_bounds() -> None:
    # x == lo and x == hi: the gradient goes to the bound, not to x (NUMERICS: x <= lo, x >= hi).
    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    lo = torch.tensor(-1.0, requires_grad=True)
    hi = torch.tensor(1.0, requires_grad=True)
    clip(x, lo, hi).backward(torch.tensor([3.0, 5.0]))
    assert x.grad.tolist() == [0.0, 0.0]
    assert (lo.grad.item(), hi.grad.item()) == (3.0, 5.0)


def test_fixed_bounds_are_buffers() -> None:
    module = Clip(-1.0, 1.0)
    assert isinstance(module.clip_value_min, torch.Tensor) and not isinstance(module.clip_value_min, nn.Parameter)
    assert list(module.state_dict()) == ["clip_value_min", "clip_value_max"]
    assert list(module.parameters()) == []
    x = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    module(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_learnable_bounds_are_parameters() -> None:
    module = Clip(-1.0, 1.0, learn_min=True, learn_max=True)
    assert {name for name, _ in module.named_parameters()} == {"clip_value_min", "clip_value_max"}
    assert module.extra_repr() == "min=-1.0000, max=1.0000"


def test_min_above_max_raises() -> None:
    with pytest.raises(ValueError, match="clip_value_min"):
        Clip(2.0, 1.0)


def test_python_float_bounds() -> None:
    assert clip(torch.tensor([-2.0, 0.5, 3.0]), -1.0, 1.0).tolist() == [-1.0, 0.5, 1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_sum_bound_gradients_in_fp32(dtype: torch.dtype) -> None:
    module = Clip(-1.0, 1.0, learn_min=True, learn_max=True)
    x = torch.full((4096,), 3.0, dtype=dtype, requires_grad=True)
    out = module(x)
    assert out.dtype == dtype
    out.backward(torch.full((4096,), 16.0, dtype=dtype))
    # 4096 * 16 = 65536 overflows fp16 (max 65504); summed in float32 it is exact.
    assert module.clip_value_max.grad.item() == 65536.0
    assert module.clip_value_max.grad.dtype == torch.float32
    assert module.clip_value_min.grad.item() == 0.0


def test_optimizer_moves_the_bounds() -> None:
    module = Clip(-1.0, 1.0, learn_min=True, learn_max=True)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x = torch.tensor([-3.0, 0.0, 3.0])
    loss = -module(x).sum()  # wants hi up, lo up (i.e. less negative output)
    loss.backward()
    optimizer.step()
    assert module.clip_value_max.item() == pytest.approx(1.1)
    assert module.clip_value_min.item() == pytest.approx(-0.9)
