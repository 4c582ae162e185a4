"""Calibration end to end, cold start and command-line start-up, as ratios measured side by side in one run.

Run: ``python benchmarks/bench_calibration_e2e.py`` from the repository root (``--skip-peer`` leaves out
NVIDIA ModelOpt; without ``nvidia-modelopt`` installed its rows say so).

* ``calibrate`` of an 8-block 64-wide residual CNN on 8 batches of 16x3x64x64, with max calibrators
  (int8_max) and with histogram calibrators (int8_default: the default method ``auto``, and ``percentile`` and
  ``mse``, which are one statistics pass without auto's scoring), over the float forward of
  the same batches under ``no_grad``; ModelOpt's ``mtq.calibrate`` (INT8_DEFAULT_CFG, max) and ModelOpt's
  histogram calibrators with entropy (see ``_modelopt_histogram_run``) on the same model and data. Rounds
  alternate; the best of ``--rounds`` is kept. ``--threads N`` sets torch's (and the kernels') thread count: on a
  loaded machine, 1 avoids the parallel regions' waits for a descheduled thread.
* ``calibrate`` with int8_default, ``auto`` and ``percentile``, on ``--auto-batches`` (64) batches over the
  float forward of the same batches (``--rounds`` minus one rounds): auto's scoring costs about the same as
  at 8 batches (its budget), so its ratio nears percentile's as the calibration set grows.
* cold start: in fresh processes, the first ``calibrate`` (int8_max with max, int8_default with percentile)
  against the best later one in the same process, and the first quantized forward over the batches after
  them against a later one (the compiled kernels open when first useful, or are built in the background
  while the eager paths run); medians of ``--cold-runs`` processes, with the kernels as installed (``pip
  install`` builds them) and not built anywhere (no compiler at install, or an installation copied to another
  CPU, before ``quantrewrite build-kernels``); what the kernels themselves cost a fresh process, timed directly
  (opening the built library at the first kernel call; building it: wall time, the compiler's CPU, this
  process's CPU); and the eager CPU histogram
  counting (what a batch counted before the kernels are ready costs) over the compiled kernel.
  ``--cold-only`` runs just these.
* ``quantrewrite --help`` in a fresh process against ``python -c "import argparse"``.
* ``sensitivity`` of the int8_default model against ModelOpt's ``auto_quantize`` scoring, per layer (see
  ``benchmarks/sensitivity_row.py``; ``--skip-sensitivity`` leaves it out: it costs ~45 float forwards a round).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quantrewrite
from benchmarks.sensitivity_row import sensitivity_rows
from quantrewrite import _kernel_loader
from quantrewrite.models import ResidualCNN

SHAPE = (16, 3, 64, 64)
BATCHES = 8

COLD_START = textwrap.dedent("""
    import json, pathlib, time, torch, quantrewrite
    from quantrewrite import _kernel_build, _kernel_loader
    if {nothing_built}:  # neither the install nor an earlier run built the kernels for this machine
        _kernel_build.PACKAGE_DIR = pathlib.Path("{cache}")
    from quantrewrite.models import ResidualCNN
    torch.manual_seed(0)
    model = ResidualCNN(num_blocks=8, width=64).eval()
    batches = [torch.randn({shape}) for _ in range({batches})]
    with torch.no_grad():
        model(batches[0])  # torch's own first-call costs are not ours
    qmodel = quantrewrite.quantize_model(model, "{config}")

    def timed(run):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    def forward():
        with torch.no_grad():
            for batch in batches:
                qmodel(batch)

    calibrations = [timed(lambda: quantrewrite.calibrate(qmodel, batches, method="{method}", progress=False))
                    for _ in range(3)]
    loaded_after_calibrate = _kernel_loader._done.is_set()
    forwards = [timed(forward) for _ in range(3)]
    print(json.dumps({{"calibrate": calibrations, "forward": forwards, "loaded": loaded_after_calibrate}}))
