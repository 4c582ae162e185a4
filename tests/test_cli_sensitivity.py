"""`quantrewrite sensitivity`: the table, the YAML block that validates, the plot, and bad options."""

from __future__ import annotations

import pytest
import yaml
from accuracy_toys import one_thread

from quantrewrite.cli import main
from quantrewrite.config import load_config

MODEL = "quantrewrite.demo_model:load_digits_cnn"
BASE = ["sensitivity", MODEL, "--config", "int8_max", "--calib", "digits", "--batch-size", "16", "--num-batches", "1"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


def test_table_yaml_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_yaml, out_png = tmp_path / "fix.yaml", tmp_path / "s.png"
    assert main([*BASE, "--top", "2", "--yaml", str(out_yaml), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "only this quantized" in text and "forward passes: 14" in text  # 1 batch x (2 + 2 x 6 layers)
    block = yaml.safe_load(out_yaml.read_text())
    assert len(block["layers"]) == 2 and all(rule["quantize"] is False for rule in block["layers"])
    config = load_config("int8_max").to_dict()
    config["layers"] += block["layers"]
    load_config(config)  # validates
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_without_yaml_prints_the_block(capsys):
    assert main([*BASE, "--top", "1", "--granularity", "quantizer", "--metric", "cosine"]) == 0
    text = capsys.readouterr().out
    assert "disable:\n  - " in text and "metric: cosine" in text


@pytest.mark.parametrize("extra, code, message", [
    (["--plot", "out.jpg"], 1, "--plot: expected a file name ending in .png"),
    (["--yaml", "no/such/dir/x.yaml"], 1, "--yaml: the folder of"),
    (["--top", "-1"], 2, "--top"),
    (["--metric", "psnr"], 2, "--metric"),
], ids=["plot-suffix", "yaml-folder", "top", "metric"])
def test_bad_options(extra, code, message, capsys):
    assert main([*BASE, *extra]) == code
    assert message in capsys.readouterr().err


def test_parser_choices_match_the_library():
    from quantrewrite.cli.sensitivity import GRANULARITY_CHOICES, METRIC_CHOICES
    from quantrewrite.output_metrics import METRICS
    from quantrewrite.sensitivity import GRANULARITIES

    assert METRIC_CHOICES == tuple(sorted(METRICS)) and GRANULARITY_CHOICES == GRANULARITIES
