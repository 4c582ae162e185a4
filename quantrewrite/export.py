"""ONNX export with standard QuantizeLinear/DequantizeLinear pairs, checked against the PyTorch model.

While ``torch.onnx`` exports, every enabled TensorQuantizer runs ``quantize_for_export`` instead of its
fake-quant kernel: ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``
with scale = amax / max_bound and zero point 0, over (-128, 127) (int8) or (0, 255) (uint8, unsigned
quantizers). The exporters turn those into one QuantizeLinear -> DequantizeLinear pair each (per-channel:
a 1-D scale of C values and ``axis``). Disabled quantizers, and quantizers with quantization off, emit nothing.

Exporter: torch's TorchScript exporter (``dynamo=False``) by default, because on torch 2.4-2.13 it writes
opset 13-17 natively (the torch.export-based one implements opset >= 18 only), keeps QuantizeLinear on float
weights with constant folding on (TensorRT wants Q/DQ on weights; the scales still fold into initializers),
needs no onnxscript, and records whatever Python control flow the forward takes. Its DeprecationWarnings (and
only those) are silenced. Where it fails (ops it has no symbolic for, such as ``aten::diff``), the
torch.export-based exporter (``exporter="dynamo"``: onnxscript needed, the model must be torch.export-able)
retries at opset 18; the same checks apply to both. Inputs, names and dynamic axes: ``export_io``; the checks:
``export_verify``; the report: ``export_report``.

Example:
    >>> qmodel = quantize_model(model, "int8_default")
    >>> calibrate(qmodel, batches, method="percentile")
    >>> report = export_onnx(qmodel, torch.randn(1, 3, 224, 224), "model.onnx")
    >>> print(report)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantrewrite.export_dynamo import dynamo_qdq, symbolic_nodes_available
from quantrewrite.export_fp8 import fp8_qdq
from quantrewrite.export_io import BATCH, ExampleInputs, KeywordCall, batch_dynamic_axes, bind_example, output_names_of
from quantrewrite.export_report import ExportReport, TensorSpec
from quantrewrite.export_rules import emits, export_problems, problems_message, quantizer_problems
from quantrewrite.export_verify import verify_export
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.placement.report import placement_report
from quantrewrite.tensor_quant import AMAX_EPSILON, quant_bounds

__all__ = ["ExportError", "ExportReport", "TensorSpec", "export_onnx", "export_problems", "quantize_for_export"]

logger = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter implements opset 18 and later
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
    problems = quantizer_problems(quantizer)
    if problems:  # torch.onnx.export called directly (export_onnx checks before exporting)
        label = quantizer.label  # its name, or its descriptor (not extra_repr: it reads amax, tracer warnings)
        raise ExportError(problems_message({label: problems}), {label: problems})
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
    x = inputs if inputs.dtype == torch.float32 else inputs.float()
    if quantizer.quant_desc.is_fp8:
        per_channel = amax.dim() > 0 and quantizer.axis is not None
        out = fp8_qdq(x, amax, quantizer.axis[0] % x.dim() if per_channel else None)
        return out if out.dtype == inputs.dtype else out.to(inputs.dtype)
    min_bound, max_bound = quant_bounds(8, quantizer.unsigned, narrow_range=False)
    scale = amax / max_bound
    per_tensor = amax.dim() == 0 or quantizer.axis is None
    if not torch.jit.is_tracing() and symbolic_nodes_available():  # the dynamo exporter (see export_dynamo)
        scale = scale.reshape(()) if per_tensor else scale.reshape(-1)
        axis = None if per_tensor else quantizer.axis[0] % x.dim()
        out = dynamo_qdq(x, scale, axis, quantizer.unsigned)
    elif per_tensor:
        scale = scale if scale.dim() == 0 else scale.reshape(())
        zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
        out = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, int(min_bound), int(max_bound))
    else:
        axis = quantizer.axis[0] % x.dim()
        scale = scale.reshape(-1)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        out = torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, int(min_bound), int(max_bound))
    return out if out.dtype == inputs.dtype else out.to(inputs.dtype)


# --------------------------------------------------------------------------------------------- the PyTorch run
@dataclass
class _ForwardRecord:
    calls: dict[str, int]
    distinct: int  # calls that differ in input tensor or grid (identical ones may be merged by an exporter)
    outputs: Any  # what forward returned


def _amax_key(quantizer: TensorQuantizer) -> tuple[Any, ...]:
    amax = quantizer.amax
    if quantizer.is_clip_enabled and hasattr(quantizer, "clip"):
        amax = torch.maximum(-quantizer.clip.clip_value_min, quantizer.clip.clip_value_max)
    values = () if amax is None else tuple(amax.detach().reshape(-1).tolist())
    return quantizer.unsigned, quantizer.scale_amax, values


def _record_forward(model: nn.Module, inputs: ExampleInputs, quantizers: Mapping[str, TensorQuantizer]
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
            outputs = inputs.call(model)
    finally:
        for handle in handles:
            handle.remove()
    return _ForwardRecord(calls, len(seen), outputs)


# ----------------------------------------------------------------------------------------------- the export
def _run_exporter(model: nn.Module, inputs: ExampleInputs, path: str, exporter: str, opset: int,
                  names: tuple[list[str], list[str]], dynamic_axes: Mapping[str, Any] | None) -> list[str]:
    """Export, silencing only the TorchScript exporter's own DeprecationWarnings; every other warning is
    re-emitted once (not once per quantizer call) and returned."""
    target, args, kwargs = model, inputs.args, inputs.kwargs or None
    if exporter == "torchscript" and kwargs:
        target = KeywordCall(model, inputs)
        args, kwargs = target.example_args(inputs), None
    options: dict[str, Any] = {"kwargs": kwargs, "opset_version": opset,
                               "dynamic_axes": dict(dynamic_axes) if dynamic_axes else None,
                               "input_names": names[0] or None, "output_names": names[1] or None}
    if exporter == "torchscript":
        # Constant folding on: scales (amax / max_bound) become initializers; the TorchScript exporter does
        # not fold QuantizeLinear, so weights keep their float initializer and their Q/DQ pair (TensorRT wants
        # Q/DQ on weights). A folded weight pair (int8 initializer + DequantizeLinear) is still counted.
        options.update(dynamo=False, do_constant_folding=True)
    else:
        options.update(dynamo=True, verbose=False)
    return _export_file(target, args, path, exporter, options)


def _export_file(target: Any, args: Any, path: str, exporter: str, options: dict[str, Any]) -> list[str]:
    """One torch.onnx.export call; returns the tracer warnings it raised, one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in _TORCHSCRIPT_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
        with torch.no_grad():
            program = torch.onnx.export(target, args, path if exporter == "torchscript" else None, **options)
            if program is not None:  # the dynamo exporter returns an ONNXProgram
                program.save(path)
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


