"""Mixed-precision fallback: leave the fewest layers float until an output metric reaches a target.

The search is greedy on the sensitivity ranking and re-measured as it goes:

1. ``sensitivity`` ranks the layers (or the ``report`` given is used);
2. the candidates are the ``candidates`` most sensitive layers (default: twice the budget, at least 8);
3. each step measures every remaining candidate left float together with the layers already chosen, and keeps
   the one that gives the best metric; it stops when the target is reached, when the budget
   (``floor(max_float * layers)``) is spent, or when no candidate improves the metric;
4. once the target is reached, each chosen layer is tried quantized again, earliest first, and stays
   quantized when the target still holds (greedy choices that later ones made unnecessary).

The chosen layers are disabled on the model (every other quantizer keeps its state), the result is kept on the
model as ``quant_fallback`` and ``save_recipe`` writes it into the recipe.

Example:
    >>> result = fallback(qmodel, batches, target=0.99, metric="min_cosine")
    >>> result.met, result.disabled, result.reached
    (True, ['encoder.layer.5.output.dense'], 0.9931)
    >>> print(result.to_yaml())
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quantrewrite.output_metrics import MetricFn, resolve_metric
from quantrewrite.sensitivity import (
    Measurement,
    SensitivityReport,
    _pattern,
    _warn_uncalibrated,
    _yaml_scalar,
    measure_sensitivity,
    quantizer_groups,
    switched,
)

__all__ = ["FallbackResult", "fallback"]

logger = logging.getLogger(__name__)

MIN_CANDIDATES = 8


@dataclass
class FallbackResult:
    """What ``fallback`` left float and what it reached.

    Attributes:
        disabled: the layers (or quantizers) left float, in the order chosen.
        quantizers: the quantizers disabled.
        metric: the metric's name; target: the value asked for.
        start: the metric with every layer quantized; reached: the metric with ``disabled`` float.
        met: whether ``reached >= target``.
        budget: the most layers it was allowed to leave float; layers: how many it chose from.
        granularity: "layer" or "quantizer".
        forward_passes: forward passes spent, the sensitivity analysis included.
    """

    disabled: list[str]
    quantizers: list[str]
    metric: str
    target: float
    start: float
    reached: float
    met: bool
    budget: int
    layers: int
    granularity: str = "layer"
    forward_passes: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def float_fraction(self) -> float:
        """The share of the layers left float."""
        return len(self.disabled) / self.layers if self.layers else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("target", "start", "reached"):
            data[key] = float(data[key])
        return data

    def to_yaml(self) -> str:
        """The config block that leaves the same layers float (``layers:``) or quantizers disabled (``disable:``)."""
        note = (f"# left float by quantrewrite.fallback: {self.metric} {self.start:.6g} -> {self.reached:.6g} "
                f"(target {self.target:.6g}{'' if self.met else ', NOT reached'})")
        if self.granularity == "quantizer":
            body = [f"  - {_yaml_scalar(_pattern(name))}" for name in self.disabled]
            return "\n".join([note, "disable:" + ("" if body else " []"), *body]) + "\n"
        body = [f"  - {{match: {_yaml_scalar(_pattern(name))}, quantize: false}}" for name in self.disabled]
        return "\n".join([note, "layers:" + ("" if body else " []"), *body]) + "\n"

    def __str__(self) -> str:
        state = "reached" if self.met else "NOT reached"
        return (f"fallback: {len(self.disabled)} of {self.layers} {self.granularity}s left float "
                f"({100 * self.float_fraction:.1f}%, budget {self.budget}); {self.metric} {self.start:.6g} -> "
                f"{self.reached:.6g}, target {self.target:.6g} {state}; {self.forward_passes} forward passes"
                + "".join(f"\n  float: {name}" for name in self.disabled))


def _check(target: Any, max_float: Any, candidates: Any) -> None:
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or math.isnan(target):
        raise ValueError(f"target: expected a number, got {target!r}")
    if isinstance(max_float, bool) or not isinstance(max_float, numbers.Real) or not 0 <= max_float <= 1:
        raise ValueError(f"max_float: expected a fraction in [0, 1], got {max_float!r}")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1):
        raise ValueError(f"candidates: expected an int >= 1 or None, got {candidates!r}")


def _search(measure: Measurement, groups: dict[str, tuple[str, ...]], ranking: list[str], target: float,
            budget: int, start: float) -> tuple[list[str], float, list[dict[str, Any]]]:
    """Greedy forward choice over ``ranking`` then backward pruning; returns (chosen, metric, steps)."""
    everything = [q for names in groups.values() for q in names]

    def metric_without(floated: Iterable[str]) -> float:
        off = {q for layer in floated for q in groups[layer]}
        return measure([q for q in everything if q not in off])

    chosen: list[str] = []
    current = start
    steps: list[dict[str, Any]] = []
    while current < target and len(chosen) < budget:
        tried = {layer: metric_without([*chosen, layer]) for layer in ranking if layer not in chosen}
        if not tried:
            break
        best = max(tried, key=lambda layer: (tried[layer], -ranking.index(layer)))
        if not tried[best] > current:
            logger.info("fallback: no candidate improves %.6g; stopping", current)
            break
        chosen.append(best)
        current = tried[best]
        steps.append({"float": best, "metric": float(current), "tried": len(tried)})
    if current >= target:
        for layer in list(chosen):
            rest = [x for x in chosen if x != layer]
            value = metric_without(rest)
            if value >= target:
                chosen, current = rest, value
                steps.append({"quantized again": layer, "metric": float(current)})
    return chosen, current, steps


def fallback(qmodel: nn.Module, data: Iterable[Any], *, target: float, metric: str | MetricFn | None = None,
             max_float: float = 0.1, forward: Callable[[nn.Module, Any], Any] | None = None,
             granularity: str = "layer", report: SensitivityReport | None = None, candidates: int | None = None,
             num_batches: int | None = None) -> FallbackResult:
    """Leave the fewest layers of a calibrated model float until ``metric`` reaches ``target``.

    Never leaves more than ``floor(max_float * n)`` of the ``n`` quantized layers float; when the target
    cannot be reached within that budget, the best set found is applied and a warning says so.

    Args:
        qmodel: a quantized, calibrated model; changed in place (the chosen quantizers are disabled).
        data: the batches to measure on (as for ``sensitivity``; held-out data is the honest choice).
        target: the metric value to reach (higher is better; dB for "sqnr").
        metric: as for ``sensitivity``: "sqnr" (default), "cosine", "min_cosine" or a callable.
        max_float: the largest share of the quantized layers that may be left float.
        forward: ``forward(model, batch)`` as for ``calibrate``.
        granularity: "layer" or "quantizer" (the unit left float and counted by ``max_float``).
        report: a sensitivity report of this model with the same metric and granularity, to skip that step.
        candidates: how many of the most sensitive layers the search considers.
        num_batches: use only the first batches.

    Returns:
        A FallbackResult; it is also kept as ``qmodel.quant_fallback`` (a dict) for ``save_recipe``.
    """
    _check(target, max_float, candidates)
    resolve_metric(metric)
    groups = quantizer_groups(qmodel, granularity)
    if not groups:
        raise ValueError("fallback: the model has no enabled quantizer")
    if report is not None and (report.granularity != granularity or {r.name for r in report.layers} != set(groups)):
        raise ValueError("report: it does not describe this model's enabled "
                         f"{granularity}s (run sensitivity(qmodel, data, granularity={granularity!r}) again)")
    everything = [q for names in groups.values() for q in names]
    _warn_uncalibrated(qmodel, everything)
    budget = math.floor(max_float * len(groups) + 1e-9)
    with switched(qmodel, everything) as switch, torch.no_grad():
        measure = Measurement(qmodel, data, metric, forward, switch, num_batches)
        earlier_passes = 0 if report is None else report.forward_passes
        if report is None:
            report = measure_sensitivity(measure, groups, granularity)
            start = report.all_quantized
        else:
            start = measure(everything)
        pool = candidates if candidates is not None else max(2 * budget, MIN_CANDIDATES)
        ranking = [row.name for row in report.layers][:pool]
        chosen, reached, steps = _search(measure, groups, ranking, float(target), budget, start)
        passes = measure.runner.passes + earlier_passes
    disabled = [q for layer in chosen for q in groups[layer]]
    for name in disabled:  # after the switch restored every quantizer's own state
        switch.quantizers[name].disable()
    result = FallbackResult(chosen, disabled, measure.metric.name, float(target), float(start), float(reached),
                            reached >= target, budget, len(groups), granularity, passes, steps)
    qmodel.quant_fallback = result.to_dict()
    if not result.met:
        warnings.warn(f"fallback: {result.metric} reached {reached:.6g} with {len(chosen)} of {len(groups)} "
                      f"{granularity}s float (budget {budget} = max_float {max_float}), short of the target "
                      f"{target}", UserWarning, stacklevel=2)
    logger.info("%s", result)
    return result
