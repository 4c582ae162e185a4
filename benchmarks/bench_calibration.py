"""Benchmark the histogram calibrator: collection throughput and compute_amax per method.

Run: ``python benchmarks/bench_calibration.py`` from the repository root. Everything is measured in this
one run: collection of four ReLU'd 32x64x56x56 fp32 batches (ms per batch, and the ratio to one
``torch.mul`` pass over one batch), compute_amax for entropy / percentile / mse on that histogram (best of
several repeats), and the plain literal entropy algorithm (as pytorch-quantization runs it, with the
original's exact last-argmin) on the same histogram, with both amaxes and their bin difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from quantrewrite import calib

SHAPE = (32, 64, 56, 56)
TARGETS_MS = {"entropy": 50.0, "percentile": 10.0, "mse": 10.0}


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def literal_entropy(counts: np.ndarray, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                    start_bin: int = 128) -> int:
    """The original algorithm step by step; returns the chosen bin index (exact last argmin)."""
    bins = counts.copy()
    bins[0] = bins[1]
    nq = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, bins.size + 1, stride):
        group = np.digitize(np.arange(i), np.linspace(0, i, num=nq + 1)) - 1
        group[bins[:i] == 0] = -1
        q_counts, q_sizes = np.zeros(nq), np.zeros(nq)
        for j, g in enumerate(group):
            if g != -1:
                q_counts[g] += bins[j]
                q_sizes[g] += 1
        q = np.zeros(i)
        for j, g in enumerate(group):
            if g != -1:
                q[j] = q_counts[g] / q_sizes[g]
        p = bins[:i].astype(np.float64)
        p[-1] += bins[i:].sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            p, q = p / p.sum(), q / q.sum()
            terms = np.where(p > 0, np.where(q > 0, p * np.log(p / q), np.inf), 0.0)
        divergences.append(terms.sum())
    divergences = np.array(divergences)
    return start_bin + (divergences.size - 1 - int(np.argmin(divergences[::-1]))) * stride


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-literal", action="store_true", help="skip the slow literal entropy (~seconds)")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(SHAPE, generator=gen).relu_() for _ in range(4)]
    out = torch.empty_like(batches[0])
    mul_ms = best_ms(lambda: torch.mul(batches[0], 1.5, out=out), args.repeats * 3)

    def collect_all() -> calib.HistogramCalibrator:
        calibrator = calib.HistogramCalibrator()
        for x in batches:
            calibrator.collect(x)
        return calibrator

    calibrator = collect_all()  # warm-up: opens (or builds) the compiled kernels
    for method in TARGETS_MS:
        calibrator.compute_amax(method)
    collect_ms = best_ms(collect_all, args.repeats) / len(batches)

    rows = [("torch.mul (one batch, baseline)", mul_ms, "-", "1.0x")]
    rows.append(("collect (per batch)", collect_ms, "-", f"{collect_ms / mul_ms:.1f}x of mul"))
    amax = {}
    for method, target in TARGETS_MS.items():
        ms = best_ms(lambda m=method: calibrator.compute_amax(m), args.repeats)
        amax[method] = calibrator.compute_amax(method).item()
        rows.append((f"compute_amax({method!r})", ms, f"{target:.0f}", f"{ms / target:.2f} of target"))

    edges = calibrator.bin_edges.numpy()
    counts = calibrator.histogram.numpy()
    fast_bin = int(np.abs(edges - amax["entropy"]).argmin())  # amax is float32, the edges float64
    lines = []
    if not args.skip_literal:
        start = time.perf_counter()
        literal_bin = literal_entropy(counts)
        literal_ms = (time.perf_counter() - start) * 1e3
        rows.append(("literal entropy (reference, once)", literal_ms, "-",
                     f"{literal_ms / min(r[1] for r in rows if 'entropy' in r[0]):.0f}x slower"))
        lines.append(f"entropy amax: fast {amax['entropy']:.6f} (bin {fast_bin}), literal "
                     f"{float(edges[literal_bin]):.6f} (bin {literal_bin}), bin difference "
                     f"{fast_bin - literal_bin:+d}")
    print(f"histogram: {counts.size} bins over [0, {edges[-1]:.4f}], {int(counts.sum())} values; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'what':36s} {'ms':>10s} {'target ms':>10s}  ratio")
    for name, ms, target, ratio in rows:
        print(f"{name:36s} {ms:10.2f} {target:>10s}  {ratio}")
    print(f"amax: entropy {amax['entropy']:.6f}, percentile(99.99) {amax['percentile']:.6f}, "
          f"mse {amax['mse']:.6f}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
