"""tensor_quant / fake_tensor_quant / fake_e4m3_quant against NUMERICS.md and a small independent reference.

The reference below is numpy float32 arithmetic (the scale from a float64 division rounded once to float32,
which is the correctly rounded float32 quotient). The fused compiled kernels and the eager torch path must both
equal it bit for bit, and each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from quantrewrite import _kernel_loader, _kernels
from quantrewrite import tensor_quant as tq
from quantrewrite.tensor_quant import fake_e4m3_quant, fake_tensor_quant, quant_bounds, tensor_quant

EPS = 2.0**-24


# -------------------------------------------------------------------------------------------- reference
def ref_bounds(num_bits: int, unsigned: bool, narrow: bool) -> tuple[float, float]:
    max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1
    if unsigned:
        return 0.0, max_bound
    return (-max_bound if narrow else -max_bound - 1), max_bound


def ref_scale(amax: Any, max_bound: float) -> np.ndarray:
    a = np.asarray(amax, dtype=np.float32)
    with np.errstate(divide="ignore"):
        scale = (np.float64(max_bound) / a.astype(np.float64)).astype(np.float32)
    return np.where(a <= EPS, np.float32(0), scale).astype(np.float32)


def ref_quant(x: torch.Tensor, amax: Any, num_bits: int = 8, unsigned: bool = False, narrow: bool = True,
              fake: bool = True) -> torch.Tensor:
    """NUMERICS.md's formula in numpy float32."""
    lo, hi = ref_bounds(num_bits, unsigned, narrow)
    xs = x.detach().float().numpy()
    scale = ref_scale(amax, hi)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(xs * scale), np.float32(lo), np.float32(hi)).astype(np.float32)
        out = q / np.where(scale == 0, np.float32(1), scale) if fake else q
    out = np.where(scale == 0, np.float32(0), out).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (so -0.0 != 0.0 and NaN == NaN), same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    int_type = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                torch.float64: torch.int64}[a.dtype]
    return torch.equal(a.contiguous().view(int_type), b.contiguous().view(int_type))


# --------------------------------------------------------------------------------------- path switching


