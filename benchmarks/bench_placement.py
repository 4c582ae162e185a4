"""Q/DQ placement side by side: quantrewrite's ``int8_default`` and ``tensorrt`` presets and NVIDIA ModelOpt's
ONNX PTQ, on the four models of ``benchmarks/placement_models.py`` (ResNet-like, U-Net, YOLO-like neck, ViT).

Run: python benchmarks/bench_placement.py [--models resnet unet yolo vit] [--threads 1] [--details]

Per model, all in this one run on the same model and data:

* quantrewrite: ``quantize_model(model, preset, example_inputs=x)``, ``calibrate`` on the calibration images
  (the default method), ``export_onnx`` (TorchScript exporter, opset 17, dynamic batch, ``verify=False``: the
  SQNR column runs the file in onnxruntime itself);
* ModelOpt: ``modelopt.onnx.quantization.quantize`` on the fp32 ONNX file (the same exporter and opset) with
  the same calibration images as a numpy array, INT8, its default calibration (entropy), CPU execution
  provider, ``high_precision_dtype="fp32"`` (its default fp16 would add an fp16 error the other columns do
  not have). A failure is a cell of the table, not a crash.

Every column is measured on the ONNX files: Q/DQ pairs, the pairs TensorRT cannot fuse and the int8 coverage
of the weighted ops come from ``quantrewrite.placement.placement_report`` (what ``quantrewrite placement``
prints) on each file, ModelOpt's included; SQNR is each file's output in onnxruntime (CPU, basic graph
optimizations: the file's own Q/DQ arithmetic, no int8 kernel fusion) against the fp32 file's output, over
held-out test images (disjoint from the calibration and BatchNorm-statistics images).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.placement_models import CALIB_SEED, MODELS, TEST_SEED, build, images
from quantrewrite.api import quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.export import export_onnx
from quantrewrite.placement.report import PlacementReport, placement_report

logger = logging.getLogger("bench_placement")

PRESETS = ("int8_default", "tensorrt")
PEER = "ModelOpt ONNX"
CALIB_IMAGES, TEST_IMAGES, BATCH = 64, 64, 16
OPSET = 17


@dataclass
class Cell:
    """One (model, method) result: the placement report and the SQNR, or why there is none."""

    report: PlacementReport | None = None
    sqnr_db: float = math.nan
    error: str = ""
    notes: list[str] = field(default_factory=list)


def sqnr_db(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """SQNR in dB of ``outputs`` against ``reference`` over all output tensors together."""
    signal = sum(float(np.square(r.astype(np.float64)).sum()) for r in reference)
    noise = sum(float(np.square(r.astype(np.float64) - o.astype(np.float64)).sum()) for r, o in zip(reference, outputs))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def run_onnx(path: Path, test: np.ndarray, threads: int) -> list[np.ndarray]:
    """The file's outputs on ``test`` in onnxruntime (CPU, basic optimizations), batch by batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = [session.run(None, {name: test[i:i + BATCH]}) for i in range(0, len(test), BATCH)]
    return [np.concatenate(parts) for parts in zip(*batches)]


def export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    outputs = model(example)
    count = len(outputs) if isinstance(outputs, tuple) else 1
    names = [f"output_{i}" for i in range(count)] if count > 1 else ["output"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=names, opset_version=OPSET,
                          dynamic_axes={n: {0: "batch"} for n in ["x", *names]}, dynamo=False)


def quantrewrite_file(model: torch.nn.Module, preset: str, example: torch.Tensor, calib: torch.Tensor,
                      path: Path) -> list[str]:
    """Quantize, calibrate and export with ``preset``; returns the export's warnings."""
    qmodel = quantize_model(model, preset, example_inputs=example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calibrate(qmodel, list(calib.split(BATCH)), progress=False)
        # verify=False: the random-init YOLO amplifies onnxruntime's rounding flips past the exporter's check
        # bound; the SQNR column measures the file in onnxruntime anyway
        report = export_onnx(qmodel, example, path, input_names=["x"], dynamic_axes="batch", verify=False)
    return list(report.warnings)


def modelopt_file(fp32: Path, calib: np.ndarray, path: Path) -> None:
    from modelopt.onnx.quantization import quantize

    chatter = io.StringIO()  # its calibrator prints progress bars and histogram notes
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        quantize(str(fp32), quantize_mode="int8", calibration_data={"x": calib}, calibration_eps=["cpu"],
                 high_precision_dtype="fp32", output_path=str(path), log_level="ERROR")


def measure(name: str, threads: int, workdir: Path) -> dict[str, Cell]:
    model, size = build(name)
    calib = images(CALIB_IMAGES, size, CALIB_SEED)
    test = images(TEST_IMAGES, size, TEST_SEED).numpy()
    example = calib[:2]
    fp32 = workdir / f"{name}_fp32.onnx"
    export_fp32(model, example, fp32)
    reference = run_onnx(fp32, test, threads)
    cells: dict[str, Cell] = {}
    for method in (*PRESETS, PEER):
        path = workdir / f"{name}_{method.split()[0].lower()}.onnx"
        cell = cells[method] = Cell()
        try:
            if method == PEER:
                modelopt_file(fp32, calib.numpy(), path)
            else:
                cell.notes = quantrewrite_file(model, method, example, calib, path)
        except Exception as error:  # noqa: BLE001 - a method that fails is a cell of the table
            cell.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logger.warning("%s / %s failed: %s", name, method, cell.error)
            continue
        cell.report = placement_report(path)
        cell.sqnr_db = sqnr_db(reference, run_onnx(path, test, threads))
    return cells


def print_table(results: dict[str, dict[str, Cell]], details: bool) -> None:
    header = f"{'model':<8} {'method':<14} {'Q/DQ pairs':>10} {'cannot fuse':>11} {'int8 weighted ops':>18} " \
             f"{'SQNR dB':>8} {'vs int8_default':>15}"
    print(header)
    print("-" * len(header))
    for name, cells in results.items():
        base = cells["int8_default"].sqnr_db
        for method, cell in cells.items():
            if cell.report is None:
                print(f"{name:<8} {method:<14} failed: {cell.error}")
                continue
            r = cell.report
            coverage = f"{len(r.int8_ops)}/{len(r.weighted_ops)} ({100 * r.coverage:.0f}%)"
            delta = f"{cell.sqnr_db - base:+.2f}" if method != "int8_default" and not math.isnan(base) else ""
            print(f"{name:<8} {method:<14} {r.qdq_pairs:>10} {len(r.unfusable):>11} {coverage:>18} "
                  f"{cell.sqnr_db:>8.2f} {delta:>15}")
    if details:
        for name, cells in results.items():
            for method, cell in cells.items():
                if cell.report is not None and (cell.report.unfusable or cell.report.float_ops):
                    print(f"\n{name} / {method}:\n{cell.report}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    parser.add_argument("--details", action="store_true", help="print each report's unfusable pairs and float ops")
    parser.add_argument("--keep", type=Path, default=None, help="write the ONNX files to this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            results[name] = measure(name, args.threads, workdir)
    print_table(results, args.details)


if __name__ == "__main__":
    main()
