"""ONNX export with standard QuantizeLinear/DequantizeLinear pairs, checked against the PyTorch model.

While ``torch.onnx`` exports, every enabled TensorQuantizer runs ``quantize_for_export`` instead of its
fake-quant kernel: ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``
with scale = amax / max_bound and zero point 0, over (-128, 127) (int8) or (0, 255) (uint8, unsigned
quantizers). The exporters turn those into one QuantizeLinear -> DequantizeLinear pair each (per-channel:
a 1-D scale of C values and ``axis``). Disabled quantizers, and quantizers with quantization off, emit nothing.

Exporter: torch's TorchScript exporter (``dynamo=False``), because on torch 2.4-2.13 it writes opset 13-17
natively (the torch.export-based one implements opset >= 18 only and converts down), keeps QuantizeLinear on
float weights with constant folding on (TensorRT wants Q/DQ on weights; the scales still fold into
initializers), needs no onnxscript, and records whatever Python control flow the forward takes. Its
DeprecationWarnings (and only those) are silenced. ``exporter="dynamo"`` uses the torch.export-based exporter
instead (onnxscript needed; the model must be torch.export-able); the same checks apply to both.

Example:
    >>> qmodel = quantize_model(model, "int8_default")
    >>> calibrate(qmodel, batches, method="percentile")
    >>> report = export_onnx(qmodel, torch.randn(1, 3, 224, 224), "model.onnx")
    >>> print(report)
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quantrewrite.export_verify import compare_outputs, count_qdq_pairs, load_checked, run_onnxruntime
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.tensor_quant import AMAX_EPSILON, quant_bounds

__all__ = ["ExportError", "ExportReport", "export_onnx", "export_problems", "quantize_for_export"]

logger = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
_TORCHSCRIPT_DEPRECATIONS = (r"You are using the legacy TorchScript-based ONNX export",
                             r"The feature will be removed")


class ExportError(ValueError):
    """The model cannot be exported faithfully, or the exported file does not match the PyTorch model.

    Attributes:
        problems: quantizer name -> what stops it from exporting (empty for verification failures).
        report: the ExportReport of a verification that failed (None when nothing was written).
    """

    def __init__(self, message: str, problems: Mapping[str, list[str]] | None = None,
                 report: ExportReport | None = None):
        super().__init__(message)
        self.problems = dict(problems or {})
        self.report = report


# ----------------------------------------------------------------------------------------- the quantizer side
def _emits(quantizer: TensorQuantizer) -> bool:
    return quantizer.is_enabled and quantizer.is_quant_enabled


def _quantizer_problems(quantizer: TensorQuantizer) -> list[str]:
    """Why this (enabled, quantizing) quantizer cannot become a standard int8/uint8 Q/DQ pair."""
    problems = []
    desc = quantizer.quant_desc
    if desc.is_fp8:
        problems.append("num_bits=(4, 3) (FP8 E4M3) has no int8 Q/DQ form: disable it or use num_bits: 8")
    elif desc.num_bits != 8:
        problems.append(f"num_bits={desc.num_bits}: ONNX Q/DQ up to opset 20 is 8-bit only: disable it or use "
                        "num_bits: 8")
    if desc.narrow_range and not desc.unsigned:
        problems.append("narrow_range=True: torch's exporters accept only the full range (-128, 127): set "
                        "narrow_range: false")
    if not desc.fake_quant:
        problems.append("fake_quant=False (integer outputs) has no Q/DQ form: use a fake-quant descriptor")
    if desc.axis is not None and len(desc.axis) > 1:
        problems.append(f"axis={desc.axis}: ONNX per-axis scales follow one axis only")
    clip_amax = quantizer.is_clip_enabled and hasattr(quantizer, "clip")
    if quantizer.amax is None and not clip_amax:
        problems.append("amax is None (uncalibrated, or a dynamic range): calibrate first or disable it")
    if quantizer.is_calib_enabled:
        problems.append("calibration is still on: finish calibration (load_calib_amax) first")
    return problems


def export_problems(model: nn.Module) -> dict[str, list[str]]:
    """Every enabled quantizer of ``model`` that cannot be exported, with the reasons; empty when all can."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and _emits(module):
            problems = _quantizer_problems(module)
            if problems:
                found[name or "<root>"] = problems
    return found


def _problems_message(problems: Mapping[str, list[str]]) -> str:
    lines = [f"cannot export {len(problems)} quantizer(s) as ONNX QuantizeLinear/DequantizeLinear:"]
    lines += [f"  {name}: {reason}" for name, reasons in problems.items() for reason in reasons]
    return "\n".join(lines)


