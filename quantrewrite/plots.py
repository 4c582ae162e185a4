"""Pictures: calibration histograms with the amax of each method, and the sensitivity report as bars.

Both write PNG files with matplotlib's Agg canvas (no window, no global backend change). matplotlib is
optional: ``pip install 'quantrewrite[plot]'``; without it these functions raise ImportError naming the extra.

Example:
    >>> calibrate(qmodel, batches)
    >>> plot_calibration(qmodel, ["stem", "fc"], "calib.png")
    >>> sensitivity(qmodel, batches).plot("sensitivity.png")
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from quantrewrite.api import list_quantizers
from quantrewrite.calib import HistogramCalibrator
from quantrewrite.patterns import compile_pattern, pattern_matches
from quantrewrite.sensitivity import quantizer_owners

if TYPE_CHECKING:
    from quantrewrite.sensitivity import SensitivityReport

logger = logging.getLogger(__name__)

__all__ = ["PLOT_EXTRA_HINT", "plot_calibration", "plot_sensitivity"]

PLOT_EXTRA_HINT = "pip install 'quantrewrite[plot]' (or pip install matplotlib)"
_METHOD_STYLE = {  # method -> (colour, line style)
    "max": ("tab:gray", ":"),
    "entropy": ("tab:red", "--"),
    "percentile": ("tab:blue", "--"),
    "mse": ("tab:green", "--"),
}


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes, or an ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA_HINT}") from None
    return Figure, FigureCanvasAgg


def _figure(width: float, height: float) -> Any:
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=(width, height), dpi=100, layout="constrained")
    canvas_class(figure)
    return figure


def _png_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: plots are written as PNG, expected a name ending in .png, got {str(path)!r}")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"path: the folder of {str(path)!r} does not exist")
    return path


def _selected(model: nn.Module, names_or_patterns: str | Sequence[str]) -> dict[str, Any]:
    patterns = [names_or_patterns] if isinstance(names_or_patterns, str) else list(names_or_patterns)
    if not patterns:
        raise ValueError("names_or_patterns: give at least one quantizer name or pattern ('*' for all)")
    for pattern in patterns:
        compile_pattern(pattern)
    quantizers = list_quantizers(model)
    owners = quantizer_owners(model)
    chosen = {n: q for n, q in quantizers.items()
              if any(pattern_matches(p, n) or (n in owners and pattern_matches(p, owners[n])) for p in patterns)}
    if not chosen:
        raise ValueError(f"names_or_patterns: {patterns} match no quantizer of the model "
                         f"({len(quantizers)} quantizers, e.g. {', '.join(list(quantizers)[:3])})")
    with_histogram = {n: q for n, q in chosen.items()
                      if isinstance(q.calibrator, HistogramCalibrator) and q.calibrator.histogram is not None}
    others = [n for n in chosen if n not in with_histogram]
    if not with_histogram:
        raise ValueError(f"none of the quantizers matched ({', '.join(others[:5])}) holds a calibration histogram: "
                         "only histogram calibrators (calib_method: histogram) can be plotted, after calibrate()")
    for pattern in patterns:
        hits = [n for n in others if pattern_matches(pattern, n) or pattern_matches(pattern, owners.get(n, n))]
        if hits and not any(pattern_matches(pattern, n) or pattern_matches(pattern, owners.get(n, n))
                            for n in with_histogram):
            warnings.warn(f"plot_calibration: {pattern!r} matches only quantizers without a histogram "
                          f"(max calibration): {', '.join(hits[:5])}", UserWarning, stacklevel=3)
    logger.info("plot_calibration: not drawn (no histogram): %s", ", ".join(others))
    return with_histogram


def candidate_amax(calibrator: HistogramCalibrator, percentile: float = 99.99) -> dict[str, float]:
    """The amax each method would choose from ``calibrator``'s histogram ("max": the top of the data)."""
    counts = calibrator.histogram.cpu().numpy()
    edges = calibrator.bin_edges.cpu().numpy()
    nonzero = np.flatnonzero(counts)
    out = {"max": float(edges[nonzero[-1] + 1]) if nonzero.size else 0.0}
    for method in ("entropy", "percentile", "mse"):
        amax = calibrator.compute_amax(method, percentile=percentile)
        if amax is not None:
            out[method] = float(amax)
    return out


