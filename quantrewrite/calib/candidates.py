"""Candidate ranges for method "auto": what each single method would pick, minus the ones that break data.

``candidate_ranges(calibrator)`` returns, from one histogram calibrator, the amax of max, three percentiles,
mse and entropy, in that fixed order, deduplicated (the first name of an amax wins). Guards drop candidates
that are known to destroy a tensor:

* a candidate that clips more than ``MAX_CLIPPED`` of the nonzero values (entropy on a few hundred samples
  can put amax below every value; on a tensor that is two-thirds zeros it can clip the values that carry
  the signal);
* a candidate of 0 while nonzero values exist.

With ``same_range`` > 0 (method "auto" passes ``SAME_RANGE``), a candidate within that relative distance of
one already kept is dropped too (max and the 99.999th percentile are often that close): each candidate kept
costs one more run of the consuming layer. (Merging at 1% was measured to lose accuracy on real models.)

``histogram_error`` is the squared error quantization at an amax causes on the histogram (bin centres), the
fallback score where the layer that consumes a tensor cannot be run on its own.
"""

from __future__ import annotations

import numpy as np

from quantrewrite.calib.histogram import HistogramCalibrator
from quantrewrite.tensor_quant import quant_bounds

__all__ = ["AUTO_PERCENTILES", "MAX_CLIPPED", "SAME_RANGE", "candidate_ranges", "clipped_share", "histogram_error"]

AUTO_PERCENTILES = (99.9, 99.99, 99.999)
MAX_CLIPPED = 0.01  # a candidate may clip at most 1% of the nonzero values
SAME_RANGE = 1e-3  # for method "auto", amax values within 0.1% of each other count as one candidate


def _nonzero_counts(calibrator: HistogramCalibrator) -> tuple[np.ndarray, np.ndarray]:
    counts = calibrator.histogram.cpu().numpy().astype(np.float64)
    edges = calibrator.bin_edges.cpu().numpy()
    return counts, edges


def clipped_share(calibrator: HistogramCalibrator, amax: float) -> float:
    """Share of the values with |x| > amax among the values not in the first bin (which holds the zeros)."""
    counts, edges = _nonzero_counts(calibrator)
    nonzero = counts[1:].sum() if counts.size > 1 else 0.0
    if nonzero == 0:
        return 0.0
    left = edges[:-1]
    above = counts[1:][left[1:] > amax].sum()  # bins wholly above amax (a bin that holds amax is not counted)
    return float(above / nonzero)


def histogram_error(calibrator: HistogramCalibrator, amax: float) -> float:
    """Σ counts · (fake_quant(centre) − centre)² at ``amax``, on the bin centres (float64)."""
    counts, edges = _nonzero_counts(calibrator)
    centers = (edges[:-1] + edges[1:]) / 2
    if amax <= 0:
        return float(np.sum(counts * centers ** 2))
    min_bound, max_bound = quant_bounds(calibrator.num_bits, calibrator.unsigned, narrow_range=False)
    scale = max_bound / amax
    quantized = np.clip(np.rint(centers * scale), min_bound, max_bound) / scale
    return float(np.sum(counts * (quantized - centers) ** 2))


def candidate_ranges(calibrator: HistogramCalibrator, percentiles: tuple[float, ...] = AUTO_PERCENTILES,
                     max_clipped: float = MAX_CLIPPED, same_range: float = 0.0) -> dict[str, float]:
    """{name: amax} of the guarded candidates (see the module docstring); {} when nothing was collected.

    "max" is always a candidate (it clips nothing), so the result is never empty after data was seen.
    A candidate within ``same_range`` (relative) of an earlier one is dropped; 0 drops exact repeats only.
    """
    if calibrator.histogram is None:
        return {}
    top = float(calibrator.compute_amax("max"))
    proposals = [("max", top)]
    proposals += [(f"percentile {p:g}", float(calibrator.compute_amax("percentile", percentile=p)))
                  for p in percentiles]
    nbins = calibrator.histogram.numel()
    start = min(128, max(nbins - 1, 1))
    if nbins > 1:
        proposals.append(("mse", float(calibrator.compute_amax("mse", start_bin=start))))
        proposals.append(("entropy", float(calibrator.compute_amax("entropy", start_bin=start))))
    chosen: dict[str, float] = {}
    for name, amax in proposals:
        if name != "max" and (amax <= 0 < top or clipped_share(calibrator, amax) > max_clipped):
            continue
        if all(abs(amax - kept) > same_range * max(abs(amax), abs(kept)) for kept in chosen.values()):
            chosen[name] = amax
    return chosen
