"""sensitivity(): every figure against an independent measurement, state left alone, the YAML round trip."""

from __future__ import annotations

import pytest
import torch
import yaml
from accuracy_toys import (
    calibrated_digits,
    digits_config,
    digits_data,
    one_thread,
    outputs,
    sqnr,
    states,
    with_only,
)

from quantrewrite import calibrate, disable_quantizers, list_quantizers, quantize_model, sensitivity
from quantrewrite.config import QuantConfig, load_config
from quantrewrite.sensitivity import quantizer_groups


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def digits():
    model, qmodel = calibrated_digits()
    return model, qmodel, digits_data()


def test_all_disabled_equals_float_exactly(digits):
    model, qmodel, data = digits
    before = with_only(qmodel, set())
    try:
        assert torch.equal(outputs(qmodel, data), outputs(model, data))
    finally:
        for name, quantizer in list_quantizers(qmodel).items():
            quantizer.enable() if before[name] else quantizer.disable()


def test_layers_are_plan_entries_with_their_quantizers(digits):
    _, qmodel, _ = digits
    groups = quantizer_groups(qmodel)
    assert sorted(groups) == sorted(e.name for e in qmodel.quant_plan.quantized())
    assert groups["add"] == ("add_input_quantizer", "add_input1_quantizer")
    assert groups["fc"] == ("fc._input_quantizer", "fc._weight_quantizer")
    assert quantizer_groups(qmodel, "quantizer") == {n: (n,) for n in list_quantizers(qmodel)}
    with pytest.raises(ValueError, match="granularity: expected one of"):
        quantizer_groups(qmodel, "module")


def test_every_figure_matches_an_independent_measurement(digits):
    model, qmodel, data = digits
    before = states(qmodel)
    report = sensitivity(qmodel, data)
    assert states(qmodel) == before and not qmodel.training
    reference = outputs(model, data)
    everything = set(list_quantizers(qmodel))
    assert report.all_quantized == pytest.approx(sqnr(reference, outputs(qmodel, data)), abs=1e-9)
    try:
        for row in report.layers:
            with_only(qmodel, set(row.quantizers))
            assert row.only_quantized == pytest.approx(sqnr(reference, outputs(qmodel, data)), abs=1e-9), row.name
            with_only(qmodel, everything - set(row.quantizers))
            assert row.only_float == pytest.approx(sqnr(reference, outputs(qmodel, data)), abs=1e-9), row.name
    finally:
        with_only(qmodel, everything)
    alone = [row.only_quantized for row in report.layers]
    assert alone == sorted(alone)
    assert len(report.layers) == 7
    assert report.forward_passes == len(data) * (2 + 2 * 7)  # float reference once, all quantized, 2 per layer
    text = str(report)
    assert "only this quantized" in text and report.layers[0].name in text.splitlines()[3]


def test_disabled_quantizers_stay_out_and_training_mode_is_restored(digits):
    _, qmodel, data = digits
    disable_quantizers(qmodel, "fc")
    qmodel.train()
    try:
        report = sensitivity(qmodel, data[:1], granularity="quantizer")
        assert qmodel.training
        names = {row.name for row in report.layers}
        assert "fc._input_quantizer" not in names and len(names) == 11
        assert not list_quantizers(qmodel)["fc._input_quantizer"].is_enabled
    finally:
        qmodel.eval()
        list_quantizers(qmodel)["fc._input_quantizer"].enable()
        list_quantizers(qmodel)["fc._weight_quantizer"].enable()


def test_cosine_and_callable_metrics(digits):
    model, qmodel, data = digits
    reference = outputs(model, data)
    quantized = outputs(qmodel, data)
    cosine = torch.nn.functional.cosine_similarity(reference.double(), quantized.double(), dim=1)
    report = sensitivity(qmodel, data, metric="cosine")
    assert report.all_quantized == pytest.approx(float(cosine.mean()), abs=1e-12)
    assert sensitivity(qmodel, data, metric="min_cosine").all_quantized == pytest.approx(float(cosine.min()))

    def agreement(float_out: torch.Tensor, quant_out: torch.Tensor) -> float:
        assert float_out.shape == (32, 10)
        return float((float_out.argmax(1) == quant_out.argmax(1)).double().mean())

    custom = sensitivity(qmodel, data, metric=agreement)
    assert custom.metric == "agreement"
    assert custom.all_quantized == pytest.approx(float((reference.argmax(1) == quantized.argmax(1)).double().mean()))


