"""Runs every compiled kernel once on tiny buffers, with the argument types of the real calls.

numba compiles (or loads from its cache) one specialization per argument-type signature at the first call
with it; calling each kernel here, in the loader's thread, with exactly the types the wrappers in
``quantrewrite._kernels`` and ``quantrewrite.calib._kernels`` pass, leaves nothing to compile when the first
real call comes (``tests/test_kernel_loader.py`` checks that no new signature appears afterwards).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

__all__ = ["warm_calib_kernels", "warm_fake_quant_kernels"]


def warm_fake_quant_kernels(kernels: ModuleType) -> None:
    """Call quant_rows, quant_rows_serial, quant_serial (both fake and integer outputs), ste_flat, ste_rows,
    ste_serial, differing_words and same_tail once each."""
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32)
    out = np.empty_like(x)
    grad = np.ones_like(x)
    scale = np.full(2, 127.0, dtype=np.float32)
    inverse = np.float32(1.0) / scale
    amax = np.ones(2, dtype=np.float32)
    lo, hi = np.float32(-128.0), np.float32(127.0)
    x_addr, out_addr, grad_addr = x.ctypes.data, out.ctypes.data, grad.ctypes.data
    for fake in (True, False):
        kernels.quant_rows(x_addr, out_addr, 4, 2, 2, scale, inverse, amax, lo, hi, fake, True, fake)
        kernels.quant_rows_serial(x_addr, out_addr, 4, 2, 2, scale, inverse, amax, lo, hi, fake, True, fake)
        kernels.quant_serial(x_addr, out_addr, 8, scale[0], inverse[0], amax[0], lo, hi, fake, False, True)
    kernels.ste_flat(x_addr, grad_addr, out_addr, 8, amax[0])
    kernels.ste_rows(x_addr, grad_addr, out_addr, 4, 2, 2, amax)
    kernels.ste_serial(x_addr, grad_addr, out_addr, 4, 2, 2, amax)
    kernels.differing_words(x_addr, out_addr, 2, 2)
    kernels.same_tail(x_addr, out_addr, 8)


def warm_calib_kernels(kernels: ModuleType) -> None:
    """Call count_abs, mse_errors and entropy_divergences once each."""
    x = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    edges = np.linspace(0.0, 1.0, 5, dtype=np.float64)
    counts = np.zeros((1, 4), dtype=np.int64)
    kernels.count_abs(x, edges, np.float64(4.0), False, counts)
    bins = np.array([1, 2, 3, 4], dtype=np.int64)
    values = np.array([0.1, 0.4, 0.6, 0.9], dtype=np.float32)
    errors = np.empty(2, dtype=np.float64)
    kernels.mse_errors(bins, values, values[2:].copy(), errors, np.float32(-128.0), np.float32(127.0))
    csum = np.concatenate(([0], np.cumsum(bins)))
    nonzero = np.concatenate(([0], np.cumsum(bins > 0)))
    kernels.entropy_divergences(bins, np.log(bins.astype(np.float64)), csum, nonzero, 2, 1, 2, errors)
