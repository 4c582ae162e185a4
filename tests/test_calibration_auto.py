"""Method "auto" and its guards on small reproductions of failures seen on real models (issue 7).

Each case builds the tensor shape that broke a real network under entropy calibration, then checks the
range "auto" (the default) keeps against a reference computed here from the data itself.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from accuracy_toys import TwoInputs
from torch import nn

import quantrewrite as qr
from quantrewrite import calib, range_search
from quantrewrite.calib.candidates import SAME_RANGE, candidate_ranges, clipped_share
from quantrewrite.calibration import CALIB_METHODS, DEFAULT_METHOD, calibrate, calibration, load_calib_amax
from quantrewrite.tensor_quant import fake_tensor_quant


def _sqnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    return 10 * torch.log10(reference.pow(2).sum() / (reference - test).pow(2).sum()).item()


def _pooled_features(seed: int = 0) -> torch.Tensor:
    """512 positive values in [0.19, 1.1], no zeros: a classifier head's input after global average pooling."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 512, generator=generator) * 0.91 + 0.19


def _sparse_heavy_tail(n: int = 60_000, seed: int = 0, sigma: float = 1.5) -> torch.Tensor:
    """Two-thirds exact zeros, the rest log-normal: a detector head's input after ReLU."""
    generator = torch.Generator().manual_seed(seed)
    values = (sigma * torch.randn(n, generator=generator)).exp() * 0.1
    values[torch.rand(n, generator=generator) < 0.67] = 0
    return values.reshape(-1, 60)


def _percentile(x: torch.Tensor, p: float) -> float:
    return torch.quantile(x.abs().flatten().double(), p / 100).item()


def _single_method_sqnrs(qmodel: nn.Module, data: list[torch.Tensor], reference: torch.Tensor) -> dict[str, float]:
    """Collect statistics once, then the output SQNR of each single method's ranges (under no_grad)."""
    with calibration(qmodel):
        for batch in data:
            qmodel(batch)
    single = {}
    for method in ("max", "entropy", "percentile", "mse"):
        load_calib_amax(qmodel, method)
        single[method] = _sqnr(reference, torch.cat([qmodel(b) for b in data]))
    return single


def test_default_is_auto_and_every_method_is_accepted():
    assert DEFAULT_METHOD == "auto"
    assert set(CALIB_METHODS) == {"auto", "max", "entropy", "percentile", "mse"}


def test_entropy_clips_every_pooled_feature_but_auto_keeps_them():
    x = _pooled_features()
    entropy = calib.HistogramCalibrator()
    entropy.collect(x)
    assert (x > entropy.compute_amax("entropy")).float().mean() > 0.99  # the failure: (almost) every value clipped
    assert "entropy" not in candidate_ranges(entropy)  # the guard drops it
    head = nn.Linear(512, 10)
    qmodel = qr.quantize_model(head, "int8_default")
    result = calibrate(qmodel, [x], progress=False)
    assert result.method == "auto"
    amax = qmodel.input_quantizer.amax.item()
    assert amax >= _percentile(x, 99.0)  # nothing of substance clipped
    with torch.no_grad():
        assert _sqnr(head(x), qmodel(x)) > 30


def test_sparse_heavy_tail_keeps_a_range_near_the_tail():
    x = _sparse_heavy_tail()
    histogram = calib.HistogramCalibrator()
    histogram.collect(x)
    p9999 = _percentile(x, 99.99)
    assert histogram.compute_amax("entropy").item() < 0.5 * p9999  # the failure this guards against
    torch.manual_seed(0)
    layer = nn.Linear(60, 16)
    qmodel = qr.quantize_model(layer, "int8_default")
    calibrate(qmodel, list(x.split(250)), progress=False)
    amax = qmodel.input_quantizer.amax.item()
    assert amax >= 0.9 * p9999
    with torch.no_grad():
        reference = layer(x)
        auto = _sqnr(reference, qmodel(x))
        load_calib_amax(qmodel, "entropy")
        entropy = _sqnr(reference, qmodel(x))
    assert auto > entropy + 3


def test_auto_is_within_a_small_margin_of_the_best_single_method():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(60, 32), nn.ReLU(), nn.Linear(32, 8))
    data = list(_sparse_heavy_tail(seed=2).split(200))
    qmodel = qr.quantize_model(model, "int8_default")
    with torch.no_grad():
        reference = torch.cat([model(b) for b in data])
        single = _single_method_sqnrs(qmodel, data, reference)
        calibrate(qmodel, data, progress=False)
        auto = _sqnr(reference, torch.cat([qmodel(b) for b in data]))
    assert auto >= max(single.values()) - 1.0, (auto, single)


def test_few_samples_auto_is_stable_under_batch_order():
    x = _sparse_heavy_tail(n=3_000, seed=0, sigma=1.0)
    batches = list(x.split(2))  # 25 batches of 120 values
    histogram = calib.HistogramCalibrator()
    for batch in batches:
        histogram.collect(batch)
    forward_entropy = histogram.compute_amax("entropy").item()
    histogram.reset()
    for batch in batches[::-1]:
        histogram.collect(batch)
    assert abs(histogram.compute_amax("entropy").item() / forward_entropy - 1) > 0.2  # the instability
    amaxes = {}
    for order in ("forward", "reversed"):
        torch.manual_seed(0)
        qmodel = qr.quantize_model(nn.Linear(60, 8), "int8_default")
        calibrate(qmodel, batches if order == "forward" else batches[::-1], progress=False)
        amaxes[order] = qmodel.input_quantizer.amax.item()
    assert amaxes["forward"] == pytest.approx(amaxes["reversed"], rel=0.05)


