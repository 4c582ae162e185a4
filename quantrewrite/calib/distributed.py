"""Combining calibration statistics across torch.distributed ranks.

Before amax is computed, every rank sends its calibrators' statistics to every other rank (one
``all_gather_object`` for the whole model) and each rank merges them the same way, so all ranks end with
identical statistics and so identical amax:

* max calibrators: the element-wise max of the ranks' running amax (exactly what one process would get on
  the union of the data);
* histogram calibrators: the ranks' histograms are re-binned onto one common grid, whose bin width is the
  widest of the ranks' widths and which reaches the largest range; each source bin's count goes to the
  common bin holding the source bin's centre (so an amax can move by at most one bin against a single process
  that saw all the data; with equal widths the merge is exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from quantrewrite.calib.histogram import HistogramCalibrator
from quantrewrite.calib.max import MaxCalibrator

__all__ = ["is_distributed", "merge_histograms", "synchronize"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _state(calibrator: Any) -> tuple:
    if isinstance(calibrator, MaxCalibrator):
        amax = calibrator._amax
        return ("max", None if amax is None else amax.detach().cpu())
    if isinstance(calibrator, HistogramCalibrator):
        counts = calibrator._counts
        return ("histogram", calibrator._base_max, None if counts is None else counts.cpu(), calibrator._zeros)
    return ("other",)


def merge_histograms(states: Sequence[tuple[float | None, torch.Tensor | None, int]], num_bins: int):
    """Merge (base_max, counts, zeros) histograms; returns (base_max, counts) or (None, zeros) if all empty."""
    filled = [(base, counts) for base, counts, _ in states if counts is not None]
    zeros = sum(z for _, _, z in states)
    if not filled:
        return None, zeros
    width = max(base / num_bins for base, _ in filled)
    top = max(base / num_bins * counts.numel() for base, counts in filled)
    nbins = max(num_bins, math.ceil(top / width - 1e-9))
    merged = torch.zeros(nbins, dtype=torch.int64)
    for base, counts in filled:
        source_width = base / num_bins
        centres = (torch.arange(counts.numel(), dtype=torch.float64) + 0.5) * source_width
        index = torch.clamp((centres / width).floor().long(), 0, nbins - 1)
        merged.index_add_(0, index, counts.to(torch.int64))
    merged[0] += zeros
    return width * num_bins, merged


def _apply(calibrator: Any, states: list[tuple]) -> None:
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
    local = [_state(q.calibrator) for q in quantizers]
    gathered: list[list[tuple] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    if any(len(states) != len(local) for states in gathered):
        raise RuntimeError("ranks have different numbers of quantizers; calibrate the same model on every rank")
    for index, quantizer in enumerate(quantizers):
        _apply(quantizer.calibrator, [states[index] for states in gathered])
