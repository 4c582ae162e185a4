"""Histogram calibrator: an exact integer histogram of |x| and three ways to pick amax from it.

Bins: the first batch with a nonzero max m sets ``num_bins`` bins over [0, m]; edge k is
``m * k / num_bins`` in float64. A later batch beyond the last edge appends bins of the same width, so
old edges never move. Bin b holds edges[b] <= |x| < edges[b + 1] (the last bin also its right edge), the
same as ``numpy.histogram`` on the edges of the time (a value equal to the last edge stays in the bin it
was counted in when bins are appended later). Counts are int64 and exact at any size (the original's float32
``histc`` stopped counting at 2^24 per bin). Batches that are all zero before any range exists are kept
as a count and land in bin 0 once the range is known.

Methods of ``compute_amax`` (they run on CPU; the histogram has a few thousand bins):

* ``max``: the largest |x| seen (exact, kept beside the histogram).
* ``percentile``: the left edge of the first bin where the CDF of the counts reaches p / 100.
* ``mse``: the bin centre c_i (i >= start_bin) minimising Σ_j n_j (fake_quant(c_j, c_i) − c_j)²;
  the first minimum wins.
* ``entropy`` (TensorRT's KL method, as in pytorch-quantization): with n_0 replaced by n_1, for each
  i = start_bin, start_bin + stride, ... <= nbins: P = n[0:i] with Σ n[i:] added to its last bin; Q = n[0:i]
  split into 2^(num_bits−1+unsigned) groups (bin j goes to group floor(j·groups / i)), each group's total
  spread evenly over its non-empty bins; KL(P‖Q) of the normalised P and Q. amax = edges[i] of the last
  minimum. As in the original, KL is +inf when P's last bin is non-empty but Q's is empty; a candidate
  whose Q is all empty (no data below edges[i]) is NaN and is never chosen (the original chose the last
  such candidate whenever one existed: an amax below all the data). Divergences within 1e-12 of
  the minimum count as equal, so mathematically tied candidates, which summation order perturbs by
  ~1e-15, resolve to the last one deterministically.
"""

from __future__ import annotations

import difflib
import logging
import math

import numpy as np
import torch

from quantrewrite.calib import _kernels
from quantrewrite.calib.calibrator import _Calibrator
from quantrewrite.tensor_quant import quant_bounds

__all__ = ["HistogramCalibrator", "amax_entropy", "amax_mse", "amax_percentile"]

logger = logging.getLogger(__name__)

METHODS = ("max", "entropy", "mse", "percentile")
KL_TIE = 1e-12
# elements per step of the torch counting path (CUDA); bounds its temporaries.
_CHUNK = 1 << 22
# elements per step of the CPU counting path: its five float32 / int32 buffers stay in cache, and the calls
# per tensor stay few (each call may wait for the GIL while the kernel loader runs).
_CPU_CHUNK = 1 << 18
# The CPU path's float32 position t = |x| * scale is within 2^-22.9 (relative) of the exact real position;
# floor() of t * (1 -/+ 2^-20) (each one more float32 rounding) brackets the exact position with 2^-21 to spare
# on each side, beyond the 2^-53 of the float64 edges. Where the two floors agree, that is the bin.
_BELOW = 1.0 - 2.0**-20  # exact in float32
_ABOVE = 1.0 + 2.0**-20
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _count_torch(x: torch.Tensor, edges: torch.Tensor, scale: float, skip_zeros: bool) -> torch.Tensor:
    """Exact int64 counts of |x| on x's device with the bin rule of the module docstring (float64 passes)."""
    nbins = edges.numel() - 1
    counts = torch.zeros(nbins, dtype=torch.int64, device=x.device)
    for chunk in x.reshape(-1).split(_CHUNK):
        a = chunk.abs().double()
        if skip_zeros:
            a = a[a != 0]
        b = (a * scale).long().clamp_(0, nbins - 1)
        b -= (a < edges[b]).long()
        b += ((a >= edges[b + 1]) & (b < nbins - 1)).long()
        counts += torch.bincount(b, minlength=nbins)
    return counts


def _float32_edges_up(edges: torch.Tensor) -> torch.Tensor:
    """The smallest float32 >= each float64 edge: for a float32 a, a >= edge exactly when a >= this."""
    nearest = edges.float()
    return torch.where(nearest.double() < edges, torch.nextafter(nearest, torch.tensor(math.inf)), nearest)


