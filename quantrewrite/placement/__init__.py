"""Placement: where quantizers go for a deployment target (rule sets ``tensorrt`` and ``dla``), and a
report, read from an exported ONNX graph, of where TensorRT runs int8 and where it cannot."""

from __future__ import annotations

from quantrewrite.placement.rules import RULES, TARGETS, PlacementRule

__all__ = ["RULES", "TARGETS", "PlacementRule"]