def quantize_for_export(quantizer: TensorQuantizer, inputs: torch.Tensor) -> torch.Tensor:
    """The quantizer's fake quantization written with torch's fake-quantize ops, which the ONNX exporters turn
    into QuantizeLinear/DequantizeLinear: scale = amax / max_bound (float32 true division), zero point 0,
    range (-128, 127) or (0, 255). fp16/bf16 inputs are quantized in float32 (Cast nodes around the
    pair: opset < 19 Q/DQ take float32 only), as in PyTorch.

    Called by ``TensorQuantizer`` while ``torch.onnx.is_in_onnx_export()``; raises ExportError for a quantizer
    that has no such form (see ``export_problems``). Sizes are never read here (no tracer warnings): the
    per-tensor / per-channel choice comes from the descriptor and amax's rank.

    amax = 0 gives scale 0: DequantizeLinear then returns 0 whatever x is, as PyTorch does. For
    0 < amax <= 2^-24, where PyTorch returns 0, the exported pair returns at most 128/127 * amax (< 6e-8)
    in magnitude. ``export_onnx`` warns about both (TensorRT wants positive scales).
    """
    problems = _quantizer_problems(quantizer)
    if problems:  # torch.onnx.export called directly: the quantizer's name is unknown here
        label = f"TensorQuantizer({quantizer.quant_desc})"  # not extra_repr: it reads amax (tracer warnings)
        raise ExportError(_problems_message({label: problems}), {label: problems})
    if quantizer.is_clip_enabled and hasattr(quantizer, "clip"):
        low, high = quantizer.clip.clip_value_min, quantizer.clip.clip_value_max
        if torch.jit.is_tracing():  # the TorchScript exporter does not fold Max: read the bounds as constants
            low, high = low.data, high.data
        amax = torch.maximum(-low, high).detach()
    else:
        amax = quantizer.amax.detach()
    amax = amax.to(device=inputs.device, dtype=torch.float32)
    if quantizer.scale_amax is not None:
        amax = amax * quantizer.scale_amax
    min_bound, max_bound = quant_bounds(8, quantizer.unsigned, narrow_range=False)
    scale = amax / max_bound
    x = inputs if inputs.dtype == torch.float32 else inputs.float()
    if amax.dim() == 0 or quantizer.axis is None:
        scale = scale if scale.dim() == 0 else scale.reshape(())
        zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, int(min_bound), int(max_bound))
    else:
        axis = quantizer.axis[0] % x.dim()
        scale = scale.reshape(-1)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        out = torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, int(min_bound), int(max_bound))
    return out if out.dtype == inputs.dtype else out.to(inputs.dtype)