def _count_cpu(x: torch.Tensor, edges: torch.Tensor, scale: float, skip_zeros: bool) -> torch.Tensor:
    """``_count_torch``'s counts for a float32 CPU tensor in a few float32 / int32 passes (the eager path
    while the compiled kernel loads, or without a C compiler).

    Each element's bin is floor of its float32 position, taken at both ends of a window around it (see
    ``_BELOW``); the few elements whose window holds an integer (near an edge, or on one) are counted again
    exactly by comparing |x| with the edges rounded up to float32. Every |x| must be <= edges[-1].
    """
    nbins = edges.numel() - 1
    scale32 = float(np.float32(scale)) if scale <= _FLOAT32_MAX else math.inf  # no overflow warning
    if not 0.0 < scale32 < math.inf or nbins >= 1 << 18:  # outside the bound's assumptions (guesses <= nbins)
        return _count_torch(x, edges, scale, skip_zeros)
    flat = x.reshape(-1)
    step = max(1, min(flat.numel(), _CPU_CHUNK))
    position, above = torch.empty(step), torch.empty(step)
    high, low = torch.empty(step, dtype=torch.int32), torch.empty(step, dtype=torch.int32)
    unsure = torch.empty(step, dtype=torch.bool)
    totals = np.zeros(nbins + 1, dtype=np.int64)  # a guess may say nbins (an element on the last edge)
    inner_edges = None
    for start in range(0, flat.numel(), step):
        chunk = flat[start:start + step]
        n = chunk.numel()
        t, t_above, b_high, b_low, mask = position[:n], above[:n], high[:n], low[:n], unsure[:n]
        torch.abs(chunk, out=t).mul_(scale32)
        b_high.copy_(torch.mul(t, _ABOVE, out=t_above))  # float to int truncates: floor, as t >= 0
        b_low.copy_(t.mul_(_BELOW))
        totals += np.bincount(b_high.numpy(), minlength=nbins + 1)
        unsure_at = torch.ne(b_high, b_low, out=mask).nonzero().squeeze(1)
        if unsure_at.numel():
            if inner_edges is None:
                inner_edges = _float32_edges_up(edges)[1:-1].contiguous()
            totals -= np.bincount(b_high[unsure_at].numpy(), minlength=nbins + 1)
            exact = torch.bucketize(chunk[unsure_at].abs(), inner_edges, right=True)
            totals[:nbins] += np.bincount(exact.numpy(), minlength=nbins)
    totals[nbins - 1] += totals[nbins]  # the last bin holds its right edge
    counts = torch.from_numpy(totals[:nbins].copy())
    if skip_zeros:
        counts[0] -= int(torch.count_nonzero(flat == 0))
    return counts


def _last_argmin(kl: np.ndarray) -> int:
    """Index of the last minimum (ties within KL_TIE), ignoring NaN candidates; the last index if all are NaN.

    A NaN divergence means Q is empty: the candidate range lies below all the data. The original picked the
    last such candidate whenever one existed (np.argmin returns the first NaN of the reversed divergences),
    which on data with an empty gap at the bottom (e.g. images with a few distinct levels) gives an amax
    below every value and destroys accuracy. Those candidates are never the answer here.
    """
    valid = np.flatnonzero(~np.isnan(kl))
    if valid.size == 0:
        return int(kl.size - 1)
    values = kl[valid]
    return int(valid[np.flatnonzero(values <= values.min() + KL_TIE)[-1]])


