"""Method "auto" scoring on just enough rows: cut calls, budget accounting, the cut end-to-end check.

The errors are checked against references computed here with plain torch on the rows that must be scored (the
layer's quantized weight and its input quantizer at each candidate amax, run by hand).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantrewrite as qr
from quantrewrite import range_search
from quantrewrite.calib.candidates import SAME_RANGE, candidate_ranges
from quantrewrite.calib.output_error import ENERGY_FLOOR
from quantrewrite.calibration import calibration
from quantrewrite.output_metrics import feed_batch

NAME = "0._input_quantizer"


def _calibrated_linear(rows: int = 4096):
    torch.manual_seed(0)
    qmodel = qr.quantize_model(nn.Sequential(nn.Linear(60, 64)), "int8_default").eval()
    data = [torch.randn(rows, 60) * torch.linspace(0.2, 3, 60)]
    data[0][::97, 7] = 40.0  # a few outliers: max and the percentiles differ
    with torch.no_grad(), calibration(qmodel):
        qmodel(data[0])
    quantizer = qmodel[0].input_quantizer
    return qmodel, data, quantizer, candidate_ranges(quantizer.calibrator, same_range=SAME_RANGE)


def _reference_errors(layer: nn.Linear, x: torch.Tensor, amaxes: list[float]) -> dict[str, list[float]]:
    """Both views of every candidate on the rows ``x``, in plain torch (float64 sums)."""
    quantizer = layer.input_quantizer
    with torch.no_grad():
        weight = layer.weight_quantizer(layer.weight)
        reference = F.linear(x, weight, layer.bias).double()
        energy = reference.pow(2).sum(-1)
        energy = energy.clamp_min(ENERGY_FLOOR * energy.mean().item())
        errors = {"relative": [], "absolute": []}
        for amax in amaxes:
            quantizer.amax = torch.tensor(amax)
            quantizer.enable_quant()
            quantized = quantizer(x)
            quantizer.disable_quant()
            squared = (F.linear(quantized, weight, layer.bias).double() - reference).pow(2)
            errors["absolute"].append(squared.sum().item())
            errors["relative"].append((squared.sum(-1) / energy).sum().item())
    return errors


def _scorer(quantizer, candidates, budget: int) -> range_search._Scorer:
    quantizer.disable_quant()
    return range_search._Scorer({"0": [NAME]}, {NAME: quantizer}, {NAME: candidates}, budget)


def test_a_cut_call_scores_exactly_the_first_rows_the_budget_needs():
    qmodel, data, quantizer, candidates = _calibrated_linear()
    assert len(candidates) > 2
    scorer = _scorer(quantizer, candidates, budget=64 * 100 - 5)  # 99.9 rows: 100 are scored
    range_search._score_batches(qmodel, scorer, data, feed_batch)
    assert scorer.scored["0"] == 64 * 100
    assert scorer.share_used == pytest.approx(100 / 4096)
    expected = _reference_errors(qmodel[0], data[0][:100], list(candidates.values()))
    for view in ("relative", "absolute"):
        assert scorer.errors[view][NAME] == pytest.approx(expected[view], rel=1e-4)


class _UnbatchedVector(nn.Module):
    """A Linear fed one pooled vector: its input has no rows to cut."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        return self.proj(x.mean(0))


class _SequenceFirstAttention(nn.Module):
    """Attention over a sequence-first input: cutting the leading dim changes every output row."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        return self.proj(self.attention(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("model, shape", [(_UnbatchedVector, (512, 16)), (_SequenceFirstAttention, (64, 8, 16))],
                         ids=["vector", "sequence-first-attention"])
def test_owners_whose_calls_cannot_be_cut_are_scored_whole(model, shape):
    torch.manual_seed(0)
    qmodel = qr.quantize_model(model().eval(), "int8_default")
    data = [torch.randn(*shape).exp() for _ in range(2)]
    with torch.no_grad(), calibration(qmodel):
        for batch in data:
            qmodel(batch)
    quantizers = {name: q for name, q in qr.api.list_quantizers(qmodel).items() if name.endswith("input_quantizer")}
    candidates = {name: candidate_ranges(q.calibrator, same_range=SAME_RANGE) for name, q in quantizers.items()}
    owners = {}
    for name in candidates:
        owners.setdefault(name.rpartition(".")[0], []).append(name)
    for quantizer in quantizers.values():
        quantizer.disable_quant()
    scorer = range_search._Scorer(owners, quantizers, candidates, budget=8)
    range_search._score_batches(qmodel, scorer, data, feed_batch)
    assert scorer.reached == set(quantizers)
    if model is _UnbatchedVector:  # a 1-d input: one whole call, whatever the tiny budget
        assert scorer.scored == {"proj": 16} and scorer.share_used == 0
    else:  # the cut attention's output is not the whole output's rows: its calls are scored whole
        assert "attention" in scorer.whole and scorer.scored["attention"] == 64 * 8 * 16
        assert scorer.scored["proj"] < 64 * 8 * 16 and 0 < scorer.share_used < 1  # a Linear's rows are cut


class _SamePlanes(nn.Module):
    """Three convs with the same output size per image, so a budget of k images cuts every call at k rows."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_scoring_four_distinct_images_picks_what_scoring_their_eight_copies_picks():
    """Rows that repeat four images: errors on the first four rows are 1/8 of the errors on all 32, so the
    cut scoring (and its cut end-to-end check) must pick every range the whole scoring picks."""
    torch.manual_seed(0)
    qmodel = qr.quantize_model(_SamePlanes().eval(), "int8_default")
    images = torch.randn(4, 3, 16, 16).exp() - 1
    images[0, 0, 3, 3] = 60.0
    batch = images.repeat(8, 1, 1, 1)
    with torch.no_grad(), calibration(qmodel):
        qmodel(batch)
    quantizers = {name: q for name, q in qr.api.list_quantizers(qmodel).items() if name.endswith("input_quantizer")}
    fed = []
    handle = qmodel.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[0]))
    cut = range_search.search_ranges(qmodel, quantizers, [batch], feed_batch, budget=4 * 8 * 16 * 16)
    handle.remove()
    whole = range_search.search_ranges(qmodel, quantizers, [batch], feed_batch, budget=10 ** 9)
    assert cut == whole
    assert any(len(candidate_ranges(q.calibrator, same_range=SAME_RANGE)) > 1 for q in quantizers.values())
    assert fed[0] == 32 and all(rows == 4 for rows in fed[1:])  # the end-to-end check (if any) on 4 rows
