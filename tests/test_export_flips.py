"""The export check on deep models: the bound includes the model's measured flip spread, so a faithful export of a
deep network passes and a wrong scale on one pair still fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quantrewrite.export as export_module
from quantrewrite import ExportError, QuantDescriptor, TensorQuantizer, calibrate, export_onnx, quantize_model
from quantrewrite.export_flips import onnx_arithmetic
from quantrewrite.export_verify import compare_outputs
from quantrewrite.models import TransformerStack

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIG = {"version": 1, "functions": {"add": {"quantize": True}, "matmul": {"quantize": True}},
          "defaults": {"input": {"num_bits": 8, "calib_method": "max"},
                       "weight": {"num_bits": 8, "axis": 0, "calib_method": "max"}}}


@pytest.fixture(scope="module")
def deep():
    """A 6-block transformer with quantized adds and matmuls, max-calibrated, and an example batch."""
    torch.manual_seed(0)
    model = quantize_model(TransformerStack(num_blocks=6, width=32, heads=4, vocab=100).eval(), CONFIG)
    batches = [torch.randint(0, 100, (8, 16)) for _ in range(2)]
    calibrate(model, batches, progress=False)
    return model, batches[0]


def test_onnx_arithmetic_is_round_half_even_of_x_over_scale():
    quantizer = TensorQuantizer(QuantDescriptor(amax=127 / 16))  # scale exactly 1/16
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6, 400.0, -400.0]) / 16
    expected = torch.tensor([0.0, 2.0, 2.0, -0.0, -2.0, 2.0, 3.0, 127.0, -128.0]) / 16
    assert torch.equal(onnx_arithmetic(quantizer, x), expected)
    unsigned = TensorQuantizer(QuantDescriptor(amax=255 / 16, unsigned=True))
    assert torch.equal(onnx_arithmetic(unsigned, torch.tensor([-1.0, 20.0])), torch.tensor([0.0, 255 / 16]))


def test_the_spread_widens_the_bound():
    reference, onnx_out = [np.array([1.0, -1.0])], [np.array([1.05, -1.0])]
    base = compare_outputs(reference, onnx_out, tolerance_steps=4.0)
    assert base.failures and base.tolerance == pytest.approx(4 / 127 + 2**-24)
    widened = compare_outputs(reference, onnx_out, tolerance_steps=4.0, spread=[0.02])
    assert not widened.failures and widened.tolerance == pytest.approx(4 / 127 + 2**-24 + 0.04)


def test_faithful_deep_export_passes_with_its_spread_reported(deep, tmp_path):
    model, example = deep
    report = export_onnx(model, example, tmp_path / "deep.onnx", dynamic_axes="batch")
    assert report.passed and report.flip_spread is not None
    base = 4 * float(model(example).abs().max()) / 127  # the old bound, without the spread
    assert report.tolerance >= base
    assert "flip spread" in str(report)


def test_a_wrong_scale_on_one_pair_fails(deep, tmp_path, monkeypatch):
    model, example = deep
    target = model.blocks[3].proj.input_quantizer  # a pair in the middle of the network
    original = export_module.quantize_for_export

    def broken(quantizer, inputs):
        if quantizer is not target:
            return original(quantizer, inputs)
        scale = (quantizer.amax.detach().float() * 0.25 / 127).reshape(())  # a 4x too small scale: saturates
        zero = torch.zeros((), dtype=torch.int32)
        return torch.fake_quantize_per_tensor_affine(inputs.float(), scale, zero, -128, 127)

    monkeypatch.setattr(export_module, "quantize_for_export", broken)
    with pytest.raises(ExportError, match="failed verification") as info:
        export_onnx(model, example, tmp_path / "broken.onnx")
    report = info.value.report
    assert report.max_abs_diff > report.tolerance and report.flip_spread < report.max_abs_diff