def _failure_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _export_with_fallback(model: nn.Module, inputs: ExampleInputs, path: str, exporter: str, opset: int,
                          names: tuple[list[str], list[str]], dynamic_axes: Mapping[str, Any] | None,
                          fallback: bool) -> tuple[str, int, list[str]]:
    """Run the exporter; when the TorchScript one fails (and ``fallback``), say why and retry with dynamo at
    opset >= 18. Returns (the exporter that wrote the file, its opset, the notes for the report)."""
    try:
        return exporter, opset, _run_exporter(model, inputs, path, exporter, opset, names, dynamic_axes)
    except ExportError:
        raise
    except Exception as error:
        failed = f"the {exporter} exporter failed: {_failure_line(error)}"
        if exporter != "torchscript" or not fallback:
            raise ExportError(failed) from error
        first = error
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ExportError(f"{failed}; the dynamo exporter could retry, but it needs onnxscript "
                          "(pip install 'quantrewrite[onnx]')") from first
    retry_opset = max(opset, DYNAMO_MIN_OPSET)
    logger.warning("%s; retrying with the dynamo exporter at opset %d", failed, retry_opset)
    try:
        notes = _run_exporter(model, inputs, path, "dynamo", retry_opset, names, dynamic_axes)
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(f"{failed}; the dynamo exporter failed too: {_failure_line(error)}") from error
    return "dynamo", retry_opset, [f"{failed}; written by the dynamo exporter at opset {retry_opset}", *notes]