""")


def best_of(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The best wall time of each run over ``rounds`` rounds, the runs alternating within a round."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _model_and_batches() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = ResidualCNN(num_blocks=8, width=64).eval()
    return model, [torch.randn(SHAPE) for _ in range(BATCHES)]


def _modelopt_runs(model: torch.nn.Module, batches: list[torch.Tensor]) -> dict[str, object]:
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        return {"ModelOpt": f"not installed ({error.name}); pip install -e '.[bench]'"}

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for batch in batches:
                m(batch)

    runs: dict[str, object] = {}
    max_model = mtq.quantize(copy.deepcopy(model), mtq.INT8_DEFAULT_CFG, forward_loop=None)
    runs["ModelOpt calibrate, max (INT8_DEFAULT_CFG)"] = lambda: mtq.calibrate(max_model, "max", forward_loop)
    try:
        runs["ModelOpt calibrate, histogram inputs (entropy)"] = _modelopt_histogram_run(mtq, model, forward_loop)
    except (ImportError, TypeError, ValueError) as error:  # another ModelOpt layout or spelling
        runs["ModelOpt calibrate, histogram inputs (entropy)"] = f"not run: {type(error).__name__}: {error}"
    return runs


def _modelopt_histogram_run(mtq, model: torch.nn.Module, forward_loop) -> object:
    """ModelOpt with histogram calibrators on the inputs (max on the weights), amax by entropy: the original's
    algorithm. ModelOpt 0.47's ``calibrate`` has no histogram algorithm (its max algorithm calls the
    histogram calibrators' ``compute_amax()`` without the method they require), so the quantizers are made
    with no calibration (``"algorithm": None``) and each run drives ModelOpt's own pieces: reset, collect
    over the batches, ``load_calib_amax("entropy")`` (``load_calib_amax()`` for max calibrators)."""
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.model_calib import enable_stats_collection
    from modelopt.torch.quantization.nn import TensorQuantizer as ModelOptQuantizer

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    config["algorithm"] = None
    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*input_quantizer":
            entry["cfg"] = {**entry["cfg"], "calibrator": "histogram"}
    hist_model = mtq.quantize(copy.deepcopy(model), config, forward_loop=None)
    quantizers = [m for m in hist_model.modules() if isinstance(m, ModelOptQuantizer) and m.is_enabled
                  and getattr(m, "_calibrator", None) is not None]
    if not any(isinstance(q._calibrator, HistogramCalibrator) for q in quantizers):
        raise ValueError("no ModelOpt quantizer got a HistogramCalibrator from the config")

    def run() -> None:
        for quantizer in quantizers:
            quantizer._calibrator.reset()
        enable_stats_collection(hist_model)
        forward_loop(hist_model)
        for quantizer in quantizers:
            if isinstance(quantizer._calibrator, HistogramCalibrator):
                quantizer.load_calib_amax("entropy")
            else:
                quantizer.load_calib_amax()
            quantizer.disable_calib()
            quantizer.enable_quant()

    return run


def end_to_end(rounds: int, peer: bool) -> list[tuple[str, str]]:
    model, batches = _model_and_batches()
    _kernel_loader.wait_loaded()  # steady state here; the cold start has its own row

    def float_forward() -> None:
        with torch.no_grad():
            for batch in batches:
                model(batch)

    runs: dict[str, object] = {"float forward (baseline)": float_forward}
    for config in ("int8_max", "int8_default"):
        qmodel = quantrewrite.quantize_model(model, config)
        runs[f"calibrate, {config}"] = lambda q=qmodel: quantrewrite.calibrate(q, batches, progress=False)
    for method in ("percentile", "mse"):  # one statistics pass, no scoring: histogram calibration's own cost
        qmodel = quantrewrite.quantize_model(model, "int8_default")
        runs[f"calibrate, int8_default, method={method}"] = (
            lambda q=qmodel, m=method: quantrewrite.calibrate(q, batches, method=m, progress=False))
    if peer:
        runs.update(_modelopt_runs(model, batches))
    timed = {name: run for name, run in runs.items() if callable(run)}
    for run in timed.values():  # warm-up
        run()
    best = best_of(timed, rounds)
    base = best["float forward (baseline)"]
    rows = [(name, f"{best[name] / base:.3f}x") for name in timed]
    rows += [(name, str(note)) for name, note in runs.items() if not callable(note)]
    return rows


COLD_CONFIGS = (("int8_max", "max"), ("int8_default", "percentile"))


def _cold_process(config: str, method: str, empty_cache: bool) -> dict[str, object]:
    """One fresh process: quantize_model, 3 calibrates, 3 quantized forwards over the batches (seconds each)."""
    with tempfile.TemporaryDirectory(prefix="kernel-cache-") as cache:
        code = COLD_START.format(shape=SHAPE, batches=BATCHES, config=config, method=method,
                                 nothing_built=empty_cache, cache=cache)
        env = dict(os.environ, QUANTREWRITE_KERNEL_CACHE=cache) if empty_cache else None
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.splitlines()[-1])


def _extra(times: list[float]) -> float:
    """The first call minus the mean of the later ones (against the best later one, the call-to-call swing
    alone would read as a cold cost)."""
    return times[0] - statistics.fmean(times[1:])


def eager_counting(rounds: int = 15) -> list[tuple[str, str]]:
    """What a batch counted before the kernels are ready costs: histogram counting of relu'd 16x64x64x64
    activations (2048 bins) by the eager CPU path and the float64 torch path, over the compiled kernel."""
    from quantrewrite.calib import _kernels, histogram

    _kernel_loader.wait_loaded()
    torch.manual_seed(0)
    x = torch.randn(16, 64, 64, 64).relu_()
    top = x.abs().max().item()
    edges = torch.arange(2049, dtype=torch.float64) * top / 2048
    scale = 2048 / top
    runs = {"compiled": lambda: _kernels.count_abs(x.reshape(-1).numpy(), edges.numpy(), scale, False),
            "eager": lambda: histogram._count_cpu(x, edges, scale, False),
            "float64": lambda: histogram._count_torch(x, edges, scale, False)}
    best = best_of(runs, rounds)
    figure = (f"eager CPU path {best['eager'] / best['compiled']:.1f}x the compiled kernel; the float64 path "
              f"(CUDA's, in 4M steps) {best['float64'] / best['compiled']:.1f}x")
    return [("histogram counting before the kernels load, 16x64x64x64", figure)]


def auto_at_scale(rounds: int, batches: int) -> list[tuple[str, str]]:
    """int8_default with the default ``auto`` (and ``percentile``) over the float forward of the same, larger
    set of batches: auto's scoring is bounded by its budget while the statistics pass grows with the data."""
    model, _ = _model_and_batches()
    torch.manual_seed(1)
    data = [torch.randn(SHAPE) for _ in range(batches)]

    def float_forward() -> None:
        with torch.no_grad():
            for batch in data:
                model(batch)

    runs = {"float": float_forward}
    for method in ("auto", "percentile"):
        qmodel = quantrewrite.quantize_model(model, "int8_default")
        runs[method] = lambda q=qmodel, m=method: quantrewrite.calibrate(q, data, method=m, progress=False)
    best = best_of(runs, rounds)
    return [(f"calibrate, int8_default, method={method}, {batches} batches", f"{best[method] / best['float']:.3f}x")
            for method in ("auto", "percentile")]


