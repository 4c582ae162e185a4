"""A user's own ``torch.onnx.export(qmodel, x, path)`` (what pytorch-quantization users write), with torch's
default exporter (dynamo, torch >= 2.9) and with ``dynamo=False``: standard Q/DQ pairs, nothing between the
two nodes of a pair, per-channel weight scales on their axis, and onnxruntime agreeing with PyTorch.

Regression: with dynamo, quantizers emitted ``quantized_decomposed`` ops that only ``export_onnx``'s own
translation table could write; a direct call failed with "No ONNX function found". A dynamic batch
(``dynamic_shapes``) failed too (torch's fake-quantize ops have no kernel for symbolic shapes).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quantrewrite import calibrate, quantize_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CASES = {
    "dynamo": {},  # torch.onnx.export's default
    "dynamo-dynamic-batch": {"dynamic_shapes": ({0: torch.export.Dim("batch")},)},
    "torchscript": {"dynamo": False},
    "torchscript-dynamic-batch": {"dynamo": False, "input_names": ["x"], "dynamic_axes": {"x": {0: "batch"}}},
}


def conv_linear() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A float conv + linear model, its int8_default twin (per-channel weights) calibrated, an example input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    qmodel = quantize_model(model, "int8_default")
    calibrate(qmodel, [torch.randn(4, 3, 8, 8) for _ in range(3)], method="max")
    return model, qmodel, torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("case", list(CASES))
def test_direct_torch_onnx_export_writes_qdq_pairs_that_onnxruntime_runs(tmp_path, case):
    if CASES[case].get("dynamo", True):
        pytest.importorskip("onnxscript")
    _, qmodel, x = conv_linear()
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation and progress notes
        torch.onnx.export(qmodel, (x,), path, **CASES[case])
    graph = onnx.load(path).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 4  # conv and linear: input and weight each
    consumers = {n.output[0]: [m.op_type for m in graph.node if n.output[0] in m.input] for n in quantize}
    assert all(kinds == ["DequantizeLinear"] for kinds in consumers.values()), consumers  # no Clip between
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) in (0, 2) and all(a.i == 0 for n in per_channel for a in n.attribute)

    batch = torch.randn(5, 3, 8, 8) if "dynamic" in case else x
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    with torch.no_grad():
        expected = qmodel(batch).numpy()
    # One quantization step on one input of the linear layer, through its largest quantized weight: what a single
    # rounding flip there moves an output by. Faithful exports are far inside it (~1e-7 measured).
    linear = qmodel[3]
    with torch.no_grad():
        one_step = float(linear.input_quantizer.amax) / 127 * float(linear.weight_quantizer(linear.weight).abs().max())
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= one_step
    assert np.abs(out - expected).max() < 1e-5


def test_per_channel_scales_are_the_quantizers(tmp_path):
    pytest.importorskip("onnxscript")
    _, qmodel, x = conv_linear()
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(qmodel, (x,), path)
    graph = onnx.load(path).graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    values.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant"})
    scales = sorted((values[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear"
                     and n.input[1] in values and values[n.input[1]].size > 1), key=len)
    expected = [qmodel[0].weight_quantizer.amax.reshape(-1) / 127, qmodel[3].weight_quantizer.amax.reshape(-1) / 127]
    assert len(scales) == 2
    for got, want in zip(scales, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
