"""fallback(): reaches the target with the fewest layers float, within max_float, and the recipe records it."""

from __future__ import annotations

import pytest
import torch
import yaml
from accuracy_toys import calibrated_digits, digits_data, one_thread, outputs, sqnr, states, with_only

from quantrewrite import fallback, list_quantizers, load_recipe, save_recipe, sensitivity
from quantrewrite.demo_model import load_digits_cnn
from quantrewrite.sensitivity import quantizer_groups


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def measured():
    model, qmodel = calibrated_digits()
    data = digits_data()
    return model, qmodel, data, sensitivity(qmodel, data)


def fresh(measured):
    """A copy of the calibrated model with every quantizer enabled."""
    import copy

    model, qmodel, data, report = measured
    twin = copy.deepcopy(qmodel)
    twin.quant_plan = qmodel.quant_plan  # copy.deepcopy of a GraphModule drops its attributes
    with_only(twin, set(list_quantizers(twin)))
    return model, twin, data, report


def test_reaches_the_target_with_layers_that_are_all_needed(measured):
    model, qmodel, data, report = fresh(measured)
    best_single = max(row.only_float for row in report.layers)
    target = best_single + 0.5  # more than any single layer left float gives
    result = fallback(qmodel, data, target=target, max_float=0.5, report=report)
    assert result.met and result.reached >= target
    assert 2 <= len(result.disabled) <= result.budget == 3 and result.layers == 7
    groups = quantizer_groups(measured[1])
    assert result.quantizers == [q for layer in result.disabled for q in groups[layer]]
    off = {n for n, on in states(qmodel).items() if not on}
    assert off == set(result.quantizers)
    reference = outputs(model, data)
    assert result.reached == pytest.approx(sqnr(reference, outputs(qmodel, data)), abs=1e-9)
    # fewest: quantizing any chosen layer again misses the target (an independent measurement)
    for layer in result.disabled:
        for name in groups[layer]:
            list_quantizers(qmodel)[name].enable()
        assert sqnr(reference, outputs(qmodel, data)) < target, layer
        for name in groups[layer]:
            list_quantizers(qmodel)[name].disable()


def test_target_already_met_changes_nothing(measured):
    _, qmodel, data, report = fresh(measured)
    before = states(qmodel)
    result = fallback(qmodel, data, target=report.all_quantized - 1, report=report)
    assert result.met and result.disabled == [] and states(qmodel) == before
    assert result.reached == pytest.approx(report.all_quantized)


def test_budget_is_never_exceeded_and_a_miss_warns(measured):
    model, qmodel, data, report = fresh(measured)
    with pytest.warns(UserWarning, match="short of the target"):
        result = fallback(qmodel, data, target=200.0, max_float=0.3, report=report)
    assert not result.met and result.budget == 2 and len(result.disabled) <= 2
    assert result.reached > result.start
    assert result.reached == pytest.approx(sqnr(outputs(model, data), outputs(qmodel, data)), abs=1e-9)
    _, qmodel, data, report = fresh(measured)
    with pytest.warns(UserWarning, match="short of the target"):
        assert fallback(qmodel, data, target=200.0, max_float=0.1, report=report).disabled == []  # floor(0.7) = 0


def test_runs_its_own_sensitivity_and_counts_passes(measured):
    _, qmodel, data, _ = fresh(measured)
    with pytest.warns(UserWarning, match="short of the target"):
        result = fallback(qmodel, data[:1], target=1e9, max_float=1 / 7, metric="cosine")
    assert result.metric == "cosine" and result.budget == 1
    # 1 reference + 1 all quantized + 2 per layer (sensitivity) + 7 candidates tried for the one step
    assert result.forward_passes == 1 + 1 + 2 * 7 + 7


def test_recipe_records_the_fallback(measured, tmp_path):
    _, qmodel, data, report = fresh(measured)
    result = fallback(qmodel, data, target=report.all_quantized + 0.5, max_float=0.5, report=report)
    assert result.met
    path = save_recipe(qmodel, tmp_path / "r.yaml")
    recorded = yaml.safe_load(path.read_text())["fallback"]
    assert recorded["disabled"] == result.disabled and recorded["target"] == pytest.approx(result.target)
    loaded = load_recipe(load_digits_cnn(), path)
    assert loaded.quant_fallback["disabled"] == result.disabled
    assert states(loaded) == states(qmodel)
    assert torch.equal(outputs(loaded, data), outputs(qmodel, data))
    block = yaml.safe_load(result.to_yaml())
    assert block == {"layers": [{"match": name, "quantize": False} for name in result.disabled]}


def test_quantizer_granularity(measured):
    _, qmodel, data, _ = fresh(measured)
    with pytest.warns(UserWarning, match="short of the target"):
        result = fallback(qmodel, data[:1], target=1e9, max_float=0.1, granularity="quantizer")
    assert result.layers == 13 and result.budget == 1 and result.disabled == result.quantizers
    assert yaml.safe_load(result.to_yaml()) == {"disable": result.disabled}


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "high"}, "target: expected a number"),
    ({"target": 30, "max_float": 1.5}, "max_float: expected a fraction"),
    ({"target": 30, "candidates": 0}, "candidates: expected an int"),
    ({"target": 30, "metric": "l2"}, "metric: expected one of"),
], ids=["target", "max_float", "candidates", "metric"])
def test_bad_arguments(measured, kwargs, message):
    _, qmodel, data, _ = measured
    before = states(qmodel)
    with pytest.raises(ValueError, match=message):
        fallback(qmodel, data, **kwargs)
    assert states(qmodel) == before


def test_a_report_of_another_granularity_is_refused(measured):
    _, qmodel, data, report = measured
    with pytest.raises(ValueError, match="report: it does not describe"):
        fallback(qmodel, data, target=30, granularity="quantizer", report=report)
