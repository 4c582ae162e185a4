"""Fused CPU kernels for fake quantization (numba), one memory pass each.

Each kernel performs exactly the float32 operations of the reference formula in ``tensor_quant`` (multiply by
the same float32 scale, round half to even, clamp, divide by the scale; 0 where the scale is 0), so its output
is bit-identical to the eager torch path. ``fused_kernels_available()`` says whether numba is importable and
``QUANTREWRITE_EAGER=1`` is not set (read at every call); callers fall back to eager torch ops otherwise.

The tensor is viewed as ``[outer, channels, inner]``: per-tensor quantization is channels == 1; per-channel
quantization has one scale per channel. The quantizing kernels also count the inputs below 0 in the same pass
(a reduction, no second read), so unsigned quantization can reject negative inputs without a ``min()`` pass.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a dependency, but a platform without it still gets correct (slower) results.
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None

__all__ = ["fake_quant_into", "fused_kernels_available", "quant_into", "ste_grad_into"]


def fused_kernels_available() -> bool:
    return njit is not None and os.environ.get("QUANTREWRITE_EAGER", "0") != "1"


if njit is not None:

    @njit(parallel=True, cache=True, nogil=True)
    def _quant_flat(x, out, scale, min_bound, max_bound, fake):  # pragma: no cover - compiled
        negatives = 0
        if scale == 0.0:
            for i in prange(x.size):
                negatives += x[i] < 0.0
                out[i] = 0.0
        elif fake:
            for i in prange(x.size):
                v = x[i]
                negatives += v < 0.0
                out[i] = min(max(np.rint(v * scale), min_bound), max_bound) / scale
        else:
            for i in prange(x.size):
                v = x[i]
                negatives += v < 0.0
                out[i] = min(max(np.rint(v * scale), min_bound), max_bound)
        return negatives

    @njit(parallel=True, cache=True, nogil=True)
    def _quant_rows(x, out, scale, min_bound, max_bound, fake):  # pragma: no cover - compiled
        outer, channels, inner = x.shape
        negatives = 0
        for row in prange(outer * channels):
            o = row // channels
            c = row % channels
            s = scale[c]
            count = 0
            if s == 0.0:
                for i in range(inner):
                    count += x[o, c, i] < 0.0
                    out[o, c, i] = 0.0
            elif fake:
                for i in range(inner):
                    v = x[o, c, i]
                    count += v < 0.0
                    out[o, c, i] = min(max(np.rint(v * s), min_bound), max_bound) / s
            else:
                for i in range(inner):
                    v = x[o, c, i]
                    count += v < 0.0
                    out[o, c, i] = min(max(np.rint(v * s), min_bound), max_bound)
            negatives += count
        return negatives

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_flat(x, grad, out, amax):  # pragma: no cover - compiled
        for i in prange(x.size):
            out[i] = grad[i] if abs(x[i]) <= amax else 0.0

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_rows(x, grad, out, amax):  # pragma: no cover - compiled
        outer, channels, inner = x.shape
        for row in prange(outer * channels):
            o = row // channels
            c = row % channels
            a = amax[c]
            for i in range(inner):
                out[o, c, i] = grad[o, c, i] if abs(x[o, c, i]) <= a else 0.0


def _run_quant(x: np.ndarray, out: np.ndarray, scale: np.ndarray, min_bound: float, max_bound: float,
               fake: bool) -> int:
    lo, hi = np.float32(min_bound), np.float32(max_bound)
    if scale.size == 1:
        return int(_quant_flat(x.reshape(-1), out.reshape(-1), np.float32(scale[0]), lo, hi, fake))
    return int(_quant_rows(x, out, scale, lo, hi, fake))


def fake_quant_into(x: np.ndarray, out: np.ndarray, scale: np.ndarray, min_bound: float,
                    max_bound: float) -> int:
    """out = clamp(rint(x * scale), min_bound, max_bound) / scale; 0 where scale == 0.

    x and out are C-contiguous float32 arrays of shape [outer, channels, inner]; scale is float32 of shape
    [channels]. Returns how many elements of x are < 0.
    """
    return _run_quant(x, out, scale, min_bound, max_bound, True)


def quant_into(x: np.ndarray, out: np.ndarray, scale: np.ndarray, min_bound: float, max_bound: float) -> int:
    """out = clamp(rint(x * scale), min_bound, max_bound) (the integer grid, stored as float32); 0 where
    scale == 0. Returns how many elements of x are < 0."""
    return _run_quant(x, out, scale, min_bound, max_bound, False)


def ste_grad_into(x: np.ndarray, grad: np.ndarray, out: np.ndarray, amax: np.ndarray) -> None:
    """out = grad where |x| <= amax (inclusive), else 0; amax is float32 of shape [channels]."""
    if amax.size == 1:
        _ste_flat(x.reshape(-1), grad.reshape(-1), out.reshape(-1), np.float32(amax[0]))
    else:
        _ste_rows(x, grad, out, amax)
