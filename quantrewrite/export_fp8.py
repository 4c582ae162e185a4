"""FP8 E4M3 quantizers in ONNX: QuantizeLinear/DequantizeLinear with a float8e4m3fn zero point (opset >= 19).

While torch exports, an enabled FP8 quantizer (``num_bits=(4, 3)``) runs ``fp8_qdq``: scale = amax / 448 per
tensor (or a 1-D scale and ``axis`` per channel), zero point float8e4m3fn 0, saturating at ±448 as
QuantizeLinear does by default. PyTorch computes the same thing (x / scale rounded to E4M3, times scale), so
onnxruntime and PyTorch agree to within a rounding flip where x * (448 / amax) and x / (amax / 448) differ.

Exporters: the TorchScript exporter (``dynamo=False``, what ``export_onnx`` uses by default) writes the Q/DQ
pair through ``symbolic``; opsets below 19 have no float8 type and are refused with an ExportError. The
dynamo exporter records the forward's ops instead (Div, Clip, Cast to float8 and back, Mul): numerically the
same, valid ONNX at opset >= 19, but not a Q/DQ pair.
"""

from __future__ import annotations

import torch

__all__ = ["FP8_MIN_OPSET", "Fp8QuantDequant", "fp8_qdq"]

FP8_MIN_OPSET = 19
FP8_MAX = 448.0


class Fp8QuantDequant(torch.autograd.Function):
    """x -> E4M3(clamp(x / scale, ±448)) * scale, exported as QuantizeLinear/DequantizeLinear (float8e4m3fn)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, axis: int | None) -> torch.Tensor:
        shape = [1] * x.dim()
        if axis is not None:
            shape[axis] = -1
        s = scale.reshape(shape) if axis is not None else scale
        safe = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.clamp(x / safe, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
        return torch.where(s == 0, torch.zeros_like(q), q * safe)

    @staticmethod
    def symbolic(g, x, scale, axis):
        opset = getattr(g, "opset", FP8_MIN_OPSET)
        if opset < FP8_MIN_OPSET:
            from quantrewrite.export import ExportError

            raise ExportError(f"FP8 E4M3 quantizers (num_bits=(4, 3)) export as QuantizeLinear/DequantizeLinear "
                              f"with float8e4m3fn, which needs opset >= {FP8_MIN_OPSET}; got opset {opset}")
        shape = () if axis is None else (scale.type().sizes()[0],)
        zero_point = g.op("Constant", value_t=torch.zeros(shape, dtype=torch.float8_e4m3fn))
        kwargs = {} if axis is None else {"axis_i": axis}
        quantized = g.op("QuantizeLinear", x, scale, zero_point, **kwargs)
        return g.op("DequantizeLinear", quantized, scale, zero_point, **kwargs)


def fp8_qdq(x: torch.Tensor, amax: torch.Tensor, axis: int | None) -> torch.Tensor:
    """The export form of FP8 fake quantization of float32 ``x``: amax 0-d (per tensor) or with one value per
    index of dim ``axis``."""
    scale = amax.reshape(()) if axis is None else amax.reshape(-1)
    return Fp8QuantDequant.apply(x, scale / FP8_MAX, axis)