@pytest.fixture
def both(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Any]], tuple[Any, Any, int]]:
    """both(fn) -> (fused result, eager result, number of fused-kernel calls made by the fused run)."""

    def run(fn: Callable[[], Any]) -> tuple[Any, Any, int]:
        calls = 0
        names = ("fake_quant_into", "quant_into", "quant_find_clipped_into", "quantize_into", "ste_grad_into")
        real = {name: getattr(_kernels, name) for name in names}

        def counting(name: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                kwargs["checked"] = True  # the tests also check the buffers tensor_quant hands over
                return real[name](*args, **kwargs)
            return wrapper

        with monkeypatch.context() as m:
            m.delenv("QUANTREWRITE_EAGER", raising=False)
            for name in real:
                m.setattr(_kernels, name, counting(name))
            fused = fn()
        with monkeypatch.context() as m:
            m.setenv("QUANTREWRITE_EAGER", "1")
            eager = fn()
        return fused, eager, calls

    return run


def test_fused_kernels_available_here() -> None:
    # The test machines have a C compiler: without one every "fused" test would silently test the eager path
    # twice.
    assert _kernel_loader.wait_loaded(), _kernel_loader.load_error()
    assert _kernels.fused_kernels_available()


def test_eager_switch_is_read_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    assert not _kernels.fused_kernels_available()
    monkeypatch.setenv("QUANTREWRITE_EAGER", "0")
    assert _kernels.fused_kernels_available()


# ------------------------------------------------------------------------------------------ hand vectors
HAND = {
    "int8-amax127": ([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5], 127.0, 8, False, False,
                     [-8, -8, -2, 0, 0, 2, 2]),
    "int8-amax127-narrow": ([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5], 127.0, 8, False, True,
                            [-8, -8, -2, 0, 0, 2, 2]),
    "int4-narrow": ([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 3.49, 7.6], 7.0, 4, False, True,
                    [-7, -7, -2, 0, 0, 2, 3, 7]),
    "int4-full": ([-8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 3.49, 7.6], 7.0, 4, False, False,
                  [-8, -8, -2, 0, 0, 2, 3, 7]),
    "uint8-amax255": ([0, 0.5, 1.5, 2.5, 254.5, 300], 255.0, 8, True, False, [0, 0, 2, 2, 254, 255]),
}


@pytest.mark.parametrize("case", list(HAND.values()), ids=list(HAND))
def test_hand_vectors(case: tuple, path: str) -> None:
    values, amax, num_bits, unsigned, narrow, expected = case
    x = torch.tensor(values)
    q, scale = tensor_quant(x, torch.tensor(amax), num_bits, unsigned, narrow)
    assert scale.item() == 1.0
    assert q.tolist() == expected
    fake = fake_tensor_quant(x, torch.tensor(amax), num_bits, unsigned, narrow)
    assert fake.tolist() == expected  # scale 1: fake == q


@pytest.mark.parametrize("narrow", [False, True], ids=["full", "narrow"])
def test_hand_vector_per_row(narrow: bool, path: str) -> None:
    # NUMERICS gives this example "at full range"; no element reaches -128, so narrow gives the same numbers.
    w = torch.tensor([[0.5, -1, 0.25], [2, -0.3, 0.7]])
    amax = torch.tensor([[1.0], [2.0]])
    fake = fake_tensor_quant(w, amax, 8, False, narrow)
    expected = torch.tensor([[0.50394, -1, 0.25197], [2, -0.29921, 0.69291]])
    torch.testing.assert_close(fake, expected, rtol=0, atol=6e-6)
    exact = torch.tensor([[64 / 127, -1.0, 32 / 127], [2.0, -19 / 63.5, 44 / 63.5]], dtype=torch.float32)
    assert same_bits(fake, exact)
    q, scale = tensor_quant(w, amax, 8, False, narrow)
    assert q.tolist() == [[64, -127, 32], [127, -19, 44]]
    assert scale.tolist() == [[127.0], [63.5]]


def test_low_level_default_is_narrow() -> None:
    x = torch.tensor([-2.0])
    assert tensor_quant(x, 1.0)[0].item() == -127  # narrow by default
    assert tensor_quant(x, 1.0, narrow_range=False)[0].item() == -128


@pytest.mark.parametrize(("num_bits", "unsigned", "narrow", "expected"), [
    (8, False, False, (-128, 127)), (8, False, True, (-127, 127)), (8, True, False, (0, 255)),
    (4, False, False, (-8, 7)), (4, False, True, (-7, 7)), (2, False, False, (-2, 1)),
    (16, False, False, (-32768, 32767)), (16, True, True, (0, 65535)), (1, True, False, (0, 1)),
], ids=["s8", "s8n", "u8", "s4", "s4n", "s2", "s16", "u16", "u1"])
def test_quant_bounds(num_bits: int, unsigned: bool, narrow: bool, expected: tuple[int, int]) -> None:
    assert quant_bounds(num_bits, unsigned, narrow) == expected


def test_scale_is_a_true_division() -> None:
    # torch's `float / tensor` multiplies by the reciprocal: 1 ulp off for ~1/4 of amax values.
    amax = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 10 + 1e-3
    _, scale = tensor_quant(torch.zeros(10_000), amax)
    assert torch.equal(scale, torch.from_numpy(ref_scale(amax.numpy(), 127.0)))


# ----------------------------------------------------------------------------------- random vs reference
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None, bool]] = {
    # name: (shape, kept dims (None = per-tensor), fused kernel expected)
    "per-tensor": ((4, 6, 5, 3), None, True),
    "axis0-weight": ((6, 3, 3, 3), (0,), True),
    "axis1-act": ((2, 6, 5, 5), (1,), True),
    "axis-1": ((7, 5, 12), (-1,), True),
    "axes01": ((3, 4, 5, 5), (0, 1), True),
    "axes02-eager": ((3, 4, 5, 2), (0, 2), False),
}
MODES = {"signed": (False, False), "narrow": (False, True), "unsigned": (True, False)}


