"""The demo job and its shipped data: DigitsCNN, the digits, the table, the ONNX check, `quantrewrite demo`."""

from __future__ import annotations

import importlib.util
import io
import math

import pytest
import torch

from quantrewrite import demo as demo_module
from quantrewrite.cli import main
from quantrewrite.demo import METHODS, demo, demo_config, format_table, noise_split, sqnr_db, w4a8_note
from quantrewrite.demo_model import DigitsCNN, digits_batches, digits_tensors, load_digits_cnn

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def test_shipped_digits():
    train_x, train_y = digits_tensors("train")
    test_x, test_y = digits_tensors("test")
    assert train_x.shape == (1400, 1, 8, 8) and test_x.shape == (397, 1, 8, 8)
    assert train_x.dtype == torch.float32 and 0 <= float(train_x.min()) and float(train_x.max()) == 1.0
    assert set(train_y.tolist()) == set(range(10)) and set(test_y.tolist()) == set(range(10))
    assert [b.shape[0] for b in digits_batches("train", 500)] == [500, 500, 400]
    with pytest.raises(ValueError, match="split"):
        digits_tensors("val")


def test_shipped_weights_are_a_plain_state_dict_and_accurate():
    from importlib import resources

    with resources.files("quantrewrite").joinpath("data/digits_cnn.pt").open("rb") as handle:
        state = torch.load(handle, weights_only=True)
    model = DigitsCNN()
    model.load_state_dict(state)
    images, labels = digits_tensors("test")
    with torch.no_grad():
        accuracy = float((load_digits_cnn()(images).argmax(1) == labels).float().mean())
    assert accuracy > 0.95


@pytest.mark.parametrize("weights, method", [(w, m) for w in ("int8", "w4a8") for m in METHODS])
def test_demo_config(weights, method):
    config = demo_config(weights, method).to_dict()
    assert config["functions"]["add"] == {"quantize": True}
    assert config["defaults"]["weight"]["num_bits"] == (8 if weights == "int8" else 4)
    assert config["defaults"]["input"]["calib_method"] == ("max" if method == "max" else "histogram")
    assert not config["layers"]  # the stem needs no rule: test_demo_end_to_end checks its range


def test_sqnr_db():
    ref = torch.tensor([3.0, 4.0])
    assert math.isinf(sqnr_db(ref, ref))
    assert sqnr_db(ref, ref + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))


def test_demo_end_to_end():
    out = io.StringIO()
    threads = torch.get_num_threads()
    rows = demo(out=out)
    text = out.getvalue()
    assert torch.get_num_threads() == threads
    assert [(r.config, r.method) for r in rows] == [("fp32", "-")] + [(w, m) for w in ("int8", "w4a8")
                                                                       for m in METHODS]
    fp32, *quantized = rows
    assert fp32.accuracy > 0.95
    for row in quantized:
        floor = (0.97, 25.0) if row.config == "int8" else (0.93, 10.0)
        assert row.accuracy >= floor[0] and row.sqnr_db >= floor[1], row
    assert "quantrewrite plan (config: preset int8_default + functions.add on)" in text
    assert format_table(rows) in text
    # the stem's input (raw pixels in [0, 1], 17 values) keeps its range with every method: no clipping rule needed
    for row in quantized:
        assert float(row.model.stem.input_quantizer.amax) >= 1 - 1 / 2048, row
    # the w4a8 note: its figures are this run's, and what it says holds: the 4-bit weights dominate the error
    w4a8 = [r for r in quantized if r.config == "w4a8"]
    images, labels = digits_tensors("test")
    split = noise_split(w4a8[2], fp32.logits, images, labels)
    assert " ".join(w4a8_note(rows, split).split()) in " ".join(text.split())
    assert "Why the 4 w4a8 rows look the same" in text
    assert all(abs(r.sqnr_db - split.weights_sqnr_db) < 0.5 and r.accuracy == split.weights_accuracy for r in w4a8)
    assert split.inputs_sqnr_db > split.weights_sqnr_db + 10
    assert len({r.sqnr_db for r in w4a8}) == len(w4a8)  # the rows do differ, below the table's 0.1 dB
    if HAS_ONNX:
        assert "verification: passed" in text and "onnxruntime top-1 = PyTorch top-1 for 100.00%" in text
        assert "(deleted)" not in text and "removed when the demo ends" in text  # no bare placeholder
    else:
        assert "ONNX export skipped" in text


def test_cli_demo_runs_the_demo(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(demo_module, "demo", lambda out=None: calls.append(out) or [])
    assert main(["demo"]) == 0
    assert calls == [None]


def test_demo_without_onnx_says_so(monkeypatch):
    monkeypatch.setattr(demo_module, "_onnx_missing", lambda: ["onnxruntime"])
    lines = []
    demo_module._export(None, lines.append)
    assert lines == ["ONNX export skipped: onnxruntime not installed (pip install -c constraints.txt -e '.[onnx]')"]