def _tiny_amax(quantizer: TensorQuantizer) -> bool:
    amax = quantizer.amax
    return amax is not None and not quantizer.is_clip_enabled and bool((amax <= AMAX_EPSILON).any())


def _graph_names(model: nn.Module, inputs: ExampleInputs, outputs: Any, input_names: Sequence[str] | None,
                 output_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The user's names, then the readable defaults for the rest (see export_io)."""
    defaults_in, defaults_out = inputs.names, output_names_of(outputs)
    chosen_in = list(input_names or [])
    chosen_out = list(output_names or [])
    return chosen_in + defaults_in[len(chosen_in):], chosen_out + defaults_out[len(chosen_out):]


def _check_arguments(model: Any, exporter: str, opset: int | None, dynamic_axes: Any, tolerance_steps: float,
                     atol: float | None) -> int:
    """Validate export_onnx's arguments; return the opset to use."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter: expected one of {list(EXPORTERS)}, got {exporter!r}")
    if opset is None:
        opset = DEFAULT_OPSET if exporter == "torchscript" else DYNAMO_MIN_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset: expected an int >= 13 (per-axis QuantizeLinear), got {opset!r}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(f"opset: the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET}, got {opset}")
    if not (dynamic_axes is None or dynamic_axes == BATCH or isinstance(dynamic_axes, Mapping)):
        raise ValueError(f"dynamic_axes: expected None, {BATCH!r} or a dict of input/output name -> axes, got "
                         f"{dynamic_axes!r}")
    if not tolerance_steps >= 0 or (atol is not None and not atol >= 0):
        raise ValueError(f"tolerance_steps and atol must be >= 0, got {tolerance_steps!r} and {atol!r}")
    return opset


def export_onnx(model: nn.Module, args: torch.Tensor | tuple[Any, ...] | Mapping[str, Any],
                path: str | os.PathLike, *, kwargs: Mapping[str, Any] | None = None,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_axes: str | Mapping[str, Any] | None = None, opset: int | None = None,
                exporter: str = "torchscript", fallback: bool = True, verify: bool = True,
                tolerance_steps: float = 4.0, atol: float | None = None) -> ExportReport:
    """Export a fake-quantized model to ONNX with standard QuantizeLinear/DequantizeLinear pairs, and check it.

    Each call of an enabled quantizer becomes one pair: scale = amax / max_bound (float32), zero point 0 of
    type int8 (uint8 for unsigned quantizers), per-channel scales as a 1-D tensor with ``axis``. The model is
    exported in eval mode under ``torch.no_grad()``; every module's train/eval mode is restored afterwards and
    nothing in the model changes.

    Inputs: ``args`` (positional) and ``kwargs`` (keyword; a dict passed as ``args`` is taken as ``kwargs``,
    the form of a calibration batch), so Hugging Face models export as they are called, without a wrapper.
    Graph inputs are named after ``forward``'s parameters and outputs after a returned dict's keys (``output``,
    ``output_0``... otherwise); ``input_names`` / ``output_names`` override the first ones. ``dynamic_axes=
    "batch"`` makes dim 0 of every input and output a dynamic ``batch`` dimension (and verification then runs
    onnxruntime at a second batch size, twice the example's); a dict is passed to the exporter as it is.

    Exporters: "torchscript" (default) writes opset 13-17 (default 17); when it fails (e.g. ``aten::diff``,
    sdpa's ``enable_gqa`` in LLaMA-style models) the failure is logged, noted in the report's warnings, and the
    torch.export-based "dynamo" exporter retries at opset >= 18 (``fallback=False`` raises instead). "dynamo"
    writes opset >= 18 (default 18; needs onnxscript, and a model torch.export can capture). Both write the
    same Q/DQ pairs and go through the same checks.

    Before exporting, every enabled quantizer the example forward reaches is checked; an ExportError lists all
    that cannot be written as int8/uint8 Q/DQ without changing numerics (uncalibrated or dynamic amax,
    narrow_range, num_bits other than 8, FP8, fake_quant=False, several axes, calibration still on). A
    learn_amax clip stage exports as a Clip node before its pair (the same numbers).

    Verification (``verify=True``, needs onnx and onnxruntime): the file passes ``onnx.checker``; it holds one
    Q/DQ pair per quantizer call of the example forward (an exporter may merge two calls that quantize the same
    tensor with the same scale); and onnxruntime (CPU, graph optimizations off, so the file's own semantics
    are checked) agrees with the PyTorch model on the example:

        max |onnx - torch| <= tolerance_steps * max |torch| / 127 + 2^-24 + 2 * flip_spread
                                                                  (per output; <= atol when given)

    where flip_spread is measured on the example: max |torch with ONNX's rounding x / scale - torch|, the model
    run once more with every quantizer computing ONNX's arithmetic from its own amax (``export_flips``). Deep
    networks propagate rounding flips far (a 48-block transformer: max |diff| 0.054 against a 4-step bound of
    0.054, its own flip spread 0.068); the spread term passes such faithful files, and a broken pair (a scale 4x
    off on one pair in a 6-block transformer) still fails.

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
        args: the example input: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
        path: where to write the .onnx file.
        kwargs: example keyword arguments.
        input_names, output_names: graph input / output names (default: see above).
        dynamic_axes: None (static shapes), "batch", or ``torch.onnx.export``'s dict.
        opset: the ai.onnx opset (>= 13: per-axis Q/DQ; >= 18 with dynamo); default 17 (dynamo: 18).
        exporter: "torchscript" or "dynamo" (above).
        fallback: retry with dynamo when the TorchScript exporter fails.
        verify: check the file (above); raises ExportError when a check fails.
        tolerance_steps: the bound on max |diff|, in steps of an 8-bit grid spanning each output.
        atol: an absolute bound instead.

    Returns:
        An ExportReport (its ``passed`` is None when verify=False).

    Raises:
        ExportError: a quantizer cannot be exported (``problems`` names them all), both exporters failed, or
            verification failed (``report`` tells how).
        TypeError: ``forward`` does not accept the example.

    Example:
        >>> report = export_onnx(qmodel, torch.randn(1, 3, 32, 32), "model.onnx", dynamic_axes="batch")
        >>> report.qdq_pairs, report.max_abs_diff <= report.tolerance
        >>> export_onnx(hf_model, (), "bert.onnx", kwargs=tokenizer_output, dynamic_axes="batch")
    """
    opset = _check_arguments(model, exporter, opset, dynamic_axes, tolerance_steps, atol)
    inputs = bind_example(model, args, kwargs)
    path = os.fspath(path)
    quantizers = {name or "<root>": m for name, m in model.named_modules() if isinstance(m, TensorQuantizer)}
    emitting = {name: q for name, q in quantizers.items() if emits(q)}
    calibrating = {name: ["calibration is still on: finish calibration (load_calib_amax) first"]
                   for name, q in quantizers.items() if q.is_enabled and q.is_calib_enabled}
    if calibrating:  # before any forward: it would feed the example input to the calibrators
        raise ExportError(problems_message(calibrating), calibrating)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        record = _record_forward(model, inputs, emitting)
        reached = [name for name, count in record.calls.items() if count]
        problems = {name: found for name in reached if (found := quantizer_problems(emitting[name], opset=opset))}
        if problems:
            raise ExportError(problems_message(problems), problems)
        notes = [f"{name} was not reached by the example forward and would not export: {'; '.join(found)}"
                 for name, q in emitting.items() if name not in reached and (found := quantizer_problems(q))]
        tiny = [name for name in reached if _tiny_amax(emitting[name])]
        if tiny:
            notes.append(f"amax <= 2^-24 in {', '.join(tiny)}: exported with scale <= 2^-24/127 (0 for amax 0); "
                         "TensorRT wants positive scales")
        names = _graph_names(model, inputs, record.outputs, input_names, output_names)
        axes = batch_dynamic_axes(inputs, names[0], record.outputs, names[1]) if dynamic_axes == BATCH else \
            dynamic_axes
        used, opset, exported = _export_with_fallback(model, inputs, path, exporter, opset, names, axes, fallback)
        report = ExportReport(path=path, opset=opset, exporter=used, expected_pairs=sum(record.calls.values()),
                              quantizers=reached, not_reached=[n for n in emitting if n not in reached],
                              skipped=[n for n in quantizers if n not in emitting], warnings=notes + exported,
                              groups=_exported_groups(emitting, reached))
        check = functools.partial(verify_export, model=model, inputs=inputs, outputs=record.outputs,
                                  input_names=names[0], distinct_calls=record.distinct,
                                  tolerance_steps=tolerance_steps, atol=atol, other_batch=dynamic_axes == BATCH,
                                  quantizers={name: emitting[name] for name in reached})
        if verify:
            check(report)
            if fallback and used == "torchscript" and _failed_only_at_other_batch(report):
                report = _retry_dynamo_for_batch(report, model, inputs, names, axes, notes, check)
            report.placement = placement_report(report.path)  # where TensorRT runs int8, from the file
    finally:
        for module, training in modes.items():
            module.training = training
    logger.info("%s", report)
    if report.passed is False:
        hint = ("\n(only the bound failed, with a high SQNR and a cosine near 1: rounding-boundary flips, see "
                "export_onnx's docstring; raise tolerance_steps)" if _only_tolerance_failed(report) else "")
        raise ExportError(f"the exported ONNX model failed verification:\n{report}{hint}", report=report)
    return report


def _failed_only_at_other_batch(report: ExportReport) -> bool:
    """The file matched PyTorch at the example's batch size and not at the second one (a TorchScript trace that
    recorded the batch size as a constant, as Hugging Face attention masks do)."""
    if len(report.batch_sizes) != 2 or not report.failures:
        return False
    return all(failure.startswith(f"at batch size {report.batch_sizes[1]}:") for failure in report.failures)


def _retry_dynamo_for_batch(report: ExportReport, model: nn.Module, inputs: ExampleInputs,
                            names: tuple[list[str], list[str]], axes: Mapping[str, Any] | None, notes: list[str],
                            check: Callable[[ExportReport], None]) -> ExportReport:
    """Export again with dynamo (which keeps shapes symbolic) after a TorchScript file failed at the second batch
    size; the first report stands if dynamo cannot export."""
    failed = (f"the TorchScript export does not hold at batch size {report.batch_sizes[1]} (its trace recorded "
              "the example's batch size as a constant)")
    opset = max(report.opset, DYNAMO_MIN_OPSET)
    logger.warning("%s; retrying with the dynamo exporter at opset %d", failed, opset)
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)

        exported = _run_exporter(model, inputs, report.path, "dynamo", opset, names, axes)
    except Exception as error:  # noqa: BLE001 - any failure: the TorchScript report, with its failures, stands
        report.warnings.append(f"{failed}; the dynamo exporter could not retry: {_failure_line(error)}")
        return report
    retried = dataclasses.replace(report, opset=opset, exporter="dynamo", inputs=[], outputs=[], batch_sizes=[],
                                  failures=[], passed=None, qdq_pairs=None, max_abs_diff=None, tolerance=None,
                                  sqnr_db=None, cosine=None, flip_spread=None,
                                  warnings=[*notes, f"{failed}; written by the dynamo exporter at opset {opset}",
                                            *exported])
    check(retried)
    return retried


def _only_tolerance_failed(report: ExportReport) -> bool:
    return (all("> tolerance" in failure for failure in report.failures) and report.sqnr_db is not None
            and report.sqnr_db > 30 and report.cosine > 0.999)