def make_inputs(shape: tuple[int, ...], axis: tuple[int, ...] | None, num_bits: int, unsigned: bool,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random x and an amax (per-tensor or keepdim per-channel) with exact half steps, values beyond amax,
    ±amax itself and zeros mixed in."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2
    if unsigned:
        x = x.abs()
    if axis is None:
        amax = torch.tensor(1.7)
    else:
        keep = [d % len(shape) for d in axis]
        amax_shape = [s if d in keep else 1 for d, s in enumerate(shape)]
        amax = torch.rand(amax_shape, generator=gen) * 3 + 0.25
    max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1
    step = torch.from_numpy(np.asarray(1 / ref_scale(amax.numpy(), max_bound))).expand(shape)
    flat, steps = x.reshape(-1), step.reshape(-1)
    n = flat.numel()
    k = torch.randint(-3, 4, (n,), generator=gen).float()
    if unsigned:
        k = k.abs()
    pick = torch.rand(n, generator=gen)
    flat[pick < 0.15] = ((k + 0.5) * steps)[pick < 0.15]  # ties (after float32 rounding, roughly)
    amax_full = amax.expand(shape).reshape(-1)
    flat[(pick > 0.9) & (pick < 0.93)] = amax_full[(pick > 0.9) & (pick < 0.93)]
    if not unsigned:
        flat[(pick > 0.93) & (pick < 0.96)] = -amax_full[(pick > 0.93) & (pick < 0.96)]
    flat[pick > 0.99] = 0.0
    return x, amax


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
@pytest.mark.parametrize("num_bits", [2, 4, 8, 16], ids=lambda b: f"{b}bit")
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_random_matches_reference(layout: str, num_bits: int, mode: str, both: Callable) -> None:
    shape, axis, fused_expected = LAYOUTS[layout]
    unsigned, narrow = MODES[mode]
    x, amax = make_inputs(shape, axis, num_bits, unsigned, seed=num_bits)
    expected = ref_quant(x, amax.numpy(), num_bits, unsigned, narrow)
    fused, eager, calls = both(lambda: fake_tensor_quant(x, amax, num_bits, unsigned, narrow))
    assert (calls > 0) == fused_expected
    assert same_bits(fused, expected)
    assert same_bits(eager, expected)
    expected_q = ref_quant(x, amax.numpy(), num_bits, unsigned, narrow, fake=False)
    (fused_q, _), (eager_q, _), _ = both(lambda: tensor_quant(x, amax, num_bits, unsigned, narrow))
    assert same_bits(fused_q, expected_q)
    assert same_bits(eager_q, expected_q)


def test_reference_is_not_trivial() -> None:
    # The random inputs really exercise rounding and clamping: outputs differ from inputs and saturate.
    x, amax = make_inputs((6, 3, 3, 3), (0,), 4, False, seed=4)
    out = fake_tensor_quant(x, amax, 4)
    assert not torch.equal(out, x)
    assert bool((out.abs() == amax.expand_as(x)).any())


@pytest.mark.parametrize("layout", ["per-tensor", "axis1-act"])
def test_large_tensor_fused_equals_eager(layout: str, both: Callable) -> None:
    # Big enough for the kernel's parallel loop to split the work across threads.
    _, axis, _ = LAYOUTS[layout]
    x, amax = make_inputs((8, 16, 33, 31), axis, 8, False, seed=1)  # per-tensor: 7 parallel rows + a tail
    fused, eager, calls = both(lambda: fake_tensor_quant(x, amax, 8, False, False))
    assert calls == 1
    assert same_bits(fused, eager)
    assert same_bits(fused, ref_quant(x, amax.numpy(), 8, False, False))
    assert x.numel() % _kernels.ROW and x.numel() // _kernels.ROW > 1
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        xr = x.clone().requires_grad_()
        out = fake_tensor_quant(xr, amax, 8, False, False)
        out.backward(grad)
        return out.detach(), xr.grad

    (fused_out, fused_grad), (eager_out, eager_grad), calls = both(forward_backward)
    assert calls == 2  # the forward kernel, the straight-through kernel
    assert same_bits(fused_out, eager_out) and same_bits(fused_out, fused)
    assert same_bits(fused_grad, eager_grad)
    assert same_bits(fused_grad, ste_reference(x, amax, grad))


@pytest.mark.parametrize("axis", [None, (0,), (1,)], ids=["per-tensor", "axis0", "axis1"])
def test_non_contiguous_inputs(axis: tuple[int, ...] | None, both: Callable) -> None:
    base, _ = make_inputs((5, 7, 4), None, 8, False, seed=3)
    x = base.transpose(0, 1)  # [7, 5, 4], not contiguous
    assert not x.is_contiguous()
    if axis is None:
        amax = torch.tensor(2.5)
    else:
        amax = x.abs().amax(dim=[d for d in range(3) if d not in axis], keepdim=True) * 0.8
    expected = ref_quant(x, amax.numpy(), 8, False, False)
    fused, eager, calls = both(lambda: fake_tensor_quant(x, amax, 8, False, False))
    assert calls == 1
    assert same_bits(fused, expected) and same_bits(eager, expected)


def test_output_is_new_and_input_untouched(path: str) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = fake_tensor_quant(x, 1.0)
    assert out.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)


