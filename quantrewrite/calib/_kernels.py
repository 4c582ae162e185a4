"""The histogram calibrator's compiled kernels (C, ``csrc/kernels.c``): counting, MSE and KL-divergence sweeps.

The two sweeps have plain numpy twins (``*_numpy``) that pick the same amax where the compiled kernels are
missing or ``QUANTREWRITE_EAGER=1`` is set (see ``quantrewrite._kernels.fused_kernels_available``);
counting falls back to ``histogram._count_cpu`` (float32 guesses, exact recounts near edges;
``histogram._count_torch`` is the CUDA path). The tests check all of them against slow literal references.

Bins follow numpy's convention: bin ``b`` holds ``edges[b] <= a < edges[b + 1]``, the last bin also holds
its right edge. Edges are ``edges[k] = base_max * k / base_bins`` in float64, so a first guess
``floor(a * base_bins / base_max)`` is off by at most one bin and one comparison per side fixes it.
"""

from __future__ import annotations

import math

import numpy as np

from quantrewrite._kernel_loader import compiled, fused_kernels_available

__all__ = ["count_abs", "entropy_divergences", "mse_errors", "use_compiled"]


def use_compiled() -> bool:
    """True when the compiled kernels should be used (loaded, and QUANTREWRITE_EAGER unset)."""
    return fused_kernels_available()


def count_abs(x: np.ndarray, edges: np.ndarray, scale: float, skip_zeros: bool) -> np.ndarray:
    """int64 counts of |x| over ``edges`` with the compiled kernel; every |x| must be <= edges[-1].

    Args:
        x: flat float32 array.
        edges: float64 bin edges, see the module docstring.
        scale: base_bins / base_max, the first guess's factor.
        skip_zeros: drop exact zeros.
    """
    x = _checked(x, np.float32)
    edges = _checked(edges, np.float64)
    kernels = compiled()
    chunks = max(1, min(kernels.max_threads(), x.size // (1 << 16)))
    out = np.zeros((chunks, edges.size - 1), dtype=np.int64)
    if kernels.count_abs(x.ctypes.data, x.size, edges.ctypes.data, edges.size - 1, float(scale), bool(skip_zeros),
                         out.ctypes.data, chunks):
        raise MemoryError(f"histogram counting: no memory for {chunks} x 4 copies of {edges.size - 1} bin counts")
    return out.sum(axis=0)


def _checked(values: np.ndarray, dtype: type) -> np.ndarray:
    """values as a contiguous 1-d array of dtype (the kernels read raw addresses), refusing a silent cast."""
    if values.dtype != dtype or values.ndim != 1:
        raise ValueError(f"expected a 1-d {np.dtype(dtype)} array, got {values.dtype} of shape {values.shape}")
    return np.ascontiguousarray(values)


def _candidates(first: int, last: int, stride: int) -> np.ndarray:
    return np.arange(first, last + 1, stride, dtype=np.int64)


def mse_errors(counts: np.ndarray, centers: np.ndarray, first: int, last: int, stride: int, min_bound: float,
               max_bound: float) -> np.ndarray:
    """Σ_j counts_j · (fake_quant(centers_j, centers_i) − centers_j)² for i = first, first+stride, ... <= last.

    The fake quantization is done in float32 exactly as ``fake_tensor_quant``; the error sums in float64.
    """
    keep = np.asarray(counts) > 0
    values = np.ascontiguousarray(np.asarray(centers, dtype=np.float32)[keep])
    weights = np.ascontiguousarray(np.asarray(counts, dtype=np.int64)[keep])
    candidates = np.ascontiguousarray(np.asarray(centers, dtype=np.float32)[_candidates(first, last, stride)])
    out = np.empty(candidates.size, dtype=np.float64)
    lo, hi = np.float32(min_bound), np.float32(max_bound)
    if use_compiled():
        compiled().mse_errors(weights.ctypes.data, values.ctypes.data, values.size, candidates.ctypes.data,
                              candidates.size, out.ctypes.data, float(lo), float(hi))
        return out
    return _mse_errors_numpy(weights, values, candidates, out, lo, hi)


def _mse_errors_numpy(counts, values, candidates, out, min_bound, max_bound):
    weights = counts.astype(np.float64)
    for k, amax in enumerate(candidates):
        if amax <= np.float32(2.0**-24):
            fq = np.zeros_like(values)
        else:
            scale = max_bound / amax
            fq = np.clip(np.rint(values * scale), min_bound, max_bound) / scale
        out[k] = float(np.sum(weights * (fq.astype(np.float64) - values.astype(np.float64)) ** 2))
    return out


def entropy_divergences(bins: np.ndarray, first: int, last: int, stride: int, nq: int) -> np.ndarray:
    """KL(P‖Q) for the candidates i = first, first+stride, ... <= last (see ``histogram.py``).

    ``bins`` are the counts with bins[0] already replaced by bins[1]. A candidate whose first i bins are
    all empty gets NaN (Q has no mass); one whose last bin is empty while the tail is not gets +inf.
    """
    bins = np.ascontiguousarray(bins, dtype=np.int64)
    csum = np.concatenate(([0], np.cumsum(bins)))
    cnz = np.concatenate(([0], np.cumsum(bins > 0)))
    out = np.empty(_candidates(first, last, stride).size, dtype=np.float64)
    if use_compiled():
        with np.errstate(divide="ignore"):
            log_bins = np.log(bins.astype(np.float64))
        compiled().entropy_divergences(bins.ctypes.data, log_bins.ctypes.data, csum.ctypes.data, cnz.ctypes.data,
                                       bins.size, first, stride, nq, out.ctypes.data, out.size)
        return out
    return _entropy_divergences_numpy(bins, csum, first, stride, nq, out)


def _entropy_divergences_numpy(bins, csum, first, stride, nq, out):
    total = csum[-1]
    for k in range(out.size):
        i = first + k * stride
        s, tail = csum[i], total - csum[i]
        if s == 0:
            out[k] = np.nan
            continue
        if bins[i - 1] == 0 and tail > 0:
            out[k] = np.inf
            continue
        group = np.arange(i) * nq // i
        head = bins[:i]
        nonempty = np.bincount(group, weights=head > 0, minlength=nq)
        sums = np.bincount(group, weights=head, minlength=nq)
        p = head.astype(np.float64)
        p[-1] += tail
        keep = head > 0
        mean = sums[group[keep]] / nonempty[group[keep]]
        acc = float(np.sum(p[keep] * (np.log(p[keep]) - np.log(mean))))
        out[k] = acc / total + math.log(s / total)
    return out
