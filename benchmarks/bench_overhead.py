"""Eval-mode cost of a calibrated quantized model relative to its float model.

Run: python benchmarks/bench_overhead.py [--repeats 15]

Float and quantized forwards run alternately in one process (under torch.no_grad, eval mode), and the
printed ratio is the median of the per-pair ratios, so machine noise hits both sides alike.
Models: a 16-block 64-channel residual CNN on a 16x3x64x64 batch, and a 12-layer 256-wide transformer on
8x128 tokens. Targets: <= 1.08x and <= 1.15x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from quantrewrite import quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.models import ResidualCNN, TransformerStack


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model: torch.nn.Module, example: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    qmodel = quantize_model(model, "int8_max")
    calibrate(qmodel, [example], progress=False)
    model.eval()
    qmodel.eval()
    ratios, floats, quants = [], [], []
    with torch.no_grad():
        for _ in range(2):  # warm-up: allocator, kernels, caches
            model(example)
            qmodel(example)
        for _ in range(repeats):
            t_float = _time(lambda: model(example))
            t_quant = _time(lambda: qmodel(example))
            floats.append(t_float)
            quants.append(t_quant)
            ratios.append(t_quant / t_float)
    return statistics.median(ratios), min(quants) / min(floats), statistics.median(floats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = [
        ("residual CNN 16x64", ResidualCNN(num_blocks=16, width=64, widen=False), torch.randn(16, 3, 64, 64), 1.08),
        ("transformer 12x256", TransformerStack(num_blocks=12, width=256, heads=8), torch.randint(0, 1000, (8, 128)),
         1.15),
    ]
    print(f"{'model':<22}{'median ratio':>14}{'best/best':>11}{'target':>8}  verdict")
    for name, model, example, target in cases:
        median, best, _ = measure(model.eval(), example, args.repeats)
        verdict = "ok" if median <= target else "MISSED"
        print(f"{name:<22}{median:>13.3f}x{best:>10.3f}x{target:>7.2f}x  {verdict}")


if __name__ == "__main__":
    main()
