"""What ``export_onnx`` wrote and how it was checked: the ExportReport.

Example:
    >>> report = export_onnx(qmodel, x, "model.onnx", dynamic_axes="batch")
    >>> print(report)
    ONNX export model.onnx (opset 17, torchscript exporter)
      inputs: x float32 [batch, 3, 32, 32]
      outputs: output float32 [batch, 10]
      ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExportReport", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output of the file: its name, element type and shape (a str for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote, and how onnxruntime's outputs compare with the PyTorch model's.

    Attributes:
        path: the ONNX file.
        opset: the file's ai.onnx opset.
        exporter: the exporter that wrote the file: "torchscript" or "dynamo".
        expected_pairs: quantizer calls in the example forward: each call of an enabled quantizer emits a pair.
        quantizers: the quantizers exported (enabled, quantizing, reached by the example forward).
        not_reached: enabled quantizers the example forward never called: the file has no pair for them.
        skipped: disabled quantizers and quantizers with quantization off: no pair, by design.
        inputs: the file's graph inputs (name, type, shape); empty when onnx is not installed.
        outputs: the file's graph outputs.
        qdq_pairs: QuantizeLinear -> DequantizeLinear pairs in the file (a DequantizeLinear fed by an int8/uint8
            constant, i.e. a weight pair the exporter folded, counts as one); None without verification.
        max_abs_diff: max |onnxruntime - PyTorch| (of the output closest to its bound); None without verification.
        tolerance: the bound max_abs_diff is held to (see ``export_onnx``).
        sqnr_db: 10 log10(sum ref^2 / sum (ref - onnx)^2) over all outputs; inf when they are identical.
        cosine: cosine similarity of all outputs, flattened.
        batch_sizes: the batch sizes onnxruntime was checked at (two with a dynamic batch).
        flip_spread: max |PyTorch with ONNX's rounding arithmetic - PyTorch| over the outputs: how far rounding
            flips alone move this model's outputs on the example (``export_flips``); the bound includes twice it.
        passed: True when every check passed; None when verify=False.
        failures: what failed.
        warnings: what is worth knowing but did not fail the export (a TorchScript failure retried with dynamo
            is one).
        groups: shared-range group -> its exported quantizers (one scale each group).
        placement: where TensorRT runs int8 in the file and which Q/DQ pairs cannot fuse (a
            ``quantrewrite.placement.report.PlacementReport``; None without verification).
    """

    path: str
    opset: int
    exporter: str
    expected_pairs: int
    quantizers: list[str]
    not_reached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    qdq_pairs: int | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    batch_sizes: list[int] = field(default_factory=list)
    flip_spread: float | None = None
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    placement: Any = None

    def __str__(self) -> str:
        lines = [f"ONNX export {self.path} (opset {self.opset}, {self.exporter} exporter)"]
        if self.inputs or self.outputs:
            lines.append(f"  inputs: {'; '.join(str(spec) for spec in self.inputs) or 'none'}")
            lines.append(f"  outputs: {'; '.join(str(spec) for spec in self.outputs) or 'none'}")
        found = "not counted" if self.qdq_pairs is None else str(self.qdq_pairs)
        lines.append(f"  Q/DQ pairs: {found} (expected {self.expected_pairs}: {len(self.quantizers)} quantizers "
                     f"exported, {len(self.skipped)} disabled or not quantizing)")
        if self.not_reached:
            lines.append(f"  not reached by the example forward (no pair): {', '.join(self.not_reached)}")
        if self.groups:
            lines.append(f"  shared-range groups: {len(self.groups)} ("
                         + "; ".join(f"{g}: {len(m)} quantizers" for g, m in self.groups.items()) + ")")
        if self.max_abs_diff is not None:
            at = f" at batch size {' and '.join(map(str, self.batch_sizes))}" if self.batch_sizes else ""
            lines.append(f"  onnxruntime vs PyTorch{at}: max |diff| {self.max_abs_diff:.3g} (tolerance "
                         f"{self.tolerance:.3g}), SQNR {self.sqnr_db:.1f} dB, cosine {self.cosine:.6f}")
            if self.flip_spread:
                lines.append(f"  flip spread (PyTorch with ONNX's rounding x/scale vs PyTorch): {self.flip_spread:.3g}")
        if self.placement is not None:
            lines += [f"  {line}" for line in self.placement.summary().splitlines()]
        lines += [f"  warning: {text}" for text in self.warnings]
        lines += [f"  FAILED: {text}" for text in self.failures]
        verdict = {None: "not verified", True: "passed", False: "FAILED"}[self.passed]
        lines.append(f"  verification: {verdict}")
        return "\n".join(lines)