def test_amax_with_leading_ones_and_scalar_inputs(path: str) -> None:
    x = torch.tensor(0.3)
    assert fake_tensor_quant(x, torch.tensor([1.0])).shape == torch.Size([])
    assert fake_tensor_quant(x, torch.tensor([[1.0]])).item() == pytest.approx(0.3, abs=1 / 254)
    empty = torch.empty(0, 3)
    assert fake_tensor_quant(empty, torch.ones(1, 3)).shape == (0, 3)


@pytest.mark.parametrize("amax_shape", [(3,), (2, 1, 1), (1, 2, 3, 4)], ids=["wrong-last", "wrong-first",
                                                                             "grows-rank"])
def test_amax_must_broadcast(amax_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="does not broadcast"):
        fake_tensor_quant(torch.zeros(4, 2, 4), torch.ones(amax_shape))


# ------------------------------------------------------------------------------------------- amax edge
@pytest.mark.parametrize("amax", [0.0, EPS, EPS / 2], ids=["zero", "eps", "half-eps"])
def test_tiny_amax_gives_zero(amax: float, path: str) -> None:
    x = torch.tensor([-3.0, -1e-9, 0.0, 1e-9, 5.0, float("inf"), float("-inf")])
    out = fake_tensor_quant(x, amax)
    assert same_bits(out, torch.zeros_like(x))
    q, scale = tensor_quant(x, amax)
    assert same_bits(q, torch.zeros_like(x)) and scale.item() == 0.0


def test_just_above_epsilon_is_not_zeroed(path: str) -> None:
    amax = float(np.nextafter(np.float32(EPS), np.float32(1)))
    x = torch.tensor([amax, -amax])
    torch.testing.assert_close(fake_tensor_quant(x, amax), x, rtol=1e-6, atol=0)


def test_tiny_amax_per_channel(path: str) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    x[1, 0] = float("inf")
    amax = torch.tensor([[1.0], [0.0], [EPS]])
    out = fake_tensor_quant(x, amax, 8, False, False)
    assert torch.isfinite(out).all()
    assert same_bits(out[1:], torch.zeros(2, 4))
    assert same_bits(out[:1], ref_quant(x[:1], 1.0, 8, False, False))


@pytest.mark.parametrize("amax", [-1.0, [1.0, -0.5], float("nan")], ids=["negative", "one-negative", "nan"])
def test_bad_amax_raises(amax: Any, path: str) -> None:
    with pytest.raises(ValueError, match="amax must be >= 0"):
        fake_tensor_quant(torch.ones(2), torch.tensor(amax))
    with pytest.raises(ValueError, match="amax must be >= 0"):
        tensor_quant(torch.ones(2), torch.tensor(amax))


def test_empty_amax_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        fake_tensor_quant(torch.ones(2), torch.empty(0))


@pytest.mark.parametrize("num_bits", [-1, 8.0, True, (5, 2)], ids=["negative", "float", "bool", "e5m2"])
def test_bad_num_bits(num_bits: Any) -> None:
    with pytest.raises(ValueError, match="num_bits"):
        fake_tensor_quant(torch.ones(2), 1.0, num_bits)


