"""The demo job behind ``quantrewrite demo``: a digits CNN from float to a verified int8 ONNX file.

It loads the shipped 8x8 digits and the trained ``DigitsCNN`` (``quantrewrite.demo_model``), prints the plan,
calibrates int8 and w4a8 variants with max, entropy, percentile and mse, prints test accuracy and output SQNR
against the float logits as one table, and exports the best int8 model to ONNX, checked with onnxruntime.

The configs: ``int8_max`` for "max" (``w4a8`` with max input calibration for w4a8), ``int8_default`` /
``w4a8`` (histogram input calibration) for the other methods, each with two changes:

* ``functions.add`` on: the residual add gets quantizers on both inputs, which is what TensorRT wants to fuse
  the add into the int8 convolution before it (without them the add runs in float, between a DQ and a Q);
* a ``layers`` rule giving the stem's input max calibration: the stem sees the raw pixels, 17 discrete values
  in [0, 1], and on such a histogram the entropy method (TensorRT's, as in pytorch-quantization) picks
  amax = 1/16, clipping every pixel above the first grey level (about 10% accuracy, i.e. chance).

Example:
    >>> rows = accuracy_rows(methods=("max",))
    >>> print(format_table(rows))
"""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from quantrewrite.api import plan, quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.config import QuantConfig, load_config
from quantrewrite.demo_model import digits_batches, digits_tensors, load_digits_cnn

__all__ = ["METHODS", "WEIGHT_FORMATS", "DemoRow", "accuracy_rows", "demo", "demo_config", "format_table",
           "sqnr_db"]

METHODS = ("max", "entropy", "percentile", "mse")
WEIGHT_FORMATS = ("int8", "w4a8")
CALIB_BATCH_SIZE = 64
CALIB_BATCHES = 8  # 512 train images
PERCENTILE = 99.99


@dataclass
class DemoRow:
    """One line of the demo's table.

    Attributes:
        config: "fp32", "int8" or "w4a8".
        method: the calibration method ("-" for fp32).
        accuracy: top-1 accuracy on the test split.
        sqnr_db: 10 log10(sum ref^2 / sum (ref - out)^2) of the test logits against fp32 (inf for fp32).
        calib_seconds: the calibration's wall time.
        model: the (quantized) model, kept for the caller.
        logits: its test logits.
    """

    config: str
    method: str
    accuracy: float
    sqnr_db: float
    calib_seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)


def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``reference`` in dB (inf when equal)."""
    noise = float((reference.double() - output.double()).pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def demo_config(weights: str, method: str) -> QuantConfig:
    """The demo's config for ``weights`` ("int8" or "w4a8") calibrated with ``method`` (see the module doc)."""
    if weights not in WEIGHT_FORMATS or method not in METHODS:
        raise ValueError(f"expected weights in {WEIGHT_FORMATS} and method in {METHODS}, got {weights!r}, {method!r}")
    preset = "w4a8" if weights == "w4a8" else ("int8_max" if method == "max" else "int8_default")
    data = load_config(preset).to_dict()
    data["functions"]["add"] = {"quantize": True}
    changes = ["functions.add on"]
    if method == "max":
        if data["defaults"]["input"].get("calib_method") != "max":
            data["defaults"]["input"]["calib_method"] = "max"
            changes.append("max input calibration")
    else:
        data["layers"].append({"match": "stem", "input": {"calib_method": "max"}})
        changes.append("stem input calibrated with max")
    return QuantConfig(data, source=f"preset {preset} + {', '.join(changes)}")


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def accuracy_rows(methods: Sequence[str] = METHODS, weight_formats: Sequence[str] = WEIGHT_FORMATS,
                  calib_batches: int | None = CALIB_BATCHES) -> list[DemoRow]:
    """The demo's table: fp32, then every weight format x method, on the shipped digits.

    Calibration uses the first ``calib_batches`` batches of 64 train images (None: all 1400), accuracy and
    SQNR the test split. Each row keeps its model and test logits.
    """
    model = load_digits_cnn()
    images, labels = digits_tensors("test")
    batches = digits_batches("train", CALIB_BATCH_SIZE)[:calib_batches]
    reference = _logits(model, images)
    rows = [DemoRow("fp32", "-", float((reference.argmax(1) == labels).float().mean()), math.inf,
                    model=model, logits=reference)]
    for weights in weight_formats:
        for method in methods:
            qmodel = quantize_model(model, demo_config(weights, method))
            result = calibrate(qmodel, batches, method="entropy" if method == "max" else method,
                               percentile=PERCENTILE, progress=False)
            logits = _logits(qmodel, images)
            rows.append(DemoRow(weights, method, float((logits.argmax(1) == labels).float().mean()),
                                sqnr_db(reference, logits), result.seconds, model=qmodel, logits=logits))
    return rows


