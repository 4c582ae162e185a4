"""The rest of pytorch-quantization's API: utils, aliases, private views, pre_quant_scale, calibrate_weights,
integer calibration, legacy functions, optim.helper, exception classes, checkpoints calibrated by the original.

References are small numpy / torch formulas written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import quantrewrite
from quantrewrite import calib, cuda_ext, tensor_quant, utils
from quantrewrite import nn as quant_nn
from quantrewrite.nn import functional as QF
from quantrewrite.nn.modules import quant_conv, quant_linear, quant_pooling
from quantrewrite.optim import helper
from quantrewrite.tensor_quant import QuantDescriptor


# ------------------------------------------------------------------------------------------------ utils
@pytest.mark.parametrize("axis", [None, 1, (1, 2, 3), (0, 3), (-1,), []], ids=str)
@pytest.mark.parametrize("keepdims", [True, False])
def test_reduce_amax_reduces_the_named_dims(axis, keepdims):
    rng = np.random.default_rng(0)
    x = (rng.random((3, 4, 5, 6)) - 0.3).astype(np.float32)
    got = utils.reduce_amax(torch.from_numpy(x), axis=axis, keepdims=keepdims).numpy()
    np_axis = None if axis is None else (tuple(axis) if not isinstance(axis, int) else axis)
    expected = np.max(np.abs(x), axis=np_axis, keepdims=keepdims and axis is not None)
    np.testing.assert_array_equal(got, expected.squeeze() if expected.size == 1 else expected)


def test_reduce_amax_errors_name_the_axis():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="cannot reduce more axes"):
        utils.reduce_amax(x, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="out of range"):
        utils.reduce_amax(x, axis=(0, 5))
    assert utils.quant_logging.reset_logger_handler is not None


# ------------------------------------------------------------------------------------------------ aliases
def test_short_names_are_the_quant_classes():
    assert quant_nn.Conv2d is quant_nn.QuantConv2d is quant_conv.Conv2d
    assert quant_nn.ConvTranspose3d is quant_nn.QuantConvTranspose3d
    assert quant_nn.Linear is quant_linear.Linear is quant_nn.QuantLinear
    assert quant_nn.MaxPool2d is quant_pooling.MaxPool2d is quant_nn.QuantMaxPool2d
    assert quant_nn.AdaptiveAvgPool1d is quant_nn.QuantAdaptiveAvgPool1d
    assert quant_nn.LSTM is quant_nn.QuantLSTM and quant_nn.LSTMCell is quant_nn.QuantLSTMCell
    assert QF.clip is quant_nn.functional.clip


# ---------------------------------------------------------------------------------- private views
def test_private_attributes_are_read_only_views():
    quantizer = quant_nn.TensorQuantizer(QuantDescriptor(num_bits=6, axis=(0,), unsigned=True, scale_amax=2.0))
    assert quantizer._num_bits == 6 and quantizer._axis == 0 and quantizer._unsigned is True
    assert quantizer._narrow_range is False and quantizer._fake_quant is True and quantizer._scale_amax == 2.0
    assert quantizer._learn_amax is False
    with pytest.raises(AttributeError):
        quantizer._num_bits = 4
    quantizer.num_bits = 4  # the public setter
    assert quantizer._num_bits == 4
    two_axes = quant_nn.TensorQuantizer(QuantDescriptor(axis=(0, 1)))
    assert two_axes._axis == (0, 1)


def test_get_amax_is_what_forward_uses():
    x = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    dynamic = quant_nn.TensorQuantizer(QuantDescriptor(axis=0, scale_amax=0.5))
    assert dynamic._get_amax(x).flatten().tolist() == [1.5, 1.0]
    static = quant_nn.TensorQuantizer(QuantDescriptor(amax=4.0))
    assert static._get_amax(x).item() == 4.0 and static._get_amax(x).dtype == torch.float32


def test_calibrator_views():
    histogram = calib.HistogramCalibrator(8, None, False, num_bins=4)
    assert histogram._calib_hist is None and histogram._calib_bin_edges is None
    histogram.collect(torch.tensor([0.0, 1.0, 2.0, 4.0]))
    assert histogram._calib_hist.tolist() == [1, 1, 1, 1]
    assert histogram._calib_bin_edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    maximum = calib.MaxCalibrator(8, None, False)
    maximum.collect(torch.tensor([-3.0, 2.0]))
    assert maximum._calib_amax.item() == 3.0 and maximum._axis is None and maximum._num_bits == 8


# -------------------------------------------------------------------------------------- integer calibration
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_calibrators_accept_integer_tensors(dtype):
    pixels = torch.tensor([[0, 17, 255], [3, 128, 9]], dtype=dtype)
    maximum = calib.MaxCalibrator(8, 0, True)
    maximum.collect(pixels)
    assert maximum.compute_amax().flatten().tolist() == [255.0, 128.0]
    assert maximum.compute_amax().dtype == torch.float32
    histogram = calib.HistogramCalibrator(8, None, True, num_bins=255)
    histogram.collect(pixels)
    assert int(histogram._calib_hist.sum()) == 6 and histogram._calib_bin_edges[-1].item() == 255.0
    with pytest.raises(TypeError, match="bool"):
        maximum.collect(torch.tensor([True]))


# ------------------------------------------------------------------------------------------ pre_quant_scale
def test_pre_quant_scale_multiplies_before_quantization():
    quantizer = quant_nn.TensorQuantizer(QuantDescriptor(amax=1.0))
    assert quantizer.pre_quant_scale is None
    x = torch.tensor([[0.3, -0.8], [0.1, 0.45]])
    quantizer.pre_quant_scale = torch.tensor([2.0, 0.5])
    expected = tensor_quant.fake_tensor_quant(x * torch.tensor([2.0, 0.5]), torch.tensor(1.0), 8, False, False)
    assert torch.equal(quantizer(x), expected)
    quantizer.disable()
    assert torch.equal(quantizer(x), x * torch.tensor([2.0, 0.5]))  # as in the original: part of the model
    assert "_pre_quant_scale" in quantizer.state_dict()
    with pytest.raises(TypeError, match="shape"):
        quantizer.pre_quant_scale = torch.ones(3)
    with pytest.raises(RuntimeError, match="shape"):  # AmaxShapeError is both
        quantizer.pre_quant_scale = torch.ones(3)


def test_checkpoint_with_pre_quant_scale_loads():
    source = quant_nn.QuantLinear(2, 3)
    source.input_quantizer.pre_quant_scale = torch.tensor([0.5, 4.0])
    source.input_quantizer.amax = 2.0
    target = quant_nn.QuantLinear(2, 3)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.input_quantizer.pre_quant_scale, torch.tensor([0.5, 4.0]))
    x = torch.randn(4, 2)
    assert torch.equal(target(x), source(x))


# ----------------------------------------------------------------------- checkpoints of the original
def test_conv_transpose_checkpoint_with_the_originals_axis_loads_and_keeps_it():
    original = quant_nn.QuantConvTranspose2d(4, 6, 3)  # weight [Cin=4, Cout=6, 3, 3]
    state = original.state_dict()
    amax = original.weight.detach().abs().amax(dim=(0, 2, 3), keepdim=True)  # [1, 6, 1, 1]: axis 1
    state["_weight_quantizer._amax"] = amax
    state["_input_quantizer._amax"] = torch.tensor(3.0)
    model = quant_nn.QuantConvTranspose2d(4, 6, 3)
    model.load_state_dict(state)
    assert model.weight_quantizer.axis == (1,) and model.weight_quantizer.amax.shape == (1, 6, 1, 1)
    expected = tensor_quant.fake_tensor_quant(model.weight, amax, 8, False, False)
    assert torch.equal(model.weight_quantizer(model.weight), expected)
    calibrated = quant_nn.QuantConvTranspose2d(4, 6, 3)  # already has an axis-0 amax: the checkpoint wins
    calibrated.weight_quantizer.amax = torch.ones(4, 1, 1, 1)
    calibrated.load_state_dict(state)
    assert calibrated.weight_quantizer.amax.shape == (1, 6, 1, 1)


# --------------------------------------------------------------------------------------- calibrate_weights
@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_calibrate_weights_per_channel(method):
    torch.manual_seed(0)
    model = nn.Sequential(quant_nn.QuantConv2d(3, 5, 3), quant_nn.QuantConvTranspose2d(5, 2, 3),
                          quant_nn.QuantLinear(4, 3))
    names = calib.calibrate_weights(model, method=method, perchannel=True, percentile=100.0, num_bins=512)
    assert names == ["0", "1", "2"]
    for module, axis in ((model[0], 0), (model[1], 0), (model[2], 0)):
        weight = module.weight.detach()
        per_channel = weight.abs().amax(dim=[d for d in range(weight.dim()) if d != axis], keepdim=True)
        amax = module.weight_quantizer.amax
        assert amax.shape == per_channel.shape and module.weight_quantizer.axis == (axis,)
        if method == "max":
            assert torch.equal(amax, per_channel)
        else:
            assert bool((amax <= per_channel * (1 + 1e-6)).all()) and bool((amax > per_channel * 0.3).all())


def test_calibrate_weights_per_tensor_and_errors():
    model = nn.Sequential(quant_nn.QuantLinear(4, 3))
    calib.calibrate_weights(model, method="max", perchannel=False)
    assert model[0].weight_quantizer.amax.item() == model[0].weight.detach().abs().max().item()
    assert model[0].weight_quantizer.axis is None
    with pytest.raises(ValueError, match="unknown method 'entropy'"):
        calib.calibrate_weights(model, method="entropy")
    with pytest.raises(TypeError):
        calib.calibrate_weights(model, method="entropy")


# ------------------------------------------------------------------------------------------- legacy functions
def test_legacy_and_extension_functions_match_fake_tensor_quant():
    x = torch.randn(4, 6)
    amax = torch.tensor(1.5)
    reference = tensor_quant.fake_tensor_quant(x, amax, 5, False, True)
    assert torch.equal(tensor_quant.legacy_fake_tensor_quant(x, amax, 5), reference)
    assert torch.equal(tensor_quant.FakeTensorQuantFunction.apply(x, amax, 5), reference)
    assert torch.equal(cuda_ext.fake_tensor_quant(x, amax, 5), reference)
    per_row = x.abs().amax(1, keepdim=True)
    assert torch.equal(cuda_ext.fake_tensor_quant_with_axis(x, per_row.flatten(), 0),
                       tensor_quant.fake_tensor_quant(x, per_row))
    q, _scale = tensor_quant.TensorQuantFunction.apply(x, amax)
    assert torch.equal(q, torch.clamp(torch.round(x * (127 / 1.5)), -127, 127))


def test_scaled_e4m3():
    x = torch.tensor([1e-9, 0.3, -2.0, 600.0])
    expected_unscaled = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    expected_unscaled[0] = 0.0
    assert torch.equal(tensor_quant.scaled_e4m3(x), expected_unscaled)
    amax = torch.tensor(2.0)
    scale = 448.0 / 2.0
    expected = (x * scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() / scale
    expected[0] = 0.0
    assert torch.equal(tensor_quant.scaled_e4m3(x, amax, 4, 3), expected)
    with pytest.raises(NotImplementedError):
        tensor_quant.scaled_e4m3(x, amax, 5, 2)


def test_fake_affine_tensor_quant_formula_and_gradient():
    x = torch.tensor([-1.0, -0.2, 0.0, 0.37, 1.0, 2.5], requires_grad=True)
    lo, hi, bits = -0.5, 2.0, 4
    step = (hi - lo) / (2**bits - 1)
    zero = round(lo / step) + 2 ** (bits - 1)
    expected = (torch.clamp(torch.round(x.detach() / step) - zero, -8, 7) + zero) * step
    out = tensor_quant.fake_affine_tensor_quant(x, lo, hi, bits)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="max_range"):
        tensor_quant.fake_affine_tensor_quant(x, 1.0, 1.0)


def test_functional_clip_broadcasts_and_refuses_learned_tensor_bounds():
    x = torch.randn(5, 3)
    low, high = torch.full((1, 3), -0.2), torch.tensor([[0.1, 0.5, 1.0]])
    assert torch.equal(QF.clip(x, low, high), torch.minimum(torch.maximum(x, low), high))
    low.requires_grad_(True)
    out = QF.clip(x.requires_grad_(True), low, high)
    with pytest.raises(ValueError, match="can only be scalar"):
        out.sum().backward()


def test_negative_input_error_is_value_and_type_error():
    with pytest.raises(TypeError, match="Negative values encountered"):
        tensor_quant.tensor_quant(torch.tensor([-1.0]), torch.tensor(1.0), 8, True)
    with pytest.raises(ValueError, match="Negative values encountered"):
        tensor_quant.tensor_quant(torch.tensor([-1.0]), torch.tensor(1.0), 8, True)
    quantizer = quant_nn.TensorQuantizer(QuantDescriptor(amax=1.0))
    with pytest.raises(RuntimeError, match="changing shape"):
        quantizer.amax = torch.ones(2)


# ------------------------------------------------------------------------------------------------ optim.helper
def small_net() -> nn.Module:
    return nn.Sequential(quant_nn.QuantConv2d(1, 2, 3), nn.BatchNorm2d(2), quant_nn.QuantLinear(2, 2))


def test_match_group_freeze():
    net = small_net()
    assert [p.shape for p in helper.match_parameters(net, [r"^0\.", r"weight$"])] == [
        p.shape for name, p in net.named_parameters() if name.startswith("0.") or name.endswith("weight")]
    groups = helper.group_parameters(net, [[r"^0\."], [r"^2\."]], lrs=[0.1, 0.01], momentums=[0.9, 0.8])
    optimizer = torch.optim.SGD(groups, lr=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    assert len(optimizer.param_groups[0]["params"]) == 2
    with pytest.raises(TypeError, match="patterns_list\\[1\\]"):
        helper.group_parameters(net, [["conv"], "fc"])
    with pytest.raises(TypeError, match="lr"):
        helper.group_parameters(net, [["a"], ["b"]], lrs=[0.1])
    frozen = helper.freeze_parameters(net, [r"bias$"])
    assert frozen == ["0.bias", "1.bias", "2.bias"]
    assert all(not p.requires_grad for n, p in net.named_parameters() if n.endswith("bias"))


def test_quant_weight_inplace():
    net = small_net()
    net[2].weight_quantizer.amax = net[2].weight.detach().abs().amax(1, keepdim=True)
    expected = net[2].weight_quantizer(net[2].weight).detach().clone()
    assert helper.quant_weight_inplace(net) == ["0", "2"]
    assert torch.equal(net[2].weight.detach(), expected)


def test_top_level_names():
    for name in ("enable_onnx_export", "initialize", "deactivate", "quant_modules", "utils", "optim"):
        assert hasattr(quantrewrite, name), name


# ------------------------------------------------------------------------------------- descriptor read-back
def test_descriptor_axis_amax_and_dict_read_back_as_in_the_original():
    desc = QuantDescriptor(num_bits=4, axis=0, amax=[0.7, 1.2])
    assert desc.axis == 0 and desc.axis == (0,) and 0 == desc.axis and desc.axis != 1
    assert QuantDescriptor(axis=(0, 1)).axis != 0
    assert isinstance(desc.amax, np.ndarray) and desc.amax.dtype == np.float32
    np.testing.assert_array_equal(desc.amax, np.float32([0.7, 1.2]))
    with pytest.raises(ValueError):
        desc.amax[0] = 3.0  # read-only, the descriptor stays immutable
    assert desc.dict() == {"num_bits": 4, "name": None, "axis": [0], "amax": [0.7, 1.2]}
    assert QuantDescriptor(**desc.dict()) == desc
    narrow = QuantDescriptor(narrow_range=True, calib_method="histogram")
    assert QuantDescriptor(**narrow.dict()) == narrow  # the original's dict() dropped these two
    assert quant_nn.QuantLinear(4, 3).weight_quantizer.axis == 0


def test_clip_module_refuses_non_scalar_bounds():
    with pytest.raises(ValueError, match="must be scalar"):
        quant_nn.Clip(torch.zeros(2), 1.0)
    assert quant_nn.Clip(torch.tensor(-0.5), 0.5)(torch.tensor([-1.0, 1.0])).tolist() == [-0.5, 0.5]
