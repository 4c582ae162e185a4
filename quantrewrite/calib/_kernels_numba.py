"""The compiled calibration kernels (numba); imported only by ``quantrewrite._kernel_loader``.

The callers are the wrappers in ``quantrewrite.calib._kernels``, which document what each kernel computes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

__all__ = ["count_abs", "entropy_divergences", "get_num_threads", "mse_errors"]


@njit(parallel=True, cache=True, nogil=True)
def count_abs(x, edges, scale, skip_zeros, out):  # pragma: no cover - compiled
    n = x.size
    chunks, nbins = out.shape
    near = 1e-9  # the guess is off by far less than this; only near an edge it needs checking
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        zeros = 0
        for k in range(lo, hi):
            a = abs(np.float64(x[k]))
            zeros += a == 0.0
            t = a * scale
            b = int(t)
            f = t - b
            if ((f < near) & (b > 0)) | (f > 1.0 - near) | (b >= nbins):
                b = min(b, nbins - 1)
                if a < edges[b]:
                    b -= 1
                elif b < nbins - 1 and a >= edges[b + 1]:
                    b += 1
            out[c, b] += 1
        if skip_zeros:
            out[c, 0] -= zeros

@njit(cache=True, nogil=True)
def _sq_err(c, weight, scale, min_bound, max_bound):  # pragma: no cover - compiled
    fq = np.float32(0.0)
    if scale != 0.0:  # the float32 steps of fake_tensor_quant
        fq = min(max(np.rint(c * scale), min_bound), max_bound) / scale
    d = np.float64(fq) - np.float64(c)
    return weight * d * d

@njit(parallel=True, cache=True, nogil=True)
def mse_errors(counts, values, candidates, out, min_bound, max_bound):  # pragma: no cover - compiled
    n = values.size
    for k in prange(candidates.size):
        amax = candidates[k]
        scale = max_bound / amax if amax > np.float32(2.0**-24) else np.float32(0.0)
        a0 = a1 = a2 = a3 = 0.0  # four partial sums break the add latency chain
        j = 0
        while j + 4 <= n:
            a0 += _sq_err(values[j], counts[j], scale, min_bound, max_bound)
            a1 += _sq_err(values[j + 1], counts[j + 1], scale, min_bound, max_bound)
            a2 += _sq_err(values[j + 2], counts[j + 2], scale, min_bound, max_bound)
            a3 += _sq_err(values[j + 3], counts[j + 3], scale, min_bound, max_bound)
            j += 4
        while j < n:
            a0 += _sq_err(values[j], counts[j], scale, min_bound, max_bound)
            j += 1
        out[k] = (a0 + a1) + (a2 + a3)

@njit(parallel=True, cache=True, nogil=True)
def entropy_divergences(bins, log_bins, csum, cnz, first, stride, nq, out):  # pragma: no cover
    nbins = bins.size
    total = csum[nbins]
    for k in prange(out.size):
        i = first + k * stride
        s = csum[i]  # mass of Q; the tail beyond i goes into P's last bin only
        tail = total - s
        if s == 0:
            out[k] = np.nan
            continue
        if bins[i - 1] == 0 and tail > 0:
            out[k] = np.inf
            continue
        acc = 0.0
        comp = 0.0
        for g in range(nq):
            lo = (g * i + nq - 1) // nq
            hi = ((g + 1) * i + nq - 1) // nq
            nonempty = cnz[hi] - cnz[lo]
            if nonempty == 0:
                continue
            log_mean = math.log((csum[hi] - csum[lo]) / nonempty)
            for j in range(lo, hi):
                if bins[j] == 0:
                    continue
                if j == i - 1:
                    p = bins[j] + tail
                    y = p * (math.log(p) - log_mean) - comp
                else:
                    y = bins[j] * (log_bins[j] - log_mean) - comp
                t = acc + y
                comp = (t - acc) - y
                acc = t
        out[k] = acc / total + math.log(s / total)