def format_table(rows: Sequence[DemoRow], extra: dict[str, Sequence[str]] | None = None) -> str:
    """The rows as a text table; ``extra`` adds columns (header -> one cell per row)."""
    header = ["config", "calibration", "test acc", "SQNR dB", "calib s", *(extra or {})]
    cells = [header]
    for i, row in enumerate(rows):
        sqnr = "inf" if math.isinf(row.sqnr_db) else f"{row.sqnr_db:.1f}"
        calib = "-" if row.config == "fp32" else f"{row.calib_seconds:.2f}"
        cells.append([row.config, row.method, f"{100 * row.accuracy:.2f}%", sqnr, calib,
                      *(column[i] for column in (extra or {}).values())])
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def best_int8(rows: Sequence[DemoRow]) -> DemoRow:
    """The int8 row with the best accuracy, then the best SQNR."""
    return max((r for r in rows if r.config == "int8"), key=lambda r: (r.accuracy, r.sqnr_db))


def _onnx_missing() -> list[str]:
    return [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def _export(row: DemoRow, write: Any) -> None:
    missing = _onnx_missing()
    if missing:
        write(f"ONNX export skipped: {' and '.join(missing)} not installed "
              "(pip install -c constraints.txt -e '.[onnx]')")
        return
    import onnxruntime

    from quantrewrite.export import export_onnx

    images, labels = digits_tensors("test")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits_cnn_int8.onnx"
        report = export_onnx(row.model, images, path, input_names=["images"], output_names=["logits"],
                             dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, verify=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_logits = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        size_kib = path.stat().st_size / 1024
    write(str(report).replace(str(path), f"<tmp>/{path.name}"),
          f"  file size {size_kib:.1f} KiB (written to a temporary folder, removed when the demo ends)")
    agree = float((onnx_logits.argmax(1) == row.logits.argmax(1)).float().mean())
    accuracy = float((onnx_logits.argmax(1) == labels).float().mean())
    write(f"  over the {len(images)} test images: onnxruntime top-1 = PyTorch top-1 for {100 * agree:.2f}%; "
          f"onnxruntime test accuracy {100 * accuracy:.2f}% (PyTorch {100 * row.accuracy:.2f}%)")


def demo(out: TextIO | None = None) -> list[DemoRow]:
    """Run the demo, writing to ``out`` (default stdout); returns the table's rows. Takes a few seconds.

    It runs torch single-threaded (restored afterwards): on tensors this small, intra-op threads cost more
    than they give, several times more on a busy machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(out if out is not None else sys.stdout)
    finally:
        torch.set_num_threads(threads)


def _demo(stream: TextIO) -> list[DemoRow]:
    def write(*lines: str) -> None:
        for line in lines:
            print(line, file=stream, flush=True)

    start = time.perf_counter()
    model = load_digits_cnn()
    train, _ = digits_tensors("train")
    test, _ = digits_tensors("test")
    params = sum(p.numel() for p in model.parameters())
    write(f"DigitsCNN ({params} parameters), UCI hand-written digits 8x8 (CC BY 4.0): "
          f"{len(train)} train images ({CALIB_BATCHES * CALIB_BATCH_SIZE} used for calibration), "
          f"{len(test)} test images", "")
    write(str(plan(model, demo_config("int8", "entropy"))),
          "(layers[0] gives the stem's input, the raw pixels with 17 distinct values, max calibration: entropy "
          "calibration picks amax = 1/16 on them)", "")
    rows = accuracy_rows()
    write(f"test accuracy and output SQNR vs the fp32 logits ({CALIB_BATCHES * CALIB_BATCH_SIZE} calibration images):",
          format_table(rows), "")
    best = best_int8(rows)
    write(f"best int8 model: {best.method} calibration; exporting it to ONNX and checking it with onnxruntime")
    _export(best, write)
    write(f"\ndemo done in {time.perf_counter() - start:.1f} s")
    return rows
