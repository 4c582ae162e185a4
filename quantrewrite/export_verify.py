"""Checks of an exported ONNX file: its Q/DQ pairs, and onnxruntime's outputs against reference outputs.

Used by ``export_onnx(verify=True)``; needs onnx and onnxruntime (the ``onnx`` extra), imported on first use.

Example:
    >>> pairs, problems = count_qdq_pairs(onnx.load("model.onnx").graph)
    >>> compare_outputs([torch_output], run_onnxruntime("model.onnx", [x.numpy()])).max_abs_diff
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quantrewrite.export_flips import FLIP_FACTOR, flip_spread
from quantrewrite.export_io import ExampleInputs, tensor_leaves, with_other_batch
from quantrewrite.export_report import ExportReport, TensorSpec
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.tensor_quant import AMAX_EPSILON

__all__ = ["OutputComparison", "compare_outputs", "count_qdq_pairs", "graph_io", "load_checked", "run_onnxruntime",
           "verify_export"]

_INT8_TYPES = (np.int8, np.uint8)


def _is_qdq_type(dtype: np.dtype) -> bool:
    """int8/uint8, or float8e4m3fn (FP8 quantizers, opset >= 19)."""
    return dtype in _INT8_TYPES or dtype.name == "float8_e4m3fn"


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
        if zero_point is None or not _is_qdq_type(zero_point.dtype) or np.any(zero_point.astype(np.float32)):
            problems.append(f"{label}: zero point is not a constant int8/uint8/float8 zero ({zero_point!r})")
        if node.op_type == "QuantizeLinear":
            users = consumers.get(node.output[0], [])
            others = [c.op_type for c in users if c.op_type != "DequantizeLinear"]
            if others or not users:
                problems.append(f"{label}: output goes to {others or 'nothing'}, not only DequantizeLinear")
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            pairs += 1
        elif node.input[0] in constants and _is_qdq_type(constants[node.input[0]].dtype):
            pairs += 1  # a folded weight pair
        else:
            problems.append(f"{label}: input is neither a QuantizeLinear nor an int8/uint8 constant")
    return pairs, problems


def run_onnxruntime(path: str, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run the file once on onnxruntime's CPU provider with graph optimizations off (so the file's own
    semantics are what runs, not fused int8 kernels).

    Args:
        path: the ONNX file.
        inputs: arrays matched to the graph inputs by name (a dict; names the graph does not take, inputs an
            exporter dropped as unused, are left out), or in order (a sequence).

    Raises:
        ValueError: an input of the graph gets no array.
    """
    _, onnxruntime = _import_onnx()
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"cannot feed the example input to onnxruntime: the file's inputs {missing} are not "
                             f"among the example's {list(inputs)}")
        return session.run(None, {name: inputs[name] for name in names})
    if len(names) != len(inputs):
        raise ValueError(f"cannot feed the example input to onnxruntime: the file has {len(names)} inputs "
                         f"{names}, the example {len(inputs)} tensors")
    return session.run(None, dict(zip(names, inputs)))


