"""Q/DQ pairs through the torch.export-based ("dynamo") ONNX exporter, whoever calls it.

torch's ``fake_quantize_per_*_affine`` ops, which the TorchScript exporter writes as QuantizeLinear /
DequantizeLinear, trace under torch.export into ``_fake_quantize_*_cachemask*`` ops that have no kernel for
symbolic shapes (a dynamic batch fails), and torch's translation of the per-channel op puts a Clip between
the two nodes (which hides the pair from TensorRT). ``quantize_linear`` ops from ``quantized_decomposed``
trace, but torch has no ONNX translation for them: only a caller that passes its own translation table can
export them, and a user's plain ``torch.onnx.export(qmodel, x, "m.onnx")`` does not.

So while the dynamo exporter runs, quantizers write the two ONNX nodes themselves through
``torch.onnx.ops.symbolic`` (torch's public API for "this is ONNX op X"; it has a fake kernel for symbolic
shapes and its own translation): one QuantizeLinear and one DequantizeLinear with the quantizer's float32
scale and an int8/uint8 zero point 0, nothing in between. This works for ``export_onnx`` and for a direct
``torch.onnx.export`` alike, with or without ``dynamic_shapes``, and patches nothing in torch.

Example:
    >>> onnx_program = torch.onnx.export(qmodel, (x,), dynamo=True)  # QuantizeLinear/DequantizeLinear pairs
"""

from __future__ import annotations

import functools

import torch

__all__ = ["QDQ_OPSET", "dynamo_qdq", "symbolic_nodes_available"]

QDQ_OPSET = 13  # the opset version whose QuantizeLinear/DequantizeLinear (with ``axis``) these nodes follow


@functools.cache
def symbolic_nodes_available() -> bool:
    """Whether this torch has ``torch.onnx.ops.symbolic`` (2.8 and later); older ones get torch's fake-quantize
    ops, which the dynamo exporter writes as Q/DQ for static shapes only."""
    try:
        from torch.onnx.ops import symbolic  # noqa: F401
    except ImportError:
        return False
    return True


def dynamo_qdq(x: torch.Tensor, scale: torch.Tensor, axis: int | None, unsigned: bool) -> torch.Tensor:
    """The ONNX QuantizeLinear -> DequantizeLinear pair of float32 ``x`` with ``scale`` (0-d, or 1-D along
    ``axis``) and zero point 0, as symbolic nodes of the dynamo exporter (only valid during ``torch.onnx.export``).

    The int range is the zero point's type's full range: (-128, 127) for int8, (0, 255) for uint8.
    """
    dtype = torch.uint8 if unsigned else torch.int8
    zero_point = torch.zeros(scale.shape, dtype=dtype, device=x.device)
    attrs = {} if axis is None else {"axis": axis}
    quantized = torch.onnx.ops.symbolic("::QuantizeLinear", (x, scale, zero_point), attrs, dtype=dtype,
                                        shape=x.shape, version=QDQ_OPSET)
    return torch.onnx.ops.symbolic("::DequantizeLinear", (quantized, scale, zero_point), attrs,
                                   dtype=torch.float32, shape=x.shape, version=QDQ_OPSET)
