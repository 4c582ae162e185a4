"""export_onnx: standard Q/DQ pairs (scales, zero points, axis), onnxruntime agreement, the refusals, the report.

The exact checks compare the file against the formulas: scale = float32(amax) / float32(max_bound), zero point
int8/uint8 0; and onnxruntime's output against a numpy re-implementation of ONNX QuantizeLinear /
DequantizeLinear (round half to even of x / scale, saturate, multiply back).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quantrewrite import ExportError, QuantDescriptor, TensorQuantizer, export_onnx, list_quantizers
from quantrewrite.api import quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.export import export_problems
from quantrewrite.export_verify import count_qdq_pairs
from quantrewrite.models import ResidualCNN
from quantrewrite.nn import QuantConv2d, QuantLinear

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper


# ----------------------------------------------------------------------------------------------- helpers
def constants(graph) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def qdq_nodes(path) -> tuple[list, list, dict[str, np.ndarray]]:
    graph = onnx.load(str(path)).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    return quantize, dequantize, constants(graph)


def axis_of(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def run_onnx(path, *inputs: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})


def onnx_qdq_reference(x: np.ndarray, scale: np.ndarray, lo: int, hi: int, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear then DequantizeLinear (zero point 0), in numpy float32: an independent reference."""
    x = x.astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    q = np.clip(np.rint(x / scale), lo, hi)  # np.rint rounds half to even, as ONNX does
    return (q * scale).astype(np.float32)


def f32_scale(amax, max_bound: float = 127.0) -> np.ndarray:
    return (np.asarray(amax, dtype=np.float32) / np.float32(max_bound)).astype(np.float32)


def tiny_model(seed: int = 0) -> nn.Sequential:
    """Conv (input per tensor, weight per channel) -> ReLU -> flatten -> Linear, every amax fixed by hand."""
    torch.manual_seed(seed)
    model = nn.Sequential(QuantConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), QuantLinear(4 * 6 * 6, 5))
    conv, linear = model[0], model[3]
    conv.input_quantizer.amax = torch.tensor(2.5)
    conv.weight_quantizer.amax = conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    linear.input_quantizer.amax = torch.tensor(1.75)
    linear.weight_quantizer.amax = linear.weight.detach().abs().amax(dim=1, keepdim=True) * 0.9
    return model


@pytest.fixture(scope="module")
def calibrated_cnn():
    """ResidualCNN with residual-add quantizers, max-calibrated on a few random batches."""
    torch.manual_seed(0)
    config = {"version": 1, "functions": {"add": {"quantize": True}},
              "defaults": {"input": {"num_bits": 8, "calib_method": "max"},
                           "weight": {"num_bits": 8, "axis": 0, "calib_method": "max"}}}
    model = quantize_model(ResidualCNN(num_blocks=2, width=8), config)
    calibrate(model, [torch.randn(4, 3, 16, 16) for _ in range(3)], progress=False)
    return model


# -------------------------------------------------------------------------------------- the whole export
def test_residual_cnn_exports_one_pair_per_quantizer(calibrated_cnn, tmp_path):
    path = tmp_path / "cnn.onnx"
    quantizers = list_quantizers(calibrated_cnn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx(calibrated_cnn, torch.randn(2, 3, 16, 16), path)
    noise = [w for w in caught if issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning))]
    assert [str(w.message) for w in noise] == []  # no tracer warnings, no exporter deprecation spam
    quantize, dequantize, _ = qdq_nodes(path)
    assert len(quantize) == len(dequantize) == len(quantizers) == report.qdq_pairs == report.expected_pairs
    assert sorted(report.quantizers) == sorted(quantizers)
    assert report.passed and report.max_abs_diff <= report.tolerance
    assert report.sqnr_db > 40 and report.cosine > 0.9999
    assert report.opset == 17 and report.exporter == "torchscript"
    assert "verification: passed" in str(report)


def test_residual_cnn_scales_match_amax(calibrated_cnn, tmp_path):
    path = tmp_path / "cnn.onnx"
    export_onnx(calibrated_cnn, torch.randn(1, 3, 16, 16), path, verify=False)
    quantize, _, values = qdq_nodes(path)
    per_channel = sorted(tuple(values[n.input[1]]) for n in quantize if axis_of(n) is not None)
    per_tensor = sorted(float(values[n.input[1]]) for n in quantize if axis_of(n) is None)
    quantizers = list_quantizers(calibrated_cnn).values()
    expected_channel = sorted(tuple(f32_scale(q.amax.numpy()).reshape(-1)) for q in quantizers if q.axis)
    expected_tensor = sorted(float(f32_scale(q.amax.numpy())) for q in quantizers if not q.axis)
    assert per_channel == expected_channel  # exact float32 equality
    assert per_tensor == expected_tensor