def test_clipped_share_counts_values_above_amax():
    histogram = calib.HistogramCalibrator(num_bins=10)
    histogram.collect(torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]))
    assert clipped_share(histogram, 5.0) == pytest.approx(5 / 10)  # 6..10 of the 10 nonzero values
    assert clipped_share(histogram, 10.0) == 0.0


def test_auto_without_data_uses_the_histogram_and_names_its_choices():
    x = _pooled_features()
    qmodel = qr.quantize_model(nn.Linear(512, 4), "int8_default")
    with calibration(qmodel):
        qmodel(x)
    result = load_calib_amax(qmodel, "auto")
    assert set(result.choices) == {"_input_quantizer"}
    assert qmodel.input_quantizer.amax.item() >= _percentile(x, 99.0)


def test_auto_keeps_one_amax_for_a_shared_range_group():
    torch.manual_seed(0)
    config = {"version": 1, "defaults": {"input": {"calib_method": "histogram"}},
              "share": [["a._input_quantizer", "b._input_quantizer"]]}
    qmodel = qr.quantize_model(TwoInputs().eval(), config)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 16, generator=generator), 3 * torch.randn(8, 16, generator=generator).exp())
            for _ in range(3)]
    result = calibrate(qmodel, data, progress=False)
    assert result.choices["a._input_quantizer"] == result.choices["b._input_quantizer"]
    assert torch.equal(qmodel.a._input_quantizer.amax, qmodel.b._input_quantizer.amax)


class _OutlierTokens(nn.Module):
    """A projection followed by a LayerNorm, as a transformer's FFN down-projection feeds the next norm."""

    def __init__(self):
        super().__init__()
        self.down = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(self.down(x))


def _outlier_token_batches(n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """(4, 16, 64) batches of N(0, 1) with one huge value in token 0 of each sequence (0.1% of the values)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.randn(4, 16, 64, generator=generator)
        x[:, 0, 5] = 300 * (1 + 0.1 * torch.rand(4, generator=generator))
        batches.append(x)
    return batches


def test_outlier_tokens_before_a_layernorm_are_clipped():
    """MiniLM's failure, small: a layer-local squared error keeps the range of a few outlier tokens, which
    the next LayerNorm divides by their own norm, and rounds every other token to zero."""
    torch.manual_seed(0)
    model = _OutlierTokens().eval()
    data = _outlier_token_batches()
    qmodel = qr.quantize_model(model, "int8_default")
    with torch.no_grad():
        reference = torch.cat([model(b) for b in data])
        single = _single_method_sqnrs(qmodel, data, reference)
        top = calib.HistogramCalibrator()
        for batch in data:
            top.collect(batch)
        full_range = top.compute_amax("max")
        result = calibrate(qmodel, data, progress=False)
        amax = qmodel.down.input_quantizer.amax
        auto = _sqnr(reference, torch.cat([qmodel(b) for b in data]))

        def layer_error(bound: torch.Tensor) -> float:  # the old score: squared error at the layer's output
            return sum((model.down(fake_tensor_quant(b, bound)) - model.down(b)).pow(2).sum().item()
                       for b in data)

        assert layer_error(full_range) < layer_error(amax)  # what the layer-local score preferred
    assert result.choices["down._input_quantizer"].startswith("percentile")
    assert amax.item() < 0.1 * full_range.item()
    assert auto > max(single.values()) + 5, (auto, single)


def test_scoring_stops_once_the_owners_hold_their_budget():
    torch.manual_seed(0)
    qmodel = qr.quantize_model(nn.Linear(60, 64), "int8_default")
    data = [torch.randn(4096, 60) for _ in range(6)]  # 262,144 output values per batch
    fed = []

    def feed(model, batch):
        fed.append(batch)
        return model(batch)

    with torch.no_grad(), calibration(qmodel):
        for batch in data:
            qmodel(batch)
    quantizers = {"_input_quantizer": qmodel.input_quantizer}
    range_search.search_ranges(qmodel, quantizers, data, feed, budget=2 ** 18)
    assert 1 <= len(fed) <= 3  # one scored batch, plus one per view when the two views disagree
    fed.clear()
    range_search.search_ranges(qmodel, quantizers, data, feed, budget=10 ** 9)
    assert len(fed) >= len(data)  # an unreachable budget scores every batch


def test_candidates_within_the_same_range_count_once():
    histogram = calib.HistogramCalibrator()
    histogram.collect(torch.randn(100_000, generator=torch.Generator().manual_seed(0)))
    every = candidate_ranges(histogram)
    merged = candidate_ranges(histogram, same_range=SAME_RANGE)
    assert set(merged) <= set(every) and "max" in merged
    kept = sorted(merged.values())
    assert all(b - a > SAME_RANGE * b for a, b in itertools.pairwise(kept))
    for name, amax in every.items():  # every dropped candidate is within SAME_RANGE of a kept one
        assert any(abs(amax - k) <= SAME_RANGE * max(amax, k) for k in kept), name
