"""The subcommands: each takes the parsed arguments, prints its result and returns an exit status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from quantrewrite.api import plan, quantize_model, summary
from quantrewrite.calibration import calibrate
from quantrewrite.cli.inputs import CLIError, check_model_accepts, load_batches, load_model, parse_shape
from quantrewrite.config import QuantConfig, QuantConfigError, load_config

__all__ = ["run_demo", "run_plan", "run_quantize", "run_validate"]


def _out(*lines: str) -> None:
    for line in lines:
        print(line)


def run_plan(args: argparse.Namespace) -> int:
    """``quantrewrite plan MODEL [--config C] [--strict]``."""
    load_config(args.config)  # a bad config is reported before the model is built
    model = load_model(args.model)
    _out(str(plan(model, args.config, strict=args.strict)))
    return 0


def _check_onnx_available() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CLIError(f"--onnx needs {' and '.join(missing)} (pip install -c constraints.txt "
                       "'quantrewrite[onnx]')")


def _example_input(args: argparse.Namespace, batches: list[Any]) -> Any:
    """The export's example: the first calibration batch, or seeded normal tensors of the --input-shape(s)."""
    if not args.input_shape:
        return batches[0]
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    tensors = tuple(torch.randn(parse_shape(text, "--input-shape"), generator=generator).to(dtype)
                    for text in args.input_shape)
    return tensors[0] if len(tensors) == 1 else tensors


def _untraced_lines(plan: Any) -> list[str]:
    """The scopes FX could not trace, and what stays float because of them (as ``plan`` lists them)."""
    scopes = [entry for entry in plan.entries if entry.kind == "scope"]
    if not scopes:
        return []
    lines = [f"untraced scopes: {len(scopes)} (FX tracing failed there; their modules are still swapped)"]
    for scope in scopes:
        lines.append(f"  {scope.name or '<root>'} ({scope.target}): {scope.reason}")
        prefix = f"{scope.name}." if scope.name else ""
        floats = [entry for entry in plan.entries if entry.runtime and not entry.quantized
                  and entry.name.startswith(prefix)]
        if floats:
            lines.append("    stays float: " + ", ".join(f"{entry.name} ({entry.reason})" for entry in floats))
    return lines


def _calibrators_used(qmodel: Any, result: Any) -> str:
    """What set the ranges: how many max and histogram calibrators, and the method the histogram ones used."""
    from collections import Counter

    from quantrewrite.calib import HistogramCalibrator

    quantizers = dict(qmodel.named_modules())
    histogram = sum(isinstance(quantizers[name].calibrator, HistogramCalibrator) for name in result.calibrated)
    counts = [f"{n} {kind} calibrator{'s' if n != 1 else ''}"
              for n, kind in ((len(result.calibrated) - histogram, "max"), (histogram, "histogram")) if n]
    if not histogram:
        return (f"{', '.join(counts) or 'no calibrator'} (--method {result.method} picks amax for histogram "
                "calibrators only: this config has none)")
    method = f"method {result.method}"
    if result.choices:  # method auto: what each histogram quantizer kept
        kept = Counter(result.choices.values())
        method += ": kept " + ", ".join(f"{choice} x{n}" for choice, n in sorted(kept.items()))
    return f"{', '.join(counts)} ({method})"


def _problem_lines(problems: dict[str, list[str]]) -> list[str]:
    return [f"{name}: {reason}" for name, reasons in problems.items() for reason in reasons]


def _check_exportable(qmodel: Any, args: argparse.Namespace) -> None:
    """--onnx: refuse, before any calibration batch runs, a model the exporter would refuse after it."""
    from quantrewrite.export import DEFAULT_OPSET
    from quantrewrite.export_rules import export_problems

    problems = export_problems(qmodel, opset=args.opset or DEFAULT_OPSET, before_calibration=True)
    if problems:
        raise CLIError(f"--onnx: {len(problems)} quantizer(s) cannot be exported as ONNX QuantizeLinear/"
                       "DequantizeLinear (nothing was calibrated or written; change the config, or drop --onnx):",
                       _problem_lines(problems))


