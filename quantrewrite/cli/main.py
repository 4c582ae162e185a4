"""The argument parser and ``main``: run a subcommand, turn every failure into one line on stderr."""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from quantrewrite.cli import sensitivity as sensitivity_cli
from quantrewrite.cli.arg_types import int_at_least
from quantrewrite.cli.errors import CLIError, UsageError
from quantrewrite.cli.kernels import add_parser as add_kernels_parser
from quantrewrite.cli.messages import plain_text, warning_line
from quantrewrite.cli.placement import add_parser as add_placement_parser
from quantrewrite.methods import CALIB_METHODS, DEFAULT_METHOD

__all__ = ["build_parser", "main"]

PROG = "quantrewrite"
DTYPES = ("float32", "float16", "bfloat16")  # --dtype: torch dtypes by name (no torch import here)

MODEL_HELP = ("the float model: 'package.module:factory' or 'path/to/file.py:factory'; factory() is called "
              "without arguments and must return a torch.nn.Module")
EPILOG = """examples:
  quantrewrite demo
  quantrewrite plan my_models.py:build_resnet --config int8_default
  quantrewrite quantize my_models.py:build_resnet --config my.yaml --calib calib.pt --method percentile \\
      --recipe resnet.recipe.yaml --onnx resnet.onnx
  quantrewrite validate my.yaml
  quantrewrite placement model.onnx
  quantrewrite build-kernels   # once after installing (e.g. in a Dockerfile)
  quantrewrite sensitivity my_models.py:build_resnet --config int8_default --calib calib.pt --top 3 --yaml fix.yaml

presets: int8_default, int8_max, w4a8, tensorrt, dla; run 'quantrewrite COMMAND --help' for more."""


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The subcommand ``module.name``, imported when it runs: building the parser (and ``--help``) must not
    import torch."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"quantrewrite.cli.{module}"), name)(args)

    run.__name__ = name
    return run


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError so that main prints them as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        mistyped = re.match(r"argument COMMAND: invalid choice: '([^']*)'", message)
        if mistyped:  # a mistyped subcommand: name the closest one and point to its help
            close = difflib.get_close_matches(mistyped.group(1), list(_subcommands(self)), n=1)
            if close:
                raise UsageError(f"unknown command {mistyped.group(1)!r}; did you mean {close[0]!r}? "
                                 f"(see '{self.prog} {close[0]} --help')")
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser (empty for a subcommand's own parser)."""
    return next((action.choices for action in parser._actions if isinstance(action, argparse._SubParsersAction)),
                {})


def _unknown_options(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> str:
    """The message for arguments the (sub)command does not take, with the closest option of each."""
    if command is not None:
        parser = _subcommands(parser)[command]
    options = [option for action in parser._actions for option in action.option_strings]
    hints = [close[0] for word in extra if word.startswith("-")
             for close in [difflib.get_close_matches(word.split("=")[0], options, n=1)] if close]
    hint = f"did you mean {', '.join(hints)}? " if hints else ""
    return f"unrecognized arguments: {' '.join(extra)} ({hint}see '{PROG}{' ' + command if command else ''} --help')"


_positive_int = int_at_least(1)
_opset = int_at_least(13, " (per-axis QuantizeLinear)")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100], got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``quantrewrite`` parser with its subcommands plan, quantize, validate and demo."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(prog=PROG, description="Fake-quantize PyTorch models: plan, quantize and calibrate, "
                     "validate configs, and a demo.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    from quantrewrite import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("plan", parents=[common], help="print what quantize would do to every module and op",
                       description="Dry run: print the plan table (every module and functional op site, "
                       "quantized or skipped, and why). Changes nothing.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--config", "-c", default="int8_default", metavar="C",
                   help="a preset name or a YAML file (default: int8_default)")
    p.add_argument("--strict", action="store_true",
                   help="fail on scopes that do not trace and on config patterns that match nothing")
    p.set_defaults(run=_command("commands", "run_plan"))

    q = sub.add_parser("quantize", parents=[common], help="quantize and calibrate; write a recipe (and ONNX)",
                       description="Quantize MODEL with a config, calibrate it on DATA, write the recipe and "
                       "optionally a verified ONNX file, and print the summary of every quantizer.")
    q.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    q.add_argument("--config", "-c", required=True, metavar="C", help="a preset name or a YAML file")
    q.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data: a .pt file (torch.load(weights_only=True)) holding one tensor, split "
                   "along dim 0 into batches, or a list of batches (tensors, tuples or dicts of tensors); "
                   "'digits' (the shipped 8x8 digits, for quantrewrite.demo_model:DigitsCNN); or "
                   "'random:SHAPE', e.g. random:8x3x32x32 (seeded normal batches of that shape)")
    q.add_argument("--method", choices=CALIB_METHODS, default=DEFAULT_METHOD,
                   help=f"how histogram calibrators pick amax (default: {DEFAULT_METHOD}); max calibrators take "
                   "the max")
    q.add_argument("--percentile", type=_percentile, default=99.99, metavar="P",
                   help="the percentile for --method percentile (default: 99.99)")
    q.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="batch size for a file holding one tensor (default 32) and for 'digits' (default 64)")
    q.add_argument("--num-batches", type=_positive_int, default=None, metavar="N",
                   help="calibrate on the first N batches (random:SHAPE: make N batches, default 4)")
    q.add_argument("--recipe", metavar="OUT.yaml", help="where to write the recipe (default: FACTORY.recipe.yaml)")
    q.add_argument("--onnx", metavar="OUT.onnx",
                   help="also export ONNX with Q/DQ pairs and check it against onnxruntime (needs the onnx extra); "
                   "a file that fails the check is kept as OUT.failed.onnx, never as OUT.onnx")
    q.add_argument("--input-shape", metavar="SHAPE", action="append",
                   help="example input for the export, e.g. 1x3x224x224 (seeded normal values; default: the first "
                   "calibration batch); repeat it for a model with several inputs, in forward's order")
    q.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="element type of random data: random:SHAPE batches and --input-shape (default: float32; "
                   "float16 for half-precision models)")
    q.add_argument("--static-batch", action="store_true",
                   help="--onnx: keep the example's batch size fixed (default: dim 0 of every input and output is "
                   "a dynamic 'batch', checked at a second batch size)")
    q.add_argument("--input-names", metavar="A,B", type=_names,
                   help="--onnx: graph input names (default: forward's parameter names)")
    q.add_argument("--output-names", metavar="A,B", type=_names,
                   help="--onnx: graph output names (default: a returned dict's keys, else output, output_0, ...)")
    q.add_argument("--opset", type=_opset, default=None, metavar="N",
                   help="--onnx: the ai.onnx opset (default 17; a model the TorchScript exporter cannot write is "
                   "retried with the dynamo exporter at opset >= 18)")
    q.add_argument("--tolerance-steps", type=_non_negative, default=4.0, metavar="S",
                   help="--onnx: how far onnxruntime may be from PyTorch, in 8-bit steps of each output's range "
                   "(default: 4)")
    q.add_argument("--strict", action="store_true",
                   help="fail on scopes that do not trace and on config patterns that match nothing")
    q.set_defaults(run=_command("commands", "run_quantize"))

    v = sub.add_parser("validate", parents=[common], help="check a config and print every located error",
                       description="Check a YAML config or a preset name: print every error with its place, or "
                       "an OK summary. With --model, also check that every layers/disable pattern matches.")
    v.add_argument("config", metavar="CONFIG", help="a YAML file or a preset name")
    v.add_argument("--model", metavar="MODEL", help=MODEL_HELP)
    v.add_argument("--strict", action="store_true", help="with --model: a pattern that matches nothing is an error")
    v.set_defaults(run=_command("commands", "run_validate"))

    d = sub.add_parser("demo", parents=[common], help="quantize a digits CNN end to end (no network needed)",
                       description="The shipped digits CNN: plan, calibrate with max/entropy/percentile/mse, "
                       "int8 and w4a8 accuracy and SQNR, and a verified ONNX export of the best int8 model.")
    d.set_defaults(run=_command("commands", "run_demo"))
    add_placement_parser(sub, common)
    add_kernels_parser(sub, common)
    sensitivity_cli.add_parser(sub, common, MODEL_HELP, _positive_int, _command("sensitivity", "run_sensitivity"))
    return parser