def test_forward_and_structured_outputs(digits):
    _, qmodel, data = digits
    batches = [{"images": b, "scale": 2.0} for b in data]

    def forward(m, batch):
        logits = m(batch["images"])
        return {"logits": logits * batch["scale"], "extra": None}

    report = sensitivity(qmodel, batches, forward=forward)
    plain = sensitivity(qmodel, data)
    assert report.all_quantized == pytest.approx(plain.all_quantized, abs=1e-9)  # scaling leaves SQNR alone


def test_bad_input_is_reported_before_running(digits):
    model, qmodel, data = digits
    with pytest.raises(ValueError, match="metric: expected one of"):
        sensitivity(qmodel, data, metric="psnr")
    with pytest.raises(ValueError, match="data yielded no batch"):
        sensitivity(qmodel, [])
    with pytest.raises(ValueError, match="no enabled quantizer"):
        sensitivity(model, data)
    with pytest.raises(ValueError, match="k: expected an int"):
        sensitivity(qmodel, data[:1]).to_yaml(-1)


def test_uncalibrated_model_warns(digits):
    model, _, data = digits
    qmodel = quantize_model(model, digits_config())
    with pytest.warns(UserWarning, match="no amax"):
        sensitivity(qmodel, data[:1])


@pytest.mark.parametrize("k", [0, 2])
def test_to_yaml_round_trips_and_leaves_the_worst_layers_float(digits, k):
    model, qmodel, data = digits
    report = sensitivity(qmodel, data)
    block = yaml.safe_load(report.to_yaml(k))
    worst = [row.name for row in report.worst(k)]
    assert block == {"layers": [{"match": name, "quantize": False} for name in worst]}
    config = digits_config().to_dict()
    config["layers"] += block["layers"]
    requantized = quantize_model(model, QuantConfig(config))
    skipped = {e.name for e in requantized.quant_plan if not e.quantized and e.name in set(quantizer_groups(qmodel))}
    assert skipped == set(worst)
    calibrate(requantized, digits_data(split="train"), progress=False)
    # the same amax everywhere else (calibration sees float activations): outputs equal the disabled model's
    everything = set(list_quantizers(qmodel))
    try:
        with_only(qmodel, {q for row in report.layers[k:] for q in row.quantizers})
        assert torch.equal(outputs(requantized, data), outputs(qmodel, data))
    finally:
        with_only(qmodel, everything)


def test_quantizer_granularity_yaml_is_a_disable_list(digits):
    model, qmodel, data = digits
    report = sensitivity(qmodel, data, granularity="quantizer")
    block = yaml.safe_load(report.to_yaml(3))
    worst = [row.name for row in report.worst(3)]
    assert block == {"disable": worst}
    config = load_config(digits_config()).to_dict()
    config["disable"] += block["disable"]
    requantized = quantize_model(model, config)
    assert {n for n, q in list_quantizers(requantized).items() if not q.is_enabled} == set(worst)


def test_two_layers_without_a_plan_group_by_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    qmodel = quantize_model(model, "int8_max")
    del qmodel.quant_plan  # e.g. a model quantized by quant_modules.initialize(): grouped by enclosing module
    data = [torch.randn(8, 4)]
    calibrate(qmodel, data, progress=False)
    report = sensitivity(qmodel, data)
    assert sorted(row.name for row in report.layers) == ["0", "2"]
    # with two layers, one left float is the other quantized alone
    assert report.layers[0].only_float == pytest.approx(report.layers[1].only_quantized, abs=1e-9)
    assert report.layers[1].only_float == pytest.approx(report.layers[0].only_quantized, abs=1e-9)
    with_only(qmodel, set())
    with pytest.raises(ValueError, match="no enabled quantizer"):
        sensitivity(qmodel, data)


def test_layers_from_names_when_the_plan_is_gone(digits):
    _, qmodel, _ = digits
    plan = qmodel.quant_plan
    del qmodel.quant_plan  # copy.deepcopy of a GraphModule drops it
    try:
        by_name = quantizer_groups(qmodel)
    finally:
        qmodel.quant_plan = plan
    assert by_name == quantizer_groups(qmodel)


@pytest.mark.parametrize(("granularity", "num_batches"), [("layer", None), ("quantizer", 1)])
def test_forward_passes_count_the_calls_actually_made(digits, granularity, num_batches):
    _, qmodel, data = digits
    calls = []
    handle = qmodel.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        report = sensitivity(qmodel, data, granularity=granularity, num_batches=num_batches)
    finally:
        handle.remove()
    units = len(quantizer_groups(qmodel, granularity))
    batches = len(data) if num_batches is None else num_batches
    assert report.batches == batches and len(report.layers) == units
    assert report.forward_passes == len(calls) == batches * (2 + 2 * units)  # the README's cost statement
