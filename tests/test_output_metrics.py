"""Output rows and metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from quantrewrite.output_metrics import OutputRunner, output_rows, resolve_metric


def test_rows_of_structured_outputs():
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(2, 2, 2)
    rows = output_rows({"x": a, "rest": (b, None, "text")})
    assert rows.dtype == torch.float64 and rows.shape == (2, 7)
    assert rows[1].tolist() == [3, 4, 5, 1, 1, 1, 1]
    assert output_rows((torch.tensor(2.0), a)).shape == (1, 7)  # no common batch dim: one row
    with pytest.raises(ValueError, match="holds no tensor"):
        output_rows(None)


def test_metrics_by_hand():
    ref = [torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)]
    out = [torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)]
    assert resolve_metric(None).evaluate(ref, out) == pytest.approx(10 * math.log10(5 / 1))
    assert resolve_metric("cosine").evaluate(ref, out) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert resolve_metric("min_cosine").evaluate(ref, out) == pytest.approx(1 / math.sqrt(2))
    assert resolve_metric("sqnr").evaluate(ref, ref) == math.inf
    zero = [torch.zeros(1, 2, dtype=torch.float64)]
    assert resolve_metric("cosine").evaluate(zero, zero) == 1.0  # both zero: the same output


def test_callable_gets_all_batches_and_needs_one_width():
    seen = []
    metric = resolve_metric(lambda f, q: seen.append((f.shape, q.shape)) or 0.5)
    rows = [torch.zeros(2, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)]
    assert metric.evaluate(rows, rows) == 0.5 and seen == [((3, 3), (3, 3))]
    with pytest.raises(ValueError, match="one size per sample"):
        metric.evaluate([torch.zeros(1, 3), torch.zeros(1, 4)], [torch.zeros(1, 3), torch.zeros(1, 4)])
    with pytest.raises(TypeError, match="metric: expected a name"):
        resolve_metric(3)


def test_runner_materialises_once_and_counts():
    model = torch.nn.Identity()
    runner = OutputRunner((torch.ones(2, 2) * i for i in range(5)), num_batches=3)
    assert len(runner.rows(model)) == 3 and len(runner.rows(model)) == 3 and runner.passes == 6
    with pytest.raises(TypeError, match="Pass forward="):
        OutputRunner(["text"]).rows(model)
