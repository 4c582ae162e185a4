"""Quantization numerics: the integer formula, its fake-quant twin, FP8 E4M3, and their autograd.

The formula (per element; ``amax`` broadcasts, e.g. shape [C, 1, 1, 1] for per-channel):

    max_bound = 2^(num_bits - 1 + unsigned) - 1
    min_bound = 0 if unsigned else (-max_bound if narrow_range else -max_bound - 1)
    scale     = max_bound / amax                  (float32; 0 where amax <= 2^-24)
    q         = clamp(round_half_to_even(x * scale), min_bound, max_bound)
    fake      = q / scale                         (0 where scale == 0)

fp16/bf16 inputs are computed in float32 and returned in their own dtype. The backward pass is the
straight-through estimator: the gradient passes where |x| <= amax (inclusive) and is 0 elsewhere.

On CPU float32 a fused numba kernel does the whole formula in one memory pass with the same float32
operations, so its results are bit-identical to the eager torch path used elsewhere (CUDA, other dtypes,
or ``QUANTREWRITE_EAGER=1``).

Example:
    >>> x = torch.tensor([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5])
    >>> fake_tensor_quant(x, torch.tensor(127.0)).tolist()
    [-8.0, -8.0, -2.0, -0.0, 0.0, 2.0, 2.0]
"""

from __future__ import annotations

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
    "QuantDescriptor",
    "ScaledQuantDescriptor",
    "QuantDescriptorError",
    "fake_e4m3_quant",
    "fake_tensor_quant",
    "quant_bounds",
    "tensor_quant",
]

AMAX_EPSILON = 2.0**-24
FP8_E4M3_MAX = 448.0


def quant_bounds(num_bits: int, unsigned: bool = False, narrow_range: bool = True) -> tuple[float, float]:
    """Return (min_bound, max_bound) of the integer grid, e.g. (-128, 127) for 8-bit full range."""
    max_bound = float(2 ** (num_bits - 1 + int(unsigned)) - 1)
    if unsigned:
        min_bound = 0.0
    elif narrow_range:
        min_bound = -max_bound
    else:
        min_bound = -max_bound - 1.0
    return min_bound, max_bound


def _amax_tensor(amax: torch.Tensor | float, inputs: torch.Tensor) -> torch.Tensor:
    amax = torch.as_tensor(amax, device=inputs.device).detach().float()
    if amax.numel() == 0:
        raise ValueError("amax is empty")
    if torch.any(amax < 0):
        raise ValueError(f"amax must be >= 0, got min {amax.min().item():g}")
    try:
        torch.broadcast_shapes(amax.shape, inputs.shape)
    except RuntimeError:
        raise ValueError(f"amax of shape {list(amax.shape)} does not broadcast to input of shape "
                         f"{list(inputs.shape)}") from None
    return amax


def _scale(amax: torch.Tensor, numerator: float) -> torch.Tensor:
    """numerator / amax in float32, with 0 where amax <= 2^-24 (those elements quantize to 0)."""
    scale = numerator / amax
    tiny = amax <= AMAX_EPSILON
    if torch.any(tiny):
        scale = torch.where(tiny, torch.zeros_like(scale), scale)
    return scale


def _channel_view(shape: torch.Size, amax_shape: torch.Size) -> tuple[int, int, int] | None:
    """(outer, channels, inner) when amax varies along one contiguous block of dims, else None."""
    ndim = len(shape)
    padded = (1,) * (ndim - len(amax_shape)) + tuple(amax_shape)
    varying = [d for d, size in enumerate(padded) if size != 1]
    if not varying:
        return (1, 1, max(1, shape.numel()))
    first, last = varying[0], varying[-1]
    if any(padded[d] != shape[d] for d in range(first, last + 1)):
        return None
    outer = shape[:first].numel()
    channels = shape[first:last + 1].numel()
    inner = shape[last + 1:].numel()
    return outer, channels, inner


