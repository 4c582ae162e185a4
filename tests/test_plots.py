"""plot_calibration and SensitivityReport.plot: PNG files with the right panels, clear errors otherwise."""

from __future__ import annotations

import sys

import pytest
import torch
from accuracy_toys import calibrated_digits, digits_config, digits_data, one_thread

from quantrewrite import plot_calibration, sensitivity
from quantrewrite.plots import candidate_amax

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def calibrated():
    with one_thread():
        _, qmodel = calibrated_digits(digits_config("int8_default"))
    return qmodel


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_missing_matplotlib_names_the_extra(calibrated, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    with pytest.raises(ImportError, match=r"quantrewrite\[plot\]"):
        plot_calibration(calibrated, "fc", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_candidates_are_the_calibrator_methods(calibrated):
    quantizer = calibrated.fc._input_quantizer
    found = candidate_amax(quantizer.calibrator)
    assert set(found) == {"max", "entropy", "percentile", "mse"}
    assert found["entropy"] == pytest.approx(float(quantizer.amax))  # calibrated with entropy
    assert found["percentile"] == pytest.approx(float(quantizer.calibrator.compute_amax("percentile",
                                                                                        percentile=99.99)))
    assert max(found.values()) == found["max"]


def test_calibration_png_has_one_panel_per_histogram(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    one = png_size(plot_calibration(calibrated, "fc", tmp_path / "one.png"))
    # "add" selects the op site's two quantizers, "stem" the stem's input (its weight has no histogram)
    four = png_size(plot_calibration(calibrated, ["stem", "fc", "add"], tmp_path / "four.png"))
    assert four[1] > 1.8 * one[1] and four[0] > 1.8 * one[0]  # 2 x 2 panels against 1


def test_calibration_errors(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="expected a name ending in .png"):
        plot_calibration(calibrated, "fc", tmp_path / "c.jpg")
    with pytest.raises(ValueError, match="match no quantizer"):
        plot_calibration(calibrated, "nothing", tmp_path / "c.png")
    with pytest.raises(ValueError, match="holds a calibration histogram"):
        plot_calibration(calibrated, "*_weight_quantizer", tmp_path / "c.png")


def test_sensitivity_bar_chart(calibrated, tmp_path):
    pytest.importorskip("matplotlib")
    with one_thread():
        report = sensitivity(calibrated, digits_data(16))
    everything = png_size(report.plot(tmp_path / "all.png"))
    top = png_size(report.plot(tmp_path / "top.png", top=2))
    assert everything[0] == top[0] and everything[1] > top[1]  # a row per layer
    report.layers[0].only_float = float("inf")  # an exact output is drawn, not an error
    report.plot(tmp_path / "inf.png")
    assert torch.isfinite(torch.tensor(report.all_quantized))