def test_tiny_model_initializers(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    report = export_onnx(model, torch.randn(2, 3, 8, 8), path)
    assert report.passed and report.qdq_pairs == 4
    quantize, dequantize, values = qdq_nodes(path)
    weights = {n.input[0]: n for n in quantize if n.input[0] in ("0.weight", "3.weight")}
    inputs = [n for n in quantize if n.input[0] not in weights]
    assert len(weights) == 2 and len(inputs) == 2
    conv, linear = model[0], model[3]
    for name, module in (("0.weight", conv), ("3.weight", linear)):
        node = weights[name]
        scale = values[node.input[1]]
        assert axis_of(node) == 0
        assert scale.dtype == np.float32 and scale.shape == (module.out_channels if name == "0.weight" else 5,)
        np.testing.assert_array_equal(scale, f32_scale(module.weight_quantizer.amax.numpy()).reshape(-1))
    for node, amax in zip(inputs, (2.5, 1.75)):  # graph order = forward order
        scale = values[node.input[1]]
        assert axis_of(node) is None and scale.shape == ()
        assert scale == f32_scale(amax)
    for node in quantize + dequantize:
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    for node in dequantize:  # each DequantizeLinear reads the scale and zero point of its QuantizeLinear
        source = next(q for q in quantize if q.output[0] == node.input[0])
        assert list(source.input[1:]) == list(node.input[1:]) and axis_of(source) == axis_of(node)


# ---------------------------------------------------------------------------- against an independent reference
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "uint8"])
def test_single_quantizer_matches_numpy_qdq_exactly(tmp_path, unsigned):
    amax = 127 / 16 if not unsigned else 255 / 16  # scale exactly 1/16: ties are exact halves
    model = nn.Sequential(TensorQuantizer(QuantDescriptor(amax=amax, unsigned=unsigned)))
    step = 1 / 16
    grid = np.arange(-140, 270, dtype=np.float32) * step
    x = np.concatenate([grid, grid + step / 2, grid + step / 3]).astype(np.float32)  # ties, thirds, saturation
    if unsigned:
        x = np.abs(x)
    path = tmp_path / "q.onnx"
    report = export_onnx(model, torch.from_numpy(x), path)
    (out,) = run_onnx(path, x)
    lo, hi = (0, 255) if unsigned else (-128, 127)
    expected = onnx_qdq_reference(x, f32_scale(amax, hi), lo, hi)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(model(torch.from_numpy(x)).numpy(), expected)  # PyTorch agrees here too
    assert report.max_abs_diff == 0
    zero_point_type = qdq_nodes(path)[2][qdq_nodes(path)[0][0].input[2]].dtype
    assert zero_point_type == (np.uint8 if unsigned else np.int8)


def test_linear_matches_numpy_reference(tmp_path):
    torch.manual_seed(1)
    linear = QuantLinear(6, 3)
    linear.input_quantizer.amax = torch.tensor(1.5)
    linear.weight_quantizer.amax = linear.weight.detach().abs().amax(dim=1, keepdim=True)
    x = torch.randn(4, 6) * 1.2
    path = tmp_path / "linear.onnx"
    export_onnx(linear, x, path)
    (out,) = run_onnx(path, x.numpy())
    weight = linear.weight.detach().numpy()
    xq = onnx_qdq_reference(x.numpy(), f32_scale(1.5), -128, 127)
    wq = onnx_qdq_reference(weight, f32_scale(linear.weight_quantizer.amax.numpy()).reshape(-1), -128, 127, axis=0)
    expected = xq.astype(np.float64) @ wq.T.astype(np.float64) + linear.bias.detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- behaviour
def test_disabled_quantizer_emits_no_pair(tmp_path):
    model = tiny_model()
    model[3].input_quantizer.disable()
    path = tmp_path / "disabled.onnx"
    report = export_onnx(model, torch.randn(2, 3, 8, 8), path)
    quantize, dequantize, _ = qdq_nodes(path)
    assert len(quantize) == len(dequantize) == report.qdq_pairs == 3
    assert report.skipped == ["3._input_quantizer"] and report.passed


def test_model_unchanged_and_modes_restored(tmp_path):
    model = tiny_model()
    model.train()
    model[1].eval()  # a submodule in another mode than its parent keeps its own mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    assert model.training and not model[1].training and model[0].training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for quantizer in list_quantizers(model).values():
        assert not quantizer._forward_pre_hooks and not quantizer._forward_hooks


