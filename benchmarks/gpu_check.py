"""One script for a CUDA machine: run the CUDA tests, then time fake quantization and calibration on the GPU.

Run: ``python benchmarks/gpu_check.py`` from the repository root, in an environment with the test extra
(``pip install -e ".[test]"``) and a CUDA build of torch. Without a CUDA device it says so and exits 2.

1. ``pytest -k cuda`` over the test suite: the tests that compare the CUDA paths (fake quantization, STE,
   calibrators, Quant modules) with the CPU ones.
2. Throughput, as ratios to one elementwise pass (``torch.mul`` of the same tensor) measured with CUDA events
   in the same run, best of ``--repeats``: TensorQuantizer forward and forward+backward, per tensor and per
   channel; torch's own fused fake quant (``torch.fake_quantize_per_tensor_affine`` /
   ``per_channel_affine``) on the same tensors; max and histogram calibrator ``collect`` per batch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from quantrewrite import QuantDescriptor, TensorQuantizer, calib

SHAPES = {"act 32x64x56x56": (32, 64, 56, 56), "weight 256x256x3x3": (256, 256, 3, 3)}


DEVICE = "cuda"


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    if DEVICE != "cuda":  # --device cpu: a dry run of this script's code on a machine without a GPU
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return min(times)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


def _fake_quant_rows(repeats: int) -> list[tuple[str, float]]:
    rows = []
    for label, shape in SHAPES.items():
        x = torch.randn(shape, device=DEVICE)
        mul_ms = _best_ms(lambda x=x: torch.mul(x, 1.5), repeats)
        for axis in (None, 0):
            amax = x.abs().amax() if axis is None else x.abs().amax(dim=(1, 2, 3), keepdim=True)
            quantizer = TensorQuantizer(QuantDescriptor(axis=axis, amax=amax.cpu().numpy().tolist())).to(DEVICE)
            if axis is None:
                scale = (amax / 127).item()

                def torch_fq(x=x, scale=scale):
                    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)
            else:
                scales = (amax.reshape(-1) / 127).float()
                zeros = torch.zeros_like(scales, dtype=torch.int32)

                def torch_fq(x=x, scales=scales, zeros=zeros):
                    return torch.fake_quantize_per_channel_affine(x, scales, zeros, 0, -128, 127)
            leaf = x.clone().requires_grad_()
            name = f"{label} {'per-tensor' if axis is None else 'axis 0'}"
            rows.append((f"{name}: quantizer forward", _best_ms(lambda q=quantizer, x=x: q(x), repeats) / mul_ms))
            rows.append((f"{name}: quantizer fwd+bwd",
                         _best_ms(lambda q=quantizer, leaf=leaf: q(leaf).sum().backward(), repeats) / mul_ms))
            rows.append((f"{name}: torch fused fake quant", _best_ms(torch_fq, repeats) / mul_ms))
    return rows


def _calibration_rows(repeats: int) -> list[tuple[str, float]]:
    x = torch.randn(SHAPES["act 32x64x56x56"], device=DEVICE).relu_()
    mul_ms = _best_ms(lambda: torch.mul(x, 1.5), repeats)
    rows = []
    for name, make in (("MaxCalibrator.collect", calib.MaxCalibrator),
                       ("HistogramCalibrator.collect", calib.HistogramCalibrator)):
        calibrator = make()
        rows.append((f"{name} per batch", _best_ms(lambda c=calibrator: c.collect(x), repeats) / mul_ms))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the timing code (no tests)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing was run")
        return 2
    print(f"device: {torch.cuda.get_device_name() if DEVICE == 'cuda' else DEVICE}, torch {torch.__version__}")
    status = 0
    if not args.skip_tests and DEVICE == "cuda":
        status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-m", "slow or not slow",
                                 "tests"], check=False).returncode
        print(f"CUDA tests: {'passed' if status == 0 else f'FAILED (pytest exit {status})'}")
    print(f"{'what':58s} ratio to one torch.mul pass")
    for name, ratio in _fake_quant_rows(args.repeats) + _calibration_rows(args.repeats):
        print(f"{name:58s} {ratio:6.2f}x")
    return status


if __name__ == "__main__":
    sys.exit(main())
