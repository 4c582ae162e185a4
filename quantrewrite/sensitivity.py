"""Sensitivity analysis: which layers (or quantizers) of a calibrated model cost accuracy.

For every layer, the model's output is measured twice against the float reference (the same model with every
quantizer disabled, which computes exactly what the float model computes): with only that layer quantized,
and with only that layer left float. The float outputs are computed once and cached; each layer costs two
forward passes per batch, the whole analysis ``batches * (2 + 2 * layers)``.

A *layer* is one entry of the model's plan (a module or a functional op site) with all of its enabled
quantizers; with ``granularity="quantizer"`` every quantizer is measured alone.

Example:
    >>> report = sensitivity(qmodel, batches)          # default metric: output SQNR in dB
    >>> print(report)                                   # a table, most sensitive first
    >>> print(report.to_yaml(2))                        # a `layers:` block leaving the 2 worst float
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantrewrite.api import list_quantizers
from quantrewrite.output_metrics import Metric, MetricFn, OutputRunner, resolve_metric

__all__ = ["GRANULARITIES", "LayerSensitivity", "QuantizerSwitch", "SensitivityReport", "quantizer_groups",
           "quantizer_owners", "sensitivity", "switched"]

logger = logging.getLogger(__name__)

GRANULARITIES = ("layer", "quantizer")
_GLOB_CHARS = re.compile(r"[*?\[\]]")
_OP_QUANTIZER = re.compile(r"(.+)_(?:input\d*|weight)_quantizer")


def _owner_by_name(quantizer: str) -> str:
    """The layer a quantizer belongs to, from its name alone (the rewrite's naming rules, see planner.py)."""
    scope, _, leaf = quantizer.rpartition(".")
    site = _OP_QUANTIZER.fullmatch(leaf)
    if site is None:  # a Quant module's own quantizer (conv1._input_quantizer) or anything else: its module
        return scope
    return f"{scope}.{site.group(1)}" if scope else site.group(1)


def quantizer_owners(model: nn.Module) -> dict[str, str]:
    """Quantizer name -> the name of the layer (plan entry: module or op site) that owns it.

    From the model's ``quant_plan`` when it has one; otherwise (e.g. after ``copy.deepcopy`` of a GraphModule,
    which drops it) from the quantizer names: ``conv1._input_quantizer`` -> ``conv1``,
    ``layer1.0.add_input1_quantizer`` -> ``layer1.0.add``.
    """
    names = list(list_quantizers(model))
    owner = {name: _owner_by_name(name) for name in names}
    plan = getattr(model, "quant_plan", None)
    if plan is not None:
        for entry in plan.entries:
            if entry.quantized:
                owner.update({q: entry.name for q in entry.quantizers if q in owner})
    return owner


def quantizer_groups(model: nn.Module, granularity: str = "layer") -> dict[str, tuple[str, ...]]:
    """The enabled quantizers of ``model`` grouped into the units that sensitivity and fallback switch.

    With "layer": by the layer (module or op site) that owns them (``quantizer_owners``). With "quantizer":
    one unit per quantizer. In model order.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {list(GRANULARITIES)}, got {granularity!r}")
    enabled = [name for name, q in list_quantizers(model).items() if q.is_enabled]
    if granularity == "quantizer":
        return {name: (name,) for name in enabled}
    owner = quantizer_owners(model)
    groups: dict[str, list[str]] = {}
    for name in enabled:
        groups.setdefault(owner[name], []).append(name)
    return {layer: tuple(names) for layer, names in groups.items()}


class QuantizerSwitch:
    """Turns a fixed set of quantizers on and off, and puts every quantizer back as it was on ``restore``.

    Also puts the model in eval mode until ``restore``. Use it through ``switched(model, names)``.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.model = model
        self.quantizers = list_quantizers(model)
        self.names = list(names)
        self.original = {name: q.is_enabled for name, q in self.quantizers.items()}
        self.training = model.training
        model.eval()

    def only(self, enabled: Iterable[str]) -> None:
        """Enable exactly ``enabled`` among the switched quantizers, disable the others."""
        on = set(enabled)
        for name in self.names:
            self._set(name, name in on)

    def restore(self) -> None:
        for name, was_enabled in self.original.items():
            self._set(name, was_enabled)
        self.model.train(self.training)

    def _set(self, name: str, enabled: bool) -> None:
        if enabled:
            self.quantizers[name].enable()
        else:
            self.quantizers[name].disable()


@contextlib.contextmanager
def switched(model: nn.Module, names: Iterable[str]) -> Iterator[QuantizerSwitch]:
    """A QuantizerSwitch over ``names``, restored on exit whatever happened inside."""
    switch = QuantizerSwitch(model, names)
    try:
        yield switch
    finally:
        switch.restore()


@dataclass
class LayerSensitivity:
    """One layer's (or quantizer's) row of a sensitivity report.

    Attributes:
        name: the layer (plan entry) or quantizer name.
        quantizers: the quantizers it switches.
        only_quantized: the metric with only this layer quantized (the lower, the more sensitive).
        only_float: the metric with every other layer quantized and this one left float.
    """

    name: str
    quantizers: tuple[str, ...]
    only_quantized: float
    only_float: float


def _pattern(name: str) -> str:
    """A config pattern matching exactly ``name`` (and what it encloses)."""
    return f"re:{re.escape(name)}" if _GLOB_CHARS.search(name) else name


def _yaml_scalar(text: str) -> str:
    return f'"{text}"' if not re.fullmatch(r"[A-Za-z_][\w.]*", text) else text


@dataclass
class SensitivityReport:
    """What ``sensitivity`` measured, most sensitive first.

    Attributes:
        metric: the metric's name; ``unit`` its unit ("dB" for sqnr).
        granularity: "layer" or "quantizer".
        all_quantized: the metric with every layer quantized.
        layers: one row per layer, ranked: ascending ``only_quantized`` (ties: descending ``only_float``).
        batches: batches per measurement.
        forward_passes: the model's forward passes in all (the float reference counted once).
    """

    metric: str
    granularity: str
    all_quantized: float
    layers: list[LayerSensitivity]
    batches: int
    forward_passes: int
    unit: str = ""
    _format: Callable[[float], str] | None = field(default=None, repr=False, compare=False)

    def fmt(self, value: float) -> str:
        return self._format(value) if self._format is not None else f"{value:.5g}"

    def worst(self, k: int) -> list[LayerSensitivity]:
        """The ``k`` most sensitive rows."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k: expected an int >= 0, got {k!r}")
        return self.layers[:k]

    def __str__(self) -> str:
        head = (f"sensitivity ({self.granularity}s: {len(self.layers)}, metric: {self.metric}, batches: "
                f"{self.batches}, forward passes: {self.forward_passes}); all quantized: "
                f"{self.fmt(self.all_quantized)}")
        rows = [("rank", self.granularity, "quantizers", "only this quantized", "only this float")]
        for rank, row in enumerate(self.layers, 1):
            rows.append((str(rank), row.name or "<root>", str(len(row.quantizers)), self.fmt(row.only_quantized),
                         self.fmt(row.only_float)))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = [head]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(widths[c]) if c in (1,) else cell.rjust(widths[c])
                                   for c, cell in enumerate(row)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_yaml(self, k: int) -> str:
        """A ready-to-paste config block leaving the ``k`` most sensitive layers float.

        For layers: a ``layers:`` block of ``{match: NAME, quantize: false}`` rules (append them to the
        config's ``layers`` list: later rules win). For quantizers: a ``disable:`` block of quantizer names
        (a ``layers`` rule cannot leave one quantizer of a layer float).
        """
        chosen = self.worst(k)
        note = (f"# left float by quantrewrite.sensitivity: the {len(chosen)} most sensitive {self.granularity}(s) "
                f"(metric {self.metric}, all quantized: {self.fmt(self.all_quantized)})")
        if self.granularity == "quantizer":
            lines = [note, "disable:" + (" []" if not chosen else "")]
            lines += [f"  - {_yaml_scalar(_pattern(row.name))}    # only this quantized: "
                      f"{self.fmt(row.only_quantized)}" for row in chosen]
        else:
            lines = [note, "layers:" + (" []" if not chosen else "")]
            lines += [f"  - {{match: {_yaml_scalar(_pattern(row.name))}, quantize: false}}    # only this "
                      f"quantized: {self.fmt(row.only_quantized)}" for row in chosen]
        return "\n".join(lines) + "\n"

    def plot(self, path: Any, *, top: int | None = None) -> Any:
        """A bar chart of the report (PNG at ``path``; needs the ``plot`` extra). Returns the path."""
        from quantrewrite.plots import plot_sensitivity

        return plot_sensitivity(self, path, top=top)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "granularity": self.granularity, "all_quantized": self.all_quantized,
                "batches": self.batches, "forward_passes": self.forward_passes,
                "layers": [{"name": r.name, "quantizers": list(r.quantizers), "only_quantized": r.only_quantized,
                            "only_float": r.only_float} for r in self.layers]}


class Measurement:
    """The float reference of a model on some data, cached, and the metric of any set of enabled quantizers."""

    def __init__(self, model: nn.Module, data: Iterable[Any], metric: str | MetricFn | Metric | None,
                 forward: Callable[[nn.Module, Any], Any] | None, switch: QuantizerSwitch,
                 num_batches: int | None = None):
        self.model = model
        self.metric = resolve_metric(metric)
        self.runner = OutputRunner(data, forward, num_batches)
        self.switch = switch
        switch.only(())
        self.reference = self.runner.rows(model)

    def __call__(self, enabled: Iterable[str]) -> float:
        self.switch.only(enabled)
        return self.metric.evaluate(self.reference, self.runner.rows(self.model))


def _warn_uncalibrated(model: nn.Module, names: Sequence[str]) -> None:
    quantizers = list_quantizers(model)
    dynamic = [n for n in names if quantizers[n].amax is None and not quantizers[n].is_clip_enabled]
    if dynamic:
        warnings.warn(f"{len(dynamic)} enabled quantizer(s) have no amax and quantize with a per-batch range; "
                      f"calibrate first: {', '.join(dynamic[:5])}{' ...' if len(dynamic) > 5 else ''}",
                      UserWarning, stacklevel=3)


def measure_sensitivity(measure: Measurement, groups: dict[str, tuple[str, ...]],
                        granularity: str) -> SensitivityReport:
    """The report for ``groups`` using an existing measurement (its float reference is reused)."""
    everything = [q for names in groups.values() for q in names]
    all_quantized = measure(everything)
    rows = []
    for layer, names in groups.items():
        inside = set(names)
        rows.append(LayerSensitivity(layer, names, measure(names), measure(q for q in everything if q not in inside)))

    def key(row: LayerSensitivity) -> tuple[float, float]:
        alone = row.only_quantized if not math.isnan(row.only_quantized) else -math.inf
        without = row.only_float if not math.isnan(row.only_float) else math.inf
        return alone, -without

    rows.sort(key=key)
    metric = measure.metric
    return SensitivityReport(metric.name, granularity, all_quantized, rows, len(measure.runner.batches),
                             measure.runner.passes, metric.unit, metric.format)


def sensitivity(qmodel: nn.Module, data: Iterable[Any], *, metric: str | MetricFn | None = None,
                forward: Callable[[nn.Module, Any], Any] | None = None, granularity: str = "layer",
                num_batches: int | None = None) -> SensitivityReport:
    """Measure how much each layer (or quantizer) of a calibrated model costs at the output.

    The model is left exactly as it was (quantizer states, train/eval mode); its amax values are not changed.

    Args:
        qmodel: a quantized, calibrated model (from ``quantize_model`` and ``calibrate``).
        data: batches as for ``calibrate`` (tensors, tuples or dicts; materialised once).
        metric: "sqnr" (default, dB), "cosine" (mean per-sample cosine), "min_cosine" (worst sample), or a
            callable ``(float_out, quant_out) -> float``, higher is better, given the outputs of all batches as
            ``(samples, features)`` tensors (see ``quantrewrite.output_metrics``).
        forward: ``forward(model, batch)`` returning the output to compare (default: ``model(batch)``,
            ``model(*batch)`` or ``model(**batch)``).
        granularity: "layer" (a module or op site with all its quantizers) or "quantizer".
        num_batches: use only the first batches.

    Returns:
        A SensitivityReport, most sensitive first; ``print`` it, ``to_yaml(k)``, ``plot(path)``.

    Raises:
        ValueError: no enabled quantizer, no batch, or a bad metric/granularity.

    Example:
        >>> report = sensitivity(qmodel, calib_batches, metric="cosine")
        >>> report.layers[0].name
        'fc'
    """
    groups = quantizer_groups(qmodel, granularity)
    resolve_metric(metric)  # a bad metric is reported before anything runs
    if not groups:
        raise ValueError("sensitivity: the model has no enabled quantizer")
    everything = [q for names in groups.values() for q in names]
    _warn_uncalibrated(qmodel, everything)
    with switched(qmodel, everything) as switch, torch.no_grad():
        measure = Measurement(qmodel, data, metric, forward, switch, num_batches)
        report = measure_sensitivity(measure, groups, granularity)
    logger.info("sensitivity: %d %ss, %d forward passes", len(groups), granularity, report.forward_passes)
    return report
