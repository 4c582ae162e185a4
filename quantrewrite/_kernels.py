"""Fused CPU kernels for fake quantization (C, ``csrc/kernels.c``), one memory pass each: the wrappers
callers use.

Each kernel produces exactly the numbers of the float32 reference formula in ``tensor_quant`` (multiply by
the same float32 scale, round half to even, clamp, divide by the scale; 0 where the scale is 0), so its
output is bit-identical to the eager torch path. ``fused_kernels_available()`` says whether the compiled
kernels are loaded (``quantrewrite._kernel_loader`` opens this machine's build, or builds it in a background
thread, so that no caller waits for a compiler) and ``QUANTREWRITE_EAGER=1`` is not set (read at every
call); callers fall back to eager torch ops otherwise. The wrappers below wait for the loader when called
directly before it is done.

Layout: a tensor is read as ``view = (outer, channels, inner)``; per-tensor quantization is channels == 1
(cut into rows of ``ROW`` elements for the parallel loop), per-channel quantization has one scale per channel
and one row per (outer, channel). Along the way the quantizing kernels tell whether some input is < 0 (an
or-reduction per row, asked only for unsigned grids), so unsigned quantization needs no ``min()`` pass; asked
by the autograd forward, they also tell whether some |x| exceeds amax (``quant_find_clipped_into``), so that
the straight-through backward can skip its masking pass when nothing is masked.

Division: ``q / s`` is computed as ``y = q * RN(1/s)`` plus one exact FMA correction (Markstein), which is
the correctly rounded quotient for every integer |q| <= 65535 and scale in [2^-100, 2^100] (checked
exhaustively: every float32 mantissa of s times every odd q; even q and other binades of s follow by exact
power-of-two scaling). Division throughput otherwise bounds the speed on in-cache tensors (weights).

The kernels take the tensors' data addresses (plain ints); a quantization's layout and values are bound once
into a C struct (``FusedQuant``), so a call passes four arguments (ctypes converts each one: about 0.15 us
apiece). That matters for weights: small, and quantized every step.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from quantrewrite._kernel_binding import CHECK, FAKE, NEGATIVE, OUTSIDE, PARALLEL, Plan
from quantrewrite._kernel_loader import compiled, fused_kernels_available

__all__ = [
    "QUOTIENT_MAX_Q",
    "QUOTIENT_SCALE_RANGE",
    "ROW",
    "SERIAL_MAX",
    "FusedQuant",
    "fake_quant_into",
    "fused_kernels_available",
    "quant_find_clipped_into",
    "quant_into",
    "quantize_into",
    "reciprocal_scale",
    "same_contents",
    "ste_grad_into",
]

QUOTIENT_MAX_Q = 65535.0
QUOTIENT_SCALE_RANGE = (2.0**-100, 2.0**100)
# Per-tensor tensors are cut into rows of this many elements for the parallel loop; smaller ones (and the
# tail) run serially on the calling thread.
ROW = 1 << 14
# Up to this many elements a kernel runs on the calling thread: starting a parallel region costs a few
# microseconds (measured: serial and parallel break even near 2^15 float32 elements on 2 threads; far more on a
# loaded machine, where a parallel region waits for a descheduled thread).
SERIAL_MAX = 1 << 15


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


class FusedQuant:
    """One fused quantization bound to its layout and per-channel values: what ``quantize_into`` runs.

    Built once per (grid, input shape) by ``tensor_quant`` and reused by every call with them, so that a call
    passes four arguments: the kernel's ``Plan`` (layout, values, bounds, and whether to split the rows across
    threads, which pays from ``SERIAL_MAX`` elements up) is filled in here. The compiled kernels are looked up
    at the first call (they may still be building when this is made).

    Args:
        view: (outer, channels, inner).
        scale: float32, one value per channel; inv_scale: its ``reciprocal_scale`` (not read unless ``fake``).
        amax: float32, one value per channel (read only when a call asks for ``clip``).
        min_bound, max_bound: the integer grid's bounds.
        fake: divide back (fake quantization) or keep the integers.
        check_negative: report whether some x < 0 (unsigned grids).
    """

    __slots__ = ("_arrays", "_plan", "_plan_address", "_quant", "numel", "view")

    def __init__(self, view: tuple[int, int, int], scale: np.ndarray, inv_scale: np.ndarray, amax: np.ndarray,
                 min_bound: float, max_bound: float, fake: bool, check_negative: bool) -> None:
        outer, channels, inner = view
        self.view = view
        self.numel = outer * channels * inner
        parallel = self.numel > SERIAL_MAX
        if channels > 1:
            rows, width, tail = outer * channels, inner, 0
        elif parallel:
            rows, tail = divmod(self.numel, ROW)
            width = ROW
        else:
            rows, width, tail = 1, self.numel, 0
        self._arrays = tuple(np.ascontiguousarray(values, dtype=np.float32) for values in (scale, inv_scale, amax))
        flags = (FAKE if fake else 0) | (CHECK if check_negative else 0) | (PARALLEL if parallel else 0)
        self._plan = Plan(rows, width, channels, tail, *(values.ctypes.data for values in self._arrays),
                          float(min_bound), float(max_bound), flags)  # the arrays are kept alive with it
        self._plan_address = ctypes.addressof(self._plan)
        self._quant = None

    def __call__(self, x_addr: int, out_addr: int, clip: bool) -> tuple[bool, bool]:
        """Quantize ``numel`` float32 values at x_addr into out_addr; returns (some x < 0 when
        check_negative, some x outside [-amax, amax] or NaN when ``clip``)."""
        quant = self._quant
        if quant is None:
            quant = self._quant = compiled().quant
        found = quant(self._plan_address, x_addr, out_addr, clip)
        return found & NEGATIVE != 0, found & OUTSIDE != 0


def quantize_into(fused: FusedQuant, x: torch.Tensor, out: torch.Tensor, clip: bool,
                  checked: bool = True) -> tuple[bool, bool]:
    """Run a bound quantization: out = the grid's (fake) quantization of x.

    Args:
        fused: the layout and values (``FusedQuant``).
        x, out: contiguous float32 CPU tensors of ``fused.numel`` elements.
        clip: also tell whether some x has NOT |x| <= amax (outside the range, or NaN).
        checked: False skips the buffer checks, for callers that guarantee them (the kernels read raw
            addresses: a wrong buffer is memory corruption, not an exception).

    Returns:
        (whether some x < 0 (False unless the grid checks negatives), whether some x is outside [-amax, amax]
        (False unless ``clip``)).
    """
    if checked:
        _check(fused.view, (), x, out)
    return fused(x.data_ptr(), out.data_ptr(), clip)


def _run_quant(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               inv_scale: np.ndarray, amax: np.ndarray | None, min_bound: float, max_bound: float, fake: bool,
               check_negative: bool, checked: bool) -> tuple[bool, bool]:
    clip = amax is not None
    if checked:
        _check(view, (scale, inv_scale) + ((amax,) if clip else ()), x, out)
    fused = FusedQuant(view, scale, inv_scale, amax if clip else scale, min_bound, max_bound, fake, check_negative)
    return fused(x.data_ptr(), out.data_ptr(), clip)


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
    return _run_quant(x, out, view, scale, inv_scale, None, min_bound, max_bound, True, check_negative,
                      checked)[0]


def quant_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
               min_bound: float, max_bound: float, check_negative: bool = True, checked: bool = True) -> bool:
    """out = clamp(rint(x * scale), min_bound, max_bound) (the integer grid, stored as float32); 0 where
    scale == 0. Arguments as ``fake_quant_into``; returns whether some x < 0."""
    return _run_quant(x, out, view, scale, scale, None, min_bound, max_bound, False, check_negative, checked)[0]


def quant_find_clipped_into(x: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int], scale: np.ndarray,
                            inv_scale: np.ndarray, amax: np.ndarray, min_bound: float, max_bound: float,
                            fake: bool, check_negative: bool = True, checked: bool = True) -> tuple[bool, bool]:
    """``fake_quant_into`` (``fake``) or ``quant_into``, which also tells, in the same pass, whether the
    straight-through gradient masks anything: whether some x has NOT |x| <= amax (outside the range, or NaN).

    Args:
        amax: float32, one value per channel (the grid's amax, compared in float32 as the backward does).
        The others as ``fake_quant_into``; ``inv_scale`` is not read when not ``fake``.

    Returns:
        (whether some x < 0 (False when not ``check_negative``), whether some x is outside [-amax, amax]).
    """
    return _run_quant(x, out, view, scale, inv_scale, amax, min_bound, max_bound, fake, check_negative, checked)


def ste_grad_into(x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor, view: tuple[int, int, int],
                  amax: np.ndarray, checked: bool = True) -> None:
    """out = grad where |x| <= amax (inclusive), else 0; amax is float32 with one value per channel."""
    if checked:
        _check(view, (amax,), x, grad, out)
    outer, channels, inner = view
    compiled().ste(x.data_ptr(), grad.data_ptr(), out.data_ptr(), outer * channels, inner, channels,
                   amax.ctypes.data, outer * channels * inner > SERIAL_MAX)


def same_contents(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same bytes (same dtype, shape and device): a NaN equals the same NaN, -0.0
    differs from 0.0. Used to validate caches: an in-place write through ``.data`` bumps no version counter.

    Contiguous CPU tensors are compared by one fused pass over their bytes once the kernels are loaded;
    anything else with ``torch.equal`` (there -0.0 equals 0.0 and a NaN never equals itself, which only costs
    a cache miss).
    """
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if not (a.is_cpu and a.is_contiguous() and b.is_contiguous() and fused_kernels_available()):
        return torch.equal(a, b)
    a_addr, b_addr = a.data_ptr(), b.data_ptr()
    if a_addr == b_addr:
        return True
    nbytes = a.numel() * a.element_size()
    return bool(compiled().same_bytes(a_addr, b_addr, nbytes, nbytes > 4 * SERIAL_MAX))
