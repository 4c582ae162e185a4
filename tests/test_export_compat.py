"""Export of what migrated pytorch-quantization models carry: FP8 E4M3 Q/DQ (opset 19), pre_quant_scale as a Mul,
ConvTranspose amax on the original's axis, recurrent layers, enable_onnx_export() with direct torch.onnx.export.

onnxruntime (CPU) runs every file; its outputs are compared with PyTorch's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import quantrewrite
from quantrewrite import ExportError, QuantDescriptor, calibrate, export_onnx, quantize_model
from quantrewrite.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear, TensorQuantizer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FP8 = QuantDescriptor(num_bits=(4, 3))


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    for q in quantizers:
        q.enable_calib()
        q.disable_quant()
    model(x)
    for q in quantizers:
        q.load_calib_amax()
        q.disable_calib()
        q.enable_quant()
    return model.eval()


def run_onnx(path: str, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def nodes(path: str) -> list:
    return list(onnx.load(path).graph.node)


@pytest.mark.parametrize("axis", [None, 0], ids=["per-tensor", "per-channel"])
def test_fp8_exports_float8_qdq_at_opset_19(tmp_path, axis):
    torch.manual_seed(0)
    weight = QuantDescriptor(num_bits=(4, 3), axis=axis)
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(nn.Sequential(QuantConv2d(3, 8, 3, quant_desc_input=FP8, quant_desc_weight=weight),
                                     nn.ReLU(), nn.Flatten(),
                                     QuantLinear(288, 10, quant_desc_input=FP8, quant_desc_weight=weight)), x)
    path = str(tmp_path / "fp8.onnx")
    report = export_onnx(model, x, path, opset=19)
    assert report.passed and report.qdq_pairs == 4 and report.opset == 19
    graph = onnx.load(path).graph
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                 if n.op_type == "Constant"}
    constants.update({i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer})
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 4
    for node in quantize:
        assert constants[node.input[2]].dtype.name == "float8_e4m3fn"
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, rtol=0, atol=1e-5)


def test_fp8_below_opset_19_is_refused_with_the_fix(tmp_path):
    x = torch.randn(2, 4)
    model = calibrated(nn.Sequential(QuantLinear(4, 3, quant_desc_input=FP8, quant_desc_weight=FP8)), x)
    with pytest.raises(ExportError, match=r"needs opset >= 19, got 17: pass opset=19"):
        export_onnx(model, x, str(tmp_path / "fp8.onnx"), opset=17)


def test_pre_quant_scale_exports_as_mul(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    model = calibrated(nn.Sequential(QuantLinear(4, 3)), x)
    model[0].input_quantizer.pre_quant_scale = torch.tensor([0.5, 2.0, 1.0, 4.0])
    model[0].input_quantizer.amax = model[0].input_quantizer.amax * 4
    path = str(tmp_path / "smooth.onnx")
    report = export_onnx(model, x, path)
    assert report.passed
    kinds = [n.op_type for n in nodes(path)]
    assert "Mul" in kinds and kinds.index("Mul") < kinds.index("QuantizeLinear")
    np.testing.assert_allclose(run_onnx(path, x), model(x).detach().numpy(), rtol=0, atol=1e-5)


def test_conv_transpose_checkpoint_on_the_originals_axis_exports(tmp_path):
    torch.manual_seed(0)
    source = QuantConvTranspose2d(4, 6, 3)
    state = source.state_dict()
    state["_weight_quantizer._amax"] = source.weight.detach().abs().amax(dim=(0, 2, 3), keepdim=True)
    state["_input_quantizer._amax"] = torch.tensor(3.0)
    model = QuantConvTranspose2d(4, 6, 3).eval()
    model.load_state_dict(state)
    path = str(tmp_path / "deconv.onnx")
    x = torch.randn(1, 4, 5, 5)
    report = export_onnx(model, x, path)
    assert report.passed
    dequantize = [n for n in nodes(path) if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" and a.i == 1 for n in dequantize for a in n.attribute)


def test_recurrent_layers_export_unrolled(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 7, batch_first=True, bidirectional=True)
            self.gru = nn.GRU(14, 6, batch_first=True)

        def forward(self, x):
            y, _ = self.lstm(x)
            y, _ = self.gru(y)
            return y[:, -1]

    torch.manual_seed(0)
    model = quantize_model(Net().eval(), "int8_default")
    calibrate(model, [torch.randn(4, 3, 5)])
    report = export_onnx(model, torch.randn(2, 3, 5), str(tmp_path / "rnn.onnx"), input_names=["x"],
                         dynamic_axes={"x": {0: "batch"}})
    assert report.passed
    # per step: one input pair per direction and layer; per forward: one weight pair per direction and layer
    assert report.qdq_pairs == 3 * 3 + 3


def test_direct_torch_onnx_export_with_and_without_enable_onnx_export(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = calibrated(nn.Sequential(QuantLinear(4, 3), nn.ReLU(), QuantLinear(3, 2)), x)
    outputs = []
    for use_switch in (True, False):
        path = str(tmp_path / f"direct{use_switch}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if use_switch:
                with quantrewrite.enable_onnx_export():
                    torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False)
            else:
                torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False)
        assert [n.op_type for n in nodes(path)].count("QuantizeLinear") == 4
        outputs.append(run_onnx(path, x))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0], model(x).detach().numpy(), rtol=0, atol=1e-5)


def test_direct_torch_onnx_export_with_torchs_default_exporter(tmp_path):
    # torch.onnx.export's default (dynamo) exporter, called directly, has none of export_onnx's translations:
    # the quantizers must then emit ops it can write (regression: quantized_decomposed ops had no ONNX function).
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = calibrated(nn.Sequential(QuantLinear(4, 3), nn.ReLU(), QuantLinear(3, 2)), x)
    path = str(tmp_path / "direct_dynamo.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), opset_version=18)
    program.save(path)
    assert [n.op_type for n in nodes(path)].count("QuantizeLinear") == 4
    np.testing.assert_allclose(run_onnx(path, x), model(x).detach().numpy(), rtol=0, atol=1e-5)
