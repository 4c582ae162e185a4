"""quantize_model time vs torch.ao's prepare_fx, on a residual CNN and a transformer stack of growing depth.

Run: python benchmarks/bench_rewrite.py [--depths 8 32 128] [--repeats 3]

Everything is measured side by side in one run (best of --repeats). Printed: seconds per call, the ratio
of quantize_model to plain FX tracing and to prepare_fx, and how time grows with depth.
Targets: the 128-block transformer in <= 0.7 s (measured here: prepare_fx ~16 s), time linear in depth
(128 vs 32 blocks <= 4.5x).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import fx

from quantrewrite import quantize_model
from quantrewrite.models import ResidualCNN, TransformerStack


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def prepare_fx_time(model, example, repeats: int) -> float:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    mapping = get_default_qconfig_mapping("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return best_of(lambda: prepare_fx(model, mapping, (example,)), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-prepare-fx", action="store_true", help="omit the (slow) torch.ao column")
    args = parser.parse_args()
    torch.manual_seed(0)
    families = {
        "residual CNN": (lambda n: ResidualCNN(num_blocks=n, width=16), torch.randn(1, 3, 32, 32)),
        "transformer": (lambda n: TransformerStack(num_blocks=n, width=64, heads=4), torch.randint(0, 1000, (1, 16))),
    }
    header = (f"{'model':<14}{'blocks':>7}{'FX nodes':>10}{'fx trace s':>12}{'quantize s':>12}"
              f"{'prepare_fx s':>14}{'q/trace':>9}{'q/prep':>8}")
    print(header)
    print("-" * len(header))
    growth = {}
    for family, (build, example) in families.items():
        for depth in args.depths:
            model = build(depth).eval()
            nodes = len(fx.symbolic_trace(model).graph.nodes)
            t_trace = best_of(lambda m=model: fx.symbolic_trace(m), args.repeats)
            t_quant = best_of(lambda m=model: quantize_model(m, "int8_default"), args.repeats)
            t_prep = float("nan") if args.skip_prepare_fx else prepare_fx_time(model, example, 1)
            growth[(family, depth)] = t_quant
            print(f"{family:<14}{depth:>7}{nodes:>10}{t_trace:>12.3f}{t_quant:>12.3f}{t_prep:>14.3f}"
                  f"{t_quant / t_trace:>9.2f}{t_quant / t_prep:>8.3f}")
    if 32 in args.depths and 128 in args.depths:
        for family in families:
            ratio = growth[(family, 128)] / growth[(family, 32)]
            print(f"{family}: quantize_model time 128 vs 32 blocks = {ratio:.2f}x (target <= 4.5x)")


if __name__ == "__main__":
    main()
