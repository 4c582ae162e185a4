"""Quantization numerics: the integer formula, its fake-quant twin, FP8 E4M3, and their autograd.

The formula (per element; ``amax`` broadcasts, e.g. shape [C, 1, 1, 1] for per-channel):

    max_bound = 2^(num_bits - 1 + unsigned) - 1
    min_bound = 0 if unsigned else (-max_bound if narrow_range else -max_bound - 1)
    scale     = max_bound / amax                  (float32, correctly rounded; 0 where amax <= 2^-24)
    q         = clamp(round_half_to_even(x * scale), min_bound, max_bound)
    fake      = q / scale                         (0 where scale == 0, whatever x is)

fp16/bf16 inputs are computed in float32 and returned in their own dtype. The backward pass is the
straight-through estimator: the gradient passes where |x| <= amax (inclusive, compared in float32) and is 0
elsewhere; amax gets no gradient.

On CPU float32 a fused compiled kernel does the whole formula in one memory pass with the same float32
operations, so its results are bit-identical to the eager torch path used elsewhere (CUDA, or
``QUANTREWRITE_EAGER=1``). Everything derived from amax (validation, the scale) is gathered in a
``QuantGrid`` that a caller with a fixed amax (TensorQuantizer) prepares once and reuses.

Example:
    >>> x = torch.tensor([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5])
    >>> fake_tensor_quant(x, torch.tensor(127.0)).tolist()
    [-8.0, -8.0, -2.0, -0.0, 0.0, 2.0, 2.0]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from quantrewrite import _kernels
from quantrewrite.descriptor import (  # noqa: F401  (re-exported: the pytorch-quantization import path)
    QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW,
    QUANT_DESC_8BIT_PER_TENSOR,
    QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR,
    QuantDescriptor,
    QuantDescriptorError,
    ScaledQuantDescriptor,
)

__all__ = [
    "AMAX_EPSILON",
    "FP8_E4M3_MAX",
    "FakeAffineTensorQuantFunction",
    "FakeTensorQuantFunction",
    "LegacyFakeTensorQuantFunction",
    "NegativeInputError",
    "QuantDescriptor",
    "QuantDescriptorError",
    "QuantGrid",
    "ScaledE4M3Function",
    "ScaledQuantDescriptor",
    "TensorQuantFunction",
    "fake_affine_tensor_quant",
    "fake_e4m3_quant",
    "fake_tensor_quant",
    "legacy_fake_tensor_quant",
    "prepare_grid",
    "quant_bounds",
    "quantize_with_grid",
    "scaled_e4m3",
    "tensor_quant",
]

AMAX_EPSILON = 2.0**-24
FP8_E4M3_MAX = 448.0


def quant_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = True) -> tuple[float, float]:
    """Return (min_bound, max_bound) of the integer grid, e.g. (-128, 127) for 8-bit full range.

    num_bits 0 (and signed 1-bit) is degenerate: max_bound is 0, so the scale is 0 and everything becomes 0.
    """
    max_bound = float(max(2 ** (num_bits - 1 + int(unsigned)) - 1, 0))
    if unsigned or max_bound == 0:
        min_bound = 0.0
    elif narrow_range:
        min_bound = -max_bound
    else:
        min_bound = -max_bound - 1.0
    return min_bound, max_bound


class QuantGrid(NamedTuple):
    """Everything derived from one amax and the bit settings; valid for as long as amax is unchanged.

    Build it with ``prepare_grid``; ``quantize_with_grid`` applies it. ``fp8`` grids round through
    torch.float8_e4m3fn instead of the integer grid (``min_bound``/``max_bound`` are then ±448).
    """

    amax: torch.Tensor  # float32, validated (finite, >= 0), detached
    scale: torch.Tensor  # float32 max_bound / amax, 0 where amax <= 2^-24
    min_bound: float
    max_bound: float
    unsigned: bool
    fp8: bool
    any_zero: bool  # some scale is 0 (amax <= 2^-24, or a degenerate grid): those elements become 0
    scale_host: np.ndarray | None  # flat float32 copies for the CPU kernels (None off-CPU)
    amax_host: np.ndarray | None
    amax_shape: tuple[int, ...]
    inv_scale_host: np.ndarray | None  # RN(1 / scale) for the kernels' exact fast quotient, where it applies
    plans: dict  # (input shape, fake) -> _Plan: how this grid quantizes inputs of that shape (see ``_plan``)


def _validated_amax(amax: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    # A copy: a grid must not change under a pending backward when the caller's amax buffer is written.
    amax = torch.as_tensor(amax, device=device).detach().to(torch.float32, copy=True)
    if amax.numel() == 0:
        raise ValueError("amax is empty")
    if not bool((amax >= 0).all()):  # one reduction: catches negatives and NaN
        bad = amax[~(amax >= 0)].reshape(-1)[0].item()
        raise ValueError(f"amax must be >= 0 (and not NaN), got {bad:g}")
    return amax


def _scale(amax: torch.Tensor, numerator: float) -> tuple[torch.Tensor, bool]:
    """numerator / amax in float32 (a true division: ``float / tensor`` in torch multiplies by the reciprocal,
    which is 1 ulp off for a quarter of the values), with 0 where amax <= 2^-24. Also says whether any scale
    is 0."""
    if numerator == 0:
        return torch.zeros_like(amax), True
    scale = torch.full_like(amax, numerator).div_(amax)
    tiny = amax <= AMAX_EPSILON
    any_zero = bool(tiny.any())
    if any_zero:
        scale = scale.masked_fill_(tiny, 0.0)
    return scale, any_zero


def prepare_grid(amax: torch.Tensor | float, num_bits: int | tuple[int, int] = 8, unsigned: bool = False,
                 narrow_range: bool = True, device: torch.device | str | None = None) -> QuantGrid:
    """Validate amax and derive the scale once, for repeated ``quantize_with_grid`` calls.

    Args:
        amax: the range; a number or a tensor that broadcasts against the inputs (e.g. [C, 1, 1, 1]).
        num_bits: int >= 0, or (4, 3) for FP8 E4M3.
        unsigned: quantize to [0, 2^b - 1] (negative inputs are then an error).
        narrow_range: signed range [-(2^(b-1) - 1), 2^(b-1) - 1] instead of [-2^(b-1), 2^(b-1) - 1].
        device: where the inputs will be (default: amax's device, or CPU for a number).

    Raises:
        ValueError: for a negative or NaN amax, an empty amax, or a bad num_bits.
    """
    fp8 = isinstance(num_bits, (tuple, list)) and tuple(num_bits) == (4, 3)
    if not fp8 and (isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 0):
        raise ValueError(f"num_bits: expected an int >= 0 or (4, 3), got {num_bits!r}")
    if fp8 and unsigned:
        raise ValueError("FP8 E4M3 quantization is always signed")
    if device is None:
        device = amax.device if isinstance(amax, torch.Tensor) else torch.device("cpu")
    amax = _validated_amax(amax, torch.device(device))
    if fp8:
        min_bound, max_bound = -FP8_E4M3_MAX, FP8_E4M3_MAX
    else:
        min_bound, max_bound = quant_bounds(num_bits, unsigned, narrow_range)
    scale, any_zero = _scale(amax, max_bound)
    scale_host = amax_host = None
    if amax.device.type == "cpu" and not fp8:  # FP8 rounds through torch.float8_e4m3fn: eager only
        scale_host = scale.reshape(-1).numpy()
        amax_host = amax.reshape(-1).contiguous().numpy()
    inv_scale_host = None if scale_host is None else _kernels.reciprocal_scale(scale_host, min_bound, max_bound)
    return QuantGrid(amax, scale, min_bound, max_bound, unsigned, fp8, any_zero, scale_host, amax_host,
                     tuple(amax.shape), inv_scale_host, {})


class _Layout(NamedTuple):
    padded: tuple[int, ...]  # amax's shape aligned to the input's dims
    view: tuple[int, int, int] | None  # (outer, channels, inner) for the fused kernels; None: eager only


@functools.lru_cache(maxsize=512)
def _layout(shape: tuple[int, ...], amax_shape: tuple[int, ...]) -> _Layout:
    """How amax lies over the input (cached: shapes repeat every step).

    Raises ValueError unless amax broadcasts to the input without growing it. The fused kernels need amax to
    vary along one contiguous block of dims (per-tensor, axis 0, axis 1, axis -1, axes (0, 1), ...); e.g. axes
    (0, 2) of a 4-D tensor has no view and goes the eager way.
    """
    aligned, extra = amax_shape, len(amax_shape) - len(shape)
    if extra > 0 and all(size == 1 for size in aligned[:extra]):
        aligned, extra = aligned[extra:], 0
    if extra > 0 or any(a not in (1, s) for a, s in zip(aligned[::-1], shape[::-1])):
        raise ValueError(f"amax of shape {list(amax_shape)} does not broadcast to input of shape {list(shape)}")
    padded = (1,) * (len(shape) - len(aligned)) + aligned
    varying = [d for d, size in enumerate(padded) if size != 1]
    first, last = (varying[0], varying[-1]) if varying else (len(shape), len(shape) - 1)
    if any(padded[d] != shape[d] for d in range(first, last + 1)):
        return _Layout(padded, None)
    outer = channels = inner = 1
    for d, size in enumerate(shape):
        if d < first:
            outer *= size
        elif d <= last:
            channels *= size
        else:
            inner *= size
    return _Layout(padded, (outer, channels, inner))


class NegativeInputError(ValueError, TypeError):
    """An unsigned quantizer got a negative input (a TypeError in pytorch-quantization)."""


def _negative_input_error(inputs: torch.Tensor) -> ValueError:
    return NegativeInputError("Negative values encountered in unsigned quantization "
                      f"(min {inputs.min().item():g}); use a signed quantizer for this tensor")


def _amax_like(grid: QuantGrid, padded: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """amax and scale reshaped to the input's rank (a 1-dim amax may carry leading 1-dims)."""
    if grid.amax_shape == padded:
        return grid.amax, grid.scale
    return grid.amax.reshape(padded), grid.scale.reshape(padded)


def _forward_eager(inputs: torch.Tensor, grid: QuantGrid, layout: _Layout, fake: bool) -> torch.Tensor:
    """The reference formula in torch ops (any device, any dtype); defines the numbers."""
    if grid.unsigned and inputs.numel() > 0 and bool((inputs < 0).any()):
        raise _negative_input_error(inputs)
    _, scale = _amax_like(grid, layout.padded)
    x32 = inputs.float()
    if grid.fp8:
        out = torch.clamp(x32 * scale, grid.min_bound, grid.max_bound).to(torch.float8_e4m3fn).float()
    else:
        out = torch.clamp(torch.round(x32 * scale), grid.min_bound, grid.max_bound)
    if fake:
        out = out / torch.where(scale == 0, torch.ones_like(scale), scale)
    if grid.any_zero:
        out = torch.where(scale == 0, torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out.to(inputs.dtype)


def _as_float32_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


class _Plan(NamedTuple):
    """How one grid quantizes inputs of one shape: everything that does not depend on the values."""

    layout: _Layout
    fake: bool
    fused: _kernels.FusedQuant | None  # the bound CPU kernel, or None: the eager formula computes it


_PLANS_PER_GRID = 16  # a grid meets few shapes; past this many (varying batch sizes), start over


def _plan(grid: QuantGrid, shape: torch.Size, fake: bool) -> _Plan:
    """The grid's plan for inputs of ``shape``, made at the first call with it (kept in ``grid.plans``: a
    static amax keeps its grid, so a weight's every step reuses one plan)."""
    key = (shape, fake)
    plan = grid.plans.get(key)
    if plan is None:
        layout = _layout(tuple(shape), grid.amax_shape)
        fused = None
        # The fused kernel applies on CPU, to an amax laid out as one block of dims, with an exact fast quotient
        if (layout.view is not None and grid.scale_host is not None and shape.numel() > 0
                and (not fake or grid.inv_scale_host is not None)):
            fused = _kernels.FusedQuant(layout.view, grid.scale_host, grid.inv_scale_host if fake else grid.scale_host,
                                        grid.amax_host, grid.min_bound, grid.max_bound, fake, grid.unsigned)
        if len(grid.plans) >= _PLANS_PER_GRID:
            grid.plans.clear()
        plan = grid.plans[key] = _Plan(layout, fake, fused)
    return plan


def _forward(inputs: torch.Tensor, grid: QuantGrid, plan: _Plan, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused kernel where the plan has one (and the kernels are loaded), else eager. ``out``, a float32
    contiguous tensor of the input's shape, is written to when the fused kernel runs on a float32 input (and
    ignored otherwise)."""
    fused = plan.fused
    if fused is None or not inputs.is_cpu or not _kernels.fused_kernels_available():
        return _forward_eager(inputs, grid, plan.layout, plan.fake)
    x32 = _as_float32_contiguous(inputs)
    if out is None or inputs.dtype != torch.float32:
        out = torch.empty_like(x32)
    negative, _ = _kernels.quantize_into(fused, x32, out, False, checked=False)
    if negative:
        raise _negative_input_error(inputs)
    return out if inputs.dtype == torch.float32 else out.to(inputs.dtype)


def _forward_finding_clipped(inputs: torch.Tensor, grid: QuantGrid, plan: _Plan) -> tuple[torch.Tensor, bool]:
    """``_forward`` for autograd: also whether the straight-through gradient masks some element (some x has
    not |x| <= amax: out of range, or NaN). The fused kernel finds that in the same pass; on the eager path
    the answer is True (unknown: the backward then masks as usual)."""
    fused = plan.fused
    if fused is None or not inputs.is_cpu or not _kernels.fused_kernels_available():
        return _forward_eager(inputs, grid, plan.layout, plan.fake), True
    x32 = _as_float32_contiguous(inputs)
    out = torch.empty_like(x32)
    negative, clipped = _kernels.quantize_into(fused, x32, out, True, checked=False)
    if negative:
        raise _negative_input_error(inputs)
    return (out if inputs.dtype == torch.float32 else out.to(inputs.dtype)), clipped


def _ste_grad(inputs: torch.Tensor, grid: QuantGrid, layout: _Layout, grad: torch.Tensor) -> torch.Tensor:
    """grad where |inputs| <= amax (inclusive, in float32), 0 elsewhere: one fused pass where it applies."""
    if (layout.view is not None and grid.amax_host is not None and inputs.dtype == torch.float32
            and grad.dtype == torch.float32 and inputs.is_cpu and grad.is_cpu and inputs.numel() > 0
            and _kernels.fused_kernels_available()):
        x = inputs.contiguous()
        g = grad.contiguous()
        out = torch.empty_like(g)
        _kernels.ste_grad_into(x, g, out, layout.view, grid.amax_host, checked=False)
        return out
    amax, _ = _amax_like(grid, layout.padded)
    inside = inputs.float().abs() <= amax
    return torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


class _QuantFunction(torch.autograd.Function):
    """Quantize (fake or real, as the plan says) with a straight-through gradient; no gradient to amax.

    When the forward finds every element inside [-amax, amax] (weights calibrated with max always are), the
    backward passes the incoming gradient on untouched (the mask would keep all of it) and nothing is saved
    for it; otherwise it masks as the straight-through estimator says.
    """

    @staticmethod
    def forward(ctx, inputs, grid, plan):
        outputs, clipped = _forward_finding_clipped(inputs, grid, plan)  # integers carry the STE too
        ctx.clipped = clipped
        if clipped:
            ctx.save_for_backward(inputs)  # saved as is: no copy
            ctx.grid, ctx.layout = grid, plan.layout
        return outputs

    @staticmethod
    def backward(ctx, grad):
        if not ctx.clipped:
            return grad, None, None
        (inputs,) = ctx.saved_tensors
        return _ste_grad(inputs, ctx.grid, ctx.layout, grad), None, None


def _direct_apply() -> Callable[..., torch.Tensor] | None:
    """``_QuantFunction.apply`` without ``torch.autograd.Function.apply``'s Python preamble (about a
    microsecond per call: default-argument binding checks, the functorch dispatch, a pass over the arguments
    for dead functorch wrappers), for calls made outside functorch transforms. That preamble then only
    unwraps dead wrappers, which ``_apply`` does for its one tensor. None where torch lacks the pieces."""
    functorch = getattr(torch._C, "_functorch", None)
    if (not hasattr(torch._C, "_are_functorch_transforms_active") or functorch is None
            or not hasattr(functorch, "unwrap_if_dead")):
        return None  # pragma: no cover - another torch
    return super(torch.autograd.Function, _QuantFunction).apply  # torch._C._FunctionBase.apply


_DIRECT_APPLY = _direct_apply()


def _apply(inputs: torch.Tensor, grid: QuantGrid, plan: _Plan) -> torch.Tensor:
    if _DIRECT_APPLY is None or torch._C._are_functorch_transforms_active():
        return _QuantFunction.apply(inputs, grid, plan)  # the public path (functorch transforms included)
    return _DIRECT_APPLY(torch._C._functorch.unwrap_if_dead(inputs), grid, plan)


def quantize_with_grid(inputs: torch.Tensor, grid: QuantGrid, fake: bool = True,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a prepared grid: fake quantization (or the integer grid when ``fake`` is False, or the FP8 value
    grid for an FP8 grid), with the straight-through gradient when autograd needs one.

    ``out`` (float32, contiguous, the input's shape) may receive the result when no gradient is needed and the
    fused kernel applies; always use the returned tensor."""
    plan = _plan(grid, inputs.shape, fake)
    if inputs.requires_grad and torch.is_grad_enabled():
        return _apply(inputs, grid, plan)
    return _forward(inputs, grid, plan, out)


def tensor_quant(inputs: torch.Tensor, amax: torch.Tensor | float, num_bits: int | tuple[int, int] = 8,
                 unsigned: bool = False, narrow_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize to the integer grid. Returns (q, scale) with q = clamp(round(x * scale)) in x's dtype.

    Note the low-level default narrow_range=True (a descriptor defaults to False). num_bits (4, 3) returns
    x * scale rounded to the FP8 E4M3 values (scale = 448 / amax) instead of integers.

    Example:
        >>> q, scale = tensor_quant(torch.tensor([0.5, -1.0]), torch.tensor(1.0))
        >>> q.tolist(), scale.item()
        ([64.0, -127.0], 127.0)
    """
    grid = prepare_grid(amax, num_bits, unsigned, narrow_range, inputs.device)
    return quantize_with_grid(inputs, grid, fake=False), grid.scale


def fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor | float, num_bits: int | tuple[int, int] = 8,
                      unsigned: bool = False, narrow_range: bool = True) -> torch.Tensor:
    """Quantize and dequantize: q / scale, in x's dtype, with a straight-through gradient.

    Note the low-level default narrow_range=True (a descriptor defaults to False). num_bits (4, 3) is FP8
    E4M3 (``fake_e4m3_quant``).

    Example:
        >>> fake_tensor_quant(torch.tensor([0.5, -1.0]), torch.tensor(1.0)).tolist()
        [0.5039370059967041, -1.0]
    """
    grid = prepare_grid(amax, num_bits, unsigned, narrow_range, inputs.device)
    return quantize_with_grid(inputs, grid, fake=True)


def fake_e4m3_quant(inputs: torch.Tensor, amax: torch.Tensor | float) -> torch.Tensor:
    """FP8 E4M3 fake quantization: scale = 448 / amax, round through torch.float8_e4m3fn (saturating at
    ±448), divide back. Straight-through gradient like ``fake_tensor_quant``."""
    return quantize_with_grid(inputs, prepare_grid(amax, (4, 3), device=inputs.device), fake=True)


# pytorch-quantization's other functions and Function classes (defined in legacy_quant.py, importable from here).
from quantrewrite.legacy_quant import (
    FakeAffineTensorQuantFunction,
    FakeTensorQuantFunction,
    LegacyFakeTensorQuantFunction,
    ScaledE4M3Function,
    TensorQuantFunction,
    fake_affine_tensor_quant,
    legacy_fake_tensor_quant,
    scaled_e4m3,
)
