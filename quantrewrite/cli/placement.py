"""``quantrewrite placement MODEL.onnx``: where TensorRT runs int8 in any ONNX file, and which Q/DQ pairs
cannot fuse (see ``quantrewrite.placement.report``). Registering it imports no torch (``--help`` stays fast)."""

from __future__ import annotations

import argparse
import sys

from quantrewrite.cli.errors import CLIError

__all__ = ["add_parser", "run_placement"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the ``placement`` subcommand."""
    p = sub.add_parser("placement", parents=[common], help="report where TensorRT runs int8 in an ONNX file",
                       description="Read an ONNX file's Q/DQ nodes (any exporter's) and report the int8 coverage "
                       "of its weighted ops and every Q/DQ pair TensorRT cannot fuse. Exit status 0; with "
                       "--check, 3 when a pair cannot fuse.")
    p.add_argument("onnx_file", metavar="MODEL.onnx", help="the ONNX file")
    p.add_argument("--details", action="store_true", help="also list float weighted ops and every other finding")
    p.add_argument("--check", action="store_true", help="exit with status 3 when a Q/DQ pair cannot fuse")
    p.set_defaults(run=run_placement)


def run_placement(args: argparse.Namespace) -> int:
    from quantrewrite.placement.report import placement_report

    try:
        from google.protobuf.message import DecodeError

        report = placement_report(args.onnx_file)
    except (ImportError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None
    except (DecodeError, ValueError, RuntimeError) as error:  # not an ONNX file
        raise CLIError(f"cannot read {args.onnx_file} as ONNX: {type(error).__name__}: {error}") from None
    print(str(report) if args.details else report.summary(), file=sys.stdout)
    return 3 if args.check and report.unfusable else 0
