"""Checks of an exported ONNX file: its Q/DQ pairs, and onnxruntime's outputs against reference outputs.

Used by ``export_onnx(verify=True)``; needs onnx and onnxruntime (the ``onnx`` extra), imported on first use.

Example:
    >>> pairs, problems = count_qdq_pairs(onnx.load("model.onnx").graph)
    >>> compare_outputs([torch_output], run_onnxruntime("model.onnx", [x.numpy()])).max_abs_diff
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantrewrite.tensor_quant import AMAX_EPSILON

__all__ = ["OutputComparison", "compare_outputs", "count_qdq_pairs", "load_checked", "run_onnxruntime"]

_INT8_TYPES = (np.int8, np.uint8)


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"verifying an ONNX export needs onnx and onnxruntime ({error}): "
                          "pip install 'quantrewrite[onnx]', or pass verify=False") from error
    return onnx, onnxruntime


def load_checked(path: str) -> tuple[Any, int]:
    """Run ``onnx.checker`` on the file (by path, so external data works) and return (model, ai.onnx opset)."""
    onnx, _ = _import_onnx()
    onnx.checker.check_model(path)
    model = onnx.load(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return model, opset


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name (through Identity nodes)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def count_qdq_pairs(graph: Any) -> tuple[int, list[str]]:
    """Count the QuantizeLinear -> DequantizeLinear pairs of an ONNX graph and list what breaks the pattern.

    A DequantizeLinear fed by an int8/uint8 constant counts as a pair (a weight pair whose QuantizeLinear an
    exporter folded). Problems: a DequantizeLinear fed by anything else, a QuantizeLinear whose output goes
    anywhere but DequantizeLinear, a zero point that is not a constant int8/uint8 zero.
    """
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs, problems = 0, []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is None or zero_point.dtype not in _INT8_TYPES or zero_point.any():
            problems.append(f"{label}: zero point is not a constant int8/uint8 zero ({zero_point!r})")
        if node.op_type == "QuantizeLinear":
            users = consumers.get(node.output[0], [])
            others = [c.op_type for c in users if c.op_type != "DequantizeLinear"]
            if others or not users:
                problems.append(f"{label}: output goes to {others or 'nothing'}, not only DequantizeLinear")
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            pairs += 1
        elif node.input[0] in constants and constants[node.input[0]].dtype in _INT8_TYPES:
            pairs += 1  # a folded weight pair
        else:
            problems.append(f"{label}: input is neither a QuantizeLinear nor an int8/uint8 constant")
    return pairs, problems


def run_onnxruntime(path: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the file once on onnxruntime's CPU provider with graph optimizations off (so the file's own
    semantics are what runs, not fused int8 kernels); inputs are matched to the graph inputs in order.

    Raises:
        ValueError: the graph does not have one input per array.
    """
    _, onnxruntime = _import_onnx()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"cannot feed the example input to onnxruntime: the file has {len(names)} inputs "
                         f"{names}, the example {len(inputs)} tensors")
    return session.run(None, dict(zip(names, inputs)))


@dataclass
class OutputComparison:
    """onnxruntime's outputs against the reference: the output closest to (or furthest past) its bound.

    Attributes:
        max_abs_diff: that output's max |onnx - reference|.
        tolerance: that output's bound.
        sqnr_db: 10 log10(sum ref^2 / sum (ref - onnx)^2) over all outputs (inf when identical).
        cosine: cosine similarity of all outputs, flattened.
        failures: one line per output over its bound or of the wrong shape or count.
    """

    max_abs_diff: float
    tolerance: float
    sqnr_db: float
    cosine: float
    failures: list[str] = field(default_factory=list)


def compare_outputs(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray], tolerance_steps: float = 4.0,
                    atol: float | None = None) -> OutputComparison:
    """Hold each output to ``max |onnx - ref| <= tolerance_steps * max |ref| / 127 + 2^-24`` (or ``<= atol``).

    The bound is ``tolerance_steps`` steps of an 8-bit grid spanning the reference output; 2^-24 (the smallest
    amax that quantizes to anything) is the floor for outputs that are all about 0.
    """
    failures: list[str] = []
    if len(reference) != len(outputs):
        failures.append(f"onnxruntime returned {len(outputs)} outputs, the reference has {len(reference)}")
    worst = (-1.0, 0.0, 0.0)
    signal = noise = dot = energy_out = 0.0
    for index, (ref, out) in enumerate(zip(reference, outputs)):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            failures.append(f"output {index}: onnxruntime shape {list(out.shape)} != reference {list(ref.shape)}")
            continue
        diff = float(np.max(np.where(ref == out, 0.0, np.abs(ref - out)), initial=0.0))  # NaN stays NaN
        if atol is not None:
            tolerance, rule = atol, ""
        else:
            tolerance = tolerance_steps * float(np.max(np.abs(ref), initial=0.0)) / 127.0 + AMAX_EPSILON
            rule = f" ({tolerance_steps:g} steps of max|output|/127 + 2^-24)"
        ratio = diff / tolerance if diff <= tolerance and tolerance > 0 else (0.0 if diff <= tolerance else math.inf)
        if ratio > worst[0]:
            worst = (ratio, diff, tolerance)
        if not diff <= tolerance:
            failures.append(f"output {index}: max |onnxruntime - PyTorch| = {diff:.3g} > tolerance {tolerance:.3g}"
                            f"{rule}")
        signal += float(np.sum(ref * ref))
        noise += float(np.sum((ref - out) ** 2))
        dot += float(np.sum(ref * out))
        energy_out += float(np.sum(out * out))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    if signal == energy_out == 0:
        cosine = 1.0
    else:
        cosine = dot / math.sqrt(signal * energy_out) if signal * energy_out > 0 else 0.0
    return OutputComparison(worst[1], worst[2], sqnr, cosine, failures)
