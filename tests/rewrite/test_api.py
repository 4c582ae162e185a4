"""The public verbs: quantize_model's config forms and inplace contract, list/enable/disable_quantizers and
summary."""

from __future__ import annotations

import re

import pytest
import torch
from rewrite_toys import DataDependentRoot, TinyRef, assert_unchanged, registry_snapshot, snapshot
from torch import nn

from quantrewrite import (
    QuantConfig,
    QuantConfigError,
    RewriteError,
    TensorQuantizer,
    disable_quantizers,
    enable_quantizers,
    list_quantizers,
    load_config,
    plan,
    quantize_model,
    register_quant_module,
    summary,
)
from quantrewrite.models import ResidualCNN
from quantrewrite.nn import modules as qnn
from quantrewrite.nn.modules import QuantMixin
from quantrewrite.patterns import PatternError
from quantrewrite.rewrite.generated_forward import GeneratedForward


def _model():
    torch.manual_seed(0)
    return ResidualCNN(num_blocks=2, width=4, num_classes=3).eval()


# ------------------------------------------------------------------------------------- config forms


def test_no_config_means_int8_default():
    model = _model()
    qmodel = quantize_model(model)
    assert qmodel.quant_plan == plan(model, "int8_default")
    assert qmodel.quant_plan.config_source == "preset int8_default"
    quantizers = list_quantizers(qmodel)
    assert quantizers["fc._input_quantizer"].quant_desc.calib_method == "histogram"
    assert quantizers["fc._weight_quantizer"].axis == (0,)


@pytest.mark.parametrize(("preset", "weight_bits", "input_calib"),
                         [("int8_default", 8, "histogram"), ("int8_max", 8, "max"), ("w4a8", 4, "histogram")])
def test_preset_names(preset, weight_bits, input_calib):
    qmodel = quantize_model(_model(), preset)
    assert qmodel.quant_plan.config_source == f"preset {preset}"
    for name, quantizer in list_quantizers(qmodel).items():
        if name.endswith("weight_quantizer"):
            assert (quantizer.num_bits, quantizer.axis) == (weight_bits, (0,)), name
        else:
            assert (quantizer.num_bits, quantizer.quant_desc.calib_method) == (8, input_calib), name


CFG = {"version": 1, "defaults": {"weight": {"num_bits": 5}}, "functions": {"add": {"quantize": True}}}


@pytest.mark.parametrize("form", ["dict", "QuantConfig", "yaml-path"])
def test_config_forms_give_the_same_plan(form, tmp_path):
    model = _model()
    if form == "dict":
        cfg = CFG
    elif form == "QuantConfig":
        cfg = QuantConfig(CFG)
    else:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(QuantConfig(CFG).to_yaml(), encoding="utf-8")
    qmodel = quantize_model(model, cfg)
    assert qmodel.quant_plan.entries == plan(model, CFG).entries
    assert list_quantizers(qmodel)["fc._weight_quantizer"].num_bits == 5
    assert "layers.0.add_input1_quantizer" in list_quantizers(qmodel)


def test_bad_config_forms():
    with pytest.raises(QuantConfigError, match="did you mean 'int8_default'"):
        quantize_model(_model(), "int8_defualt")
    with pytest.raises(QuantConfigError, match="config file not found"):
        quantize_model(_model(), "missing/config.yaml")
    with pytest.raises(TypeError, match="expected an nn.Module"):
        quantize_model(lambda x: x)
    with pytest.raises(TypeError, match="load_config expects"):
        quantize_model(_model(), 8)


# ------------------------------------------------------------------------------------ inplace contract


class FragileQuantLinear(nn.Linear, QuantMixin):
    """Builds from every Linear except one with 3 outputs (the model's last module, the fc head)."""

    @classmethod
    def from_float(cls, module, quant_desc_input=None, quant_desc_weight=None):
        if module.out_features == 3:
            raise RuntimeError("cannot quantize a 3-output Linear")
        return super().from_float(module, quant_desc_input, quant_desc_weight)


def _fails_in_config(model, inplace):
    with pytest.raises(QuantConfigError, match="num_bits"):
        quantize_model(model, {"version": 1, "defaults": {"input": {"num_bits": "eight"}}}, inplace=inplace)