def _display_bins(counts: np.ndarray, edges: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum adjacent bins into at most ``bins`` (a 2048-bin histogram of sparse data is unreadable)."""
    nonzero = np.flatnonzero(counts)
    top = nonzero[-1] + 1 if nonzero.size else counts.size
    group = max(1, math.ceil(top / bins))
    padded = np.zeros(math.ceil(top / group) * group)
    padded[:top] = counts[:top]
    merged = padded.reshape(-1, group).sum(1)
    merged_edges = np.append(edges[0:top:group], edges[min(len(merged) * group, counts.size)])
    return merged, merged_edges


def _draw_histogram(axes: Any, name: str, quantizer: Any, percentile: float, bins: int) -> None:
    calibrator = quantizer.calibrator
    counts, edges = _display_bins(calibrator.histogram.cpu().numpy().astype(np.float64),
                                  calibrator.bin_edges.cpu().numpy(), bins)
    axes.stairs(counts, edges, fill=True, color="tab:purple", alpha=0.45, label=f"|x| counts ({len(counts)} bins)")
    axes.set_yscale("log")
    axes.set_ylim(bottom=0.5)
    chosen = quantizer.amax
    if chosen is not None:  # drawn first and wide, so that the method it equals stays visible on top of it
        value = float(chosen.max())
        axes.axvline(value, color="black", linewidth=3.5, alpha=0.6, label=f"chosen: {value:.4g}")
    for method, amax in candidate_amax(calibrator, percentile).items():
        colour, style = _METHOD_STYLE[method]
        axes.axvline(amax, color=colour, linestyle=style, linewidth=1.4, label=f"{method}: {amax:.4g}")
    axes.set_title(name, fontsize=9)
    axes.set_xlabel("|x|")
    axes.set_ylabel("count (log)")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plot_calibration(qmodel: nn.Module, names_or_patterns: str | Sequence[str], path: str | os.PathLike[str], *,
                     percentile: float = 99.99, columns: int = 2, bins: int = 128) -> Path:
    """Per quantizer, the calibration histogram (log counts) with the amax each method would choose.

    Vertical lines: max (the top of the data), entropy, percentile (``percentile``) and mse computed from
    the quantizer's histogram, and the amax the quantizer holds ("chosen", black). Only quantizers with a
    histogram calibrator that saw data are drawn (others are named in a warning).

    Args:
        qmodel: a calibrated model (the histograms stay in the calibrators after ``calibrate``).
        names_or_patterns: quantizer names or patterns as for ``disable_quantizers`` ("stem", "*_input_quantizer"),
            which also select the quantizers of a plan entry they match (an op site such as "add").
        path: the PNG file to write.
        percentile: the percentile drawn for the percentile method.
        columns: panels per row.
        bins: the most bars per histogram (adjacent calibration bins are summed).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is missing (install the ``plot`` extra).
        ValueError: nothing to draw, or the path is not a .png in an existing folder.
    """
    _matplotlib()
    path = _png_path(path)
    chosen = _selected(qmodel, names_or_patterns)
    columns = max(1, min(columns, len(chosen)))
    rows = math.ceil(len(chosen) / columns)
    figure = _figure(7.0 * columns, 3.4 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, (name, quantizer) in enumerate(chosen.items()):
        _draw_histogram(grid[index // columns][index % columns], name, quantizer, percentile, bins)
    for index in range(len(chosen), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    figure.savefig(path, format="png")
    return path


def _finite(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    high = max(finite) if finite else 1.0
    low = min(finite) if finite else 0.0
    span = (high - low) or 1.0
    return [v if math.isfinite(v) else (high + 0.1 * span if v > 0 else low - 0.1 * span) for v in values]


def plot_sensitivity(report: SensitivityReport, path: str | os.PathLike[str], *, top: int | None = None) -> Path:
    """The sensitivity report as horizontal bars, most sensitive at the top.

    For each layer: the metric with only it quantized and with only it left float; a vertical line marks
    the metric with everything quantized. Infinite values (an exact output) are drawn just past the others.
    """
    _matplotlib()
    path = _png_path(path)
    rows = report.layers if top is None else report.worst(top)
    if not rows:
        raise ValueError("the report has no layer to plot")
    alone = _finite([r.only_quantized for r in rows])
    without = _finite([r.only_float for r in rows])
    everything = _finite([report.all_quantized, *alone, *without])[0]
    low = min(alone + without + [everything])
    high = max(alone + without + [everything])
    floor = low - 0.05 * ((high - low) or 1.0)
    figure = _figure(9.0, 1.8 + 0.32 * len(rows))
    axes = figure.subplots()
    positions = np.arange(len(rows))
    axes.barh(positions - 0.2, np.array(alone) - floor, height=0.4, left=floor, color="tab:orange",
              label="only this quantized")
    axes.barh(positions + 0.2, np.array(without) - floor, height=0.4, left=floor, color="tab:blue",
              label="only this float")
    axes.axvline(everything, color="black", linewidth=1.5, label=f"all quantized: {report.fmt(report.all_quantized)}")
    axes.set_yticks(positions, [r.name or "<root>" for r in rows], fontsize=8)
    axes.invert_yaxis()
    unit = f" ({report.unit})" if report.unit else ""
    axes.set_xlabel(f"{report.metric}{unit}, higher is better")
    axes.set_title(f"sensitivity per {report.granularity} ({report.forward_passes} forward passes)", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / (len(rows) + 2)), ncol=3)
    figure.savefig(path, format="png")
    return path