@pytest.mark.parametrize("num_bits", [0, 1], ids=["0bit", "1bit-signed"])
def test_degenerate_bits_give_zero(num_bits: int, path: str) -> None:
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 9.0])
    assert same_bits(fake_tensor_quant(x, 1.0, num_bits), torch.zeros(5))
    assert same_bits(fake_tensor_quant(x, 1.0, num_bits, narrow_range=False), torch.zeros(5))


def test_nan_and_inf_inputs(both: Callable) -> None:
    x = torch.tensor([float("nan"), float("inf"), float("-inf"), 1.0])
    fused, eager, calls = both(lambda: fake_tensor_quant(x, 2.0, 8, False, False))
    assert calls == 1 and same_bits(fused, eager)
    assert torch.isnan(fused[0]) and same_bits(fused[1:], torch.tensor([2.0, -256 / 127, 128 / 127]))


# ------------------------------------------------------------------------------------------- unsigned
@pytest.mark.parametrize("axis", [None, (0,)], ids=["per-tensor", "per-channel"])
def test_unsigned_negative_input_raises(axis: tuple[int, ...] | None, path: str) -> None:
    x = torch.rand(4, 8, generator=torch.Generator().manual_seed(0))
    x[2, 5] = -1e-3
    amax = torch.tensor(1.0) if axis is None else torch.ones(4, 1)
    with pytest.raises(ValueError, match="(?i)negative values encountered in unsigned quantization"):
        fake_tensor_quant(x, amax, 8, unsigned=True)
    with pytest.raises(ValueError, match="(?i)negative values"):
        tensor_quant(x, amax, 8, unsigned=True)
    x[2, 5] = 0.0
    fake_tensor_quant(x, amax, 8, unsigned=True)


def test_unsigned_negative_detected_in_kernel_pass() -> None:
    scale = np.array([255.0], np.float32)
    inv = _kernels.reciprocal_scale(scale, 0.0, 255.0)
    for n in (4, _kernels.ROW * 2 + 5):  # serial, and parallel rows plus a serial tail
        x = torch.rand(n, generator=torch.Generator().manual_seed(n))
        out = torch.empty_like(x)
        assert not _kernels.fake_quant_into(x, out, (1, 1, n), scale, inv, 0.0, 255.0)
        for where in (0, n - 1):  # in a parallel row and in the tail
            x[where] = -0.25
            assert _kernels.fake_quant_into(x, out, (1, 1, n), scale, inv, 0.0, 255.0)
            assert _kernels.quant_into(x, out, (1, 1, n), scale, 0.0, 255.0)
            assert not _kernels.quant_into(x, out, (1, 1, n), scale, 0.0, 255.0, check_negative=False)
            x[where] = 0.5
    rows = torch.tensor([[0.5, 1.0], [2.0, -3.0]])  # [outer 1, channels 2, inner 2]; channel 1 has scale 0
    scale2 = np.array([1.0, 0.0], np.float32)
    inv2 = _kernels.reciprocal_scale(scale2, 0.0, 255.0)
    assert _kernels.fake_quant_into(rows, torch.empty_like(rows), (1, 2, 2), scale2, inv2, 0, 255)


def _quotient_mismatches(mantissa_step: int) -> int:
    """Through the fused kernel: for the scales s = 1 + m * 2^-23 (every ``mantissa_step``-th float32 mantissa,
    one channel each) and every odd |q| <= 255, how many fake-quantized q / s differ from IEEE division."""
    q = torch.arange(1, 256, 2, dtype=torch.float32)
    q = torch.cat([q, -q])
    mismatches = 0
    chunk = 1 << 15
    for first in range(0, 1 << 23, chunk * mantissa_step):
        m = torch.arange(first, min(first + chunk * mantissa_step, 1 << 23), mantissa_step, dtype=torch.float64)
        s = (1.0 + m * 2.0**-23).float()  # exact: 24-bit significands
        r = torch.tensor(1.0) / s
        x = (q[None, :] * r[:, None]).contiguous()  # rint(x * s) == q: |x * s - q| <= 255 * 2^-23
        out = torch.empty_like(x)
        scale = s.numpy()
        _kernels.fake_quant_into(x, out, (1, s.numel(), q.numel()), scale,
                                 _kernels.reciprocal_scale(scale, -255.0, 255.0), -255.0, 255.0)
        mismatches += int((out != q[None, :] / s[:, None]).sum())
    return mismatches