def _export(qmodel: Any, example: Any, args: argparse.Namespace) -> str:
    """Export to --onnx and check it; a file that fails the check is moved to OUT.failed.onnx."""
    from quantrewrite.export import ExportError, export_onnx

    path = Path(args.onnx)
    failed = path.with_name(f"{path.stem}.failed{path.suffix or '.onnx'}")
    failed.unlink(missing_ok=True)  # a stale failed file from an earlier run would mislead
    try:
        report = export_onnx(qmodel, example, path, input_names=args.input_names, output_names=args.output_names,
                             dynamic_axes=None if args.static_batch else "batch", opset=args.opset,
                             tolerance_steps=args.tolerance_steps, verify=True)
    except ExportError as error:
        if error.problems:  # e.g. a quantizer that calibration left without an amax
            raise CLIError(f"--onnx: {len(error.problems)} quantizer(s) cannot be exported as ONNX "
                           f"QuantizeLinear/DequantizeLinear ({path} not written):",
                           _problem_lines(error.problems)) from error
        if error.report is None or not path.exists():
            raise
        path.replace(failed)
        _out(str(error.report))
        hint = "; only the bound failed: --tolerance-steps raises it" if "raise tolerance_steps" in str(error) else ""
        raise CLIError(f"--onnx: the exported file failed verification (report above): kept as {failed} for "
                       f"inspection, {path} not written{hint}") from error
    return str(report)


def run_quantize(args: argparse.Namespace) -> int:
    """``quantrewrite quantize MODEL --config C --calib DATA ...``: quantize, calibrate, write recipe (and ONNX)."""
    for text in args.input_shape or ():
        parse_shape(text, "--input-shape")
    if args.onnx is not None:
        _check_onnx_available()
    load_config(args.config)
    model = load_model(args.model)
    batches = load_batches(args.calib, args.batch_size, args.num_batches, dtype=getattr(torch, args.dtype))
    check_model_accepts(model, batches[0], f"the first batch of {args.calib}")
    example = _example_input(args, batches)
    if args.input_shape:
        check_model_accepts(model, example, "--input-shape")
    recipe_path = Path(args.recipe or f"{args.model.rpartition(':')[2].replace('.', '_')}.recipe.yaml")
    for option, path in (("--recipe", recipe_path), ("--onnx", args.onnx)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise CLIError(f"{option}: the folder of {path} does not exist")

    # the first batch doubles as example_inputs: functional ops inside scopes FX cannot trace get quantizers
    qmodel = quantize_model(model, args.config, example_inputs=batches[0], strict=args.strict)
    counts = qmodel.quant_plan.counts()
    _out(f"quantized {counts['modules quantized']} modules and {counts['ops quantized']} ops "
         f"({counts['quantizers']} quantizers, config: {qmodel.quant_plan.config_source})",
         *_untraced_lines(qmodel.quant_plan))
    if args.onnx is not None:
        _check_exportable(qmodel, args)
    result = calibrate(qmodel, batches, method=args.method, percentile=args.percentile,
                       num_batches=args.num_batches, progress=True)
    _out(f"calibrated {len(result.calibrated)} quantizers on {result.batches} batches in {result.seconds:.1f} s: "
         f"{_calibrators_used(qmodel, result)}", "", summary(qmodel), "")

    from quantrewrite.recipe import save_recipe

    _out(f"recipe: {save_recipe(qmodel, recipe_path)}")
    if args.onnx is not None:
        _out(_export(qmodel, example, args))
    return 0


def _fields(descriptor: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in descriptor.items()) or "the Quant classes' defaults"


def _describe(config: QuantConfig) -> str:
    data = config.to_dict()
    defaults = data.get("defaults", {})
    sections = [f"{key} {len(data.get(key) or [])}" for key in ("modules", "functions", "layers", "disable")]
    return (f"OK: {config.source} (version {data.get('version')}): input: {_fields(defaults.get('input', {}))}; "
            f"weight: {_fields(defaults.get('weight', {}))}; entries: {', '.join(sections)}")


def _located(config_name: str, error: QuantConfigError) -> CLIError:
    """Print each located error of a multi-error QuantConfigError on its own line; the CLIError to raise."""
    located = [f"{config_name}: {path}: {message}" if path else f"{config_name}: {message}"
               for path, message in error.errors]
    if len(located) == 1:
        return CLIError(located[0])
    for line in located:
        print(line, file=sys.stderr)
    return CLIError(f"{config_name}: {len(located)} problems")


def run_validate(args: argparse.Namespace) -> int:
    """``quantrewrite validate CONFIG [--model MODEL] [--strict]``: every located error, or an OK summary.

    With --model, the config is also checked against the model's layers (weight axes and amax shapes, and
    whether every layers/disable pattern matches), exactly as quantize would before it changes anything.
    """
    try:
        config = load_config(args.config)
    except QuantConfigError as error:
        raise _located(args.config, error) from error
    warnings = []
    if args.model is not None:
        model = load_model(args.model)
        try:
            warnings = plan(model, config, strict=args.strict).warnings
        except QuantConfigError as error:
            raise _located(args.config, error) from error
    _out(_describe(config))
    if args.model is not None:
        _out(f"every layers/disable pattern matches in {args.model}" if not warnings else
             f"{len(warnings)} pattern(s) match nothing in {args.model} (see the warnings)")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``quantrewrite demo``."""
    from quantrewrite.demo import demo

    demo()
    return 0
