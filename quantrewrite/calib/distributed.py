"""Combining calibration statistics across torch.distributed ranks.

Before amax is computed, every rank sends its calibrators' statistics to every other rank (one
``all_gather_object`` for the whole model) and each rank merges them the same way, so all ranks end with
identical statistics and so identical amax:

* max calibrators: the element-wise max of the ranks' running amax (exactly what one process would get on
  the union of the data);
* histogram calibrators: the largest |x| is the max over ranks (exact); the ranks' histograms are re-binned
  onto one common grid, the first rank's (its bin width, grown to reach the largest range), as if one
  process had seen the ranks' data in rank order; the other ranks' counts are spread over it through their
  cumulative counts (see ``merge_histograms``), so an amax lands within about one bin of that single
  process's (exactly the same when the widths agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from quantrewrite.calib.histogram import HistogramCalibrator
from quantrewrite.calib.max import MaxCalibrator

__all__ = ["apply_states", "calibrator_state", "is_distributed", "merge_histograms", "synchronize"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def calibrator_state(calibrator: Any) -> tuple:
    """A calibrator's statistics as plain data (what ranks exchange and groups merge)."""
    if isinstance(calibrator, MaxCalibrator):
        amax = calibrator._amax
        return ("max", None if amax is None else amax.detach().cpu())
    if isinstance(calibrator, HistogramCalibrator):
        counts = calibrator._counts
        return ("histogram", calibrator._base_max, None if counts is None else counts.cpu(), calibrator._zeros,
                calibrator._max)
    return ("other",)


def _cumulative_at(points: torch.Tensor, width: float, counts: torch.Tensor) -> torch.Tensor:
    """The histogram's cumulative count at ``points``, linear inside each bin (float64)."""
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), counts.double().cumsum(0)])
    position = (points / width).clamp(0, counts.numel())
    low = position.floor().long().clamp(max=counts.numel() - 1)
    fraction = position - low.double()
    return cdf[low] + fraction * counts.double()[low]


def merge_histograms(states: Sequence[tuple[float | None, torch.Tensor | None, int]], num_bins: int):
    """Merge (base_max, counts, zeros) histograms; returns (base_max, counts) or (None, zeros) if all empty.

    The common grid is the first non-empty rank's (its bin width, grown to the largest range), so the result
    matches one process that saw the ranks' data in rank order. Another rank's counts are re-binned through
    its cumulative count, interpolated linearly inside its bins and rounded, so totals are kept exactly and
    the cumulative counts move by less than one of its bins.
    """
    filled = [(base, counts) for base, counts, _ in states if counts is not None]
    zeros = sum(z for _, _, z in states)
    if not filled:
        return None, zeros
    base = filled[0][0]
    width = base / num_bins
    top = max(b / num_bins * counts.numel() for b, counts in filled)
    nbins = max(filled[0][1].numel(), math.ceil(top / width - 1e-9))
    edges = torch.arange(nbins + 1, dtype=torch.float64) * width
    merged = torch.zeros(nbins, dtype=torch.int64)
    for source_base, counts in filled:
        source_width = source_base / num_bins
        if source_width == width:
            merged[:counts.numel()] += counts.to(torch.int64)
            continue
        cumulative = torch.round(_cumulative_at(edges, source_width, counts)).long()
        merged += cumulative.diff()
    merged[0] += zeros
    return base, merged


def apply_states(calibrator: Any, states: list[tuple]) -> None:
    """Replace ``calibrator``'s statistics by the merge of ``states`` (``calibrator_state`` values)."""
    if isinstance(calibrator, MaxCalibrator):
        amaxes = [s[1] for s in states if s[1] is not None]
        if not amaxes:
            return
        shapes = {tuple(a.shape) for a in amaxes}
        if len(shapes) > 1:
            raise ValueError(f"ranks disagree on the per-channel amax shape: {sorted(shapes)}")
        merged = torch.stack(amaxes).amax(dim=0)
        device = calibrator._amax.device if calibrator._amax is not None else torch.device("cpu")
        calibrator._amax = merged.to(device)
    elif isinstance(calibrator, HistogramCalibrator):
        base, merged = merge_histograms([(s[1], s[2], s[3]) for s in states], calibrator.num_bins)
        calibrator._max = max(s[4] for s in states)
        if base is None:
            calibrator._zeros = merged
            return
        device = calibrator._counts.device if calibrator._counts is not None else torch.device("cpu")
        calibrator._base_max = base
        calibrator._counts = merged.to(device)
        calibrator._zeros = 0
        calibrator._edge_cache = None


def synchronize(quantizers: Sequence[Any]) -> None:
    """Merge the calibrators of ``quantizers`` (the same list, in the same order, on every rank).

    Does nothing unless torch.distributed is initialised with more than one rank.
    """
    if not is_distributed() or not quantizers:
        return
    local = [calibrator_state(q.calibrator) for q in quantizers]
    gathered: list[list[tuple] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    if any(len(states) != len(local) for states in gathered):
        raise RuntimeError("ranks have different numbers of quantizers; calibrate the same model on every rank")
    for index, quantizer in enumerate(quantizers):
        apply_states(quantizer.calibrator, [states[index] for states in gathered])