def test_fp16_model(tmp_path):
    model = tiny_model().half()
    path = tmp_path / "half.onnx"
    report = export_onnx(model, torch.randn(2, 3, 8, 8).half(), path)
    assert report.passed and report.qdq_pairs == 4
    assert "Cast" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_learn_amax_clip_exports_as_clip(tmp_path):
    quantizer = TensorQuantizer(QuantDescriptor(amax=2.0, learn_amax=True))
    with torch.no_grad():
        quantizer.clip.clip_value_min.fill_(-1.5)
    path = tmp_path / "clip.onnx"
    report = export_onnx(nn.Sequential(quantizer), torch.linspace(-3, 3, 101), path)
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node if n.op_type in ("Clip", "QuantizeLinear")] == ["Clip", "QuantizeLinear"]
    quantize, _, values = qdq_nodes(path)
    assert values[quantize[0].input[1]] == f32_scale(2.0)  # amax = max(-lo, hi), a constant
    assert report.passed


def test_dead_weight_channel_gets_scale_zero(tmp_path):
    linear = QuantLinear(4, 3)
    with torch.no_grad():
        linear.weight[1].zero_()
    linear.input_quantizer.amax = torch.tensor(2.0)
    linear.weight_quantizer.amax = linear.weight.detach().abs().amax(dim=1, keepdim=True)
    path = tmp_path / "dead.onnx"
    report = export_onnx(linear, torch.randn(5, 4), path)
    quantize, _, values = qdq_nodes(path)
    weight_scale = values[next(n for n in quantize if n.input[0] == "weight").input[1]]
    assert weight_scale[1] == 0 and (weight_scale[[0, 2]] > 0).all()
    assert report.passed and any("TensorRT wants positive scales" in w for w in report.warnings)