def _use_kernel(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.numel() > 0 and _kernels.fused_kernels_available()


def _check_unsigned_input(inputs: torch.Tensor, unsigned: bool) -> None:
    if unsigned and inputs.numel() > 0 and inputs.min() < 0:
        raise ValueError("negative values encountered in unsigned quantization "
                         f"(min {inputs.min().item():g}); use a signed quantizer for this tensor")


def _grid(inputs: torch.Tensor, amax: torch.Tensor, num_bits: int, unsigned: bool, narrow_range: bool,
          fake: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared body of tensor_quant and fake_tensor_quant: returns (output in input dtype, scale)."""
    _check_unsigned_input(inputs, unsigned)
    min_bound, max_bound = quant_bounds(num_bits, unsigned, narrow_range)
    scale = _scale(amax, max_bound)
    x32 = inputs.float()
    view = _channel_view(x32.shape, scale.shape) if _use_kernel(x32) else None
    if view is not None:
        x32 = x32.contiguous()
        out = torch.empty_like(x32)
        kernel = _kernels.fake_quant_into if fake else _kernels.quant_into
        kernel(x32.numpy().reshape(view), out.numpy().reshape(view), scale.reshape(-1).contiguous().numpy(),
               min_bound, max_bound)
    else:
        out = torch.clamp(torch.round(x32 * scale), min_bound, max_bound)
        if fake:
            out = out / torch.where(scale == 0, torch.ones_like(scale), scale)
    return out.to(inputs.dtype), scale


def _ste_grad(inputs: torch.Tensor, amax: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """grad where |inputs| <= amax (inclusive), 0 elsewhere."""
    if inputs.dtype == torch.float32 and grad.dtype == torch.float32 and _use_kernel(inputs):
        view = _channel_view(inputs.shape, amax.shape)
        if view is not None:
            x = inputs.contiguous()
            g = grad.contiguous()
            out = torch.empty_like(g)
            _kernels.ste_grad_into(x.numpy().reshape(view), g.numpy().reshape(view), out.numpy().reshape(view),
                                   amax.reshape(-1).contiguous().numpy())
            return out
    return torch.where(inputs.abs() <= amax, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


class _FakeTensorQuantFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, amax, num_bits, unsigned, narrow_range):
        ctx.save_for_backward(inputs, amax)
        out, _ = _grid(inputs.detach(), amax, num_bits, unsigned, narrow_range, fake=True)
        return out

    @staticmethod
    def backward(ctx, grad):
        inputs, amax = ctx.saved_tensors
        return _ste_grad(inputs.detach(), amax, grad), None, None, None, None


class _TensorQuantFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, amax, num_bits, unsigned, narrow_range):
        ctx.save_for_backward(inputs, amax)
        q, scale = _grid(inputs.detach(), amax, num_bits, unsigned, narrow_range, fake=False)
        ctx.mark_non_differentiable(scale)
        return q, scale

    @staticmethod
    def backward(ctx, grad, grad_scale):
        inputs, amax = ctx.saved_tensors
        return _ste_grad(inputs.detach(), amax, grad), None, None, None, None


class _FakeE4M3Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, amax):
        ctx.save_for_backward(inputs, amax)
        scale = _scale(amax, FP8_E4M3_MAX)
        x32 = inputs.detach().float() * scale
        y = torch.clamp(x32, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()
        y = y / torch.where(scale == 0, torch.ones_like(scale), scale)
        return y.to(inputs.dtype)

    @staticmethod
    def backward(ctx, grad):
        inputs, amax = ctx.saved_tensors
        return _ste_grad(inputs.detach(), amax, grad), None


def _check_num_bits(num_bits: int) -> None:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 0:
        raise ValueError(f"num_bits: expected an int >= 0, got {num_bits!r}")


def tensor_quant(inputs: torch.Tensor, amax: torch.Tensor | float, num_bits: int = 8, unsigned: bool = False,
                 narrow_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize to the integer grid. Returns (q, scale) with q = clamp(round(x * scale)) in x's dtype.

    Note the low-level default narrow_range=True (a descriptor defaults to False).

    Example:
        >>> q, scale = tensor_quant(torch.tensor([0.5, -1.0]), torch.tensor(1.0))
        >>> q.tolist(), scale.item()
        ([64.0, -127.0], 127.0)
    """
    _check_num_bits(num_bits)
    return _TensorQuantFunction.apply(inputs, _amax_tensor(amax, inputs), num_bits, unsigned, narrow_range)


def fake_tensor_quant(inputs: torch.Tensor, amax: torch.Tensor | float, num_bits: int = 8,
                      unsigned: bool = False, narrow_range: bool = True) -> torch.Tensor:
    """Quantize and dequantize: q / scale, in x's dtype, with a straight-through gradient.

    Note the low-level default narrow_range=True (a descriptor defaults to False).
    """
    _check_num_bits(num_bits)
    return _FakeTensorQuantFunction.apply(inputs, _amax_tensor(amax, inputs), num_bits, unsigned, narrow_range)


def fake_e4m3_quant(inputs: torch.Tensor, amax: torch.Tensor | float) -> torch.Tensor:
    """FP8 E4M3 fake quantization: scale = 448 / amax, round through torch.float8_e4m3fn, divide back."""
    return _FakeE4M3Function.apply(inputs, _amax_tensor(amax, inputs))
