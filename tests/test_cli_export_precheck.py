"""``quantrewrite quantize --onnx`` refuses a config the exporter would refuse before any calibration batch runs,
one problem per line (issue 8 item 6); the rules are the exporter's own (``quantrewrite.export_rules``)."""

from __future__ import annotations

import textwrap

import pytest
import torch

from quantrewrite import quantize_model
from quantrewrite.cli import commands, main
from quantrewrite.export_rules import export_problems, quantizer_problems

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 3))
''')


class CountingBatches(list):
    """Calibration data that counts the batches iterated over (indexing, as for the example input, is free)."""

    def __init__(self, batches):
        super().__init__(batches)
        self.served = 0

    def __iter__(self):
        for batch in super().__iter__():
            self.served += 1
            yield batch


@pytest.fixture
def counted(tmp_path, monkeypatch):
    (tmp_path / "factory.py").write_text(FACTORY)
    data = CountingBatches([torch.randn(2, 3, 8, 8) for _ in range(3)])
    monkeypatch.setattr(commands, "load_batches", lambda *args, **kwargs: data)
    monkeypatch.chdir(tmp_path)
    return tmp_path, data


def quantize(tmp_path, *extra):
    return main(["quantize", f"{tmp_path}/factory.py:build", "--calib", "random:2x3x8x8", "--method", "max",
                 "--recipe", str(tmp_path / "r.yaml"), *extra])


def test_the_counter_sees_calibration(counted, capsys):  # the proof below relies on it
    tmp_path, data = counted
    assert quantize(tmp_path, "-c", "w4a8") == 0, capsys.readouterr().err
    assert data.served == 3


def test_a_4bit_config_with_onnx_fails_before_any_batch_one_problem_per_line(counted, capsys):
    tmp_path, data = counted
    code = quantize(tmp_path, "-c", "w4a8", "--onnx", str(tmp_path / "m.onnx"))
    err = capsys.readouterr().err
    assert code == 1
    assert data.served == 0
    lines = err.strip().splitlines()
    assert lines[0].startswith("quantrewrite: error: --onnx: 3 quantizer(s) cannot be exported"), err
    assert "nothing was calibrated" in lines[0]
    assert lines[1:] == [f"  {layer}._weight_quantizer: num_bits=4: ONNX Q/DQ up to opset 20 is 8-bit only: "
                         "disable it or use num_bits: 8" for layer in ("0", "2", "4")]
    assert ":;" not in err and not (tmp_path / "r.yaml").exists() and not (tmp_path / "m.onnx").exists()


def test_several_problems_of_one_layer_each_get_a_line(counted, capsys):
    tmp_path, data = counted
    (tmp_path / "c.yaml").write_text("version: 1\nlayers:\n  - match: '4'\n    input: {num_bits: 6, "
                                     "narrow_range: true}\n")
    assert quantize(tmp_path, "-c", "c.yaml", "--onnx", str(tmp_path / "m.onnx")) == 1
    assert data.served == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines[1:]] == ["  4._input_quantizer"] * 2
    assert "num_bits=6" in lines[1] and "narrow_range=True" in lines[2]


def test_fp8_is_refused_at_the_default_opset_and_accepted_at_19(counted, capsys):
    tmp_path, data = counted
    (tmp_path / "fp8.yaml").write_text("version: 1\nlayers:\n  - match: '4'\n    weight: {num_bits: [4, 3]}\n")
    assert quantize(tmp_path, "-c", "fp8.yaml", "--onnx", str(tmp_path / "m.onnx")) == 1
    err = capsys.readouterr().err
    assert data.served == 0 and "4._weight_quantizer: num_bits=(4, 3): FP8 Q/DQ" in err and "opset >= 19" in err
    assert quantize(tmp_path, "-c", "fp8.yaml", "--onnx", str(tmp_path / "m.onnx"), "--opset", "19") == 0, \
        capsys.readouterr().err
    assert data.served == 3 and (tmp_path / "m.onnx").is_file()


def test_before_calibration_only_the_settings_count():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    qmodel = quantize_model(model, "int8_max")
    assert export_problems(qmodel, before_calibration=True) == {}
    # the same model after calibration would be checked for amax too: uncalibrated, the exporter refuses it
    assert set(export_problems(qmodel)) == {"0._input_quantizer", "0._weight_quantizer"}
    assert quantizer_problems(qmodel[0]._weight_quantizer) == [
        "amax is None (uncalibrated, or a dynamic range): calibrate first or disable it"]


def test_a_config_the_exporter_accepts_passes_the_check_and_exports(counted, capsys):
    tmp_path, data = counted
    (tmp_path / "w8.yaml").write_text("version: 1\nbase: w4a8\nlayers:\n  - {match: '*', weight: {num_bits: 8}}\n"
                                      "disable: ['4._input_quantizer']\n")
    code = quantize(tmp_path, "-c", "w8.yaml", "--onnx", str(tmp_path / "m.onnx"))
    assert code == 0, capsys.readouterr().err
    assert data.served == 3 and (tmp_path / "m.onnx").is_file()