def _fails_on_unmatched_pattern(model, inplace):
    with pytest.raises(QuantConfigError, match="'nothing' matches no"):
        quantize_model(model, {"version": 1, "layers": [{"match": "nothing", "quantize": False}]},
                       inplace=inplace, strict=True)


def _fails_on_untraced_scope(model, inplace):
    with pytest.raises(RewriteError, match="did not trace"):
        quantize_model(model, inplace=inplace, strict=True)


def _fails_in_apply(model, inplace):
    with registry_snapshot():
        register_quant_module(nn.Linear, override=True)(FragileQuantLinear)
        with pytest.raises(RuntimeError, match="cannot quantize a 3-output Linear"):
            quantize_model(model, {"version": 1, "functions": {"add": {"quantize": True}}}, inplace=inplace)


def _untraceable():
    torch.manual_seed(0)
    return DataDependentRoot().eval()


FAILURES = {"config-error": (_model, _fails_in_config),
            "strict-unmatched-pattern": (_model, _fails_on_unmatched_pattern),
            "strict-untraced-scope": (_untraceable, _fails_on_untraced_scope),
            "from_float-raises": (_model, _fails_in_apply)}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_a_failing_call_leaves_the_model_unchanged(failure, inplace):
    make, fail = FAILURES[failure]
    model = make()
    before = snapshot(model)
    fail(model, inplace)
    assert_unchanged(model, before)
    assert not any(isinstance(m, TensorQuantizer) for m in model.modules())


def test_apply_failure_happens_after_earlier_layers_would_have_been_swapped():
    # the guard above is meaningful: conv layers and the pooling quantizer come before fc in the plan
    with registry_snapshot():
        register_quant_module(nn.Linear, override=True)(FragileQuantLinear)
        p = plan(_model(), "int8_default")
    names = [e.name for e in p.quantized()]
    assert names.index("conv1") < names.index("fc") and "adaptive_avg_pool2d" in names


def test_copy_never_modifies_the_input():
    model = _model()
    before = snapshot(model)
    qmodel = quantize_model(model, {"version": 1, "functions": {"add": {"quantize": True}}})
    assert qmodel is not model
    assert_unchanged(model, before)
    assert not any(isinstance(m, TensorQuantizer) for m in model.modules())
    assert not hasattr(model, "quant_plan")


def test_inplace_changes_the_models_children():
    model = _model()
    conv1, layers = model.conv1, model.layers
    qmodel = quantize_model(model, inplace=True)
    assert type(model.conv1) is qnn.QuantConv2d and model.conv1.weight is conv1.weight
    assert type(model.layers[0].conv2) is qnn.QuantConv2d and model.layers is layers
    assert qmodel is model  # the top level's F.adaptive_avg_pool2d got quantizers: a new forward, same object
    assert isinstance(vars(model)["forward"], GeneratedForward)


def test_inplace_returns_the_model_itself_when_its_top_level_is_untouched():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    qmodel = quantize_model(model, inplace=True)
    assert qmodel is model
    assert type(model[0]) is qnn.QuantLinear and type(model[2]) is qnn.QuantLinear
    assert qmodel.quant_plan.counts()["modules quantized"] == 2


TRAINING_MODELS = {"rebuilt-root": _model, "kept-root": lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
                   "untraced-root": _untraceable}


