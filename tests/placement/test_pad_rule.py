"""The ``pad_conv`` rule on padding modules (nn.ZeroPad2d, nn.ReflectionPad2d, ...) and on F.pad modes other
than zero padding: where the conv's input quantizer goes, the numbers, and the exported file's report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantrewrite as qr
from quantrewrite.placement.report import placement_report


class PadConv(nn.Module):
    def __init__(self, pad: nn.Module):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(16, 16, 3)

    def forward(self, x):
        return self.conv(self.pad(x))


COMMUTING = [nn.ZeroPad2d(1), nn.ReflectionPad2d(1), nn.ReplicationPad2d((1, 2, 0, 1)), nn.ConstantPad2d(1, 0.0)]


@pytest.mark.parametrize("pad", COMMUTING, ids=lambda m: type(m).__name__)
def test_pad_module_takes_the_conv_input_quantizer(pad):
    plan = qr.plan(PadConv(pad).eval(), "tensorrt")
    assert plan["conv"].disabled == {"conv._input_quantizer": "tensorrt rule pad_conv: moved before pad"}
    assert plan["conv"].placement["conv._input_quantizer"] == ("skipped", "pad_conv")
    assert plan["pad"].quantized and plan["pad"].quantizers == ("pad._input_quantizer",)
    assert plan["pad"].placement == {"pad._input_quantizer": ("placed", "pad_conv")}
    assert plan["pad"].quant_class == f"Quant{type(pad).__name__}"


@pytest.mark.parametrize("pad", COMMUTING, ids=lambda m: type(m).__name__)
def test_quantizing_before_the_pad_gives_the_numbers_of_quantizing_after_it(pad):
    torch.manual_seed(0)
    model = PadConv(pad).eval()
    qmodel = qr.quantize_model(model, "tensorrt")
    x = torch.randn(2, 16, 8, 8)
    qr.calibrate(qmodel, [x], progress=False)
    quantizer = qmodel.pad._input_quantizer
    assert not qmodel.conv._input_quantizer.is_enabled
    # reference: the float pad, then the quantizer with the same amax, then the conv with quantized weights
    expected = F.conv2d(quantizer(pad(x)), qmodel.conv._weight_quantizer(model.conv.weight), model.conv.bias)
    torch.testing.assert_close(qmodel(x), expected, rtol=0, atol=0)


def test_nonzero_constant_pad_keeps_the_conv_input_quantizer():
    plan = qr.plan(PadConv(nn.ConstantPad2d(1, 0.5)).eval(), "tensorrt")
    assert plan["conv"].disabled == {}
    assert not plan["pad"].quantized


@pytest.mark.parametrize(("mode", "moved"), [("reflect", True), ("replicate", True), ("constant", True)])
def test_functional_pad_modes_that_commute_move_the_quantizer(mode, moved):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3)

        def forward(self, x):
            return self.conv(F.pad(x, (1, 1, 1, 1), mode=mode))

    plan = qr.plan(Net().eval(), "tensorrt")
    assert plan["pad"].quantized is moved
    assert bool(plan["conv"].disabled) is moved


def test_functional_pad_with_a_nonzero_value_keeps_the_conv_input_quantizer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3)

        def forward(self, x):
            return self.conv(F.pad(x, (1, 1, 1, 1), value=0.5))

    plan = qr.plan(Net().eval(), "tensorrt")
    assert not plan["pad"].quantized and plan["conv"].disabled == {}


def test_pad_modules_stay_float_by_default_and_dla_quantizes_them():
    assert not qr.plan(PadConv(nn.ReflectionPad2d(1)).eval(), "int8_default")["pad"].quantized
    dla = qr.plan(PadConv(nn.ReflectionPad2d(1)).eval(), "dla")
    assert dla["pad"].placement == {"pad._input_quantizer": ("placed", "dla_every_input")}


def test_exported_reflection_pad_conv_has_no_unfusable_pair(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    found = {}
    for preset in ("int8_default", "tensorrt"):
        qmodel = qr.quantize_model(PadConv(nn.ReflectionPad2d(1)).eval(), preset)
        qr.calibrate(qmodel, [x], progress=False)
        qr.export_onnx(qmodel, x, tmp_path / f"{preset}.onnx")
        report = placement_report(tmp_path / f"{preset}.onnx")
        found[preset] = ([i.kind for i in report.unfusable], report.coverage)
    assert found == {"int8_default": (["pad_conv"], 1.0), "tensorrt": ([], 1.0)}