KERNEL_OPEN = textwrap.dedent("""
    import json, time, torch
    from quantrewrite import _kernel_loader
    start = time.perf_counter()
    available = _kernel_loader.fused_kernels_available()
    print(json.dumps({"seconds": time.perf_counter() - start, "available": available}))
""")

KERNEL_BUILD = textwrap.dedent("""
    import json, pathlib, resource, tempfile, time
    from quantrewrite import _kernel_build
    _kernel_build.PACKAGE_DIR = pathlib.Path(tempfile.mkdtemp())  # no library from the install
    cpu, start = time.process_time(), time.perf_counter()
    _kernel_build.build_library(pathlib.Path(tempfile.mkdtemp()))
    wall, own = time.perf_counter() - start, time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "own": own, "compiler": children.ru_utime + children.ru_stime}))
""")


def kernel_costs(runs: int) -> list[tuple[str, str]]:
    """What the kernels themselves cost a fresh process, timed directly (the first-call rows above carry the
    machine's call-to-call swing): opening the built library at the first kernel call, and building it."""
    def fresh(code: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    opens = [fresh(KERNEL_OPEN) for _ in range(runs)]
    if not all(result["available"] for result in opens):
        return [("opening the built kernels at the first kernel call", "not available here (no build)")]
    builds = [fresh(KERNEL_BUILD) for _ in range(runs)]
    open_ms = sorted(1e3 * result["seconds"] for result in opens)
    opened = f"{statistics.median(open_ms):.1f} ms (median of {runs}; {' '.join(f'{v:.1f}' for v in open_ms)})"
    built = (f"{statistics.median(b['wall'] for b in builds):.2f} s wall, "
             f"{statistics.median(b['compiler'] for b in builds):.2f} s of compiler CPU in its own process, "
             f"{1e3 * statistics.median(b['own'] for b in builds):.1f} ms of this process's CPU (medians of {runs})")
    return [("opening the built kernels at the first kernel call (fresh process)", opened),
            ("building them (no build at install, empty cache)", built)]


def cold_start(runs: int) -> list[tuple[str, str]]:
    """First calibrate (and first quantized forward) of a fresh process over a later one: medians of ``runs``
    processes per row, with the kernels as installed and not built anywhere (an empty kernel cache, and none in
    the package)."""
    rows = eager_counting() + kernel_costs(runs)
    for empty_cache in (False, True):
        for config, method in COLD_CONFIGS:
            results = [_cold_process(config, method, empty_cache) for _ in range(runs)]
            cache = ", kernels not built (no build at install, empty cache)" if empty_cache else ""
            for what in ("calibrate", "forward"):
                extras = sorted(_extra(result[what]) for result in results)
                later = statistics.median(statistics.fmean(result[what][1:]) for result in results)
                name = f"first {what} in a process, {config} ({method}){cache}"
                figure = (f"+{statistics.median(extras):.3f} s over the later calls' mean (median of {runs}; "
                          f"{' '.join(f'{e:+.2f}' for e in extras)}; later call {later:.2f} s)")
                rows.append((name, figure))
            loaded = sum(bool(result["loaded"]) for result in results)
            rows.append((f"  kernels loaded by the end of the first 3 calibrates{cache}, {config}",
                         f"{loaded} of {runs} processes"))
    return rows


def cli_start_up(repeats: int = 5) -> list[tuple[str, str]]:
    def best(args: list[str]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        return min(times)

    base = best(["-c", "import argparse"])
    help_time = best(["-m", "quantrewrite", "--help"])
    torch_time = best(["-c", "import torch"])
    figure = (f"{help_time:.3f} s = {help_time / base:.2f}x python+argparse; "
              f"import torch alone {torch_time / base:.2f}x")
    return [("quantrewrite --help", figure)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-peer", action="store_true", help="leave out NVIDIA ModelOpt")
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold-start row (median)")
    parser.add_argument("--cold-only", action="store_true", help="only the cold-start rows")
    parser.add_argument("--skip-sensitivity", action="store_true", help="leave out the sensitivity row")
    parser.add_argument("--auto-batches", type=int, default=64,
                        help="the larger set of the auto-at-scale rows (0 leaves them out)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the subprocesses
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {BATCHES} batches {list(SHAPE)}, "
          "ResidualCNN(8 blocks, width 64)")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) at the start")
    if args.cold_only:
        rows = cold_start(args.cold_runs)
    else:
        rows = end_to_end(args.rounds, not args.skip_peer)
        if args.auto_batches:
            rows += auto_at_scale(max(1, args.rounds - 1), args.auto_batches)
        rows += cold_start(args.cold_runs) + cli_start_up()
        if not args.skip_sensitivity:
            rows += sensitivity_rows(*_model_and_batches(), args.rounds, not args.skip_peer)
    width = max(len(name) for name, _ in rows)
    print(f"{'what':{width}s}  ratio / figure")
    for name, value in rows:
        print(f"{name:{width}s}  {value}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1, 5, 15 min) at the end")


if __name__ == "__main__":
    main()