def test_direct_torch_onnx_export_refuses_with_the_quantizer_described(tmp_path):
    model = nn.Sequential(TensorQuantizer(QuantDescriptor(num_bits=4, amax=1.0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExportError, match=r"TensorQuantizer\(4bit .*num_bits=4"):
            torch.onnx.export(model, (torch.randn(3),), str(tmp_path / "direct.onnx"), dynamo=False)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_unreached_quantizer_is_reported(tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = QuantLinear(4, 4, quant_desc_input=QuantDescriptor(amax=1.0),
                                    quant_desc_weight=QuantDescriptor(amax=1.0))
            self.unused = QuantLinear(4, 4)  # never called, never calibrated

        def forward(self, x):
            return self.used(x)

    report = export_onnx(Branchy(), torch.randn(2, 4), tmp_path / "b.onnx")
    assert report.passed and report.qdq_pairs == 2
    assert report.not_reached == ["unused._input_quantizer", "unused._weight_quantizer"]
    assert any("unused._input_quantizer" in w and "calibrate first" in w for w in report.warnings)


def test_dynamic_batch(tmp_path):
    path = tmp_path / "dyn.onnx"
    report = export_onnx(tiny_model(), torch.randn(2, 3, 8, 8), path, input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    assert report.passed
    x = torch.randn(5, 3, 8, 8)
    (out,) = run_onnx(path, x.numpy())
    with torch.no_grad():
        expected = tiny_model()(x).numpy()
    assert out.shape == (5, 5) and np.abs(out - expected).max() <= report.tolerance


def test_pair_count_mismatch_fails(tmp_path):
    class DeadQuantizer(nn.Module):  # the quantizer runs, but its output is unused: the exporter drops the pair
        def __init__(self):
            super().__init__()
            self.quantizer = TensorQuantizer(QuantDescriptor(amax=1.0))

        def forward(self, x):
            self.quantizer(x)
            return x * 2

    with pytest.raises(ExportError, match="expected 1 Q/DQ pairs .*found 0") as info:
        export_onnx(DeadQuantizer(), torch.randn(4), tmp_path / "dead.onnx")
    assert info.value.report.qdq_pairs == 0 and info.value.report.expected_pairs == 1


# ------------------------------------------------------------------------------------------------ refusals
def test_uncalibrated_quantizers_are_all_named(tmp_path):
    model = nn.Sequential(QuantLinear(4, 4), nn.ReLU(), QuantLinear(4, 2))
    with pytest.raises(ExportError, match="calibrate first or disable it") as info:
        export_onnx(model, torch.randn(2, 4), tmp_path / "u.onnx")
    names = ["0._input_quantizer", "0._weight_quantizer", "2._input_quantizer", "2._weight_quantizer"]
    assert sorted(info.value.problems) == names
    assert all(name in str(info.value) for name in names)
    assert not (tmp_path / "u.onnx").exists()


def test_narrow_range_is_refused(tmp_path):
    model = tiny_model()
    model[3] = QuantLinear(4 * 6 * 6, 5, quant_desc_input=QuantDescriptor(amax=1.0, narrow_range=True),
                           quant_desc_weight=QuantDescriptor(amax=1.0, axis=None))
    with pytest.raises(ExportError, match="narrow_range: false") as info:
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "n.onnx")
    assert list(info.value.problems) == ["3._input_quantizer"]


def test_other_than_8_bits_is_refused(tmp_path):
    model = tiny_model()
    model[0] = QuantConv2d(3, 4, 3, quant_desc_input=QuantDescriptor(amax=2.0),
                           quant_desc_weight=QuantDescriptor(num_bits=4, amax=0.5, axis=None))
    with pytest.raises(ExportError, match=r"0\._weight_quantizer: num_bits=.*disable it or use num_bits: 8"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "b.onnx")
    assert list(export_problems(model)) == ["0._weight_quantizer"]


def test_fp8_is_refused_below_opset_19_only(tmp_path):
    model = tiny_model()
    model[0] = QuantConv2d(3, 4, 3, quant_desc_input=QuantDescriptor(amax=2.0),
                           quant_desc_weight=QuantDescriptor(num_bits=(4, 3), amax=0.5, axis=None))
    with pytest.raises(ExportError, match=r"0\._weight_quantizer: num_bits=\(4, 3\).*needs opset >= 19"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "b.onnx")
    assert export_problems(model) == {}  # nothing else stops it: opset 19 exports it (test_export_compat.py)


def test_calibrating_model_is_refused_before_any_forward(tmp_path):
    model = tiny_model()
    model[3].input_quantizer.enable_calib()
    with pytest.raises(ExportError, match="calibration is still on"):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "c.onnx")
    assert model[3].input_quantizer.calibrator.compute_amax() is None  # it saw nothing


def test_verification_failure_raises_with_report(tmp_path):
    # amax below 2^-24: PyTorch returns 0, the exported pair returns about amax; atol=0 makes that a failure.
    model = nn.Sequential(TensorQuantizer(QuantDescriptor(amax=1e-30)))
    with pytest.raises(ExportError, match="failed verification") as info:
        export_onnx(model, torch.randn(8), tmp_path / "t.onnx", atol=0.0)
    report = info.value.report
    assert report.passed is False and report.max_abs_diff > 0 and report.tolerance == 0
    assert any("2^-24" in w for w in report.warnings)
    assert export_onnx(model, torch.randn(8), tmp_path / "t.onnx").passed  # within the default tolerance


@pytest.mark.parametrize("kwargs,match", [
    ({"opset": 12}, "opset"),
    ({"exporter": "jit"}, "exporter"),
    ({"tolerance_steps": -1.0}, "tolerance"),
], ids=["opset", "exporter", "tolerance"])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(tiny_model(), torch.randn(1, 3, 8, 8), tmp_path / "x.onnx", **kwargs)


# -------------------------------------------------------------------------------------------- pair counting
def _graph(nodes, initializers):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    return helper.make_graph(nodes, "g", [x], [y], initializers)


def test_count_pairs_accepts_folded_weight_pairs():
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    weight = numpy_helper.from_array(np.array([1, -2, 3, 4], np.int8), "w_q")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["wd"]),
             helper.make_node("Add", ["xd", "wd"], ["y"])]
    assert count_qdq_pairs(_graph(nodes, [scale, zero, weight])) == (2, [])


def test_count_pairs_flags_bad_zero_points_and_lone_nodes():
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    zero32 = numpy_helper.from_array(np.array(0, np.int32), "z32")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z32"], ["xq"]),
             helper.make_node("Cast", ["xq"], ["y"], to=onnx.TensorProto.FLOAT)]
    pairs, problems = count_qdq_pairs(_graph(nodes, [scale, zero32]))
    assert pairs == 0
    assert any("zero point" in p for p in problems) and any("not only DequantizeLinear" in p for p in problems)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own pytree deprecation
def test_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    report = export_onnx(tiny_model(), torch.randn(2, 3, 8, 8), tmp_path / "d.onnx", exporter="dynamo", opset=18)
    assert report.passed and report.qdq_pairs == 4 and report.opset == 18
