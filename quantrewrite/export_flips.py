"""How far a model's outputs move when only the rounding arithmetic of its quantizers changes: the flip spread.

PyTorch's fake quantization rounds ``x * (1 / scale)``; ONNX QuantizeLinear rounds ``x / scale``. The two
differ by an ulp now and then, an element on a rounding boundary lands one step apart, and in a deep network
that step propagates and flips later roundings. A faithful export inherits exactly this kind of difference
(plus the same kind from summation order), so the export check measures it instead of guessing it: the model
is run once more with every quantizer computing ONNX's arithmetic from its own amax (forward hooks, removed
afterwards; nothing shared with the export path, so a wrong scale in the export is not copied here), and
``max |that - PyTorch|`` per output is the flip spread. ``compare_outputs`` widens each output's bound by
``FLIP_FACTOR`` times it.

Why ``FLIP_FACTOR = 2``: onnx - torch = (onnx - onnx_arithmetic) + (onnx_arithmetic - torch); the second term
is the measured spread, the first is the same process (roundings flipped by a different ulp-level difference,
here the runtimes' summation order), so by the triangle inequality a faithful file stays within about twice
the spread. A broken pair (a wrong scale, a signed tensor through a uint8 pair) moves every element it touches
by a share of its range, not only those on rounding boundaries, and stays far above it.

Example:
    >>> spread = flip_spread(qmodel, inputs, reached_quantizers, reference_outputs)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from quantrewrite.export_io import ExampleInputs, tensor_leaves
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["FLIP_FACTOR", "flip_spread", "onnx_arithmetic"]

FLIP_FACTOR = 2.0


def _plain_int8(quantizer: TensorQuantizer) -> bool:
    """A quantizer whose export is one int8/uint8 pair on its input (what ONNX's arithmetic is written for)."""
    desc = quantizer.quant_desc
    return (quantizer.amax is not None and desc.num_bits == 8 and not desc.is_fp8 and desc.fake_quant
            and not quantizer.is_clip_enabled and quantizer._buffers.get("_pre_quant_scale") is None)


def onnx_arithmetic(quantizer: TensorQuantizer, inputs: torch.Tensor) -> torch.Tensor:
    """ONNX QuantizeLinear then DequantizeLinear with the quantizer's scale: round half to even of
    ``x / scale`` in float32, saturate to (-128, 127) or (0, 255), multiply back."""
    amax = quantizer.amax.detach().to(device=inputs.device, dtype=torch.float32)
    if quantizer.scale_amax is not None:
        amax = amax * quantizer.scale_amax
    low, high = (0.0, 255.0) if quantizer.unsigned else (-128.0, 127.0)
    scale = amax / high
    x = inputs.float()
    out = torch.clamp(torch.round(x / scale), low, high) * scale
    out = torch.where(scale == 0, torch.zeros_like(out), out)  # scale 0: DequantizeLinear returns 0
    return out.to(inputs.dtype)


def _hook(quantizer: TensorQuantizer) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return output
        return onnx_arithmetic(quantizer, args[0])
    return hook


def flip_spread(model: nn.Module, inputs: ExampleInputs, quantizers: Mapping[str, TensorQuantizer],
                reference: Sequence[torch.Tensor]) -> list[float]:
    """Per output, ``max |model with ONNX's rounding arithmetic - reference|`` on ``inputs`` (see the module
    docstring); 0 for an output of another shape or type."""
    handles = [q.register_forward_hook(_hook(q)) for q in quantizers.values() if _plain_int8(q)]
    try:
        with torch.no_grad():
            outputs = [tensor for _, tensor in tensor_leaves(inputs.call(model), "")]
    finally:
        for handle in handles:
            handle.remove()
    spread = []
    for alt, ref in zip(outputs, reference):
        if alt.shape != ref.shape or not (alt.is_floating_point() and ref.is_floating_point()):
            spread.append(0.0)
            continue
        diff = (alt.double() - ref.double()).abs()
        spread.append(float(diff.max()) if diff.numel() and bool(torch.isfinite(diff).all()) else 0.0)
    return spread + [0.0] * (len(reference) - len(spread))