def _dims(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def graph_io(graph: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs (initializers excluded) and outputs: name, element type, shape."""
    onnx, _ = _import_onnx()
    initializers = {init.name for init in graph.initializer}

    def spec(value_info: Any) -> TensorSpec:
        elem = value_info.type.tensor_type.elem_type
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(elem)) if elem else "?"
        return TensorSpec(value_info.name, dtype, _dims(value_info))

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


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
                    atol: float | None = None, spread: Sequence[float] | None = None) -> OutputComparison:
    """Hold each output to ``max |onnx - ref| <= tolerance_steps * max |ref| / 127 + 2^-24 + 2 * spread``
    (or ``<= atol``).

    The bound is ``tolerance_steps`` steps of an 8-bit grid spanning the reference output; 2^-24 (the smallest
    amax that quantizes to anything) is the floor for outputs that are all about 0; ``spread`` (one value per
    output, see ``export_flips``) is the measured flip spread of the model on this input, 0 when not given.
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
            flips = FLIP_FACTOR * spread[index] if spread is not None and index < len(spread) else 0.0
            tolerance = tolerance_steps * float(np.max(np.abs(ref), initial=0.0)) / 127.0 + AMAX_EPSILON + flips
            rule = f" ({tolerance_steps:g} steps of max|output|/127 + 2^-24"
            rule += f" + {FLIP_FACTOR:g} x flip spread {spread[index]:.3g})" if flips else ")"
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


# ------------------------------------------------------------------------------------ the whole verification
def _arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def _feed(inputs: ExampleInputs, names: Sequence[str]) -> dict[str, np.ndarray]:
    return dict(zip(names, _arrays(inputs.tensors)))


def _output_tensors(outputs: Any) -> list[torch.Tensor]:
    return [tensor for _, tensor in tensor_leaves(outputs, "")]


def _batch_size(inputs: ExampleInputs) -> int | None:
    sizes = [t.shape[0] for t in inputs.tensors if t.dim() >= 1]
    return sizes[0] if sizes else None


def _compare_on(report: ExportReport, reference: list[np.ndarray], feed: Mapping[str, np.ndarray],
                tolerance_steps: float, atol: float | None, label: str, spread: list[float] | None
                ) -> OutputComparison | None:
    try:
        outputs = run_onnxruntime(report.path, feed)
    except ValueError as error:
        report.failures.append(f"{label}{error}")
        return None
    except Exception as error:  # noqa: BLE001 - onnxruntime's own errors (a shape the file cannot take)
        report.failures.append(f"{label}onnxruntime failed: {type(error).__name__}: {str(error).strip()[:300]}")
        return None
    comparison = compare_outputs(reference, outputs, tolerance_steps, atol, spread)
    report.failures += [f"{label}{failure}" for failure in comparison.failures]
    return comparison


def _closeness(comparison: OutputComparison) -> float:
    if comparison.max_abs_diff <= comparison.tolerance:
        return comparison.max_abs_diff / comparison.tolerance if comparison.tolerance > 0 else 0.0
    return comparison.max_abs_diff / comparison.tolerance if comparison.tolerance > 0 else math.inf


def verify_export(report: ExportReport, model: nn.Module, inputs: ExampleInputs, outputs: Any,
                  input_names: Sequence[str], distinct_calls: int, *, tolerance_steps: float = 4.0,
                  atol: float | None = None, other_batch: bool = False,
                  quantizers: Mapping[str, TensorQuantizer] | None = None) -> None:
    """Check the file ``report`` describes and fill the report's verification fields (see ``export_onnx``).

    Args:
        report: the report of the export; its inputs, outputs, qdq_pairs, comparison fields, batch_sizes,
            failures and passed are filled.
        model: the PyTorch model, in eval mode (run again at a second batch size when ``other_batch``).
        inputs: the example.
        outputs: what the model returned on it.
        input_names: the graph input names given to the exporter, one per example tensor.
        distinct_calls: quantizer calls that differ in input or grid (the least number of pairs expected).
        tolerance_steps, atol: the bound (see ``compare_outputs``).
        other_batch: the batch dimension is dynamic: also compare at twice the example's batch size.
        quantizers: the quantizers the example reaches; when given (and no ``atol``), each bound is widened by
            twice the model's measured flip spread (``export_flips``).
    """
    proto, report.opset = load_checked(report.path)
    report.inputs, report.outputs = graph_io(proto.graph)
    report.qdq_pairs, problems = count_qdq_pairs(proto.graph)
    report.failures += problems
    if not distinct_calls <= report.qdq_pairs <= report.expected_pairs:
        merged = "" if distinct_calls == report.expected_pairs else f" ({distinct_calls} distinct)"
        report.failures.append(f"expected {report.expected_pairs} Q/DQ pairs{merged} (one per quantizer call), "
                               f"found {report.qdq_pairs}")
    elif report.qdq_pairs < report.expected_pairs:
        report.warnings.append(f"the exporter merged {report.expected_pairs - report.qdq_pairs} Q/DQ pair(s) that "
                               "quantize the same tensor with the same scale")
    runs = [(inputs, _output_tensors(outputs))]
    if other_batch:
        bigger = with_other_batch(inputs)
        with torch.no_grad():
            runs.append((bigger, _output_tensors(bigger.call(model))))
    comparisons = []
    for example, reference in runs:
        batch = _batch_size(example)
        label = f"at batch size {batch}: " if other_batch else ""
        if batch is not None:
            report.batch_sizes.append(batch)
        spread = flip_spread(model, example, quantizers, reference) if quantizers and atol is None else None
        if spread is not None:
            report.flip_spread = max([report.flip_spread or 0.0, *spread])
        comparison = _compare_on(report, _arrays(reference), _feed(example, input_names), tolerance_steps, atol,
                                 label, spread)
        if comparison is not None:
            comparisons.append(comparison)
    if comparisons:  # the run closest to (or furthest past) its bound
        worst = max(comparisons, key=_closeness)
        report.max_abs_diff, report.tolerance = worst.max_abs_diff, worst.tolerance
        report.sqnr_db, report.cosine = worst.sqnr_db, worst.cosine
    report.passed = not report.failures
