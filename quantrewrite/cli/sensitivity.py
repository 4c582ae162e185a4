"""``quantrewrite sensitivity``: quantize and calibrate a model, then rank its layers by what they cost.

``add_parser`` registers the subcommand (cli/main.py) without importing torch; ``run_sensitivity`` does the work.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantrewrite.cli.arg_types import int_at_least
from quantrewrite.cli.errors import CLIError
from quantrewrite.methods import CALIB_METHODS, DEFAULT_METHOD

__all__ = ["GRANULARITY_CHOICES", "METRIC_CHOICES", "add_parser", "run_sensitivity"]

DEFAULT_TOP = 3
# the names of quantrewrite.output_metrics.METRICS and quantrewrite.sensitivity.GRANULARITIES (a test checks),
# written here so that building the parser does not import torch
METRIC_CHOICES = ("cosine", "min_cosine", "sqnr")
GRANULARITY_CHOICES = ("layer", "quantizer")


_count = int_at_least(0)


def add_parser(sub: Any, common: argparse.ArgumentParser, model_help: str, positive_int: Callable[[str], int],
               run: Callable[[argparse.Namespace], int]) -> None:
    """Add the ``sensitivity`` subcommand to the subparsers ``sub``; ``run`` runs it."""
    s = sub.add_parser("sensitivity", parents=[common], help="rank layers by the accuracy they cost; YAML to fix it",
                       description="Quantize MODEL with a config, calibrate it on DATA, then measure on the same "
                       "data, for every layer, the output metric with only that layer quantized and with only that "
                       "layer left float. Prints the ranked table and a `layers:` block leaving the --top K worst "
                       "layers float.")
    s.add_argument("model", metavar="MODEL", help=model_help)
    s.add_argument("--config", "-c", required=True, metavar="C", help="a preset name or a YAML file")
    s.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data, also used for the measurements: a .pt file, 'digits' or "
                   "'random:SHAPE' (as for 'quantrewrite quantize')")
    s.add_argument("--top", type=_count, default=DEFAULT_TOP, metavar="K",
                   help=f"how many of the most sensitive layers the YAML leaves float (default {DEFAULT_TOP})")
    s.add_argument("--yaml", metavar="OUT.yaml", help="write the `layers:` block leaving the K worst layers float")
    s.add_argument("--plot", metavar="OUT.png", help="draw the report as a bar chart (needs the plot extra)")
    s.add_argument("--metric", choices=METRIC_CHOICES, default="sqnr",
                   help="output metric against the float model (default: sqnr, in dB)")
    s.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="layer",
                   help="measure whole layers (default) or single quantizers (the YAML is then a disable: list)")
    s.add_argument("--method", choices=CALIB_METHODS, default=DEFAULT_METHOD,
                   help=f"how histogram calibrators pick amax (default: {DEFAULT_METHOD})")
    s.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="batch size for a file holding one tensor (default 32) and for 'digits' (default 64)")
    s.add_argument("--num-batches", type=positive_int, default=None, metavar="N",
                   help="use the first N batches (random:SHAPE: make N batches, default 4)")
    s.set_defaults(run=run)


def _check_output(option: str, path: str | None, suffix: str) -> None:
    if path is None:
        return
    if Path(path).suffix.lower() != suffix:
        raise CLIError(f"{option}: expected a file name ending in {suffix}, got {path}")
    if not Path(path).resolve().parent.is_dir():
        raise CLIError(f"{option}: the folder of {path} does not exist")


def run_sensitivity(args: argparse.Namespace) -> int:
    """``quantrewrite sensitivity MODEL --config C --calib DATA [--top K] [--yaml out.yaml] [--plot out.png]``."""
    from quantrewrite.api import quantize_model
    from quantrewrite.calibration import calibrate
    from quantrewrite.cli.inputs import check_model_accepts, load_batches, load_model
    from quantrewrite.config import load_config
    from quantrewrite.sensitivity import sensitivity

    _check_output("--yaml", args.yaml, ".yaml")
    _check_output("--plot", args.plot, ".png")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'quantrewrite[plot]'") from None
    load_config(args.config)
    model = load_model(args.model)
    batches = load_batches(args.calib, args.batch_size, args.num_batches)
    check_model_accepts(model, batches[0], f"the first batch of {args.calib}")
    qmodel = quantize_model(model, args.config, example_inputs=batches[0])
    result = calibrate(qmodel, batches, method=args.method, num_batches=args.num_batches, progress=True)
    print(f"calibrated {len(result.calibrated)} quantizers on {result.batches} batches (method {result.method})")
    report = sensitivity(qmodel, batches, metric=args.metric, granularity=args.granularity,
                         num_batches=args.num_batches)
    print(report, "", sep="\n")
    block = report.to_yaml(min(args.top, len(report.layers)))
    if args.yaml is not None:
        Path(args.yaml).write_text(block)
        key = "disable" if args.granularity == "quantizer" else "layers"
        print(f"wrote {args.yaml}: append its entries to the config's `{key}` list")
    else:
        print(block, end="")
    if args.plot is not None:
        print(f"plot: {report.plot(args.plot)}")
    return 0
