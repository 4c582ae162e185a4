"""Eval-mode inference does not re-quantize unchanged weights, and never serves a stale result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantrewrite._kernel_loader import wait_loaded
from quantrewrite._kernels import same_contents
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn import QuantConv2d, QuantLinear, TensorQuantizer


def fresh(quantizer: TensorQuantizer, weight: torch.Tensor) -> torch.Tensor:
    """What the quantizer computes without any cache: a plain tensor input."""
    return quantizer(weight.detach().clone())


@pytest.fixture
def setup():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(8, 4))
    quantizer = TensorQuantizer(QuantDescriptor(axis=0)).eval()
    quantizer.amax = weight.detach().abs().amax(dim=1, keepdim=True) * 0.9
    return quantizer, weight


def test_eval_no_grad_reuses_the_quantized_weight(setup):
    quantizer, weight = setup
    with torch.no_grad():
        first = quantizer(weight)
        second = quantizer(weight)
        assert second is first
        assert torch.equal(first, fresh(quantizer, weight))
    with torch.inference_mode():
        assert torch.equal(quantizer(weight), first)


@pytest.mark.parametrize("change", ["weight_in_place", "amax_copy", "amax_reset", "num_bits", "state_dict",
                                    "replaced_data", "weight_data_mul", "weight_data_one_element",
                                    "weight_data_last_byte", "weight_data_copy", "amax_data_fill",
                                    "amax_data_one_channel"])
def test_any_change_recomputes(setup, change):
    quantizer, weight = setup
    with torch.no_grad():
        before = quantizer(weight)
        if change == "weight_in_place":
            weight.mul_(0.5)
        elif change == "amax_copy":
            quantizer.amax = quantizer.amax * 0.5
        elif change == "amax_reset":
            quantizer.reset_amax()
        elif change == "num_bits":
            quantizer.num_bits = 4
        elif change == "state_dict":
            quantizer.load_state_dict({"_amax": quantizer.amax * 0.25})
        elif change == "replaced_data":
            weight.data = torch.randn(8, 4)
        # Writes through .data bump no version counter: only the contents show them.
        elif change == "weight_data_mul":
            weight.data.mul_(0.5)
        elif change == "weight_data_one_element":
            weight.data[3, 1] += 0.75
        elif change == "weight_data_last_byte":  # the tail past the last full block of the comparison
            weight.data[-1, -1] = -weight.data[-1, -1]
        elif change == "weight_data_copy":
            weight.data.copy_(torch.randn(8, 4))
        elif change == "amax_data_fill":
            quantizer._amax.data.fill_(0.1)
        elif change == "amax_data_one_channel":
            quantizer._amax.data[5] *= 0.25
        after = quantizer(weight)
    assert after is not before
    assert torch.equal(after, fresh(quantizer, weight))


def test_large_weight_written_through_data_in_one_place_recomputes():
    """A weight larger than one block of the content comparison (2048 words): a change in any block counts."""
    torch.manual_seed(2)
    weight = nn.Parameter(torch.randn(64, 1024))
    quantizer = TensorQuantizer(QuantDescriptor(axis=0)).eval()
    quantizer.amax = weight.detach().abs().amax(dim=1, keepdim=True)
    with torch.no_grad():
        for row, col in ((0, 0), (31, 517), (63, 1023)):
            before = quantizer(weight).clone()
            weight.data[row, col] -= 1.0
            after = quantizer(weight)
            assert not torch.equal(after, before)
            assert torch.equal(after, fresh(quantizer, weight))


def test_quant_module_sees_weight_data_edits_and_state_dict_loads():
    """The user's report: in eval under no_grad, ``q[0].weight.data.mul_(0.5)`` left ``q(x)`` unchanged."""
    torch.manual_seed(3)
    model = nn.Sequential(QuantLinear(6, 5)).eval()
    x = torch.randn(4, 6)
    model[0].input_quantizer.amax = x.abs().max()
    model[0].weight_quantizer.amax = model[0].weight.detach().abs().max()
    with torch.no_grad():
        model(x)
        model[0].weight.data.mul_(0.5)
        halved = model(x)
    assert torch.equal(halved, model(x).detach())  # grad enabled: never cached
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"].mul_(-1.0)
    state["0._weight_quantizer._amax"].mul_(0.5)
    with torch.no_grad():
        model.load_state_dict(state)
        loaded = model(x)
    assert not torch.equal(loaded, halved)
    assert torch.equal(loaded, model(x).detach())


