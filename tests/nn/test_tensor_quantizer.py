"""TensorQuantizer: the behaviour pytorch-quantization users rely on (NUMERICS.md), against fake_tensor_quant
and small hand computations."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch
from torch import nn

from quantrewrite import calib
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules import tensor_quantizer as tq_module
from quantrewrite.nn.modules.tensor_quantizer import CalibrationError, TensorQuantizer
from quantrewrite.tensor_quant import fake_e4m3_quant, fake_tensor_quant


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def fq(x: torch.Tensor, amax: Any, num_bits: int = 8, unsigned: bool = False) -> torch.Tensor:
    """The descriptor default: full range (narrow_range=False)."""
    return fake_tensor_quant(x, torch.as_tensor(amax, dtype=torch.float32), num_bits, unsigned, False)


# ------------------------------------------------------------------------------------------ forward order
def test_disabled_returns_the_input_object() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0), disabled=True, if_calib=True)
    x = randn(4, 5)
    assert quantizer(x) is x
    assert quantizer.calibrator.num_batches == 0  # disabled comes before calibration
    quantizer.enable()
    assert not torch.equal(quantizer(x), x)
    quantizer.disable()
    assert quantizer(x) is x
    assert str(quantizer) == "TensorQuantizer(disabled)"


def test_calibrating_with_quant_off_returns_the_input() -> None:
    quantizer = TensorQuantizer(QuantDescriptor())
    quantizer.enable_calib()
    quantizer.disable_quant()
    x = randn(8, 3)
    assert quantizer(x) is x
    assert quantizer.calibrator.num_batches == 1
    quantizer.load_calib_amax()
    assert quantizer.amax.item() == x.abs().max().item()


def test_calibrating_with_quant_on_collects_raw_input_then_quantizes(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=0.5), if_calib=True)
    x = randn(16, 4)
    assert torch.equal(quantizer(x), fq(x, 0.5))
    assert quantizer.calibrator.compute_amax().item() == x.abs().max().item()  # unclipped, unquantized


def test_calibration_sees_input_before_clip(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True, amax=1.0), if_calib=True)
    x = randn(32) * 3
    out = quantizer(x)
    assert quantizer.calibrator.compute_amax().item() == x.abs().max().item() > 1.0
    assert torch.equal(out, fq(x.clamp(-1, 1), 1.0))  # then clip, then quantize


def test_switches_and_flags() -> None:
    quantizer = TensorQuantizer()
    assert quantizer.is_enabled and quantizer.is_quant_enabled
    assert not quantizer.is_calib_enabled and not quantizer.is_clip_enabled
    quantizer.disable_quant()
    assert not quantizer.is_quant_enabled
    x = randn(3)
    assert quantizer(x) is x  # nothing to do
    quantizer.enable_quant()
    quantizer.enable_calib()
    assert quantizer.is_calib_enabled
    quantizer.disable_calib()
    assert not quantizer.is_calib_enabled
    with pytest.raises(ValueError, match="learn_amax"):
        quantizer.enable_clip()
    with pytest.raises(ValueError, match="learn_amax"):
        TensorQuantizer(QuantDescriptor(), if_clip=True)
    with pytest.raises(TypeError, match="QuantDescriptor"):
        TensorQuantizer({"num_bits": 8})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ amax
@pytest.mark.parametrize(("shape", "axis"), [((4, 6, 5), None), ((4, 6, 5), (1,)), ((4, 6, 5), (-1,)),
                                             ((6, 3, 2, 2), (0,)), ((4, 6, 5), (0, 2))],
                         ids=["per-tensor", "axis1", "axis-1", "axis0", "axes02"])
def test_dynamic_amax_per_batch(shape: tuple[int, ...], axis: tuple[int, ...] | None, path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=axis))
    assert quantizer.amax is None
    assert "amax=dynamic" in quantizer.extra_repr()
    for seed, gain in ((1, 1.0), (2, 10.0)):
        x = randn(*shape, seed=seed) * gain
        if axis is None:
            amax = x.abs().max()
        else:
            kept = [d % x.dim() for d in axis]
            amax = x.abs().amax(dim=[d for d in range(x.dim()) if d not in kept], keepdim=True)
        assert torch.equal(quantizer(x), fq(x, amax))
    assert quantizer.amax is None  # dynamic stays dynamic
    assert "_amax" not in quantizer.state_dict()


def test_static_amax_uses_the_full_range(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=2.0))
    x = torch.tensor([-3.0, -2.0, 0.01, 1.0, 3.0])
    out = quantizer(x)
    assert torch.equal(out, fq(x, 2.0))
    assert out[0].item() == pytest.approx(-2.0 * 128 / 127)  # -128: descriptor default narrow_range=False
    narrow = TensorQuantizer(QuantDescriptor(amax=2.0, narrow_range=True))
    assert narrow(x)[0].item() == -2.0


def test_amax_setter_creates_copies_and_guards_shape(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0))
    quantizer.amax = [[1.0], [2.0]]
    buffer = quantizer.amax
    assert "_amax" in quantizer.state_dict() and buffer.dtype == torch.float32
    w = torch.tensor([[0.5, -1, 0.25], [2, -0.3, 0.7]])
    assert torch.equal(quantizer(w), fq(w, [[1.0], [2.0]]))
    quantizer.amax = torch.tensor([[0.5], [4.0]])
    assert quantizer.amax is buffer  # copied into the same buffer
    assert torch.equal(quantizer(w), fq(w, [[0.5], [4.0]]))  # and the forward sees the new value
    with pytest.raises(TypeError, match="changing shape not allowed"):
        quantizer.amax = [1.0, 2.0]
    with pytest.raises(ValueError, match=">= 0"):
        quantizer.amax = [[-1.0], [2.0]]
    with pytest.raises(ValueError, match="None"):
        quantizer.amax = None
    quantizer.reset_amax()
    assert quantizer.amax is None and "amax=dynamic" in quantizer.extra_repr()


def test_in_place_amax_changes_reach_the_forward(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = randn(10) * 2
    assert torch.equal(quantizer(x), fq(x, 1.0))
    with torch.no_grad():
        quantizer.amax.mul_(2)
    assert torch.equal(quantizer(x), fq(x, 2.0))
    quantizer.load_state_dict({"_amax": torch.tensor(0.25)})
    assert torch.equal(quantizer(x), fq(x, 0.25))
    quantizer.double()  # a new buffer object
    assert torch.equal(quantizer(x), fq(x, 0.25))


def test_grid_is_prepared_once_for_a_static_amax(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = tq_module.prepare_grid

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tq_module, "prepare_grid", counting)
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))
    for seed in range(5):
        quantizer(randn(4, 4, seed=seed))
    assert calls == 1
    quantizer.amax = 2.0
    quantizer(randn(4, 4))
    assert calls == 2
    dynamic = TensorQuantizer(QuantDescriptor())
    dynamic(randn(3))
    dynamic(randn(3))
    assert calls == 4


def test_step_size() -> None:
    assert TensorQuantizer(QuantDescriptor(amax=2.54)).step_size.item() == pytest.approx(2.54 / 127)
    assert TensorQuantizer(QuantDescriptor(amax=2.55, unsigned=True)).step_size.item() == pytest.approx(0.01)
    assert TensorQuantizer(QuantDescriptor(num_bits=4, amax=7.0)).step_size.item() == 1.0
    assert TensorQuantizer(QuantDescriptor()).step_size is None


def test_scale_amax(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=2.0, scale_amax=0.5))
    x = randn(20) * 2
    assert torch.equal(quantizer(x), fq(x, 1.0))
    assert quantizer.amax.item() == 2.0  # the buffer keeps the unscaled range
    assert "amax=2.0000 *0.5" in quantizer.extra_repr()
    dynamic = TensorQuantizer(QuantDescriptor(scale_amax=0.5))
    assert torch.equal(dynamic(x), fq(x, x.abs().max() * 0.5))


def test_real_quantization_returns_integers_and_keeps_scale(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=2.0, fake_quant=False))
    assert quantizer.scale is None
    x = randn(50) * 2
    q = quantizer(x)
    assert torch.equal(q, q.round()) and q.min() >= -128 and q.max() <= 127
    assert quantizer.scale.item() == 63.5
    assert torch.equal(q / quantizer.scale, fq(x, 2.0))
    assert "8bit real per-tensor" in quantizer.extra_repr()


def test_num_bits_unsigned_narrow_setters(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = randn(30).abs()
    quantizer(x)
    quantizer.num_bits = 4
    assert torch.equal(quantizer(x), fq(x, 1.0, 4))
    quantizer.unsigned = True
    assert torch.equal(quantizer(x), fq(x, 1.0, 4, unsigned=True))
    quantizer.unsigned = False
    quantizer.narrow_range = True
    assert torch.equal(quantizer(-x), fake_tensor_quant(-x, torch.tensor(1.0), 4, False, True))
    assert quantizer.quant_desc == QuantDescriptor(num_bits=4, amax=1.0, narrow_range=True)


def test_unsigned_negative_input_raises(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0, unsigned=True))
    with pytest.raises(ValueError, match="(?i)negative values"):
        quantizer(torch.tensor([0.5, -0.1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_keep_dtype(dtype: torch.dtype, path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=1, amax=[[1.0], [2.0], [3.0]]))
    x = randn(4, 3, 5).to(dtype)
    out = quantizer(x)
    assert out.dtype == dtype
    assert torch.equal(out, fq(x.float(), [[1.0], [2.0], [3.0]]).to(dtype))


def test_fp8_quantizer(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(num_bits=(4, 3), amax=3.0))
    x = randn(40) * 3
    assert torch.equal(quantizer(x), fake_e4m3_quant(x, 3.0))
    assert quantizer.extra_repr().startswith("fp8e4m3 fake per-tensor amax=3.0000")
    assert quantizer.maxbound == 448.0


# -------------------------------------------------------------------------------------- fused vs eager
@pytest.mark.parametrize("axis", [None, (0,), (1,)], ids=["per-tensor", "axis0", "axis1"])
def test_forward_backward_fused_equals_eager(axis: tuple[int, ...] | None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    x0 = randn(8, 6, 5, 5, seed=3) * 2
    grad = randn(8, 6, 5, 5, seed=4)
    calibrating = TensorQuantizer(QuantDescriptor(axis=axis), if_calib=True, if_quant=False)
    calibrating(x0)
    calibrating.load_calib_amax()
    calibrating.disable_calib()
    calibrating.enable_quant()
    with torch.no_grad():
        calibrating.amax.mul_(0.7)  # so some inputs lie beyond amax
    results = []
    for eager in ("0", "1"):
        monkeypatch.setenv("QUANTREWRITE_EAGER", eager)
        x = x0.clone().requires_grad_()
        out = calibrating(x)
        out.backward(grad)
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    inside = x0.abs() <= calibrating.amax
    assert not inside.all()
    assert torch.equal(results[0][1], torch.where(inside, grad, torch.zeros(())))


# ---------------------------------------------------------------------------------------- calibration
def test_load_calib_amax_max_per_channel() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0))
    quantizer.enable_calib()
    quantizer.disable_quant()
    a, b = randn(4, 3, 2, seed=1), randn(4, 3, 2, seed=2) * 3
    quantizer(a)
    quantizer(b)
    amax = quantizer.load_calib_amax()
    expected = torch.maximum(a.abs().amax(dim=(1, 2), keepdim=True), b.abs().amax(dim=(1, 2), keepdim=True))
    assert amax is quantizer.amax
    assert torch.equal(quantizer.amax, expected)


@pytest.mark.parametrize(("args", "kwargs"), [(("percentile",), {}), (("entropy",), {}),
                                              ((), {"percentile": 99.9})], ids=["percentile", "entropy",
                                                                                "kwargs"])
def test_load_calib_amax_max_takes_no_method(args: tuple, kwargs: dict) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(), if_calib=True, if_quant=False)
    quantizer(randn(10))
    with pytest.raises(ValueError, match="MaxCalibrator"):
        quantizer.load_calib_amax(*args, **kwargs)
    assert quantizer.load_calib_amax("max") is not None  # the method's own name is accepted


@pytest.mark.parametrize(("method", "kwargs"), [("percentile", {"percentile": 99.0}), ("entropy", {}),
                                                ("mse", {})], ids=["percentile", "entropy", "mse"])
def test_load_calib_amax_histogram(method: str, kwargs: dict) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(calib_method="histogram"))
    assert isinstance(quantizer.calibrator, calib.HistogramCalibrator)
    quantizer.enable_calib()
    quantizer.disable_quant()
    x = randn(4096).abs() * 2
    quantizer(x)
    reference = calib.HistogramCalibrator(8, None, False)
    reference.collect(x)
    amax = quantizer.load_calib_amax(method, **kwargs)
    assert amax.item() == reference.compute_amax(method, **kwargs).item()
    assert 0 < amax.item() <= x.max().item() * 1.01


def test_load_calib_amax_histogram_needs_a_method() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(calib_method="histogram"), if_calib=True, if_quant=False)
    quantizer(randn(100))
    with pytest.raises(ValueError, match="'max', 'entropy', 'mse', 'percentile'"):
        quantizer.load_calib_amax()
    with pytest.raises(ValueError, match="percentile"):
        quantizer.load_calib_amax("percentil")


@pytest.mark.parametrize("calib_method", ["max", "histogram"])
def test_calibrator_without_data(calib_method: str, caplog: pytest.LogCaptureFixture) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(calib_method=calib_method, amax=1.5))
    method = None if calib_method == "max" else "percentile"
    with pytest.raises(CalibrationError, match="saw no data.*unused branch"):
        quantizer.load_calib_amax(method)
    with caplog.at_level(logging.WARNING):
        assert quantizer.load_calib_amax(method, strict=False) is None
    assert "saw no data" in caplog.text
    assert quantizer.amax.item() == 1.5  # left as it was
    dynamic = TensorQuantizer(QuantDescriptor(calib_method=calib_method))
    assert dynamic.load_calib_amax(method, strict=False) is None
    assert dynamic.amax is None


def test_calibrator_types() -> None:
    assert isinstance(TensorQuantizer().calibrator, calib.MaxCalibrator)
    assert isinstance(TensorQuantizer(QuantDescriptor(num_bits=(4, 3))).calibrator, calib.MaxCalibrator)
    TensorQuantizer(QuantDescriptor(num_bits=0))  # degenerate but legal: must construct


# ----------------------------------------------------------------------------------------- learn_amax
def test_learn_amax_clip_stage_parameters_and_state_dict() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True, amax=2.0))
    assert quantizer.is_clip_enabled  # on by default for learn_amax, as in pytorch-quantization
    assert isinstance(quantizer.clip.clip_value_min, nn.Parameter)
    assert isinstance(quantizer.clip.clip_value_max, nn.Parameter)
    assert (quantizer.clip.clip_value_min.item(), quantizer.clip.clip_value_max.item()) == (-2.0, 2.0)
    assert set(quantizer.state_dict()) == {"_amax", "clip.clip_value_min", "clip.clip_value_max"}
    assert {name for name, _ in quantizer.named_parameters()} == {"clip.clip_value_min",
                                                                  "clip.clip_value_max"}
    assert "learned" in quantizer.extra_repr() and "clip" in quantizer.extra_repr().split()


def test_learn_amax_gradients_by_hand(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True))
    with torch.no_grad():
        quantizer.clip.clip_value_min.fill_(-1.0)
        quantizer.clip.clip_value_max.fill_(2.0)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.3, 1.9, 2.0, 5.0], requires_grad=True)
    grad = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    out = quantizer(x)
    # clip to [-1, 2], then quantize with amax = max(-lo, hi) = 2 (detached)
    assert torch.equal(out.detach(), fq(x.detach().clamp(-1, 2), 2.0))
    out.backward(grad)
    assert quantizer.clip.clip_value_min.grad.item() == 1.0 + 2.0  # x <= lo: -3, -1
    assert quantizer.clip.clip_value_max.grad.item() == 32.0 + 64.0  # x >= hi: 2, 5
    assert x.grad.tolist() == [0.0, 0.0, 4.0, 8.0, 16.0, 0.0, 0.0]  # strictly inside (lo, hi)


def test_learn_amax_uses_the_larger_bound(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True))
    with torch.no_grad():
        quantizer.clip.clip_value_min.fill_(-3.0)
        quantizer.clip.clip_value_max.fill_(1.0)
    x = randn(20) * 3
    assert torch.equal(quantizer(x), fq(x.clamp(-3, 1), 3.0))


def test_init_learn_amax_after_calibration(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True))
    with pytest.raises(CalibrationError, match="calibrate first"):
        quantizer.init_learn_amax()
    quantizer.enable_calib()
    quantizer.disable_quant()
    x = randn(64) * 2
    assert quantizer(x) is x  # the clip stage does not distort a calibration pass
    quantizer.disable_calib()
    quantizer.enable_quant()
    quantizer.load_calib_amax()
    quantizer.init_learn_amax()
    amax = x.abs().max().item()
    assert (quantizer.clip.clip_value_min.item(), quantizer.clip.clip_value_max.item()) == (-amax, amax)
    assert quantizer.is_clip_enabled
    assert torch.equal(quantizer(x), fq(x, amax))
    with pytest.raises(ValueError, match="learn_amax=True"):
        TensorQuantizer(QuantDescriptor(amax=1.0)).init_learn_amax()


def test_disable_clip_freezes_the_bounds() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(learn_amax=True, amax=1.0))
    quantizer.disable_clip()
    assert not quantizer.clip.clip_value_max.requires_grad
    x = randn(10) * 3
    assert torch.equal(quantizer(x), fq(x, 1.0))  # the static amax, no clip stage
    quantizer.enable_clip()
    assert quantizer.clip.clip_value_max.requires_grad


# ------------------------------------------------------------------------------------------- printing
def test_extra_repr_per_tensor_example() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=2.64))
    assert quantizer.extra_repr() == "8bit fake per-tensor amax=2.6400 calibrator=MaxCalibrator quant"


def test_extra_repr_per_channel_example() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0), if_calib=True, if_quant=False)
    channel_max = torch.linspace(0, 0.7817, 64)
    w = randn(64, 3, 3, 3).clamp(-1, 1) * channel_max.reshape(64, 1, 1, 1)
    w[:, 0, 0, 0] = channel_max  # each channel's max |w| is exactly its channel_max
    quantizer(w)
    quantizer.load_calib_amax()
    quantizer.disable_calib()
    quantizer.enable_quant()
    assert quantizer.amax.shape == (64, 1, 1, 1)
    assert quantizer.extra_repr() == "8bit fake axis=0 amax=[0.0000, 0.7817](64) calibrator=MaxCalibrator quant"


def test_extra_repr_negative_zero_amax() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0))
    quantizer.amax = torch.tensor([[-0.0], [0.5]])
    assert "amax=[0.0000, 0.5000](2)" in quantizer.extra_repr()
    dynamic = TensorQuantizer(QuantDescriptor(axis=0))
    assert str(tq_module.reduce_amax(torch.zeros(2, 3), (0,)).tolist()) == "[[0.0], [0.0]]"
    assert dynamic(torch.zeros(2, 3)).abs().sum().item() == 0.0


def test_extra_repr_flags() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(num_bits=4, axis=(0, 1), unsigned=True, narrow_range=True),
                                if_calib=True)
    assert quantizer.extra_repr() == ("4bit fake axis=(0, 1) unsigned narrow amax=dynamic "
                                      "calibrator=MaxCalibrator quant calib")


# ----------------------------------------------------------------------------------------- state dict
class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._input_quantizer = TensorQuantizer(QuantDescriptor())
        self._weight_quantizer = TensorQuantizer(QuantDescriptor(axis=0))


def test_state_dict_keys() -> None:
    layer = _Layer()
    assert list(layer.state_dict()) == []  # dynamic: nothing to save
    layer._input_quantizer.amax = 1.0
    layer._weight_quantizer.amax = torch.ones(4, 1)
    model = nn.Sequential()
    model.add_module("layer", layer)
    assert list(model.state_dict()) == ["layer._input_quantizer._amax", "layer._weight_quantizer._amax"]


def test_loading_amax_into_a_quantizer_without_one_creates_it_on_cpu(path: str) -> None:
    source = _Layer()
    source._input_quantizer.amax = 2.5
    source._weight_quantizer.amax = torch.tensor([[1.0], [2.0], [0.5]])
    state = copy.deepcopy(source.state_dict())
    target = _Layer()
    assert target._input_quantizer.amax is None
    result = target.load_state_dict(state)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    assert target._input_quantizer.amax.device.type == "cpu"
    assert target._input_quantizer.amax.item() == 2.5
    assert torch.equal(target._weight_quantizer.amax, state["_weight_quantizer._amax"])
    assert target._weight_quantizer.amax is not state["_weight_quantizer._amax"]  # a copy, not the same tensor
    w = randn(3, 4)
    assert torch.equal(target._weight_quantizer(w), fq(w, [[1.0], [2.0], [0.5]]))


def test_loading_amax_of_another_shape_fails() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0))
    quantizer.amax = torch.ones(3, 1)
    with pytest.raises(RuntimeError, match="size mismatch"):
        quantizer.load_state_dict({"_amax": torch.ones(4, 1)})


def test_deepcopy_keeps_behaviour(path: str) -> None:
    quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))
    x = randn(10)
    out = quantizer(x)
    clone = copy.deepcopy(quantizer)
    assert torch.equal(clone(x), out)
    clone.amax = 0.5
    assert torch.equal(quantizer(x), out)  # the original is independent


def test_pickled_quantizer_rebuilds_its_cache(path: str) -> None:
    import io

    quantizer = TensorQuantizer(QuantDescriptor(axis=0, amax=[[1.0], [2.0]]))
    x = randn(2, 5) * 2
    out = quantizer(x)
    assert quantizer._grid_cache is not None
    buffer = io.BytesIO()
    torch.save(quantizer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded._grid_cache is None
    assert torch.equal(loaded(x), out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_quantizer_matches_cpu() -> None:
    quantizer = TensorQuantizer(QuantDescriptor(axis=0, amax=torch.rand(8, 1).add(0.1).tolist()))
    x = randn(8, 100) * 2
    cpu = quantizer(x)
    quantizer.cuda()
    assert torch.equal(quantizer(x.cuda()).cpu(), cpu)


def test_onnx_export_flag_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # The forward checks torch's export flag on every call through a cached lookup; it must agree.
    assert tq_module._in_onnx_export() is False
    assert torch.onnx.is_in_onnx_export() is False
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    monkeypatch.setattr(GLOBALS, "in_onnx_export", True)
    assert torch.onnx.is_in_onnx_export() is True
    assert tq_module._in_onnx_export() is True
