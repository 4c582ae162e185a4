"""The compiled fake-quantization kernels (numba); imported only by ``quantrewrite._kernel_loader``.

Importing this module imports numba and compiles (or loads from numba's cache) nothing yet; the loader calls
every kernel once on tiny buffers in a background thread so that the first real call finds it ready. The
callers are the wrappers in ``quantrewrite._kernels``, which document the numerics.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit, prange, types
from numba.core.extending import intrinsic

__all__ = ["quant_rows", "quant_rows_serial", "quant_serial", "quotient", "ste_flat", "ste_rows", "ste_serial"]

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


@intrinsic
def _abs_bits(typingctx, v):  # pragma: no cover - compiled
    """The bits of |v| (float32, sign cleared) as an int32. For v >= 0 and NaN these order as the values do,
    with every NaN above +inf: ``_abs_bits(x) > _abs_bits(a)`` is exactly ``not abs(x) <= abs(a)``."""
    if not (isinstance(v, types.Float) and v.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        i32 = llvm_ir.IntType(32)
        return builder.and_(builder.bitcast(args[0], i32), llvm_ir.Constant(i32, 0x7FFFFFFF))

    return types.int32(types.float32), codegen


@njit(inline="always")
def quotient(q, s, r):  # pragma: no cover - compiled
    """q / s correctly rounded, from r = RN(1 / s) (see the module docstring for where it is valid)."""
    y = q * r
    e = _fma(-s, y, q)  # q - s * y, exact
    return _fma(e, r, y) if e != 0.0 else y  # e == 0: y is exact (and keeps the sign of a zero q)


@njit(inline="always")
def quant_row(x, out, row, width, s, r, a, min_bound, max_bound, fake, check, clip):  # pragma: no cover
    """One row of the grid; returns (whether the row has an x < 0, when check; whether it has an x outside
    [-a, a] or a NaN, i.e. an element whose straight-through gradient is 0, when clip). Each case is its own
    loop so that every one vectorizes (an integer count reduction would not).

    "Outside" is found as an integer max of the bits of |x| (``_abs_bits``), compared with a's once per row:
    one vector max per block of elements, where ``outside |= not abs(x) <= a`` cost a compare and an or-reduction
    (measured serially on 2.36 MB: plain fake quantization 1.00, with the or-reduction 1.22, with the max 1.02).
    """
    negative = False
    largest = np.int32(0)  # max of _abs_bits(x) over the row, when clip
    if s == 0.0:
        for i in range(width):
            out[row, i] = 0.0
        if check:
            for i in range(width):
                negative |= x[row, i] < 0.0
        if clip:
            for i in range(width):
                bits = _abs_bits(x[row, i])
                largest = max(largest, bits)
    elif fake and clip:  # two reductions in one loop would not vectorize: negatives get their own loop
        for i in range(width):
            v = x[row, i]
            bits = _abs_bits(v)
            largest = max(largest, bits)
            out[row, i] = quotient(min(max(np.rint(v * s), min_bound), max_bound), s, r)
        if check:
            for i in range(width):
                negative |= x[row, i] < 0.0
    elif fake and check:
        for i in range(width):
            v = x[row, i]
            negative |= v < 0.0
            out[row, i] = quotient(min(max(np.rint(v * s), min_bound), max_bound), s, r)
    elif fake:
        for i in range(width):
            out[row, i] = quotient(min(max(np.rint(x[row, i] * s), min_bound), max_bound), s, r)
    elif clip:
        for i in range(width):
            v = x[row, i]
            bits = _abs_bits(v)
            largest = max(largest, bits)
            out[row, i] = min(max(np.rint(v * s), min_bound), max_bound)
        if check:
            for i in range(width):
                negative |= x[row, i] < 0.0
    elif check:
        for i in range(width):
            v = x[row, i]
            negative |= v < 0.0
            out[row, i] = min(max(np.rint(v * s), min_bound), max_bound)
    else:
        for i in range(width):
            out[row, i] = min(max(np.rint(x[row, i] * s), min_bound), max_bound)
    return negative, clip and largest > _abs_bits(a)


@njit(parallel=True, cache=True, nogil=True)
def quant_rows(x_addr, out_addr, rows, width, channels, scale, inv_scale, amax, min_bound, max_bound, fake,
               check, clip):  # pragma: no cover - compiled
    """x and out viewed as [rows, width]; row k uses channel k % channels. Parallel over rows. Returns
    (some x < 0, some |x| > amax or NaN, the last output element)."""
    x = carray(_f32_ptr(x_addr), (rows, width))
    out = carray(_f32_ptr(out_addr), (rows, width))
    negatives = 0
    outsides = 0
    for row in prange(rows):
        c = row % channels
        negative, outside = quant_row(x, out, row, width, scale[c], inv_scale[c], amax[c], min_bound, max_bound,
                                      fake, check, clip)
        negatives += negative
        outsides += outside
    return negatives > 0, outsides > 0, out[rows - 1, width - 1]


@njit(cache=True, nogil=True)
def quant_rows_serial(x_addr, out_addr, rows, width, channels, scale, inv_scale, amax, min_bound, max_bound, fake,
                      check, clip):  # pragma: no cover - compiled
    """``quant_rows`` on the calling thread: for tensors small enough that starting the parallel loop costs more
    than it saves."""
    x = carray(_f32_ptr(x_addr), (rows, width))
    out = carray(_f32_ptr(out_addr), (rows, width))
    negative = False
    outside = False
    for row in range(rows):
        c = row % channels
        row_negative, row_outside = quant_row(x, out, row, width, scale[c], inv_scale[c], amax[c], min_bound,
                                              max_bound, fake, check, clip)
        negative |= row_negative
        outside |= row_outside
    return negative, outside, out[rows - 1, width - 1]


@njit(cache=True, nogil=True)
def quant_serial(x_addr, out_addr, n, s, r, a, min_bound, max_bound, fake, check, clip):  # pragma: no cover
    """The per-tensor formula over n elements on the calling thread (small tensors, and the tail of the
    rows of a large one); returns as ``quant_rows``."""
    x = carray(_f32_ptr(x_addr), (1, n))
    out = carray(_f32_ptr(out_addr), (1, n))
    negative, outside = quant_row(x, out, 0, n, s, r, a, min_bound, max_bound, fake, check, clip)
    return negative, outside, out[0, n - 1]


@njit(parallel=True, cache=True, nogil=True)
def ste_flat(x_addr, grad_addr, out_addr, n, amax):  # pragma: no cover - compiled
    x = carray(_f32_ptr(x_addr), (n,))
    grad = carray(_f32_ptr(grad_addr), (n,))
    out = carray(_f32_ptr(out_addr), (n,))
    for i in prange(n):
        out[i] = grad[i] if abs(x[i]) <= amax else 0.0
    return out[n - 1]


@njit(parallel=True, cache=True, nogil=True)
def ste_rows(x_addr, grad_addr, out_addr, rows, width, channels, amax):  # pragma: no cover - compiled
    x = carray(_f32_ptr(x_addr), (rows, width))
    grad = carray(_f32_ptr(grad_addr), (rows, width))
    out = carray(_f32_ptr(out_addr), (rows, width))
    for row in prange(rows):
        a = amax[row % channels]
        for i in range(width):
            out[row, i] = grad[row, i] if abs(x[row, i]) <= a else 0.0
    return out[rows - 1, width - 1]


@njit(cache=True, nogil=True)
def ste_serial(x_addr, grad_addr, out_addr, rows, width, channels, amax):  # pragma: no cover - compiled
    """``ste_rows`` (and, with one channel, ``ste_flat``) on the calling thread, for small tensors."""
    x = carray(_f32_ptr(x_addr), (rows, width))
    grad = carray(_f32_ptr(grad_addr), (rows, width))
    out = carray(_f32_ptr(out_addr), (rows, width))
    for row in range(rows):
        a = amax[row % channels]
        for i in range(width):
            out[row, i] = grad[row, i] if abs(x[row, i]) <= a else 0.0
    return out[rows - 1, width - 1]


_i64_ptr = _pointer_intrinsic(types.int64)
_u8_ptr = _pointer_intrinsic(types.uint8)


@njit(parallel=True, cache=True, nogil=True)
def differing_words(a_addr, b_addr, blocks, width):  # pragma: no cover - compiled
    """How many of the ``blocks`` rows of ``width`` int64 words differ between a and b (parallel, one read of
    each; the xor-or per row vectorizes)."""
    a = carray(_i64_ptr(a_addr), (blocks, width))
    b = carray(_i64_ptr(b_addr), (blocks, width))
    differing = 0
    for row in prange(blocks):
        bits = 0
        for i in range(width):
            bits |= a[row, i] ^ b[row, i]
        differing += bits != 0
    return differing


@njit(cache=True, nogil=True)
def same_tail(a_addr, b_addr, n):  # pragma: no cover - compiled
    """Whether n bytes at a and b are equal."""
    a = carray(_u8_ptr(a_addr), (n,))
    b = carray(_u8_ptr(b_addr), (n,))
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True
