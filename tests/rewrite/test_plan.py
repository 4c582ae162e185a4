"""The plan: the issue's example config applied to a model with its layer names, YAML files, unmatched
patterns, and what every plan entry says (reasons, rules, descriptors, disabled-by)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from rewrite_toys import DataDependentRoot, ResNetLike, assert_unchanged, snapshot
from torch import nn

from quantrewrite import QuantConfigError, TensorQuantizer, list_quantizers, plan, quantize_model
from quantrewrite.calib import HistogramCalibrator, MaxCalibrator
from quantrewrite.nn import modules as qnn

# The example config, for a model with conv1, layer1..layer4 (downsample paths), classifier.N and fc.
EXAMPLE_YAML = r"""
version: 1
defaults:
  input: {num_bits: 8, calib_method: histogram}
  weight: {num_bits: 8, axis: 0}
modules:
  MaxPool2d: {quantize: false}
functions:
  add: {quantize: true}
layers:
  - match: "layer4"
    weight: {num_bits: 4}
  - match: "re:^classifier\\.\\d+$"
    quantize: false
  - match: "conv1"
    input: {calib_method: max}
disable:
  - "*.downsample.*"
  - "fc"
"""


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ResNetLike().eval()


@pytest.fixture
def example():
    return yaml.safe_load(EXAMPLE_YAML)


def _weight_quantizers(qmodel, prefix):
    return {n: q for n, q in list_quantizers(qmodel).items() if n.startswith(prefix) and "weight" in n}


def test_layer4_weights_are_4_bit_and_the_others_8(model, example):
    qmodel = quantize_model(model, example)
    layer4 = _weight_quantizers(qmodel, "layer4.")
    assert sorted(layer4) == sorted(f"layer4.{b}.{m}._weight_quantizer" for b, m in [
        ("0", "conv1"), ("0", "conv2"), ("0", "downsample.0"), ("1", "conv1"), ("1", "conv2")])
    assert {q.num_bits for q in layer4.values()} == {4}
    others = {n: q for n, q in _weight_quantizers(qmodel, "").items() if n not in layer4}
    assert len(others) >= 8 and {q.num_bits for q in others.values()} == {8}
    assert {q.axis for q in _weight_quantizers(qmodel, "").values()} == {(0,)}
    entry = qmodel.quant_plan["layer4.1.conv2"]
    assert entry.rules == ("defaults", "layers[0]")
    assert (entry.weight.num_bits, entry.weight.axis, entry.input.num_bits) == (4, (0,), 8)
    # an op site inside layer4 matches the rule too, but has no weight: the rule does not contribute
    assert qmodel.quant_plan["layer4.0.add"].rules == ("defaults", "functions.add")


def test_classifier_layers_stay_float_because_of_layers_1(model, example):
    qmodel = quantize_model(model, example)
    for name in ("classifier.0", "classifier.2"):
        assert type(qmodel.get_submodule(name)) is nn.Linear
        entry = qmodel.quant_plan[name]
        assert (entry.action, entry.reason) == ("skip", "layers[1] says quantize: false")
        assert entry.rules == ("defaults", "layers[1]")
        assert entry.quantizers == () and entry.input is None and entry.weight is None
    assert not any(name.startswith("classifier") for name in list_quantizers(qmodel))
    assert qmodel.quant_plan["classifier.1"].reason == "no registry entry"  # the ReLU


def test_max_pool_off_by_the_modules_section(model, example):
    qmodel = quantize_model(model, example)
    assert type(qmodel.maxpool) is nn.MaxPool2d
    assert qmodel.quant_plan["maxpool"].reason == "modules.MaxPool2d says quantize: false"


def test_conv1_input_calibrates_with_max(model, example):
    qmodel = quantize_model(model, example)
    quantizers = list_quantizers(qmodel)
    assert quantizers["conv1._input_quantizer"].quant_desc.calib_method == "max"
    assert isinstance(quantizers["conv1._input_quantizer"].calibrator, MaxCalibrator)
    assert qmodel.quant_plan["conv1"].rules == ("defaults", "layers[2]")
    # "conv1" names the top-level conv only, not layer1.0.conv1
    assert quantizers["layer1.0.conv1._input_quantizer"].quant_desc.calib_method == "histogram"
    assert isinstance(quantizers["layer1.0.conv1._input_quantizer"].calibrator, HistogramCalibrator)


def test_downsample_and_fc_quantizers_start_disabled(model, example):
    qmodel = quantize_model(model, example)
    disabled = {n for n, q in list_quantizers(qmodel).items() if not q.is_enabled}
    expected = {f"{b}.downsample.0.{r}_quantizer" for b in ("layer2.0", "layer3.0", "layer4.0")
                for r in ("_input", "_weight")} | {"fc._input_quantizer", "fc._weight_quantizer"}
    assert disabled == expected
    p = qmodel.quant_plan
    assert p["layer3.0.downsample.0"].disabled == {
        "layer3.0.downsample.0._input_quantizer": "disable[0] '*.downsample.*'",
        "layer3.0.downsample.0._weight_quantizer": "disable[0] '*.downsample.*'"}
    assert p["fc"].disabled == {"fc._input_quantizer": "disable[1] 'fc'", "fc._weight_quantizer": "disable[1] 'fc'"}
    assert {q for e in p for q in e.disabled} == disabled
    assert "disabled: _input_quantizer by disable[1] 'fc'" in str(p)


@pytest.mark.parametrize("as_path", [str, Path], ids=["str-path", "pathlib"])
def test_config_from_a_yaml_file(model, example, tmp_path, as_path):
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE_YAML, encoding="utf-8")
    from_file = plan(model, as_path(path))
    assert from_file.config_source == str(path)
    assert from_file.entries == plan(model, example).entries
    assert quantize_model(model, as_path(path)).quant_plan == from_file


def test_pattern_matching_nothing_warns_and_is_an_error_when_strict(model, example):
    example["layers"].append({"match": "layer5", "weight": {"num_bits": 4}})
    with pytest.warns(UserWarning, match=re.escape("layers[3].match: 'layer5' matches no module or op site")):
        p = plan(model, example)
    assert p.warnings == ["layers[3].match: 'layer5' matches no module or op site (did you mean 'layer4'?)"]
    assert "warning: layers[3].match: 'layer5'" in str(p)
    with pytest.warns(UserWarning, match="layer5"):
        quantize_model(model, example)
    with pytest.raises(QuantConfigError, match=re.escape("layers[3].match: 'layer5' matches no module")):
        quantize_model(model, example, strict=True)


def test_disable_pattern_matching_no_quantizer_warns(model):
    cfg = {"version": 1, "disable": ["fc", "head"]}
    with pytest.warns(UserWarning, match=re.escape("disable[1]: 'head' matches no quantizer")):
        plan(model, cfg)


# ---------------------------------------------------------------------------------- what entries say


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


MIXED_CFG = {"version": 1, "defaults": {"input": {"calib_method": "max"}},
             "layers": [{"match": "head", "weight": {"num_bits": 6}}, {"match": "conv", "input": {"num_bits": 7}},
                        {"match": "head.1", "quantize": False}],
             "disable": ["adaptive_avg_pool2d_*"]}


def test_plan_entries_say_what_and_why():
    p = plan(Mixed(), MIXED_CFG)
    assert [(e.name, e.kind, e.target, e.action) for e in p] == [
        ("conv", "module", "Conv2d", "quantize"), ("bn", "module", "BatchNorm2d", "skip"),
        ("head", "module", "Sequential", "skip"), ("head.0", "module", "Linear", "quantize"),
        ("head.1", "module", "Linear", "skip"), ("relu", "function", "relu", "skip"),
        ("adaptive_avg_pool2d", "function", "adaptive_avg_pool2d", "quantize"),
        ("flatten", "function", "flatten", "skip")]
    assert p["bn"].reason == "no registry entry"
    assert p["head"].reason == "container; its children are listed"
    assert p["head.1"].reason == "layers[2] says quantize: false"
    assert p["head.1"].rules == ("defaults", "layers[0]", "layers[2]")
    assert p["relu"].reason == "op not registered"

    conv = p["conv"]
    assert conv.reason is None and conv.rules == ("defaults", "layers[1]") and conv.quant_class == "QuantConv2d"
    assert (conv.input.num_bits, conv.input.calib_method, conv.input.axis) == (7, "max", None)
    assert conv.weight == qnn.QuantConv2d.default_quant_desc_weight
    assert conv.quantizers == ("conv._input_quantizer", "conv._weight_quantizer") and conv.disabled == {}
    head0 = p["head.0"]
    assert head0.rules == ("defaults", "layers[0]") and head0.quant_class == "QuantLinear"
    assert (head0.weight.num_bits, head0.weight.axis, head0.input.num_bits) == (6, (0,), 8)
    pool = p["adaptive_avg_pool2d"]
    assert pool.quantizers == ("adaptive_avg_pool2d_input_quantizer",) and pool.weight is None
    assert pool.disabled == {"adaptive_avg_pool2d_input_quantizer": "disable[0] 'adaptive_avg_pool2d_*'"}
    assert pool.rules == ("defaults",) and pool.quant_class is None
    assert p.counts() == {"modules quantized": 2, "ops quantized": 1, "quantizers": 5, "disabled": 1,
                          "untraced scopes": 0}


def test_plan_lists_untraced_scopes_with_the_error():
    p = plan(DataDependentRoot())
    (scope,) = [e for e in p if e.kind == "scope"]
    assert scope.name == "" and scope.target == "DataDependentRoot" and scope.action == "skip"
    assert scope.reason.startswith("not traced (TraceError: symbolically traced variables cannot be used as "
                                   "inputs to control flow")
    assert p.untraced[""] in scope.reason


@pytest.mark.parametrize("make", [Mixed, ResNetLike, DataDependentRoot], ids=lambda m: m.__name__)
def test_str_of_a_plan_is_a_table_naming_every_entry(make):
    p = plan(make(), {"version": 1, "functions": {"add": {"quantize": True}}})
    text = str(p)
    lines = text.splitlines()
    assert lines[0] == "quantrewrite plan (config: <dict>)"
    assert lines[1].split() == ["name", "kind", "type/op", "action", "details"]
    rows = lines[3:3 + len(p)]
    for entry, row in zip(p, rows):
        assert row.split()[:4] == [entry.name or "<root>", entry.kind, entry.target, entry.action]
        assert (entry.reason or "")[:40] in row
    assert lines[3 + len(p)].startswith(f"modules quantized: {p.counts()['modules quantized']}, ")


@pytest.mark.parametrize("make", [Mixed, ResNetLike, DataDependentRoot], ids=lambda m: m.__name__)
def test_plan_changes_nothing(make):
    torch.manual_seed(0)
    model = make().train()
    before = snapshot(model)
    attributes = set(vars(model))
    p = plan(model, {"version": 1, "functions": {"add": {"quantize": True}}})
    assert len(p.quantizer_names()) > 0
    assert_unchanged(model, before)
    assert not any(isinstance(m, TensorQuantizer) for m in model.modules())
    assert set(vars(model)) == attributes and model.training


@pytest.mark.parametrize("make", [Mixed, ResNetLike, DataDependentRoot], ids=lambda m: m.__name__)
def test_quantize_model_carries_the_plan_it_carried_out(make):
    model = make()
    cfg = {"version": 1, "functions": {"add": {"quantize": True}}, "disable": ["*conv*"]}
    qmodel = quantize_model(model, cfg)
    expected = plan(model, cfg)
    assert qmodel.quant_plan == expected
    assert qmodel.quant_plan.entries == expected.entries and len(expected) > 5
    assert set(list_quantizers(qmodel)) == set(expected.quantizer_names())
