"""The placement report on hand-built ONNX graphs (one per finding), on an export, and from the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

import quantrewrite as qr
from quantrewrite.cli import main
from quantrewrite.placement.report import placement_report


class Builder:
    """A tiny graph builder: 1x8x4x4 float tensors, int8 Q/DQ pairs with a given scale."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, dtype=np.float32):
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, *inputs, name=None, **attrs):
        out = self.name("t")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name or self.name(op_type), **attrs))
        return out

    def qdq(self, x, scale, name):
        s, z = self.const(scale), self.const(0, np.int8)
        q = self.op("QuantizeLinear", x, s, z, name=name)
        return self.op("DequantizeLinear", q, s, z, name=name + "_dq")

    def conv(self, x, name, int8_weight=True):
        w = self.const(np.ones((8, 8, 1, 1)))
        if int8_weight:
            w = self.qdq(w, 0.01, name + "_w")
        return self.op("Conv", x, w, name=name)

    def model(self, output):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "g", [x], [y], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _kinds(report):
    return [(issue.kind, issue.node) for issue in report.issues]


def test_int8_conv_with_its_pairs_fuses():
    b = Builder()
    out = b.conv(b.qdq("x", 0.1, "q_in"), "conv")
    report = placement_report(b.model(out))
    assert report.int8_ops == ["conv"] and report.coverage == 1.0
    assert report.qdq_pairs == 2 and report.issues == []


def test_float_weight_lowers_coverage():
    b = Builder()
    out = b.conv(b.qdq("x", 0.1, "q_in"), "conv", int8_weight=False)
    report = placement_report(b.model(out))
    assert report.coverage == 0.0 and "conv" in report.float_ops


def test_pair_feeding_no_quantizable_op():
    b = Builder()
    out = b.op("Sigmoid", b.qdq("x", 0.1, "q_sig"))
    report = placement_report(b.model(out))
    assert _kinds(report) == [("no_quantizable_consumer", "q_sig")]
    assert "Sigmoid" in report.issues[0].detail
    assert [i.node for i in report.unfusable] == ["q_sig"]


def test_pair_between_pad_and_conv():
    b = Builder()
    padded = b.op("Pad", "x", b.const(np.zeros(8), np.int64))
    out = b.conv(b.qdq(padded, 0.1, "q_pad"), "conv")
    assert _kinds(placement_report(b.model(out))) == [("pad_conv", "q_pad")]


def test_requantize_across_max_pooling():
    b = Builder()
    pooled = b.op("MaxPool", b.qdq("x", 0.1, "q_a"), kernel_shape=[2, 2])
    out = b.conv(b.qdq(pooled, 0.2, "q_b"), "conv")
    report = placement_report(b.model(out))
    assert _kinds(report) == [("requantize", "q_a")]
    same = Builder()
    pooled = same.op("MaxPool", same.qdq("x", 0.1, "q_a"), kernel_shape=[2, 2])
    assert placement_report(same.model(same.conv(same.qdq(pooled, 0.1, "q_b"), "conv"))).issues == []


def test_concat_inputs_with_a_different_scale():
    b = Builder()
    a = b.conv(b.qdq("x", 0.1, "q_x"), "conv_a")
    joined = b.op("Concat", "x", a, axis=1)
    out = b.op("Add", b.op("ReduceSum", b.conv(b.qdq(joined, 0.3, "q_cat"), "conv_b")), a)
    report = placement_report(b.model(out))
    assert ("concat_scales", "q_x") in _kinds(report)


def test_add_with_float_inputs_after_an_int8_conv_and_the_fused_shortcut():
    b = Builder()
    conv = b.conv(b.qdq("x", 0.1, "q_in"), "conv")
    out = b.op("Add", conv, "x", name="add")
    assert _kinds(placement_report(b.model(out))) == [("add_float_inputs", "add")]
    fixed = Builder()
    x = fixed.qdq("x", 0.1, "q_in")
    out = fixed.op("Add", fixed.conv(x, "conv"), x, name="add")  # the shortcut is quantized: the add fuses
    assert placement_report(fixed.model(out)).issues == []


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


@pytest.mark.parametrize(("cfg", "unfusable", "float_adds"), [("tensorrt", 0, 0), ("dla", 2, 0),
                                                              ("int8_default", 0, 1)])
def test_export_reports_placement(tmp_path, cfg, unfusable, float_adds):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    qmodel = qr.quantize_model(Residual().eval(), cfg)
    qr.calibrate(qmodel, [torch.randn(2, 3, 8, 8)], progress=False)
    report = qr.export_onnx(qmodel, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    placement = report.placement
    assert placement.coverage == 1.0 and len(placement.weighted_ops) == 3
    assert len(placement.unfusable) == unfusable
    assert sum(i.kind == "add_float_inputs" for i in placement.issues) == float_adds
    assert "TensorRT placement: int8 on 3/3 weighted ops" in str(report)


def test_cli_placement(tmp_path, capsys):
    b = Builder()
    path = tmp_path / "m.onnx"
    onnx.save(b.model(b.op("Sigmoid", b.qdq("x", 0.1, "q_sig"))), path)
    assert main(["placement", str(path)]) == 0
    assert "1 cannot fuse" in capsys.readouterr().out
    assert main(["placement", str(path), "--check"]) == 3
    (tmp_path / "bad.onnx").write_text("not onnx")
    assert main(["placement", str(tmp_path / "bad.onnx")]) == 1
    assert "cannot read" in capsys.readouterr().err