def test_fast_quotient_is_exact_for_8bit_on_sampled_mantissas() -> None:
    # The kernels divide q / s as y = q * RN(1/s) plus one exact FMA correction. Check it against IEEE
    # division for every 64th float32 mantissa of s and every odd |q| <= 255 (even q and other binades of s
    # follow by exact power-of-two scaling); the slow test below covers every mantissa.
    assert _kernel_loader.wait_loaded(), _kernel_loader.load_error()
    assert _quotient_mismatches(64) == 0


@pytest.mark.slow
def test_fast_quotient_is_exact_for_8bit_exhaustively() -> None:
    # Every mantissa (2^31 quotients). The same check up to |q| = 65535 is the arithmetic's claim (a numba
    # build of the same two FMAs passed it offline, ~90 s).
    assert _kernel_loader.wait_loaded(), _kernel_loader.load_error()
    assert _quotient_mismatches(1) == 0


def test_eager_fallback_where_the_fast_quotient_does_not_apply(both: Callable) -> None:
    # > 16 bits, and a huge amax (scale < 2^-100): fake quantization must divide, so it goes the eager way.
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    for amax, num_bits in ((2.0, 20), (2.0**110, 8)):
        fused, eager, calls = both(lambda a=amax, b=num_bits: fake_tensor_quant(x * a, a, b))
        assert calls == 0 and same_bits(fused, eager)
        assert same_bits(fused, ref_quant(x * amax, amax, num_bits))


@pytest.mark.parametrize("bad", ["float64", "non-contiguous", "wrong-numel", "scale-size"])
def test_kernels_refuse_bad_buffers(bad: str) -> None:
    # The kernels read raw addresses: anything but contiguous float32 CPU memory of the right size is refused.
    x, out, scale = torch.zeros(4, 6), torch.empty(4, 6), np.ones(1, np.float32)
    if bad == "float64":
        x = x.double()
    elif bad == "non-contiguous":
        x = torch.zeros(6, 4).t()
    elif bad == "wrong-numel":
        out = torch.empty(4, 5)
    else:
        scale = np.ones(2, np.float32)
    with pytest.raises(ValueError):
        _kernels.fake_quant_into(x, out, (1, 1, 24), scale, scale, -128, 127)
    with pytest.raises(ValueError):
        _kernels.ste_grad_into(x, torch.zeros(4, 6), out, (1, 1, 24), scale)


# ------------------------------------------------------------------------------------------ half types
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("axis", [None, (1,)], ids=["per-tensor", "axis1"])
def test_half_types_computed_in_fp32(dtype: torch.dtype, axis: tuple[int, ...] | None, path: str) -> None:
    x32, amax = make_inputs((2, 6, 5, 5), axis, 8, False, seed=5)
    x = x32.to(dtype)
    out = fake_tensor_quant(x, amax, 8, False, False)
    assert out.dtype == dtype
    assert same_bits(out, fake_tensor_quant(x.float(), amax, 8, False, False).to(dtype))
    assert same_bits(out, ref_quant(x, amax.numpy(), 8, False, False))
    q, scale = tensor_quant(x, amax, 8, False, False)
    assert q.dtype == dtype and scale.dtype == torch.float32


