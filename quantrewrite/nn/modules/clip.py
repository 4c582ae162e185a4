"""The learnable clip stage of a learn_amax quantizer (PACT style)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Clip", "ClipFunction", "clip"]


class ClipFunction(torch.autograd.Function):
    """y = clamp(x, lo, hi). grad_x passes where lo < x < hi; grad_lo = sum(grad where x <= lo) and
    grad_hi = sum(grad where x >= hi), summed in float32. Bounds that need a gradient must be scalars."""

    @staticmethod
    def forward(ctx, inputs, clip_min, clip_max):
        ctx.save_for_backward(inputs, clip_min, clip_max)
        return torch.clamp(inputs, clip_min.to(inputs.dtype), clip_max.to(inputs.dtype))

    @staticmethod
    def backward(ctx, grad):
        inputs, clip_min, clip_max = ctx.saved_tensors
        below = inputs <= clip_min.to(inputs.dtype)
        above = inputs >= clip_max.to(inputs.dtype)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        grad_inputs = torch.where(below | above, zero, grad) if ctx.needs_input_grad[0] else None
        grad_min = grad_max = None
        learned = [b for b, needs in ((clip_min, ctx.needs_input_grad[1]), (clip_max, ctx.needs_input_grad[2]))
                   if needs]
        if any(bound.numel() != 1 for bound in learned):
            raise ValueError("clip: learnable clip bounds can only be scalar, got bounds of shapes "
                             f"{list(clip_min.shape)} and {list(clip_max.shape)}")
        if ctx.needs_input_grad[1]:
            grad_min = torch.where(below, grad, zero).sum(dtype=torch.float32)
            grad_min = grad_min.reshape(clip_min.shape).to(clip_min.dtype)
        if ctx.needs_input_grad[2]:
            grad_max = torch.where(above, grad, zero).sum(dtype=torch.float32)
            grad_max = grad_max.reshape(clip_max.shape).to(clip_max.dtype)
        return grad_inputs, grad_min, grad_max


def clip(inputs: torch.Tensor, clip_min: torch.Tensor | float, clip_max: torch.Tensor | float) -> torch.Tensor:
    """Clamp with gradients to the two bounds (see ClipFunction).

    Example:
        >>> lo = torch.tensor(-1.0, requires_grad=True)
        >>> hi = torch.tensor(1.0, requires_grad=True)
        >>> clip(torch.tensor([-2.0, 0.5, 3.0]), lo, hi).sum().backward()
        >>> lo.grad.item(), hi.grad.item()
        (1.0, 1.0)
    """
    if not isinstance(clip_min, torch.Tensor):  # tensors pass as they are (no constant in an export trace)
        clip_min = torch.tensor(float(clip_min), device=inputs.device)
    if not isinstance(clip_max, torch.Tensor):
        clip_max = torch.tensor(float(clip_max), device=inputs.device)
    return ClipFunction.apply(inputs, clip_min, clip_max)


class Clip(nn.Module):
    """Clamp to [clip_value_min, clip_value_max]; each bound is a learnable scalar when asked.

    Args:
        clip_value_min: initial lower bound.
        clip_value_max: initial upper bound.
        learn_min: make the lower bound an nn.Parameter.
        learn_max: make the upper bound an nn.Parameter.
    """

    def __init__(self, clip_value_min: float, clip_value_max: float, learn_min: bool = False,
                 learn_max: bool = False):
        super().__init__()
        for name, value in (("clip_value_min", clip_value_min), ("clip_value_max", clip_value_max)):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"Clip: {name} must be scalar, got a tensor of shape {list(value.shape)}")
        if clip_value_min > clip_value_max:
            raise ValueError(f"clip_value_min {clip_value_min} > clip_value_max {clip_value_max}")
        low = torch.tensor(float(clip_value_min))
        high = torch.tensor(float(clip_value_max))
        if learn_min:
            self.clip_value_min = nn.Parameter(low)
        else:
            self.register_buffer("clip_value_min", low)
        if learn_max:
            self.clip_value_max = nn.Parameter(high)
        else:
            self.register_buffer("clip_value_max", high)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return clip(inputs, self.clip_value_min, self.clip_value_max)

    def extra_repr(self) -> str:
        return f"min={self.clip_value_min.item():.4f}, max={self.clip_value_max.item():.4f}"
