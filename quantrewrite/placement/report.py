"""Where TensorRT will run int8, read from an ONNX graph's own Q/DQ nodes (any exporter's file).

Model of TensorRT's explicit quantization used here (from its Q/DQ placement guide):

* Q/DQ moves across data-movement ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Gather,
  Split, Identity), max pooling, Pad, Resize and Concat; so "feeds" and "comes from" look through them.
* A weighted op (Conv, ConvTranspose, Gemm, MatMul) runs int8 when its activation and weight inputs both come
  from DequantizeLinear. *Coverage* is the share of weighted ops that do.
* An activation pair (QuantizeLinear -> DequantizeLinear) fuses when the DequantizeLinear feeds a weighted op,
  the shortcut input of an add whose other input is a float conv branch (the add fuses into that conv), an
  average pooling or LayerNorm whose neighbour is quantized, or another QuantizeLinear of the same scale
  (an int8 data-movement op). Otherwise it cannot fuse: the engine runs a standalone quantize and dequantize.

Findings (``PlacementIssue.kind``):

* ``no_quantizable_consumer``: a pair that feeds no op TensorRT can run int8;
* ``pad_conv``: a pair between a Pad and the Conv it feeds (the pad cannot fuse into the conv);
* ``requantize``: an int8 value that reaches another QuantizeLinear with a different scale (through the ops
  above) must be requantized;
* ``concat_scales``: a Concat whose quantized inputs have different scales (or differ from its consumer's);
* ``add_float_inputs``: an add with float inputs after an int8 conv: the conv cannot fuse the add and
  writes a float output.

The first four name a Q/DQ pair that cannot fuse (``unfusable``); the last names an add.

Example:
    >>> report = placement_report("model.onnx")
    >>> print(report.summary())
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PlacementIssue", "PlacementReport", "placement_report"]

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
COMMUTING = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split",
                       "Identity", "MaxPool", "GlobalMaxPool", "Pad", "Resize", "Upsample", "Concat"})
_FUSED_EPILOGUE = frozenset({"BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Mul", "Add", "HardSwish"})
_NEIGHBOUR_OPS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "LayerNormalization"})
PAIR_KINDS = ("no_quantizable_consumer", "pad_conv", "requantize", "concat_scales")


@dataclass
class PlacementIssue:
    """One finding: its kind (see the module docstring), the node it is about, and why."""

    kind: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.node}: {self.detail}"


@dataclass
class PlacementReport:
    """What ``placement_report`` found.

    Attributes:
        path: the ONNX file.
        weighted_ops: names of the Conv/ConvTranspose/Gemm/MatMul nodes.
        int8_ops: the weighted ops whose activation and weight inputs both come from DequantizeLinear.
        float_ops: the others, with the input that is float.
        qdq_pairs: activation Q -> DQ pairs plus weight DQs (a folded weight pair counts as one).
        issues: every finding, in graph order.
    """

    path: str
    weighted_ops: list[str] = field(default_factory=list)
    int8_ops: list[str] = field(default_factory=list)
    float_ops: dict[str, str] = field(default_factory=dict)
    qdq_pairs: int = 0
    issues: list[PlacementIssue] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        """Share of weighted ops that run int8 (1.0 for a graph without weighted ops)."""
        return len(self.int8_ops) / len(self.weighted_ops) if self.weighted_ops else 1.0

    @property
    def unfusable(self) -> list[PlacementIssue]:
        """The findings that name a Q/DQ pair TensorRT cannot fuse (one per pair)."""
        seen, out = set(), []
        for issue in self.issues:
            if issue.kind in PAIR_KINDS and issue.node not in seen:
                seen.add(issue.node)
                out.append(issue)
        return out

    def summary(self) -> str:
        """Int8 coverage, the number of pairs that cannot fuse, and each one named."""
        lines = [(f"TensorRT placement: int8 on {len(self.int8_ops)}/{len(self.weighted_ops)} weighted ops "
                  f"({100 * self.coverage:.1f}%), {self.qdq_pairs} Q/DQ pairs, {len(self.unfusable)} cannot fuse")]
        lines += [f"  cannot fuse: {issue}" for issue in self.unfusable]
        adds = [i for i in self.issues if i.kind == "add_float_inputs"]
        if adds:
            lines.append(f"  {len(adds)} add(s) with float inputs after an int8 conv (see .issues)")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  float weighted op: {name}: {why}" for name, why in self.float_ops.items()]
        lines += [f"  {issue}" for issue in self.issues if issue.kind not in PAIR_KINDS]
        return "\n".join(lines)


class _Graph:
    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.nodes = list(graph.node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    @staticmethod
    def label(node: Any) -> str:
        return node.name or node.output[0]

    def scale(self, node: Any) -> np.ndarray | None:
        value = self.constants.get(node.input[1]) if len(node.input) > 1 else None
        if value is None and len(node.input) > 1 and node.input[1] in self.producer:
            source = self.producer[node.input[1]]
            if source.op_type == "Identity":
                value = self.constants.get(source.input[0])
        return None if value is None else np.asarray(value, dtype=np.float64)

    def dq_source(self, tensor: str) -> Any | None:
        """The DequantizeLinear a tensor comes from, looking back through commuting ops (first input)."""
        seen = set()
        while tensor and tensor not in seen:
            seen.add(tensor)
            node = self.producer.get(tensor)
            if node is None:
                return None
            if node.op_type == "DequantizeLinear":
                return node
            if node.op_type not in COMMUTING or node.op_type == "Concat":
                return None
            tensor = node.input[0]
        return None

    def terminals(self, tensor: str) -> list[tuple[Any, str, list[Any]]]:
        """(consumer, the input it reads, commuting ops passed) for every non-commuting consumer downstream."""
        out, stack, seen = [], [(tensor, [])], set()
        while stack:
            name, path = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for consumer in self.consumers.get(name, []):
                if consumer.op_type in COMMUTING and consumer.input[0] == name or consumer.op_type == "Concat":
                    stack += [(o, [*path, consumer]) for o in consumer.output]
                else:
                    out.append((consumer, name, path))
        return out

    def conv_backbone(self, tensor: str) -> Any | None:
        """The Conv/ConvTranspose whose float epilogue (BN, activation, sigmoid*mul) produces ``tensor``."""
        node = self.producer.get(tensor)
        for _ in range(8):
            if node is None:
                return None
            if node.op_type in ("Conv", "ConvTranspose"):
                return node
            if node.op_type not in _FUSED_EPILOGUE or node.op_type == "Add":
                return None
            node = self.producer.get(node.input[0])
        return None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=0)


def _weighted(g: _Graph, report: PlacementReport) -> set[str]:
    int8_convs = set()
    for node in g.nodes:
        if node.op_type not in WEIGHTED:
            continue
        name = g.label(node)
        report.weighted_ops.append(name)
        inputs = [node.input[0], node.input[1]]
        float_inputs = [i for i in inputs if g.dq_source(i) is None]
        if float_inputs:
            report.float_ops[name] = f"input {float_inputs[0]} is float"
        else:
            report.int8_ops.append(name)
            int8_convs.add(name)
    return int8_convs


def _pair_consumer_ok(g: _Graph, dq: Any, consumer: Any, read: str, path: list[Any]) -> tuple[bool, str | None]:
    """(fusable, issue detail if it is a requantize) for one downstream consumer of a DQ."""
    kind = consumer.op_type
    if kind in WEIGHTED:
        return True, None
    if kind == "QuantizeLinear":
        if _same(g.scale(consumer), g.scale(dq)):
            return True, None
        ops = ", ".join(n.op_type for n in path) or "directly"
        return False, f"int8 value requantized to another scale by {g.label(consumer)} (through {ops})"
    if kind == "Add":
        other = next((i for i in consumer.input if i != read), None)
        return (other is not None and g.dq_source(other) is None and g.conv_backbone(other) is not None), None
    if kind in _NEIGHBOUR_OPS:
        quantized_out = any(t.op_type == "QuantizeLinear" or t.op_type in WEIGHTED
                            for o in consumer.output for t, _, _ in g.terminals(o))
        q = g.producer.get(dq.input[0])
        from_conv = q is not None and g.conv_backbone(q.input[0]) is not None
        return quantized_out or (kind == "LayerNormalization" and from_conv), None
    return False, None


def _pairs(g: _Graph, report: PlacementReport) -> None:
    for dq in g.nodes:
        if dq.op_type != "DequantizeLinear":
            continue
        q = g.producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            report.qdq_pairs += 1  # a folded weight pair
            continue
        report.qdq_pairs += 1
        if q.input[0] in g.constants:
            continue  # a weight pair
        name = g.label(q)
        pad = g.producer.get(q.input[0])
        consumers = g.terminals(dq.output[0])
        if pad is not None and pad.op_type == "Pad" and any(c.op_type == "Conv" for c, _, _ in consumers):
            report.issues.append(PlacementIssue("pad_conv", name, f"between {g.label(pad)} and the conv it "
                                                                  "feeds: quantize before the pad instead"))
            continue
        fusable, requantize = False, None
        for consumer, read, path in consumers:
            ok, detail = _pair_consumer_ok(g, dq, consumer, read, path)
            fusable = fusable or ok
            requantize = requantize or detail
        if requantize:
            report.issues.append(PlacementIssue("requantize", name, requantize))
        elif not fusable:
            ops = sorted({c.op_type for c, _, _ in consumers}) or ["nothing"]
            report.issues.append(PlacementIssue("no_quantizable_consumer", name,
                                                f"feeds only {', '.join(ops)}: TensorRT runs it as a standalone "
                                                "quantize/dequantize"))


def _concats(g: _Graph, report: PlacementReport) -> None:
    for node in g.nodes:
        if node.op_type != "Concat":
            continue
        scales = []
        for tensor in node.input:
            dq = g.dq_source(tensor)
            if dq is not None:
                scales.append((g.label(g.producer.get(dq.input[0]) or dq), g.scale(dq)))
            for consumer in g.consumers.get(tensor, []):  # the same tensor quantized for another consumer
                if consumer.op_type == "QuantizeLinear":
                    scales.append((g.label(consumer), g.scale(consumer)))
        outputs = [t for t, _, _ in g.terminals(node.output[0]) if t.op_type == "QuantizeLinear"]
        reference = g.scale(outputs[0]) if outputs else (scales[0][1] if scales else None)
        differ = [(n, s) for n, s in scales if not _same(s, reference)]
        if outputs and differ:
            for pair, scale in differ:
                report.issues.append(PlacementIssue(
                    "concat_scales", pair, f"feeds {g.label(node)} with scale {_fmt(scale)}, but its consumer's "
                                           f"scale is {_fmt(reference)}: TensorRT requantizes"))


def _fmt(scale: np.ndarray | None) -> str:
    if scale is None:
        return "?"
    return f"{float(scale.reshape(-1)[0]):.4g}" if scale.size == 1 else f"[{scale.size} values]"


def _float_adds(g: _Graph, report: PlacementReport, int8_ops: Iterable[str]) -> None:
    int8 = set(int8_ops)
    for node in g.nodes:
        if node.op_type != "Add" or any(i in g.constants for i in node.input):
            continue
        if any(g.dq_source(i) is not None for i in node.input):
            continue
        convs = [g.conv_backbone(i) for i in node.input]
        if any(c is not None and g.label(c) in int8 for c in convs):
            report.issues.append(PlacementIssue("add_float_inputs", g.label(node),
                                                "both inputs float after an int8 conv: quantize the shortcut "
                                                "input so the add fuses into the conv"))


def placement_report(model: str | os.PathLike[str] | Any) -> PlacementReport:
    """Read an ONNX file (or ModelProto) and report where TensorRT runs int8 (see the module docstring).

    Raises:
        ImportError: onnx is not installed (``pip install 'quantrewrite[onnx]'``).
        FileNotFoundError: no such file.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError(f"the placement report needs onnx ({error}): pip install 'quantrewrite[onnx]'") from error
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX file at {path}")
        proto = onnx.load(path)
    else:
        path, proto = "<ModelProto>", model
    g = _Graph(proto.graph)
    report = PlacementReport(path)
    int8 = _weighted(g, report)
    _pairs(g, report)
    _concats(g, report)
    _float_adds(g, report, int8)
    order = {g.label(n): i for i, n in enumerate(g.nodes)}
    report.issues.sort(key=lambda issue: order.get(issue.node, len(order)))
    return report
