"""Every warning and error about a quantizer (or its calibrator) starts with the quantizer's qualified name.

A module does not know where it sits in a model: ``quantize_model`` and ``calibrate`` give every quantizer its
name (``name_quantizers``), and the quantizer passes it to its calibrator (``_Calibrator.owner``).
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from torch import nn

from quantrewrite import QuantDescriptor, calib, calibrate, quantize_model
from quantrewrite.nn import QuantLinear, TensorQuantizer
from quantrewrite.nn.modules.tensor_quantizer import name_quantizers


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_quantize_model_names_every_quantizer_and_its_calibrator():
    qmodel = quantize_model(small_model(), "int8_default")
    names = {name: q.name for name, q in qmodel.named_modules() if isinstance(q, TensorQuantizer)}
    assert names and all(name == given for name, given in names.items())
    assert qmodel[0].input_quantizer.calibrator.owner == "0._input_quantizer"
    assert not any(key.endswith("name") for key in qmodel.state_dict())


def test_no_data_warning_names_the_quantizer(caplog):
    # the old quickstart's hand-written loop: a disabled quantizer's calibrator sees nothing, then amax is loaded
    qmodel = quantize_model(small_model(), "int8_default")
    quantizer = qmodel[2].input_quantizer
    with caplog.at_level(logging.WARNING):
        assert quantizer.load_calib_amax("percentile", strict=False) is None
    assert "2._input_quantizer: its HistogramCalibrator saw no data" in caplog.text


def test_calibrator_errors_name_the_quantizer():
    qmodel = quantize_model(small_model(), "int8_default")
    quantizer = qmodel[0].input_quantizer
    quantizer.enable_calib()
    quantizer.disable_quant()
    with pytest.raises(ValueError, match=r"^0\._input_quantizer: HistogramCalibrator\.collect: input contains "
                                         r"non-finite"):
        quantizer(torch.tensor([1.0, float("nan")]))
    weight = TensorQuantizer(QuantDescriptor(axis=0), if_calib=True, if_quant=False)
    weight.name = "head._weight_quantizer"
    weight(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"^head\._weight_quantizer: MaxCalibrator\(axis=\(0,\)\): the per-chan"):
        weight(torch.randn(5, 4))


def test_calibrator_warning_names_its_owner(caplog):
    with caplog.at_level(logging.WARNING):
        calib.HistogramCalibrator(grow_method="stretch", owner="layer1._input_quantizer")
        calib.HistogramCalibrator(grow_method="stretch")
    assert [r.getMessage() for r in caplog.records] == [
        "layer1._input_quantizer: HistogramCalibrator: grow_method is deprecated and ignored (got 'stretch')",
        "HistogramCalibrator: grow_method is deprecated and ignored (got 'stretch')"]


def test_calibrate_names_quantizers_of_a_hand_built_model(caplog):
    # pytorch-quantization style: Quant modules built directly (no quantize_model); calibrate names them
    model = nn.Sequential(QuantLinear(4, 3, quant_desc_input=QuantDescriptor(calib_method="histogram")),
                          QuantLinear(3, 2))
    assert model[0].input_quantizer.name is None
    calibrate(model, [torch.randn(5, 4)], method="percentile")
    assert model[1].weight_quantizer.name == "1._weight_quantizer"
    with caplog.at_level(logging.WARNING):
        model[0].input_quantizer.reset_amax()
        model[0].input_quantizer.calibrator.reset()
        model[0].input_quantizer.load_calib_amax("max", strict=False)
    assert "0._input_quantizer: its HistogramCalibrator saw no data" in caplog.text


def test_name_survives_a_new_calibrator_copies_and_pickles():
    quantizer = TensorQuantizer(QuantDescriptor(axis=0))
    quantizer.name = "stem._input_quantizer"
    first = quantizer.calibrator
    quantizer.load_state_dict({"_amax": torch.ones(1, 3, 1, 1)})  # amax on axis 1: the axis and calibrator follow
    assert quantizer.axis == (1,) and quantizer.calibrator is not first
    assert quantizer.calibrator.owner == "stem._input_quantizer"
    for other in (copy.deepcopy(quantizer), pickle.loads(pickle.dumps(quantizer))):
        assert other.name == other.calibrator.owner == "stem._input_quantizer"
    assert "name" not in "".join(quantizer.state_dict())


def test_unnamed_quantizer_messages_describe_it_and_bad_names_are_refused():
    quantizer = TensorQuantizer(QuantDescriptor(num_bits=4))
    with pytest.raises(ValueError, match=r"^TensorQuantizer\(4bit .*\): amax must be finite"):
        quantizer.amax = -1.0
    with pytest.raises(TypeError, match="expected a str or None, got int"):
        quantizer.name = 3


def test_name_quantizers_root_and_shared_instance():
    shared = TensorQuantizer()
    model = nn.Sequential(shared, nn.Sequential(shared))
    assert list(name_quantizers(model)) == ["0"]
    assert shared.name == "0"
    assert name_quantizers(shared) == {"": shared} and shared.name == "<root>"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_direct_export_refusal_names_the_quantizer(tmp_path):
    pytest.importorskip("onnx")
    from quantrewrite import ExportError

    qmodel = quantize_model(small_model(), "w4a8")
    calibrate(qmodel, [torch.randn(3, 4)], method="max")
    with pytest.raises(ExportError, match=r"\n  0\._weight_quantizer: num_bits=4"):
        torch.onnx.export(qmodel, (torch.randn(3, 4),), str(tmp_path / "m.onnx"), dynamo=False)