# -------------------------------------------------------------------------------------------- backward
def ste_reference(x: torch.Tensor, amax: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    inside = np.abs(x.detach().float().numpy()) <= amax.numpy()
    return torch.from_numpy(np.where(inside, grad.numpy(), np.float32(0)).astype(np.float32))


@pytest.mark.parametrize("fn", ["fake", "quant"])
@pytest.mark.parametrize("axis", [None, (0,), (1,), (0, 2)], ids=["per-tensor", "axis0", "axis1", "axes02"])
def test_straight_through_backward(axis: tuple[int, ...] | None, fn: str, both: Callable) -> None:
    x0, amax = make_inputs((4, 3, 5, 2), axis, 8, False, seed=7)
    amax_full = amax.expand(x0.shape)
    # Exactly at ±amax passes (inclusive); the next float outside does not.
    x0.view(-1)[:4] = torch.stack([amax_full.reshape(-1)[0], -amax_full.reshape(-1)[1],
                                   torch.nextafter(amax_full.reshape(-1)[2], torch.tensor(9.0)),
                                   -torch.nextafter(amax_full.reshape(-1)[3], torch.tensor(9.0))])
    grad = torch.randn(x0.shape, generator=torch.Generator().manual_seed(8))

    def run() -> torch.Tensor:
        x = x0.clone().requires_grad_()
        out = fake_tensor_quant(x, amax, 8) if fn == "fake" else tensor_quant(x, amax, 8)[0]
        out.backward(grad)
        return x.grad

    fused, eager, calls = both(run)
    expected = ste_reference(x0, amax, grad)
    assert same_bits(fused, expected) and same_bits(eager, expected)
    assert fused.view(-1)[:4].tolist() == [grad.view(-1)[0].item(), grad.view(-1)[1].item(), 0.0, 0.0]
    assert calls == (0 if axis == (0, 2) else 2)  # forward kernel + STE kernel


def test_backward_with_non_contiguous_grad(both: Callable) -> None:
    x0 = torch.linspace(-3, 3, 24).reshape(4, 6)
    grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).t()

    def run() -> torch.Tensor:
        x = x0.clone().requires_grad_()
        fake_tensor_quant(x, 2.0).backward(grad)
        return x.grad

    fused, eager, _ = both(run)
    assert same_bits(fused, eager) and same_bits(fused, ste_reference(x0, torch.tensor(2.0), grad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_backward_compares_in_fp32(dtype: torch.dtype, path: str) -> None:
    amax = torch.tensor(0.99999)  # rounds to 1.0 in fp16/bf16: |1.0| <= amax must still be False
    x = torch.tensor([1.0, -0.5, 0.99], dtype=dtype, requires_grad=True)
    fake_tensor_quant(x, amax).backward(torch.ones(3, dtype=dtype))
    assert x.grad.dtype == dtype
    assert x.grad.tolist() == [0.0, 1.0, 1.0]


def test_amax_gets_no_gradient(path: str) -> None:
    x = torch.randn(3, 4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    amax = torch.tensor(0.5, requires_grad=True)
    out = fake_tensor_quant(x, amax)
    gx, gamax = torch.autograd.grad(out.sum(), [x, amax], allow_unused=True)
    assert gamax is None
    assert gx is not None
    amax_c = torch.full((3, 1), 0.5, requires_grad=True)
    out = tensor_quant(x, amax_c)[0] + fake_e4m3_quant(x, amax_c)
    out.sum().backward()
    assert amax_c.grad is None and x.grad is not None


def test_no_graph_without_requires_grad(path: str) -> None:
    out = fake_tensor_quant(torch.ones(3), 1.0)
    assert out.grad_fn is None and not out.requires_grad
    with torch.no_grad():
        assert fake_tensor_quant(torch.ones(3, requires_grad=True), 1.0).grad_fn is None


# -------------------------------------------------------------------------------------------------- FP8
def ref_e4m3(x: torch.Tensor, amax: Any) -> torch.Tensor:
    scale = torch.from_numpy(ref_scale(amax, 448.0))
    y = (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    y = y / torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.where(scale == 0, torch.zeros_like(y), y).to(x.dtype)


def test_fp8_hand_values() -> None:
    x = torch.tensor([1.0, 3.3, 500.0, -1000.0, 0.0013, 240.0, 250.0])
    # scale 1: E4M3 has 3 mantissa bits (3.3 -> 3.25), saturates at ±448, smallest subnormal 2^-9.
    assert fake_e4m3_quant(x, 448.0).tolist() == [1.0, 3.25, 448.0, -448.0, 2.0**-9, 240.0, 256.0]


@pytest.mark.parametrize("axis", [None, (0,)], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fp8_matches_reference(axis: tuple[int, ...] | None, dtype: torch.dtype, path: str) -> None:
    x, amax = make_inputs((6, 3, 4, 4), axis, 8, False, seed=11)
    x = (x * 1.5).to(dtype)  # plenty beyond amax
    out = fake_e4m3_quant(x, amax)
    assert out.dtype == dtype
    assert same_bits(out, ref_e4m3(x, amax.numpy()))
    assert not torch.isnan(out).any()
    # beyond amax saturates to (about) ±amax: 448 / scale
    beyond = x.float().abs() > amax
    assert beyond.any()
    limit = np.asarray(np.float32(448.0) / ref_scale(amax.numpy(), 448.0))
    limit = torch.from_numpy(limit).to(dtype).float().expand(x.shape)
    torch.testing.assert_close(out.float().abs()[beyond], limit[beyond], rtol=0, atol=0)


def test_fp8_through_num_bits(path: str) -> None:
    x, amax = make_inputs((6, 3, 4, 4), (0,), 8, False, seed=12)
    assert same_bits(fake_tensor_quant(x, amax, (4, 3)), fake_e4m3_quant(x, amax))
    q, scale = tensor_quant(x, amax, (4, 3))
    assert same_bits(q, (x * scale).clamp(-448, 448).to(torch.float8_e4m3fn).float())
    with pytest.raises(ValueError, match="signed"):
        fake_tensor_quant(x.abs(), amax, (4, 3), unsigned=True)


def test_fp8_backward_and_tiny_amax(path: str) -> None:
    x = torch.tensor([-2.0, -1.0, 0.5, 1.0, 3.0], requires_grad=True)
    fake_e4m3_quant(x, torch.tensor(1.0)).backward(torch.ones(5))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert same_bits(fake_e4m3_quant(x.detach(), 0.0), torch.zeros(5))


# ------------------------------------------------------------------------------------------- prepared grid
def test_prepared_grid_reuse_matches_fresh_calls(path: str) -> None:
    x, amax = make_inputs((2, 6, 5, 5), (1,), 8, False, seed=2)
    grid = tq.prepare_grid(amax, 8, False, False)
    for seed in range(3):
        y = x * (1 + seed)
        assert same_bits(tq.quantize_with_grid(y, grid), fake_tensor_quant(y, amax, 8, False, False))
        assert same_bits(tq.quantize_with_grid(y, grid, fake=False), tensor_quant(y, amax, 8, False, False)[0])


def test_grid_does_not_alias_the_callers_amax(path: str) -> None:
    amax = torch.tensor([[1.0], [2.0]])
    grid = tq.prepare_grid(amax, 8)
    x = torch.tensor([[1.5, 0.5], [1.5, 3.0]], requires_grad=True)
    out = tq.quantize_with_grid(x, grid)
    amax.fill_(10.0)  # e.g. a recalibration between forward and backward
    out.backward(torch.ones(2, 2))
    assert x.grad.tolist() == [[0.0, 1.0], [1.0, 0.0]]  # the amax of the forward
    assert grid.amax.tolist() == [[1.0], [2.0]]


# ---------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("narrow", [False, True], ids=["full", "narrow"])
@pytest.mark.parametrize("axis", [None, (0,)], ids=["per-tensor", "axis0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_matches_cpu(narrow: bool, axis: tuple[int, ...] | None, dtype: torch.dtype) -> None:
    x, amax = make_inputs((8, 4, 6, 6), axis, 8, False, seed=9)
    x = x.to(dtype)
    x[0, 0, 0, 0] = -5 * float(amax.max())  # -128 only in the full range: narrow_range must be honoured
    cpu = fake_tensor_quant(x, amax, 8, False, narrow)
    gpu = fake_tensor_quant(x.cuda(), amax.cuda(), 8, False, narrow)
    assert same_bits(gpu.cpu(), cpu)
    q_cpu, _ = tensor_quant(x, amax, 8, False, narrow)
    q_gpu, _ = tensor_quant(x.cuda(), amax.cuda(), 8, False, narrow)
    assert same_bits(q_gpu.cpu(), q_cpu)
    assert q_cpu.min().item() == (-127 if narrow else -128)
    xg = x.cuda().requires_grad_()
    fake_tensor_quant(xg, amax.cuda(), 8, False, narrow).backward(torch.ones_like(xg))
    xc = x.clone().requires_grad_()
    fake_tensor_quant(xc, amax, 8, False, narrow).backward(torch.ones_like(xc))
    assert same_bits(xg.grad.cpu(), xc.grad)