# ------------------------------------------------------------------------------------------------ the report
@dataclass
class ExportReport:
    """What ``export_onnx`` wrote, and how onnxruntime's outputs compare with the PyTorch model's.

    Attributes:
        path: the ONNX file.
        opset: the file's ai.onnx opset.
        exporter: "torchscript" or "dynamo".
        qdq_pairs: QuantizeLinear -> DequantizeLinear pairs in the file (a DequantizeLinear fed by an int8/uint8
            constant, i.e. a weight pair the exporter folded, counts as one); None without verification.
        expected_pairs: quantizer calls in the example forward: each call of an enabled quantizer emits a pair.
        quantizers: the quantizers exported (enabled, quantizing, reached by the example forward).
        not_reached: enabled quantizers the example forward never called: the file has no pair for them.
        skipped: disabled quantizers and quantizers with quantization off: no pair, by design.
        max_abs_diff: max |onnxruntime - PyTorch| (of the output closest to its bound); None without verification.
        tolerance: the bound max_abs_diff is held to (see ``export_onnx``).
        sqnr_db: 10 log10(sum ref^2 / sum (ref - onnx)^2) over all outputs; inf when they are identical.
        cosine: cosine similarity of all outputs, flattened.
        passed: True when every check passed; None when verify=False.
        failures: what failed.
        warnings: what is worth knowing but did not fail the export.
        groups: shared-range group -> its exported quantizers (one scale each group).
    """

    path: str
    opset: int
    exporter: str
    expected_pairs: int
    quantizers: list[str]
    not_reached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    qdq_pairs: int | None = None
    max_abs_diff: float | None = None
    tolerance: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"ONNX export {self.path} (opset {self.opset}, {self.exporter} exporter)"]
        found = "not counted" if self.qdq_pairs is None else str(self.qdq_pairs)
        lines.append(f"  Q/DQ pairs: {found} (expected {self.expected_pairs}: {len(self.quantizers)} quantizers "
                     f"exported, {len(self.skipped)} disabled or not quantizing)")
        if self.not_reached:
            lines.append(f"  not reached by the example forward (no pair): {', '.join(self.not_reached)}")
        if self.groups:
            lines.append(f"  shared-range groups: {len(self.groups)} ("
                         + "; ".join(f"{g}: {len(m)} quantizers" for g, m in self.groups.items()) + ")")
        if self.max_abs_diff is not None:
            lines.append(f"  onnxruntime vs PyTorch: max |diff| {self.max_abs_diff:.3g} (tolerance "
                         f"{self.tolerance:.3g}), SQNR {self.sqnr_db:.1f} dB, cosine {self.cosine:.6f}")
        lines += [f"  warning: {text}" for text in self.warnings]
        lines += [f"  FAILED: {text}" for text in self.failures]
        verdict = {None: "not verified", True: "passed", False: "FAILED"}[self.passed]
        lines.append(f"  verification: {verdict}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the PyTorch run
def _flatten(value: Any) -> list[Any]:
    """The leaves of nested tuples/lists/dicts, in order (what the exporters flatten outputs to)."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, Mapping):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    return [value]


@dataclass
class _ForwardRecord:
    calls: dict[str, int]
    distinct: int  # calls that differ in input tensor or grid (identical ones may be merged by an exporter)
    outputs: list[torch.Tensor]


def _amax_key(quantizer: TensorQuantizer) -> tuple[Any, ...]:
    amax = quantizer.amax
    if quantizer.is_clip_enabled and hasattr(quantizer, "clip"):
        amax = torch.maximum(-quantizer.clip.clip_value_min, quantizer.clip.clip_value_max)
    values = () if amax is None else tuple(amax.detach().reshape(-1).tolist())
    return quantizer.unsigned, quantizer.scale_amax, values


def _record_forward(model: nn.Module, args: tuple[Any, ...], quantizers: Mapping[str, TensorQuantizer]
                    ) -> _ForwardRecord:
    """Run the PyTorch model once on the example input, counting each quantizer's calls (pre-hooks removed
    afterwards)."""
    calls = dict.fromkeys(quantizers, 0)
    seen: set[tuple[Any, ...]] = set()
    alive: list[Any] = []  # keeps the inputs alive so their ids stay unique during the run

    def hook_for(name: str, quantizer: TensorQuantizer):
        def hook(module: nn.Module, hook_args: tuple[Any, ...]) -> None:
            calls[name] += 1
            alive.append(hook_args[0] if hook_args else None)
            seen.add((id(alive[-1]), *_amax_key(quantizer)))
        return hook

    handles = [q.register_forward_pre_hook(hook_for(n, q)) for n, q in quantizers.items()]
    try:
        with torch.no_grad():
            outputs = model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return _ForwardRecord(calls, len(seen), _flatten(outputs))


# ----------------------------------------------------------------------------------------------- the export
def _run_exporter(model: nn.Module, args: tuple[Any, ...], path: str, exporter: str, opset: int,
                  input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                  dynamic_axes: Mapping[str, Any] | None) -> list[str]:
    """Export, silencing only the TorchScript exporter's own DeprecationWarnings; every other warning is
    re-emitted once (not once per quantizer call) and returned."""
    options: dict[str, Any] = {"opset_version": opset, "dynamic_axes": dynamic_axes,
                               "input_names": list(input_names) if input_names else None,
                               "output_names": list(output_names) if output_names else None}
    if exporter == "torchscript":
        # Constant folding on: scales (amax / max_bound) become initializers; the TorchScript exporter does
        # not fold QuantizeLinear, so weights keep their float initializer and their Q/DQ pair (TensorRT wants
        # Q/DQ on weights). A folded weight pair (int8 initializer + DequantizeLinear) is still counted.
        options.update(dynamo=False, do_constant_folding=True)
    else:
        options.update(dynamo=True, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in _TORCHSCRIPT_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(model, args, path, **options)
    texts, seen = [], set()
    for item in caught:
        key = (item.category, str(item.message))
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno, source=item.source)
        if issubclass(item.category, torch.jit.TracerWarning):
            texts.append(f"{item.category.__name__} at {os.path.basename(item.filename)}:{item.lineno}: "
                         f"{str(item.message).split('.')[0]}")
    return texts


def _exported_groups(emitting: Mapping[str, TensorQuantizer], reached: list[str]) -> dict[str, list[str]]:
    """Shared-range group -> its exported members; a group whose members' amax differ is logged."""
    groups: dict[str, list[str]] = {}
    for name in reached:
        group = emitting[name].share_group
        if group is not None:
            groups.setdefault(group, []).append(name)
    for group, names in groups.items():
        values = {float(emitting[n].amax.max()) for n in names if emitting[n].amax is not None}
        if len(values) > 1:
            logger.warning("shared-range group %s exports different scales (amax %s): TensorRT requantizes "
                           "between them", group, sorted(values))
    return groups


