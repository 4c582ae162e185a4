"""Q/DQ pairs through the torch.export-based ("dynamo") ONNX exporter.

torch's ``fake_quantize_per_*_affine`` ops, which the TorchScript exporter writes as QuantizeLinear /
DequantizeLinear, trace under torch.export into ``_fake_quantize_*_cachemask*`` ops that have no kernel for
symbolic shapes: a dynamic batch fails. So while that exporter runs, quantizers emit torch's
``quantized_decomposed`` quantize / dequantize ops instead (they have symbolic-shape kernels), and
``TRANSLATIONS`` (passed as the exporter's ``custom_translation_table``) writes each as one QuantizeLinear or
DequantizeLinear with the quantizer's own float32 scale and int8/uint8 zero point, nothing in between (torch's
default translation of the per-channel op puts a Clip between the two, which hides the pair from TensorRT).

Example:
    >>> torch.onnx.export(model, args, dynamo=True, custom_translation_table=translations())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["dynamo_qdq", "translations"]


def _ops() -> Any:
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


def dynamo_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int | None, low: int, high: int,
               unsigned: bool) -> torch.Tensor:
    """Quantize then dequantize ``x`` (float32) with ``scale`` (0-d, or 1-D along ``axis``) and zero point 0."""
    ops = _ops()
    dtype = torch.uint8 if unsigned else torch.int8
    if axis is None:
        zero_point = torch.zeros((), dtype=dtype, device=x.device)
        quantized = ops.quantize_per_tensor.tensor(x, scale, zero_point, low, high, dtype)
        return ops.dequantize_per_tensor.tensor(quantized, scale, zero_point, low, high, dtype)
    zero_points = torch.zeros(scale.shape, dtype=dtype, device=x.device)
    quantized = ops.quantize_per_channel(x, scale, zero_points, axis, low, high, dtype)
    return ops.dequantize_per_channel(quantized, scale, zero_points, axis, low, high, dtype)


def translations() -> dict[Callable[..., Any], Callable[..., Any]]:
    """The exporter's ``custom_translation_table`` for the ops ``dynamo_qdq`` emits (needs onnxscript)."""
    from onnxscript import opset18 as op

    def quantize_per_tensor(inputs, scale, zero_point, quant_min: int, quant_max: int, dtype: int):
        return op.QuantizeLinear(inputs, scale, zero_point)

    def dequantize_per_tensor(inputs, scale, zero_point, quant_min: int, quant_max: int, dtype: int,
                              out_dtype: int = -1):
        return op.DequantizeLinear(inputs, scale, zero_point)

    def quantize_per_channel(inputs, scales, zero_points, axis: int, quant_min: int, quant_max: int, dtype: int):
        return op.QuantizeLinear(inputs, scales, zero_points, axis=axis)

    def dequantize_per_channel(inputs, scales, zero_points, axis: int, quant_min: int, quant_max: int,
                               dtype: int, out_dtype: int = -1):
        return op.DequantizeLinear(inputs, scales, zero_points, axis=axis)

    ops = _ops()
    return {ops.quantize_per_tensor.tensor: quantize_per_tensor,
            ops.dequantize_per_tensor.tensor: dequantize_per_tensor,
            ops.quantize_per_channel.default: quantize_per_channel,
            ops.dequantize_per_channel.default: dequantize_per_channel}
