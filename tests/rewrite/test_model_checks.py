"""Descriptors that the config allows but the model's weights do not: caught while planning, located."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from quantrewrite import plan, quantize_model
from quantrewrite.config import QuantConfig, QuantConfigError


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


AXIS_7 = "version: 1\nlayers:\n  - match: '0'\n    weight: {axis: 7}\n"


def test_weight_axis_outside_the_weight_is_a_located_config_error():
    config = QuantConfig.from_yaml(AXIS_7, filename="axis.yaml")
    with pytest.raises(QuantConfigError) as info:
        plan(small_cnn(), config)
    assert info.value.errors == [
        ("layers[0].weight.axis",
         "expected an axis of the 4-D weight (-4..3), got 7, for 0 (Conv2d [8, 3, 3, 3]) (axis.yaml:4)")]


def test_quantize_model_refuses_before_changing_anything():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(QuantConfigError, match="axis"):
        quantize_model(model, QuantConfig.from_yaml(AXIS_7, filename="axis.yaml"), inplace=True)
    assert all(type(m) in (nn.Sequential, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_problem_per_rule_and_shape_listing_the_layers():
    data = {"version": 1, "defaults": {"weight": {"axis": -3}}}  # fine for conv (4-D), not for linear (2-D)
    with pytest.raises(QuantConfigError) as info:
        plan(small_cnn(), data)
    assert info.value.errors == [
        ("defaults.weight.axis", "expected an axis of the 2-D weight (-2..1), got -3, for 4 (Linear [4, 128])")]


def test_static_weight_amax_must_fit_the_weight():
    data = {"version": 1, "layers": [{"match": "2", "weight": {"amax": [1.0, 2.0]}}]}
    with pytest.raises(QuantConfigError) as info:
        plan(small_cnn(), data)
    (path, message), = info.value.errors
    assert path == "layers[0].weight.amax"
    assert "broadcasts to the weight's shape [8, 8, 3, 3]" in message and "got [2]" in message
    good = {"version": 1, "layers": [{"match": "2", "weight": {"amax": [[[[1.0]]]] * 8}}]}
    assert plan(small_cnn(), good)["2"].weight.amax is not None


def test_valid_axes_pass():
    for axis in (0, 1, -1, [0, 1]):
        plan(small_cnn(), {"version": 1, "layers": [{"match": "0", "weight": {"axis": axis}}]})


def test_attention_in_projection_weight_is_checked():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(QuantConfigError, match=r"0\.in_proj_weight \(MultiheadAttention \[24, 8\]\)"):
        plan(model, {"version": 1, "defaults": {"weight": {"axis": 2}}})


@pytest.mark.parametrize("bits", [0, 1, -1])
def test_config_num_bits_below_two_is_refused_with_its_line(bits):
    text = f"version: 1\ndefaults:\n  weight: {{num_bits: {bits}}}\n"
    with pytest.raises(QuantConfigError) as info:
        QuantConfig.from_yaml(text, filename="bits.yaml")
    (path, message), = info.value.errors
    assert path == "defaults.weight.num_bits"
    assert f"got {bits} (bits.yaml:3)" in message and ">= 2" in message
