"""The sensitivity row of ``bench_calibration_e2e.py``: ``quantrewrite.sensitivity`` against ModelOpt's
``mtq.auto_quantize`` scoring, as ratios to the float forward of the same batches measured side by side.

Run alone: ``python benchmarks/sensitivity_row.py [--rounds N] [--skip-peer]`` from the repository root.

* ``sensitivity`` (layer granularity, SQNR) of the model calibrated with int8_default: its wall time over the
  float forward of the same batches under ``no_grad``, and its cost per layer, from the report
  (``forward_passes / (batches x layers)``) and measured (wall time / (float forward x layers)).
* ModelOpt's ``mtq.auto_quantize`` on a fresh copy of the float model with INT8_DEFAULT_CFG against no
  quantization, the gradient score (``method="gradient"``) with cross-entropy against the float model's own
  predictions as the loss, ``num_calib_steps`` = ``num_score_steps`` = the number of batches. Its time is
  split into calibration (inside ``forward_step``), scoring (inside ``forward_backward_step``: the forward with
  gradients, each quantizable module's extra quantized forward, the backward) and the rest (setup, the
  linear-programming search), each over the float forward and per layer (ModelOpt's layers: the quantizable
  modules it searches).

Rounds alternate (float, sensitivity, ModelOpt); the best of ``rounds`` is kept. A warm-up on one batch comes
first. Without ``nvidia-modelopt`` installed the peer row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quantrewrite
from quantrewrite import _kernel_loader
from quantrewrite.models import ResidualCNN

SHAPE = (16, 3, 64, 64)
BATCHES = 8
EFFECTIVE_BITS = 12.0  # between INT8 (8) and no quantization (16): the search has something to choose


class ModelOptScoring:
    """One ``mtq.auto_quantize`` run per call on a fresh copy of the float model, its phases timed."""

    def __init__(self, mtq: Any, model: torch.nn.Module, batches: list[torch.Tensor]):
        self.mtq = mtq
        self.model = model
        with torch.no_grad():  # the loss: cross-entropy against the float model's own predictions
            self.data = [(batch, model(batch).argmax(1)) for batch in batches]
        self.calibration = self.scoring = 0.0
        self.layers = 0

    def prepare(self) -> torch.nn.Module:
        """A fresh float copy (auto_quantize converts the model it gets); not timed."""
        return copy.deepcopy(self.model)

    def __call__(self, model: torch.nn.Module, steps: int) -> None:
        self.calibration = self.scoring = 0.0

        def forward_step(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            start = time.perf_counter()
            output = m(batch[0])
            self.calibration += time.perf_counter() - start
            return output

        def forward_backward_step(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
            start = time.perf_counter()
            F.cross_entropy(m(batch[0]), batch[1]).backward()
            self.scoring += time.perf_counter() - start

        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            _, state = self.mtq.auto_quantize(
                model, constraints={"effective_bits": EFFECTIVE_BITS},
                quantization_formats=[self.mtq.INT8_DEFAULT_CFG], data_loader=self.data[:steps],
                forward_step=forward_step, forward_backward_step=forward_backward_step, num_calib_steps=steps,
                num_score_steps=steps, method="gradient")
        self.layers = len(state["candidate_stats"])


def _modelopt() -> Any:
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        return f"not installed ({error.name}); pip install -e '.[bench]'"
    return mtq


def _best_of(runs: dict[str, Callable[[], dict[str, float]]], rounds: int) -> dict[str, dict[str, float]]:
    """Each run returns its timed figures ({"total": s, ...}); rounds alternate, the round with the best
    total is kept per run."""
    best: dict[str, dict[str, float]] = {name: {"total": float("inf")} for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            figures = run()
            if figures["total"] < best[name]["total"]:
                best[name] = figures
    return best


def sensitivity_rows(model: torch.nn.Module, batches: list[torch.Tensor], rounds: int,
                     peer: bool) -> list[tuple[str, str]]:
    """The rows: sensitivity and (when ``peer``) ModelOpt auto_quantize, as ratios to the float forward."""
    qmodel = quantrewrite.quantize_model(model, "int8_default")
    quantrewrite.calibrate(qmodel, batches, progress=False)
    _kernel_loader.wait_loaded()
    reports: list[quantrewrite.SensitivityReport] = []

    def float_forward() -> dict[str, float]:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                model(batch)
        return {"total": time.perf_counter() - start}

    def sensitivity() -> dict[str, float]:
        start = time.perf_counter()
        report = quantrewrite.sensitivity(qmodel, batches)
        elapsed = time.perf_counter() - start
        reports.append(report)
        return {"total": elapsed}

    runs: dict[str, Callable[[], dict[str, float]]] = {"float": float_forward, "sensitivity": sensitivity}
    notes: list[tuple[str, str]] = []
    mtq = _modelopt() if peer else None
    scoring = None
    if isinstance(mtq, str):
        notes.append(("ModelOpt auto_quantize scoring", mtq))
    elif mtq is not None:
        scoring = ModelOptScoring(mtq, model, batches)

        def modelopt() -> dict[str, float]:
            fresh = scoring.prepare()
            start = time.perf_counter()
            scoring(fresh, len(batches))
            total = time.perf_counter() - start
            return {"total": total, "calibration": scoring.calibration, "scoring": scoring.scoring,
                    "layers": scoring.layers}

        runs["modelopt"] = modelopt

    float_forward()  # warm-up (sensitivity and ModelOpt on one batch): first-call costs are not the row's
    quantrewrite.sensitivity(qmodel, batches, num_batches=1)
    if scoring is not None:
        try:
            scoring(scoring.prepare(), 1)
        except Exception as error:  # noqa: BLE001 - a peer that cannot run here is a row, not a crash
            notes.append(("ModelOpt auto_quantize scoring", f"not run: {type(error).__name__}: {error}"))
            del runs["modelopt"]
    best = _best_of(runs, rounds)
    base = best["float"]["total"]
    report = reports[-1]
    layers = len(report.layers)
    passes_per_layer = report.forward_passes / (report.batches * layers)
    measured = best["sensitivity"]["total"]
    figure = (f"{measured / base:.2f}x the float forward; per layer: {passes_per_layer:.2f} passes (report), "
              f"{measured / (base * layers):.2f}x the float forward (measured)")
    rows = [(f"sensitivity, int8_default, {layers} layers, {report.forward_passes} passes in the report", figure)]
    if "modelopt" in best:
        figures = best["modelopt"]
        peer_layers = int(figures["layers"])
        rest = figures["total"] - figures["calibration"] - figures["scoring"]

        def ratio(seconds: float) -> str:
            return f"{seconds / base:.2f}x ({seconds / (base * peer_layers):.2f}x per layer)"

        figure = (f"{ratio(figures['total'])}: scoring {ratio(figures['scoring'])}, calibration "
                  f"{ratio(figures['calibration'])}, rest {ratio(rest)}")
        rows.append((f"ModelOpt auto_quantize (INT8 vs none, gradient), {peer_layers} layers", figure))
    return rows + notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-peer", action="store_true", help="leave out NVIDIA ModelOpt")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResidualCNN(num_blocks=8, width=64).eval()
    batches = [torch.randn(SHAPE) for _ in range(BATCHES)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {BATCHES} batches {list(SHAPE)}, "
          "ResidualCNN(8 blocks, width 64)")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) at the start")
    rows = sensitivity_rows(model, batches, args.rounds, not args.skip_peer)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:{width}s}  {value}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) at the end")


if __name__ == "__main__":
    main()
