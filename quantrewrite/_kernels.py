"""Fused CPU kernels for fake quantization (numba), one memory pass each.

Each kernel produces exactly the numbers of the float32 reference formula in ``tensor_quant`` (multiply by
the same float32 scale, round half to even, clamp, divide by the scale; 0 where the scale is 0), so its
output is bit-identical to the eager torch path. ``fused_kernels_available()`` says whether numba is
importable and ``QUANTREWRITE_EAGER=1`` is not set (read at every call); callers fall back to eager torch ops
otherwise.

Layout: a tensor is read as ``view = (outer, channels, inner)``; per-tensor quantization is channels == 1
(cut into rows of ``ROW`` elements for the parallel loop), per-channel quantization has one scale per channel
and one row per (outer, channel). Along the way the quantizing kernels tell whether some input is < 0 (an
or-reduction per row, asked only for unsigned grids), so unsigned quantization needs no ``min()`` pass.

Division: ``q / s`` is computed as ``y = q * RN(1/s)`` plus one exact FMA correction (Markstein), which is
the correctly rounded quotient for every integer |q| <= 65535 and scale in [2^-100, 2^100] (checked
exhaustively: every float32 mantissa of s times every odd q; even q and other binades of s follow by exact
power-of-two scaling). Division throughput otherwise bounds the speed on in-cache tensors (weights).

The kernels take the tensors' data addresses (plain ints) rather than numpy arrays: that saves about a
microsecond and a half per call, which matters for weights (small, quantized every step). Each kernel
returns an element of every array it writes: numba's parfor pass removes stores to arrays that are not used
after the loop, and a ``carray`` over a raw address looks exactly like that.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:  # numba is a dependency, but a platform without it still gets correct (slower) results.
    from llvmlite import ir as llvm_ir
    from numba import carray, njit, prange, types
    from numba.core.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None

__all__ = [
    "QUOTIENT_MAX_Q",
    "QUOTIENT_SCALE_RANGE",
    "ROW",
    "fake_quant_into",
    "fused_kernels_available",
    "quant_into",
    "reciprocal_scale",
    "ste_grad_into",
]

QUOTIENT_MAX_Q = 65535.0
QUOTIENT_SCALE_RANGE = (2.0**-100, 2.0**100)
# Per-tensor tensors are cut into rows of this many elements for the parallel loop; smaller ones (and the
# tail) run serially on the calling thread.
ROW = 1 << 14


def fused_kernels_available() -> bool:
    return njit is not None and os.environ.get("QUANTREWRITE_EAGER", "0") != "1"


if njit is not None:

    def _pointer_intrinsic(element):
        pointer = types.CPointer(element)

        def typer(typingctx, address):
            if not isinstance(address, types.Integer):
                return None

            def codegen(context, builder, signature, args):
                return builder.inttoptr(args[0], context.get_value_type(pointer))

            return pointer(address), codegen

        return intrinsic(typer)

    _f32_ptr = _pointer_intrinsic(types.float32)  # an int address as float32* (for numba.carray)

    @intrinsic
    def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
        """a * b + c with one rounding (llvm.fma.f32)."""
        if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
            return None

        def codegen(context, builder, signature, args):
            f32 = llvm_ir.FloatType()
            fma = builder.module.declare_intrinsic("llvm.fma", [f32], llvm_ir.FunctionType(f32, [f32, f32, f32]))
            return builder.call(fma, args)

        return types.float32(types.float32, types.float32, types.float32), codegen

    @njit(inline="always")
    def _quotient(q, s, r):  # pragma: no cover - compiled
        """q / s correctly rounded, from r = RN(1 / s) (see the module docstring for where it is valid)."""
        y = q * r
        e = _fma(-s, y, q)  # q - s * y, exact
        return _fma(e, r, y) if e != 0.0 else y  # e == 0: y is exact (and keeps the sign of a zero q)

    @njit(inline="always")
    def _quant_row(x, out, row, width, s, r, min_bound, max_bound, fake, check):  # pragma: no cover
        """One row of the grid; returns whether the row has an x < 0 (when check). Each case is its own loop
        so that every one vectorizes (an integer count reduction would not)."""
        negative = False
        if s == 0.0:
            for i in range(width):
                out[row, i] = 0.0
            if check:
                for i in range(width):
                    negative |= x[row, i] < 0.0
        elif fake and check:
            for i in range(width):
                v = x[row, i]
                negative |= v < 0.0
                out[row, i] = _quotient(min(max(np.rint(v * s), min_bound), max_bound), s, r)
        elif fake:
            for i in range(width):
                out[row, i] = _quotient(min(max(np.rint(x[row, i] * s), min_bound), max_bound), s, r)
        elif check:
            for i in range(width):
                v = x[row, i]
                negative |= v < 0.0
                out[row, i] = min(max(np.rint(v * s), min_bound), max_bound)
        else:
            for i in range(width):
                out[row, i] = min(max(np.rint(x[row, i] * s), min_bound), max_bound)
        return negative

    @njit(parallel=True, cache=True, nogil=True)
    def _quant_rows(x_addr, out_addr, rows, width, channels, scale, inv_scale, min_bound, max_bound, fake,
                    check):  # pragma: no cover - compiled
        """x and out viewed as [rows, width]; row k uses channel k % channels. Parallel over rows."""
        x = carray(_f32_ptr(x_addr), (rows, width))
        out = carray(_f32_ptr(out_addr), (rows, width))
        negatives = 0
        for row in prange(rows):
            c = row % channels
            negatives += _quant_row(x, out, row, width, scale[c], inv_scale[c], min_bound, max_bound, fake, check)
        return negatives > 0, out[rows - 1, width - 1]

    @njit(cache=True, nogil=True)
    def _quant_serial(x_addr, out_addr, n, s, r, min_bound, max_bound, fake, check):  # pragma: no cover
        """The per-tensor formula over n elements on the calling thread (small tensors, and the tail of the
        rows of a large one)."""
        x = carray(_f32_ptr(x_addr), (1, n))
        out = carray(_f32_ptr(out_addr), (1, n))
        return _quant_row(x, out, 0, n, s, r, min_bound, max_bound, fake, check), out[0, n - 1]

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_flat(x_addr, grad_addr, out_addr, n, amax):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (n,))
        grad = carray(_f32_ptr(grad_addr), (n,))
        out = carray(_f32_ptr(out_addr), (n,))
        for i in prange(n):
            out[i] = grad[i] if abs(x[i]) <= amax else 0.0
        return out[n - 1]

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_rows(x_addr, grad_addr, out_addr, rows, width, channels, amax):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (rows, width))
        grad = carray(_f32_ptr(grad_addr), (rows, width))
        out = carray(_f32_ptr(out_addr), (rows, width))
        for row in prange(rows):
            a = amax[row % channels]
            for i in range(width):
                out[row, i] = grad[row, i] if abs(x[row, i]) <= a else 0.0
        return out[rows - 1, width - 1]


def _check(view: tuple[int, int, int], channel_values: tuple[np.ndarray, ...], *tensors: torch.Tensor) -> None:
    numel = view[0] * view[1] * view[2]
    for t in tensors:
        if t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous() or t.numel() != numel:
            raise ValueError(f"fused kernels need contiguous float32 CPU tensors of {numel} elements, got "
                             f"{t.dtype} {t.device} {list(t.shape)} contiguous={t.is_contiguous()}")
    for values in channel_values:
        if values is None or values.dtype != np.float32 or values.size != view[1]:
            raise ValueError(f"expected {view[1]} float32 per-channel values, got {values!r}")


def reciprocal_scale(scale: np.ndarray, min_bound: float, max_bound: float) -> np.ndarray | None:
    """RN(1 / scale) per channel (0 where the scale is 0), or None where the exact fast quotient does not
    apply (fake quantization must then divide: callers use the eager path)."""
    lo, hi = QUOTIENT_SCALE_RANGE
    nonzero = scale[scale != 0]
    if max(-min_bound, max_bound) > QUOTIENT_MAX_Q or np.any((nonzero < lo) | (nonzero > hi)):
        return None
    with np.errstate(divide="ignore"):
        inverse = np.float32(1.0) / scale
    return np.where(scale == 0, np.float32(0.0), inverse).astype(np.float32)


def _run_quant(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               inv_scale: np.ndarray, min_bound: float, max_bound: float, fake: bool, check_negative: bool,
               checked: bool) -> bool:
    if checked:
        _check(view, (scale, inv_scale), x, out)
    outer, channels, inner = view
    lo, hi = np.float32(min_bound), np.float32(max_bound)
    if channels > 1:
        return bool(_quant_rows(x.data_ptr(), out.data_ptr(), outer * channels, inner, channels, scale, inv_scale,
                                lo, hi, fake, check_negative)[0])
    rows, tail = divmod(outer * inner, ROW)
    negative = False
    if rows:
        negative = _quant_rows(x.data_ptr(), out.data_ptr(), rows, ROW, 1, scale, inv_scale, lo, hi, fake,
                               check_negative)[0]
    if tail:
        done = 4 * rows * ROW  # bytes
        negative |= _quant_serial(x.data_ptr() + done, out.data_ptr() + done, tail, scale[0], inv_scale[0], lo,
                                  hi, fake, check_negative)[0]
    return bool(negative)


def fake_quant_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
                    inv_scale: np.ndarray, min_bound: float, max_bound: float, check_negative: bool = True,
                    checked: bool = True) -> bool:
    """out = clamp(rint(x * scale), min_bound, max_bound) / scale; 0 where scale == 0.

    Args:
        x, out: contiguous float32 CPU tensors of ``outer * channels * inner`` elements.
        view: (outer, channels, inner).
        scale: float32, one value per channel; inv_scale: its ``reciprocal_scale``.
        check_negative: report whether some x < 0 (for unsigned grids).
        checked: False skips the layout checks, for callers that guarantee them (the kernels read raw
            addresses: a wrong buffer is memory corruption, not an exception).

    Returns:
        Whether some x < 0 (False when not ``check_negative``).
    """
    return _run_quant(x, out, view, scale, inv_scale, min_bound, max_bound, True, check_negative, checked)


def quant_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               min_bound: float, max_bound: float, check_negative: bool = True, checked: bool = True) -> bool:
    """out = clamp(rint(x * scale), min_bound, max_bound) (the integer grid, stored as float32); 0 where
    scale == 0. Arguments as ``fake_quant_into``; returns whether some x < 0."""
    return _run_quant(x, out, view, scale, scale, min_bound, max_bound, False, check_negative, checked)


def ste_grad_into(x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int],
                  amax: np.ndarray, checked: bool = True) -> None:
    """out = grad where |x| <= amax (inclusive), else 0; amax is float32 with one value per channel."""
    if checked:
        _check(view, (amax,), x, grad, out)
    outer, channels, inner = view
    if channels == 1:
        _ste_flat(x.data_ptr(), grad.data_ptr(), out.data_ptr(), outer * inner, amax[0])
    else:
        _ste_rows(x.data_ptr(), grad.data_ptr(), out.data_ptr(), outer * channels, inner, channels, amax)
