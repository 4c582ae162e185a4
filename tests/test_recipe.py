"""save_recipe / load_recipe, and plain state_dict round trips of calibrated quantized models."""

from __future__ import annotations

import os
import stat

import pytest
import torch
import yaml
from torch import nn

import quantrewrite as qr
from quantrewrite.calibration import calibrate
from quantrewrite.models import ResidualCNN
from quantrewrite.recipe import RecipeError, load_recipe, save_recipe

CONFIG = {
    "version": 1,
    "defaults": {"input": {"calib_method": "histogram"}},
    "functions": {"add": {"quantize": True}},
    "layers": [{"match": "layers.1", "weight": {"num_bits": 4}}],
    "disable": ["fc._input_quantizer"],
}


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = ResidualCNN(2, 8).eval()
    qmodel = qr.quantize_model(model, CONFIG)
    generator = torch.Generator().manual_seed(1)
    calibrate(qmodel, [torch.randn(4, 3, 16, 16, generator=generator) for _ in range(3)], method="percentile",
              progress=False)
    return model, qmodel


def test_recipe_round_trip_rebuilds_the_same_model(calibrated, tmp_path):
    model, qmodel = calibrated
    path = save_recipe(qmodel, tmp_path / "recipe.yaml")
    rebuilt = load_recipe(model, path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(rebuilt(x), qmodel(x))
    original, loaded = qr.list_quantizers(qmodel), qr.list_quantizers(rebuilt)
    assert list(original) == list(loaded)
    for name, quantizer in original.items():
        assert loaded[name].quant_desc == quantizer.quant_desc
        assert loaded[name].is_enabled == quantizer.is_enabled
        if quantizer.amax is None:
            assert loaded[name].amax is None
        else:
            assert torch.equal(loaded[name].amax, quantizer.amax), name
    assert not loaded["fc._input_quantizer"].is_enabled
    assert loaded["layers.1.conv1._weight_quantizer"].num_bits == 4


def test_recipe_is_readable_yaml_with_versions_config_and_amax(calibrated, tmp_path):
    _, qmodel = calibrated
    data = yaml.safe_load(save_recipe(qmodel, tmp_path / "r.yaml").read_text())
    assert data["versions"]["torch"] == str(torch.__version__)
    assert data["versions"]["quantrewrite"] == qr.__version__
    assert data["config"]["functions"]["add"]["quantize"] is True
    record = data["quantizers"]["conv1._weight_quantizer"]
    assert record["descriptor"]["axis"] == [0]
    assert record["amax"]["shape"] == [8, 1, 1, 1]
    assert len(record["amax"]["values"]) == 8


def test_recipe_mismatch_names_the_quantizers(calibrated, tmp_path):
    _, qmodel = calibrated
    path = save_recipe(qmodel, tmp_path / "r.yaml")
    other = ResidualCNN(3, 8)  # one block more: extra quantizers
    with pytest.raises(RecipeError, match="in the model but not in the recipe: .*layers.2.conv1._input_quantizer"):
        load_recipe(other, path)
    data = yaml.safe_load(path.read_text())
    data["quantizers"]["ghost._input_quantizer"] = data["quantizers"]["conv1._input_quantizer"]
    data["quantizers"]["conv1._input_quantizer"]["descriptor"]["num_bits"] = 6
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as error:
        load_recipe(ResidualCNN(2, 8), path)
    assert "ghost._input_quantizer" in str(error.value)
    assert "conv1._input_quantizer: descriptor differs" in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected a mapping"),
    ("format: 1\nconfig: {version: 1}\n", "missing keys"),
    ("format: 9\nconfig: {version: 1}\nquantizers: {}\n", "format 9"),
    ("a: [", "not valid YAML"),
], ids=["list", "missing-keys", "future-format", "broken-yaml"])
def test_malformed_recipes_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(nn.Linear(2, 2), path)


def test_missing_file_and_unquantized_model_are_clear_errors(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(nn.Linear(2, 2), tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="quantize_model"):
        save_recipe(nn.Linear(2, 2), tmp_path / "x.yaml")


def test_failed_load_leaves_the_float_model_untouched(calibrated, tmp_path):
    _, qmodel = calibrated
    path = save_recipe(qmodel, tmp_path / "r.yaml")
    other = ResidualCNN(3, 8)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(RecipeError):
        load_recipe(other, path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    assert not qr.list_quantizers(other)


def test_state_dict_of_calibrated_model_loads_into_fresh_quantized_model(calibrated, tmp_path):
    model, qmodel = calibrated
    path = tmp_path / "ckpt.pt"
    torch.save(qmodel.state_dict(), path)
    fresh = qr.quantize_model(model, CONFIG)  # uncalibrated: no _amax buffers yet
    assert fresh.conv1.input_quantizer.amax is None
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.conv1.input_quantizer.amax.device.type == "cpu"
    x = torch.randn(2, 3, 16, 16)
    qr.disable_quantizers(fresh, "fc._input_quantizer")
    assert torch.equal(fresh(x), qmodel(x))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_recipe_honours_the_umask(calibrated, tmp_path, umask):
    _, qmodel = calibrated
    previous = os.umask(umask)
    try:
        path = save_recipe(qmodel, tmp_path / "recipe.yaml")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]  # no temporary file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_recipe_keeps_the_mode_of_the_file_it_replaces(calibrated, tmp_path):
    _, qmodel = calibrated
    path = tmp_path / "recipe.yaml"
    path.write_text("old")
    path.chmod(0o640)
    save_recipe(qmodel, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "quantizers" in yaml.safe_load(path.read_text())