class HistogramCalibrator(_Calibrator):
    """Histogram of |x| (per tensor) and max / entropy / mse / percentile amax.

    Args:
        num_bits: bits of the quantizer the amax is for.
        axis: must be None; per-channel histograms are not supported.
        unsigned: whether the quantizer is unsigned.
        num_bins: bins over [0, max] on the first batch.
        grow_method: deprecated and ignored (as in pytorch-quantization).
        skip_zeros: drop exact zeros before counting.
        torch_hist: count on the input's device (default); False counts on CPU. Both give the same counts.
        owner: the name of the quantizer it serves (see ``_Calibrator``).

    Example:
        >>> calib = HistogramCalibrator(num_bins=4)
        >>> calib.collect(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
        >>> calib.histogram.tolist(), calib.compute_amax("percentile", percentile=50).item()
        ([1, 1, 1, 2], 2.0)
    """

    def __init__(self, num_bits: int = 8, axis: int | tuple[int, ...] | None = None, unsigned: bool = False,
                 num_bins: int = 2048, grow_method: str | None = None, skip_zeros: bool = False,
                 torch_hist: bool = True, *, owner: str | None = None):
        super().__init__(num_bits, axis, unsigned, owner=owner)
        if axis is not None:
            raise ValueError(f"{self.subject}: axis must be None, got {axis!r}; per-channel histograms "
                             "are not supported (use MaxCalibrator for per-channel amax)")
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins: expected an int >= 1, got {num_bins!r}")
        if grow_method is not None:
            logger.warning("%s: grow_method is deprecated and ignored (got %r)", self.subject, grow_method)
        self._num_bins = num_bins
        self._skip_zeros = bool(skip_zeros)
        self._torch_hist = bool(torch_hist)
        self._reset()

    @property
    def num_bins(self) -> int:
        """Bins of the first histogram (the histogram grows beyond it when later batches exceed its range)."""
        return self._num_bins

    @property
    def skip_zeros(self) -> bool:
        """Whether exact zeros are dropped."""
        return self._skip_zeros

    @property
    def histogram(self) -> torch.Tensor | None:
        """The int64 counts (a copy), or None before any data. Only zeros so far: one bin [0, 0]."""
        if self._counts is None:
            return torch.tensor([self._zeros], dtype=torch.int64) if self._zeros else None
        return self._counts.clone()

    @property
    def bin_edges(self) -> torch.Tensor | None:
        """The float64 bin edges (one more than bins), or None before any data."""
        if self._counts is None:
            return torch.zeros(2, dtype=torch.float64) if self._zeros else None
        return self._edges(self._counts.numel(), self._counts.device).clone()

    @property
    def _calib_hist(self) -> torch.Tensor | None:
        """pytorch-quantization's name of the counts (read-only; int64 here, float32 there)."""
        return self.histogram

    @property
    def _calib_bin_edges(self) -> torch.Tensor | None:
        """pytorch-quantization's name of the bin edges (read-only; float64 here)."""
        return self.bin_edges

    def _edges(self, nbins: int, device: torch.device) -> torch.Tensor:
        key = (nbins, str(device), self._base_max)
        if self._edge_cache is None or self._edge_cache[0] != key:
            edges = torch.arange(nbins + 1, dtype=torch.float64) * self._base_max / self._num_bins
            self._edge_cache = (key, edges.to(device))
        return self._edge_cache[1]

    def _edge(self, k: int) -> float:
        return self._base_max * k / self._num_bins  # the same float64 operations as _edges

    def _reset(self) -> None:
        self._base_max: float | None = None
        self._counts: torch.Tensor | None = None
        self._zeros = 0
        self._max = 0.0
        self._edge_cache: tuple | None = None

    def _collect(self, x: torch.Tensor) -> None:
        x = x.float()
        if not self._torch_hist:
            x = x.cpu()
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x)
        x_max = max(hi.item(), -lo.item())
        if not math.isfinite(x_max):
            raise ValueError(f"{self.subject}.collect: input contains non-finite values (max |x| {x_max})")
        self._max = max(self._max, x_max)
        if self._counts is None:
            if x_max == 0.0:
                self._zeros += 0 if self._skip_zeros else x.numel()
                return
            self._base_max = x_max
            self._counts = torch.zeros(self._num_bins, dtype=torch.int64, device=x.device)
            self._counts[0] += self._zeros
            self._zeros = 0
        elif x_max > self._edge(self._counts.numel()):
            self._grow(x_max)
        self._counts = self._counts.to(x.device)
        nbins = self._counts.numel()
        scale = self._num_bins / self._base_max
        if x.device.type == "cpu" and _kernels.use_compiled():
            edges = self._edges(nbins, x.device).numpy()
            counts = _kernels.count_abs(x.contiguous().numpy().reshape(-1), edges, scale, self._skip_zeros)
            self._counts += torch.from_numpy(counts)
        elif x.device.type == "cpu":
            self._counts += _count_cpu(x, self._edges(nbins, x.device), scale, self._skip_zeros)
        else:
            self._counts += _count_torch(x, self._edges(nbins, x.device), scale, self._skip_zeros)

    def _grow(self, x_max: float) -> None:
        """Append bins of the same width until the last edge reaches x_max."""
        old = self._counts.numel()
        nbins = max(old + 1, math.ceil(x_max * self._num_bins / self._base_max))
        while self._edge(nbins) < x_max:
            nbins += 1
        while nbins - 1 > old and self._edge(nbins - 1) >= x_max:
            nbins -= 1
        grown = torch.zeros(nbins, dtype=torch.int64, device=self._counts.device)
        grown[:old] = self._counts
        self._counts = grown
        logger.debug("HistogramCalibrator: grew from %d to %d bins for max %g", old, nbins, x_max)

    def compute_amax(self, method: str, *, stride: int = 1, start_bin: int = 128,
                     percentile: float = 99.99) -> torch.Tensor | None:
        """The amax (float32 0-d tensor on the histogram's device) by ``method``; see the module docstring.

        Args:
            method: 'max', 'entropy', 'mse' or 'percentile'.
            stride: step between candidate bins (entropy, mse).
            start_bin: first candidate bin (entropy, mse).
            percentile: in [0, 100] (percentile).

        Returns:
            The amax; 0 if only zeros were seen; None if nothing was collected (callers report that).
        """
        if method not in METHODS:
            close = difflib.get_close_matches(str(method), METHODS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown calibration method {method!r}: expected one of {METHODS}{hint}")
        for name, value in (("stride", stride), ("start_bin", start_bin)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if method == "percentile" and not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile: expected a value in the range [0, 100], got {percentile!r}")
        if self._counts is None:
            return torch.tensor(0.0, dtype=torch.float32) if self._zeros else None
        counts = self._counts.cpu().numpy()
        edges = self._edges(counts.size, torch.device("cpu")).numpy()
        if method == "max":
            amax = self._max
        elif method == "percentile":
            amax = amax_percentile(counts, edges, percentile)
        elif method == "mse":
            amax = amax_mse(counts, edges, self._num_bits, self._unsigned, stride, start_bin)
        else:
            amax = amax_entropy(counts, edges, self._num_bits, self._unsigned, stride, start_bin)
        return torch.tensor(amax, dtype=torch.float32, device=self._counts.device)

    def _repr_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"num_bins": self._num_bins, "skip_zeros": self._skip_zeros}
        if self._counts is not None:
            fields["bins"] = self._counts.numel()
            fields["range"] = f"[0, {self._edge(self._counts.numel()):.6g}]"
        return fields


def amax_percentile(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """Left edge of the first bin where the CDF of ``counts`` reaches percentile / 100."""
    cumulative = np.cumsum(counts)
    cdf = cumulative / cumulative[-1]
    idx = min(int(np.searchsorted(cdf, percentile / 100.0, side="left")), counts.size - 1)
    return float(edges[idx])


def amax_mse(counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool, stride: int = 1,
             start_bin: int = 128) -> float:
    """The bin centre (float32) with the least Σ counts · (fake_quant(centre) − centre)²; first minimum."""
    if start_bin > counts.size - 1:
        raise ValueError(f"mse: start_bin {start_bin} leaves no candidate in {counts.size} bins")
    centers = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    min_bound, max_bound = quant_bounds(num_bits, unsigned, narrow_range=False)
    errors = _kernels.mse_errors(counts, centers, start_bin, counts.size - 1, stride, min_bound, max_bound)
    return float(centers[start_bin + int(np.argmin(errors)) * stride])


def amax_entropy(counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool, stride: int = 1,
                 start_bin: int = 128) -> float:
    """edges[i] of the last minimum of KL(P‖Q) over the candidates i (see the module docstring)."""
    if start_bin > counts.size:
        raise ValueError(f"entropy: start_bin {start_bin} leaves no candidate in {counts.size} bins")
    bins = np.array(counts, dtype=np.int64)
    if bins.size > 1:
        bins[0] = bins[1]
    groups = 1 << (num_bits - 1 + int(unsigned))
    kl = _kernels.entropy_divergences(bins, start_bin, counts.size, stride, groups)
    return float(edges[start_bin + _last_argmin(kl) * stride])
