"""Fake-quantization speed and memory: TensorQuantizer against one elementwise pass and torch's own ops.

Every contender is timed in the same process, in alternating rounds (round-robin, so machine noise hits all of
them alike), and reported as a ratio to ONE ``torch.mul(x, s)`` pass over the same tensor: the memory-bound
proxy (read x, write y). Absolute times are printed only as a footnote.

Contenders, per tensor (fp32, static amax):
    mul          torch.mul(x, s): the unit.
    quantizer    TensorQuantizer forward (fused compiled kernel on CPU).
    eager        the same quantizer with QUANTREWRITE_EAGER=1 (the torch-op formula; defines the numbers).
    torch_fq     torch.fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine.
and the same with ``.backward(g)`` (x requires grad; a fresh gradient each call, x.grad reset to None so
there is no accumulation pass). Forward+backward is ALSO divided by one forward mul pass, and compared with
torch's own ``mul`` forward+backward measured in the same rounds: column ``q+bwd-mul+bwd`` is the difference
of the two, in mul passes (the best rounds' difference / the medians' difference). When no element is outside
[-amax, amax] (weights calibrated with max), the quantizer's backward passes the incoming gradient on as it
is (the forward found that in its own pass), so its forward+backward does what mul's does: one forward pass,
and autograd storing a gradient (a copy here: the benchmark keeps ``g``).

Targets: quantizer forward <= 1.5x; forward+backward <= torch mul's forward+backward + 0.2x.

Run: python benchmarks/bench_fake_quant.py [--rounds 15] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

FORWARD_TARGET = 1.5
BACKWARD_MARGIN = 0.2  # forward+backward over torch mul's forward+backward, in mul passes


@contextlib.contextmanager
def eager_env() -> Iterator[None]:
    old = os.environ.get("QUANTREWRITE_EAGER")
    os.environ["QUANTREWRITE_EAGER"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["QUANTREWRITE_EAGER"]
        else:
            os.environ["QUANTREWRITE_EAGER"] = old


def make_case(shape: tuple[int, ...], axis: int | None) -> dict[str, Callable[[], object]]:
    """The contenders for one tensor, forward and forward+backward."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    xr = x.clone().requires_grad_()
    if axis is None:
        amax = x.abs().max()
    else:
        amax = x.abs().amax(dim=[d for d in range(x.dim()) if d != axis], keepdim=True)
    quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, axis=axis, amax=amax.tolist()))
    scale = (amax / 127.0).reshape(-1)
    s = 1.0001

    if axis is None:
        scale_f = float(scale)

        def torch_fq(t: torch.Tensor) -> torch.Tensor:
            return torch.fake_quantize_per_tensor_affine(t, scale_f, 0, -128, 127)
    else:
        zero_point = torch.zeros(scale.numel(), dtype=torch.int32)

        def torch_fq(t: torch.Tensor) -> torch.Tensor:
            return torch.fake_quantize_per_channel_affine(t, scale, zero_point, axis, -128, 127)

    def eager_forward(t: torch.Tensor) -> torch.Tensor:
        with eager_env():
            return quantizer(t)

    def backward(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            xr.grad = None
            fn(xr).backward(g)
        return run

    return {
        "mul": lambda: torch.mul(x, s),
        "quantizer": lambda: quantizer(x),
        "eager": lambda: eager_forward(x),
        "torch_fq": lambda: torch_fq(x),
        "mul+bwd": backward(lambda t: torch.mul(t, s)),
        "quantizer+bwd": backward(quantizer),
        "eager+bwd": backward(eager_forward),
        "torch_fq+bwd": backward(torch_fq),
    }


def time_round_robin(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Per contender, `rounds` single-call times; the contenders alternate within each round, so a noisy
    neighbour disturbs all of them alike, and the best of many rounds is a run nobody disturbed."""
    for fn in fns.values():  # warm up: the kernels' loading, page faults, allocator caches
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def ratio_cell(best: dict[str, float], med: dict[str, float], name: str) -> str:
    return f"{best[name] / best['mul']:.2f}/{med[name] / med['mul']:.2f}"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines), not just sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Peak bytes of tensors created (and not yet freed) during fn(), from torch.profiler's memory timeline.
    None where that (private) profiler API is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action
    except ImportError:
        return None
    fn()
    try:
        with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                     with_stack=True) as prof:
            out = fn()
            del out
        timeline = prof._memory_profile().timeline
    except Exception:  # noqa: BLE001 - a private API: report "n/a" rather than fail the benchmark
        return None
    current = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="alternating rounds (samples per contender)")
    parser.add_argument("--quick", action="store_true", help="15 rounds, for a smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the profiler memory measurement")
    parser.add_argument("--weights-only", action="store_true", help="only the 256x256x3x3 weight rows")
    args = parser.parse_args()
    rounds = 15 if args.quick else args.rounds

    cases = [
        ("act 32x64x56x56", (32, 64, 56, 56), None, "per-tensor"),
        ("act 32x64x56x56", (32, 64, 56, 56), 1, "axis 1"),
        ("weight 256x256x3x3", (256, 256, 3, 3), None, "per-tensor"),
        ("weight 256x256x3x3", (256, 256, 3, 3), 0, "axis 0"),
    ]
    if args.weights_only:
        cases = [case for case in cases if case[0].startswith("weight")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{rounds} alternating rounds; ratios to one torch.mul pass (best round / median of rounds)\n")
    header = (f"{'tensor':<20}{'amax':<12}{'quantizer':>12}{'eager':>12}{'torch_fq':>12}  |"
              f"{'q+bwd':>12}{'eager+bwd':>12}{'fq+bwd':>12}{'mul+bwd':>12}{'q+bwd-mul+bwd':>15}   mul (us)")
    print(header)
    print("-" * len(header))
    misses = []
    memory_rows = []
    for label, shape, axis, kind in cases:
        fns = make_case(shape, axis)
        samples = time_round_robin(fns, rounds)
        med = {name: statistics.median(v) for name, v in samples.items()}
        best = {name: min(v) for name, v in samples.items()}

        def cell(name: str, best: dict[str, float] = best, med: dict[str, float] = med) -> str:
            return ratio_cell(best, med, name)

        over_best = (best["quantizer+bwd"] - best["mul+bwd"]) / best["mul"]
        over_med = (med["quantizer+bwd"] - med["mul+bwd"]) / med["mul"]
        print(f"{label:<20}{kind:<12}{cell('quantizer'):>12}{cell('eager'):>12}{cell('torch_fq'):>12}  |"
              f"{cell('quantizer+bwd'):>12}{cell('eager+bwd'):>12}{cell('torch_fq+bwd'):>12}"
              f"{cell('mul+bwd'):>12}{f'{over_best:+.2f}/{over_med:+.2f}':>15}"
              f"   {best['mul'] * 1e6:.0f}/{med['mul'] * 1e6:.0f}")
        fwd = best["quantizer"] / best["mul"]
        if fwd > FORWARD_TARGET:
            misses.append(f"{label} {kind}: forward {fwd:.2f}x > {FORWARD_TARGET}x")
        if over_best > BACKWARD_MARGIN:
            misses.append(f"{label} {kind}: forward+backward {over_best:+.2f}x over torch mul's > "
                          f"+{BACKWARD_MARGIN}x")
        if not args.no_memory:
            nbytes = 4 * torch.Size(shape).numel()
            row = []
            for name in ("mul", "quantizer", "eager", "torch_fq", "quantizer+bwd", "eager+bwd"):
                peak = peak_extra_bytes(fns[name])
                row.append("n/a" if peak is None else f"{peak / nbytes:.2f}")
            memory_rows.append((label, kind, row))

    print("\ncells: best-round ratio / median ratio (the machine is shared: the best round is the one least "
          "disturbed). 'mul (us)': the unit, best/median, a footnote only.")
    if memory_rows:
        print("\npeak extra memory during one call, in tensors of the input's size (torch.profiler timeline;"
              " the output counts):")
        print(f"{'tensor':<20}{'amax':<12}{'mul':>8}{'quantizer':>11}{'eager':>8}{'torch_fq':>10}{'q+bwd':>8}"
              f"{'eager+bwd':>11}")
        for label, kind, row in memory_rows:
            print(f"{label:<20}{kind:<12}{row[0]:>8}{row[1]:>11}{row[2]:>8}{row[3]:>10}{row[4]:>8}{row[5]:>11}")
    print(f"\ntargets: quantizer forward <= {FORWARD_TARGET}x ONE forward mul pass; forward+backward <= torch "
          f"mul's forward+backward + {BACKWARD_MARGIN}x")
    print("\n".join(f"MISSED: {m}" for m in misses) if misses else "all targets met (best round)")


if __name__ == "__main__":
    main()
