"""MaxCalibrator against plain torch references (exact: max is exact in any float dtype)."""

from __future__ import annotations

import pytest
import torch

from quantrewrite import calib


def _batches(shape, n=3, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen) * (i + 1)).to(dtype) for i in range(n)]


def test_per_tensor_running_max():
    batches = _batches((4, 8, 5, 5))
    calibrator = calib.MaxCalibrator()
    for x in batches:
        calibrator.collect(x)
    amax = calibrator.compute_amax()
    assert amax.shape == torch.Size([]) and amax.dtype == torch.float32
    assert amax.item() == torch.cat([x.reshape(-1) for x in batches]).abs().max().item()
    assert calibrator.num_batches == 3


@pytest.mark.parametrize(("axis", "kept_shape"), [
    (0, [4, 1, 1, 1]),
    ((0, 1), [4, 8, 1, 1]),
    (-1, [1, 1, 1, 5]),
    ((1, -1), [1, 8, 1, 5]),
    ((0, 1, 2, 3), [4, 8, 5, 5]),
], ids=["axis0", "axis0_1", "axis_neg1", "axis1_neg1", "all_dims"])
def test_per_channel(axis, kept_shape):
    batches = _batches((4, 8, 5, 5))
    calibrator = calib.MaxCalibrator(axis=axis)
    for x in batches:
        calibrator.collect(x)
    amax = calibrator.compute_amax()
    assert list(amax.shape) == kept_shape
    stacked = torch.stack(batches).abs()  # [batch, 4, 8, 5, 5]
    kept = {d % 4 for d in ((axis,) if isinstance(axis, int) else axis)}
    reduce = [0] + [d + 1 for d in range(4) if d not in kept]
    expected = stacked.amax(dim=reduce, keepdim=True).squeeze(0)
    assert torch.equal(amax, expected)


def test_negative_axis_matches_positive():
    x = _batches((6, 3), n=1)[0]
    a, b = calib.MaxCalibrator(axis=-1), calib.MaxCalibrator(axis=1)
    a.collect(x)
    b.collect(x)
    assert torch.equal(a.compute_amax(), b.compute_amax())
    assert list(a.compute_amax().shape) == [1, 3]


def test_shape_change_is_an_error_naming_both_shapes():
    calibrator = calib.MaxCalibrator(axis=0)
    calibrator.collect(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"from \[4, 1\] to \[5, 1\]"):
        calibrator.collect(torch.randn(5, 3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("axis", [None, 0], ids=["per_tensor", "axis0"])
def test_half_inputs_give_float32(dtype, axis):
    x = _batches((3, 7), n=1, dtype=dtype)[0]
    calibrator = calib.MaxCalibrator(axis=axis)
    calibrator.collect(x)
    amax = calibrator.compute_amax()
    assert amax.dtype == torch.float32
    expected = x.float().abs().amax() if axis is None else x.float().abs().amax(dim=1, keepdim=True)
    assert torch.equal(amax, expected)


def test_track_amax_and_reset():
    batches = _batches((2, 3), n=3)
    calibrator = calib.MaxCalibrator(track_amax=True)
    for x in batches:
        calibrator.collect(x)
    assert [a.item() for a in calibrator.amaxs] == [x.abs().max().item() for x in batches]
    calibrator.reset()
    assert calibrator.compute_amax() is None
    assert calibrator.amaxs == [] and calibrator.num_batches == 0


def test_no_data_is_none():
    assert calib.MaxCalibrator().compute_amax() is None


def test_collect_is_not_differentiable():
    x = torch.randn(3, 4, requires_grad=True)
    calibrator = calib.MaxCalibrator(axis=0)
    calibrator.collect(x * 2)
    assert not calibrator.compute_amax().requires_grad


def test_compute_amax_returns_a_copy():
    calibrator = calib.MaxCalibrator()
    calibrator.collect(torch.tensor([1.0, -2.0]))
    amax = calibrator.compute_amax()
    calibrator.collect(torch.tensor([5.0]))
    assert amax.item() == 2.0 and calibrator.compute_amax().item() == 5.0


@pytest.mark.parametrize(("axis", "match"), [
    (2, "out of range"),
    ((0, -2), "named twice"),
], ids=["out_of_range", "duplicate"])
def test_bad_axis_for_input(axis, match):
    with pytest.raises(ValueError, match=match):
        calib.MaxCalibrator(axis=axis).collect(torch.randn(2, 3))


@pytest.mark.parametrize("axis", ["0", (), 1.0, (0, True)], ids=["str", "empty", "float", "bool"])
def test_bad_axis_type(axis):
    with pytest.raises(ValueError, match="axis"):
        calib.MaxCalibrator(axis=axis)


@pytest.mark.parametrize("num_bits", [0, 8.0, True], ids=["zero", "float", "bool"])
def test_bad_num_bits(num_bits):
    with pytest.raises(ValueError, match="num_bits"):
        calib.MaxCalibrator(num_bits=num_bits)


def test_repr_is_readable():
    calibrator = calib.MaxCalibrator(num_bits=4, axis=0, unsigned=True)
    assert repr(calibrator) == ("MaxCalibrator(num_bits=4, axis=0, unsigned=True, track_amax=False, amax=None, "
                                "num_batches=0)")
    calibrator.collect(torch.tensor([[1.0, 2.0], [3.0, 0.5]]))
    assert "amax=[2, 3][2, 1]" in repr(calibrator) and "num_batches=1" in repr(calibrator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_state_stays_on_device():
    batches = [x.cuda() for x in _batches((4, 8, 5, 5))]
    calibrator = calib.MaxCalibrator(axis=0)
    for x in batches:
        calibrator.collect(x.half())
    amax = calibrator.compute_amax()
    assert amax.is_cuda and amax.dtype == torch.float32
    expected = torch.stack(batches).half().float().abs().amax(dim=(0, 2, 3, 4)).reshape(4, 1, 1, 1)
    assert torch.equal(amax, expected)