# errors whose message says all: shown without their type or a hint (imported only once one is raised)
_REPORTED = (("quantrewrite.config", "QuantConfigError"), ("quantrewrite.recipe", "RecipeError"),
             ("quantrewrite.export", "ExportError"), ("quantrewrite.api", "RewriteError"))


def _reported(error: Exception) -> bool:
    if isinstance(error, (CLIError, OSError)):
        return True
    return any(isinstance(error, getattr(importlib.import_module(module), name)) for module, name in _REPORTED)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in plain_text(str(text)).strip().splitlines() if line.strip())


class _WarningPrinter:
    """``warnings.showwarning`` for one command: each warning once, as ``quantrewrite: warning: ...``, another
    library's or the user's code's with its class and place (see ``messages.warning_line``).

    torch's TracerWarnings are not printed here: they arise only while torch traces for the ONNX export, and
    ``export_onnx``'s report (which the command prints) lists each once with the line of the model it points to.
    """

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if category.__name__ == "TracerWarning" and category.__module__.startswith("torch"):
            return
        text = warning_line(message, category, filename, lineno)
        if text not in self.shown:
            self.shown.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``quantrewrite`` command; returns the exit status (0 ok, 1 error, 2 usage error)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # after a subcommand: its own --help lists the options it takes
            raise UsageError(_unknown_options(parser, getattr(args, "command", None), extra))
    except UsageError as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return error.exit_code
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _WarningPrinter()
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            if args.debug:
                raise
            code = error.exit_code if isinstance(error, CLIError) else 1
            if _reported(error) and str(error):
                text = _one_line(error)
            else:  # unexpected: say what it was and how to see where
                text = f"{type(error).__name__}: {_one_line(error)} (--debug shows the traceback)"
            print(f"{PROG}: error: {text}", file=sys.stderr)
            for line in error.details if isinstance(error, CLIError) else ():  # one problem per line
                print(f"  {line}", file=sys.stderr)
            return code