@pytest.mark.parametrize("make", list(TRAINING_MODELS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_module_of_the_result_has_the_models_training_mode(make, train):
    model = TRAINING_MODELS[make]().train(train)
    qmodel = quantize_model(model, {"version": 1, "functions": {"add": {"quantize": True}}})
    assert list_quantizers(qmodel)
    assert {name: m.training for name, m in qmodel.named_modules()} == {
        name: train for name, _ in qmodel.named_modules()}


# ----------------------------------------------------------------------------------- quantizer verbs


def test_list_quantizers_in_module_order():
    qmodel = quantize_model(TinyRef(), {"version": 1, "functions": {"add": {"quantize": True}}})
    quantizers = list_quantizers(qmodel)
    assert all(isinstance(q, TensorQuantizer) for q in quantizers.values())
    assert list(quantizers) == [n for n, m in qmodel.named_modules() if isinstance(m, TensorQuantizer)]
    assert set(quantizers) == set(qmodel.quant_plan.quantizer_names())
    assert list_quantizers(TinyRef()) == {}


def test_disable_and_enable_return_what_they_changed():
    qmodel = quantize_model(_model())
    everything = list(list_quantizers(qmodel))
    assert disable_quantizers(qmodel, "fc") == ["fc._input_quantizer", "fc._weight_quantizer"]
    assert disable_quantizers(qmodel, "fc") == []
    changed = disable_quantizers(qmodel, "layers.1", "re:.*_input_quantizer")
    assert sorted(changed) == sorted(n for n in everything if not n.startswith("fc.") and (
        n.startswith("layers.1.") or n.endswith("_input_quantizer")))
    assert all(not q.is_enabled for n, q in list_quantizers(qmodel).items() if n in changed)
    assert sorted(enable_quantizers(qmodel, "*")) == sorted(changed + ["fc._input_quantizer",
                                                                       "fc._weight_quantizer"])
    assert all(q.is_enabled for q in list_quantizers(qmodel).values())
    assert enable_quantizers(qmodel, "*") == []
    assert disable_quantizers(qmodel, "*") == everything


def test_enable_lists_the_quantizers_it_turned_back_on():
    qmodel = quantize_model(_model())
    disable_quantizers(qmodel, "layers.0")
    expected = [n for n in list_quantizers(qmodel) if n.startswith("layers.0.")]
    assert enable_quantizers(qmodel, "layers") == expected


@pytest.mark.parametrize("verb", [disable_quantizers, enable_quantizers], ids=lambda v: v.__name__)
def test_a_pattern_matching_no_quantizer_warns(verb):
    qmodel = quantize_model(_model())
    with pytest.warns(UserWarning, match=re.escape(f"{verb.__name__}: pattern 'layer9' matched no quantizer")):
        verb(qmodel, "layer9", "fc")
    with pytest.raises(ValueError, match="at least one pattern"):
        verb(qmodel)
    with pytest.raises(PatternError, match="bad regular expression"):
        verb(qmodel, "re:(")


def test_summary_lists_every_quantizer_with_state_and_amax():
    qmodel = quantize_model(_model(), "int8_max")
    quantizers = list_quantizers(qmodel)
    quantizers["conv1._input_quantizer"].amax = 1.5
    quantizers["fc._input_quantizer"].amax = 2.25
    quantizers["fc._weight_quantizer"].amax = torch.tensor([[0.5], [0.25], [1.0]])
    disable_quantizers(qmodel, "fc")
    text = summary(qmodel)
    rows = {line.split()[0]: line for line in text.splitlines()[2:-1]}
    assert list(rows) == list(quantizers)
    for name, quantizer in quantizers.items():
        assert rows[name].split()[1] == ("enabled" if quantizer.is_enabled else "disabled")
    assert "1.5000" in rows["conv1._input_quantizer"]
    assert "2.2500" in rows["fc._input_quantizer"]  # disabled, yet its amax is shown
    assert "[0.2500, 1.0000](3)" in rows["fc._weight_quantizer"]
    assert "dynamic" in rows["layers.0.conv1._input_quantizer"]
    assert "8bit" in rows["fc._weight_quantizer"] and "axis" in rows["fc._weight_quantizer"]
    assert text.splitlines()[-1] == f"{len(quantizers)} quantizers, {len(quantizers) - 2} enabled"


def test_load_config_is_the_one_entry_point():
    # quantize_model validates through load_config: the same object is used as is
    cfg = load_config({"version": 1})
    assert quantize_model(_model(), cfg).quant_plan.config_source == cfg.source == "<dict>"


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_quantize_model_leaves_the_garbage_collector_as_it_found_it(enabled):
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        quantize_model(ResidualCNN(2, 8))
        assert gc.isenabled() is enabled
        with pytest.raises(RewriteError):
            quantize_model(DataDependentRoot(), strict=True)  # fails inside the paused section
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
