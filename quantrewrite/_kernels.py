"""Fused CPU kernels for fake quantization (numba), one memory pass each.

Each kernel performs exactly the float32 operations of the reference formula in ``tensor_quant`` (multiply by
the same float32 scale, round half to even, clamp, divide by the scale; 0 where the scale is 0), so its output
is bit-identical to the eager torch path. ``fused_kernels_available()`` says whether numba is importable and
``QUANTREWRITE_EAGER=1`` is not set (read at every call); callers fall back to eager torch ops otherwise.

The tensor is viewed as ``[outer, channels, inner]``: per-tensor quantization is channels == 1; per-channel
quantization has one scale per channel. The quantizing kernels also count the inputs below 0 in the same pass
(a reduction, no second read), so unsigned quantization can reject negative inputs without a ``min()`` pass.

The kernels take the tensors' data addresses (plain ints) rather than numpy arrays: that saves about a
microsecond and a half per call (it matters for weights, which are small and quantized every step). Each
kernel returns an element of its output: numba's parfor pass drops loops whose only effect is writing an array
that is not used afterwards, and a ``carray`` over a raw address looks exactly like that.
"""

from __future__ import annotations

import os

import numpy as np
import torch

try:  # numba is a dependency, but a platform without it still gets correct (slower) results.
    from numba import carray, njit, prange, types
    from numba.core.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None

__all__ = ["fake_quant_into", "fused_kernels_available", "quant_into", "ste_grad_into"]


def fused_kernels_available() -> bool:
    return njit is not None and os.environ.get("QUANTREWRITE_EAGER", "0") != "1"


if njit is not None:

    @intrinsic
    def _f32_ptr(typingctx, address):  # pragma: no cover - compiled
        """An int address as a float32* (for numba.carray)."""
        if not isinstance(address, types.Integer):
            return None
        pointer = types.CPointer(types.float32)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address), codegen

    @njit(parallel=True, cache=True, nogil=True)
    def _quant_flat(x_addr, out_addr, n, scale, min_bound, max_bound, fake):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (n,))
        out = carray(_f32_ptr(out_addr), (n,))
        negatives = 0
        if scale == 0.0:
            for i in prange(n):
                negatives += x[i] < 0.0
                out[i] = 0.0
        elif fake:
            for i in prange(n):
                v = x[i]
                negatives += v < 0.0
                out[i] = min(max(np.rint(v * scale), min_bound), max_bound) / scale
        else:
            for i in prange(n):
                v = x[i]
                negatives += v < 0.0
                out[i] = min(max(np.rint(v * scale), min_bound), max_bound)
        return negatives, out[n - 1]

    @njit(parallel=True, cache=True, nogil=True)
    def _quant_rows(x_addr, out_addr, outer, channels, inner, scale, min_bound, max_bound,
                    fake):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (outer * channels, inner))
        out = carray(_f32_ptr(out_addr), (outer * channels, inner))
        negatives = 0
        for row in prange(outer * channels):
            s = scale[row % channels]
            count = 0
            if s == 0.0:
                for i in range(inner):
                    count += x[row, i] < 0.0
                    out[row, i] = 0.0
            elif fake:
                for i in range(inner):
                    v = x[row, i]
                    count += v < 0.0
                    out[row, i] = min(max(np.rint(v * s), min_bound), max_bound) / s
            else:
                for i in range(inner):
                    v = x[row, i]
                    count += v < 0.0
                    out[row, i] = min(max(np.rint(v * s), min_bound), max_bound)
            negatives += count
        return negatives, out[outer * channels - 1, inner - 1]

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_flat(x_addr, grad_addr, out_addr, n, amax):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (n,))
        grad = carray(_f32_ptr(grad_addr), (n,))
        out = carray(_f32_ptr(out_addr), (n,))
        for i in prange(n):
            out[i] = grad[i] if abs(x[i]) <= amax else 0.0
        return out[n - 1]

    @njit(parallel=True, cache=True, nogil=True)
    def _ste_rows(x_addr, grad_addr, out_addr, outer, channels, inner, amax):  # pragma: no cover - compiled
        x = carray(_f32_ptr(x_addr), (outer * channels, inner))
        grad = carray(_f32_ptr(grad_addr), (outer * channels, inner))
        out = carray(_f32_ptr(out_addr), (outer * channels, inner))
        for row in prange(outer * channels):
            a = amax[row % channels]
            for i in range(inner):
                out[row, i] = grad[row, i] if abs(x[row, i]) <= a else 0.0
        return out[outer * channels - 1, inner - 1]


def _check(view: tuple[int, int, int], channel_values: np.ndarray, *tensors: torch.Tensor) -> None:
    numel = view[0] * view[1] * view[2]
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.numel() != numel:
            raise ValueError(f"fused kernels need contiguous float32 CPU tensors of {numel} elements, got "
                             f"{t.dtype} {t.device} {list(t.shape)} contiguous={t.is_contiguous()}")
    if channel_values.dtype != np.float32 or channel_values.size != view[1]:
        raise ValueError(f"expected {view[1]} float32 per-channel values, got {channel_values.size} "
                         f"{channel_values.dtype}")


def _run_quant(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               min_bound: float, max_bound: float, fake: bool, checked: bool) -> int:
    if checked:
        _check(view, scale, x, out)
    outer, channels, inner = view
    lo, hi = np.float32(min_bound), np.float32(max_bound)
    if channels == 1:
        return int(_quant_flat(x.data_ptr(), out.data_ptr(), outer * inner, scale[0], lo, hi, fake)[0])
    return int(_quant_rows(x.data_ptr(), out.data_ptr(), outer, channels, inner, scale, lo, hi, fake)[0])


def fake_quant_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
                    min_bound: float, max_bound: float, checked: bool = True) -> int:
    """out = clamp(rint(x * scale), min_bound, max_bound) / scale; 0 where scale == 0.

    x and out are contiguous float32 CPU tensors of ``outer * channels * inner`` elements, read as
    ``view = (outer, channels, inner)``; scale is a float32 array of ``channels`` values. Returns how many
    elements of x are < 0. ``checked=False`` skips the layout checks, for callers that guarantee them (the
    kernels read raw addresses: a wrong buffer is memory corruption, not an exception).
    """
    return _run_quant(x, out, view, scale, min_bound, max_bound, True, checked)


def quant_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               min_bound: float, max_bound: float, checked: bool = True) -> int:
    """out = clamp(rint(x * scale), min_bound, max_bound) (the integer grid, stored as float32); 0 where
    scale == 0. Same layout as ``fake_quant_into``; returns how many elements of x are < 0."""
    return _run_quant(x, out, view, scale, min_bound, max_bound, False, checked)


def ste_grad_into(x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int],
                  amax: np.ndarray, checked: bool = True) -> None:
    """out = grad where |x| <= amax (inclusive), else 0; amax is float32 with one value per channel."""
    if checked:
        _check(view, amax, x, grad, out)
    outer, channels, inner = view
    if channels == 1:
        _ste_flat(x.data_ptr(), grad.data_ptr(), out.data_ptr(), outer * inner, amax[0])
    else:
        _ste_rows(x.data_ptr(), grad.data_ptr(), out.data_ptr(), outer, channels, inner, amax)