def _tiny_amax(quantizer: TensorQuantizer) -> bool:
    amax = quantizer.amax
    return amax is not None and not quantizer.is_clip_enabled and bool((amax <= AMAX_EPSILON).any())


def export_onnx(model: nn.Module, args: torch.Tensor | tuple[Any, ...], path: str | os.PathLike, *,
                opset: int = 17, input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None, dynamic_axes: Mapping[str, Any] | None = None,
                verify: bool = True, tolerance_steps: float = 4.0, atol: float | None = None,
                exporter: str = "torchscript") -> ExportReport:
    """Export a fake-quantized model to ONNX with standard QuantizeLinear/DequantizeLinear pairs, and check it.

    Each call of an enabled quantizer becomes one pair: scale = amax / max_bound (float32), zero point 0 of
    type int8 (uint8 for unsigned quantizers), per-channel scales as a 1-D tensor with ``axis``. The model is
    exported in eval mode under ``torch.no_grad()``; every module's train/eval mode is restored afterwards and
    nothing in the model changes.

    Before exporting, every enabled quantizer the example forward reaches is checked; an ExportError lists all
    that cannot be written as int8/uint8 Q/DQ without changing numerics (uncalibrated or dynamic amax,
    narrow_range, num_bits other than 8, FP8, fake_quant=False, several axes, calibration still on). A
    learn_amax clip stage exports as a Clip node before its pair (the same numbers).

    Verification (``verify=True``, needs onnx and onnxruntime): the file passes ``onnx.checker``; it holds one
    Q/DQ pair per quantizer call of the example forward (an exporter may merge two calls that quantize the same
    tensor with the same scale); and onnxruntime (CPU, graph optimizations off, so the file's own semantics
    are checked) agrees with the PyTorch model on ``args``:

        max |onnx - torch| <= tolerance_steps * max |torch| / 127 + 2^-24    (per output; <= atol when given)

    i.e. within ``tolerance_steps`` (default 4, about 3% of max |output|) steps of an 8-bit grid spanning the
    output; 2^-24, the smallest amax PyTorch quantizes, is the floor for outputs that are all about 0.

    Why not exact: PyTorch rounds x * (max_bound / amax), ONNX rounds x / (amax / max_bound), and the float
    convolutions and matmuls of the two runtimes sum in different orders. So an element within an ulp or so of
    a rounding boundary lands one step apart in the two, and the difference propagates (and can flip later
    roundings). Measured on the random-init reference models: up to 0.7 steps (ResidualCNN, 64-sample batch),
    up to 3.2 steps (6-block TransformerStack, 64 samples; up to 2 steps with 1-8 samples). Gross errors are far
    above the bound (a signed tensor through a uint8 pair: 19-98 steps; a 10x scale: 5-41 steps); subtle ones
    are not caught by any bound (a scale of amax/128: 0.6-2.2 steps) and are what the exact tests of the scales
    are for. SQNR and cosine similarity are reported too: rounding flips keep the SQNR above ~35 dB and the
    cosine near 1; when only the bound fails with such values, raise ``tolerance_steps`` (deep models, big
    example batches).

    Args:
        model: the quantized model (from ``quantize_model``), calibrated.
        args: the example input: a tensor or a tuple of positional arguments.
        path: where to write the .onnx file.
        opset: the ai.onnx opset (>= 13: per-axis Q/DQ). The dynamo exporter writes >= 18.
        input_names, output_names, dynamic_axes: passed to ``torch.onnx.export``.
        verify: check the file (above); raises ExportError when a check fails.
        tolerance_steps: the bound on max |diff|, in steps of an 8-bit grid spanning each output.
        atol: an absolute bound instead.
        exporter: "torchscript" (default; see the module docstring) or "dynamo".

    Returns:
        An ExportReport (its ``passed`` is None when verify=False).

    Raises:
        ExportError: a quantizer cannot be exported (``problems`` names them all), or verification failed
            (``report`` tells how).

    Example:
        >>> report = export_onnx(qmodel, torch.randn(1, 3, 32, 32), "model.onnx")
        >>> report.qdq_pairs, report.max_abs_diff <= report.tolerance
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {list(EXPORTERS)}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset: expected an int >= 13 (per-axis QuantizeLinear), got {opset!r}")
    if not tolerance_steps >= 0 or (atol is not None and not atol >= 0):
        raise ValueError(f"tolerance_steps and atol must be >= 0, got {tolerance_steps!r} and {atol!r}")
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    path = os.fspath(path)
    quantizers = {name or "<root>": m for name, m in model.named_modules() if isinstance(m, TensorQuantizer)}
    emitting = {name: q for name, q in quantizers.items() if _emits(q)}
    calibrating = {name: ["calibration is still on: finish calibration (load_calib_amax) first"]
                   for name, q in quantizers.items() if q.is_enabled and q.is_calib_enabled}
    if calibrating:  # before any forward: it would feed the example input to the calibrators
        raise ExportError(_problems_message(calibrating), calibrating)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        record = _record_forward(model, args, emitting)
        reached = [name for name, count in record.calls.items() if count]
        problems = {name: found for name in reached if (found := _quantizer_problems(emitting[name]))}
        if problems:
            raise ExportError(_problems_message(problems), problems)
        notes = [f"{name} was not reached by the example forward and would not export: {'; '.join(found)}"
                 for name, q in emitting.items() if name not in reached and (found := _quantizer_problems(q))]
        tiny = [name for name in reached if _tiny_amax(emitting[name])]
        if tiny:
            notes.append(f"amax <= 2^-24 in {', '.join(tiny)}: exported with scale <= 2^-24/127 (0 for amax 0); "
                         "TensorRT wants positive scales")
        notes += _run_exporter(model, args, path, exporter, opset, input_names, output_names, dynamic_axes)
    finally:
        for module, training in modes.items():
            module.training = training
    report = ExportReport(path=path, opset=opset, exporter=exporter, expected_pairs=sum(record.calls.values()),
                          quantizers=reached, not_reached=[n for n in emitting if n not in reached],
                          skipped=[n for n in quantizers if n not in emitting], warnings=notes,
                          groups=_exported_groups(emitting, reached))
    if verify:
        _verify(report, args, record, tolerance_steps, atol)
    logger.info("%s", report)
    if report.passed is False:
        hint = ("\n(only the bound failed, with a high SQNR and a cosine near 1: rounding-boundary flips, see "
                "export_onnx's docstring; raise tolerance_steps)" if _only_tolerance_failed(report) else "")
        raise ExportError(f"the exported ONNX model failed verification:\n{report}{hint}", report=report)
    return report


# ------------------------------------------------------------------------------------------- verification
def _only_tolerance_failed(report: ExportReport) -> bool:
    return (all("> tolerance" in failure for failure in report.failures) and report.sqnr_db is not None
            and report.sqnr_db > 30 and report.cosine > 0.999)


def _verify(report: ExportReport, args: tuple[Any, ...], record: _ForwardRecord, tolerance_steps: float,
            atol: float | None) -> None:
    """Fill the verification fields of ``report`` (see export_onnx)."""
    proto, report.opset = load_checked(report.path)
    report.qdq_pairs, problems = count_qdq_pairs(proto.graph)
    report.failures += problems
    if not record.distinct <= report.qdq_pairs <= report.expected_pairs:
        merged = "" if record.distinct == report.expected_pairs else f" ({record.distinct} distinct)"
        report.failures.append(f"expected {report.expected_pairs} Q/DQ pairs{merged} (one per quantizer call), "
                               f"found {report.qdq_pairs}")
    elif report.qdq_pairs < report.expected_pairs:
        report.warnings.append(f"the exporter merged {report.expected_pairs - report.qdq_pairs} Q/DQ pair(s) that "
                               "quantize the same tensor with the same scale")
    inputs = [leaf.detach().cpu().numpy() for leaf in _flatten(args) if isinstance(leaf, torch.Tensor)]
    try:
        outputs = run_onnxruntime(report.path, inputs)
    except ValueError as error:
        report.failures.append(str(error))
    else:
        reference = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
                     for t in record.outputs]
        comparison = compare_outputs(reference, outputs, tolerance_steps, atol)
        report.max_abs_diff, report.tolerance = comparison.max_abs_diff, comparison.tolerance
        report.sqnr_db, report.cosine = comparison.sqnr_db, comparison.cosine
        report.failures += comparison.failures
    report.passed = not report.failures