def test_training_mode_and_grad_mode_always_recompute(setup):
    quantizer, weight = setup
    quantizer.train()
    with torch.no_grad():
        assert quantizer(weight) is not quantizer(weight)
    quantizer.eval()
    out = quantizer(weight)  # grad enabled: a fresh graph every time, gradients reach the weight
    assert out is not quantizer(weight)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_disabled_and_calibrating_quantizers_bypass_the_cache(setup):
    quantizer, weight = setup
    with torch.no_grad():
        quantizer(weight)
        quantizer.disable()
        assert quantizer(weight) is weight
        quantizer.enable()
        quantizer.disable_quant()
        quantizer.enable_calib()
        assert quantizer(weight) is weight


@pytest.mark.parametrize("make", [lambda: QuantConv2d(3, 4, 3), lambda: QuantLinear(6, 5)], ids=["conv", "linear"])
def test_quant_modules_give_identical_results_with_the_cache(make):
    torch.manual_seed(1)
    module = make().eval()
    x = torch.randn(2, 3, 8, 8) if isinstance(module, QuantConv2d) else torch.randn(2, 6)
    module.input_quantizer.amax = x.abs().max()
    module.weight_quantizer.amax = module.weight.detach().abs().amax(dim=tuple(range(1, module.weight.dim())),
                                                                      keepdim=True)
    reference = module(x).detach()  # grad enabled: no cache
    with torch.no_grad():
        assert torch.equal(module(x), reference)
        assert torch.equal(module(x), reference)
        with torch.no_grad():
            module.weight.add_(0.01)
        changed = module(x)
    assert not torch.equal(changed, reference)
    assert torch.equal(changed, module(x).detach())


def _quantizer_with_amax(amax: float = 2.0) -> TensorQuantizer:
    quantizer = TensorQuantizer(QuantDescriptor())
    quantizer.amax = amax
    return quantizer


def test_transient_equals_a_normal_call_and_reuses_one_scratch_tensor():
    quantizer = _quantizer_with_amax()
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    with torch.no_grad():
        first = quantizer.transient(a)
        assert torch.equal(first, quantizer(a))
        expected_b = quantizer(b)
        second = quantizer.transient(b)
    assert second.data_ptr() == first.data_ptr()  # the same memory, reused
    assert torch.equal(second, expected_b)


def test_transient_never_reuses_memory_that_can_escape():
    quantizer = _quantizer_with_amax()
    x = torch.randn(4, 8, requires_grad=True)
    out = quantizer.transient(x)  # autograd: a fresh tensor with a graph
    assert out.grad_fn is not None
    seen = []
    handle = quantizer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        kept = quantizer.transient(x.detach())
        quantizer.transient(torch.randn(4, 8))
    handle.remove()
    assert len(seen) == 2 and seen[0] is kept and seen[0].data_ptr() != seen[1].data_ptr()


def test_transient_scratch_follows_inference_mode():
    quantizer = _quantizer_with_amax()
    x = torch.randn(3, 5)
    with torch.inference_mode():
        inside = quantizer.transient(x).clone()
    with torch.no_grad():
        outside = quantizer.transient(x)
    assert torch.equal(inside, outside)


def test_quant_module_input_quantizers_run_through_transient():
    module = QuantLinear(6, 5).eval()
    x = torch.randn(2, 6)
    module.input_quantizer.amax = x.abs().max()
    calls = []
    original = module.input_quantizer.transient
    module.input_quantizer.transient = lambda t: calls.append(t) or original(t)
    with torch.no_grad():
        module(x)
    assert calls and calls[0] is x


@pytest.mark.parametrize("numel", [1, 7, 2048 * 4, 2048 * 4 + 3, 3 * 2048 * 4 + 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_same_contents_finds_a_single_changed_byte_anywhere(numel, dtype):
    wait_loaded()  # the fused comparison (the eager one is torch.equal)
    torch.manual_seed(4)
    a = (torch.rand(numel) * 100).to(dtype)
    b = a.clone()
    assert same_contents(a, b)
    for index in {0, numel // 2, numel - 1}:
        c = a.clone()
        c.view(torch.uint8)[index * a.element_size()] ^= 1  # one bit of one byte
        assert not same_contents(a, c)


def test_same_contents_compares_bits_dtype_shape_and_layout():
    wait_loaded()
    a = torch.tensor([0.0, float("nan"), 1.0])
    assert same_contents(a, a.clone())  # the same NaN bits
    assert not same_contents(a, torch.tensor([-0.0, float("nan"), 1.0]))  # -0.0 is a different weight
    assert not same_contents(a, a.double())
    assert not same_contents(a.reshape(3, 1), a.clone())
    wide = torch.randn(6, 4)
    assert same_contents(wide.t(), wide.t().clone())  # non-contiguous: the torch.equal path
    assert not same_contents(wide.t(), (wide * 2).t())
