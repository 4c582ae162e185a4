"""HistogramCalibrator: exact counts, growth, and entropy / mse / percentile against slow literal references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantrewrite import calib
from quantrewrite.calib import _kernels, histogram
from quantrewrite.tensor_quant import fake_tensor_quant


@pytest.fixture(params=["compiled", "torch"])
def counting_path(request, monkeypatch):
    """Run a test through the compiled CPU kernel and through the torch (CUDA / fallback) path."""
    if request.param == "torch":
        monkeypatch.setattr(_kernels, "use_compiled", lambda: False)
    return request.param


@pytest.fixture(params=["compiled", "numpy"])
def sweep_path(request, monkeypatch):
    """Run an amax sweep through the compiled kernel and through its numpy twin."""
    if request.param == "numpy":
        monkeypatch.setattr(_kernels, "use_compiled", lambda: False)
    return request.param


def _np_hist(values: list[torch.Tensor], edges: torch.Tensor, skip_zeros: bool = False) -> np.ndarray:
    a = np.abs(torch.cat([v.reshape(-1) for v in values]).double().numpy())
    if skip_zeros:
        a = a[a != 0]
    return np.histogram(a, bins=edges.numpy())[0]


# ---------------------------------------------------------------- collection

def test_counts_match_numpy_on_the_same_edges(counting_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, generator=gen)
    calibrator = calib.HistogramCalibrator(num_bins=100)
    calibrator.collect(x)
    edges = calibrator.bin_edges
    # values sitting exactly on (float32-representable) edges and their neighbours
    on_edges = edges.float()[edges.float().double() == edges]
    near = torch.cat([on_edges, torch.nextafter(on_edges, torch.tensor(0.0)), -on_edges])
    calibrator.collect(near)
    assert calibrator.histogram.dtype == torch.int64
    assert torch.equal(calibrator.bin_edges, edges)
    np.testing.assert_array_equal(calibrator.histogram.numpy(), _np_hist([x, near], edges))
    assert edges[-1].item() == x.abs().max().item()


def test_growth_keeps_width_and_old_edges(counting_path):
    gen = torch.Generator().manual_seed(1)
    first = torch.rand(1000, generator=gen)
    second = torch.rand(1000, generator=gen) * 2.5
    calibrator = calib.HistogramCalibrator(num_bins=64)
    calibrator.collect(first)
    old_edges = calibrator.bin_edges
    calibrator.collect(second)
    edges = calibrator.bin_edges
    assert edges.numel() > old_edges.numel()
    assert torch.equal(edges[:old_edges.numel()], old_edges)
    width = old_edges[1].item() - old_edges[0].item()
    np.testing.assert_allclose(np.diff(edges.numpy()), width, rtol=1e-12)
    assert edges[-2] < second.max() <= edges[-1]
    # each batch is counted on the edges of its time (first.max() stays in the then-closed last old bin)
    expected = _np_hist([second], edges)
    expected[:old_edges.numel() - 1] += _np_hist([first], old_edges)
    np.testing.assert_array_equal(calibrator.histogram.numpy(), expected)


def test_chunked_torch_path_counts_exactly(monkeypatch):
    monkeypatch.setattr(_kernels, "use_compiled", lambda: False)
    monkeypatch.setattr(histogram, "_CPU_CHUNK", 333)
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(2)).relu()
    calibrator = calib.HistogramCalibrator(num_bins=50)
    calibrator.collect(x)
    np.testing.assert_array_equal(calibrator.histogram.numpy(), _np_hist([x], calibrator.bin_edges))


def _near_edges(edges: torch.Tensor, ulps: int) -> torch.Tensor:
    """Every float32 within ``ulps`` steps of each edge (rounded to float32), and the negatives of some."""
    values, below, above = [edges.float()], edges.float(), edges.float()
    for _ in range(ulps):
        below = torch.nextafter(below, torch.tensor(0.0))
        above = torch.nextafter(above, torch.tensor(np.inf))
        values += [below, above]
    values = torch.cat(values)
    values = values[values.double() <= edges[-1]]  # the calibrator's precondition: nothing beyond the last edge
    return torch.cat([values, -values[::3]])


@pytest.mark.parametrize(("base_max", "num_bins", "grown"), [
    (1.0, 2048, 0), (0.1, 1000, 0), (3.0e-3, 2047, 7), (7.77, 100, 300), (2.0**-20, 3, 1), (1.0e5, 1, 0)])
@pytest.mark.parametrize("skip_zeros", [False, True])
def test_cpu_eager_counts_equal_the_kernel_and_numpy_near_edges(base_max, num_bins, grown, skip_zeros):
    """The eager CPU counting guesses bins in float32 and recounts the elements near an edge: on values on
    and within a few ulps of every edge (float64 edges that float32 cannot hold among them), exact zeros,
    -0.0, and grown bins, it gives the compiled kernel's counts and numpy's on the float64 edges."""
    base_max = float(np.float32(base_max))
    nbins = num_bins + grown
    edges = torch.arange(nbins + 1, dtype=torch.float64) * base_max / num_bins
    gen = torch.Generator().manual_seed(nbins)
    x = torch.cat([_near_edges(edges, 3), torch.rand(3000, generator=gen) * float(edges[-1]) * 0.999,
                   torch.zeros(40), torch.tensor([-0.0] * 5)])
    x = x[torch.randperm(x.numel(), generator=gen)]
    scale = num_bins / base_max
    expected = _np_hist([x], edges, skip_zeros)
    eager = histogram._count_cpu(x, edges, scale, skip_zeros)
    np.testing.assert_array_equal(eager.numpy(), expected)
    np.testing.assert_array_equal(histogram._count_torch(x, edges, scale, skip_zeros).numpy(), expected)
    if _kernels.use_compiled():
        np.testing.assert_array_equal(_kernels.count_abs(x.numpy(), edges.numpy(), scale, skip_zeros), expected)


def test_cpu_eager_counting_outside_its_float32_bounds_counts_exactly(counting_path):
    # base_max of a subnormal float32: num_bins / base_max overflows float32, so the float64 path counts
    x = torch.tensor([1.0e-39, 5.0e-40, 0.0, 2.5e-40])
    calibrator = calib.HistogramCalibrator(num_bins=4)
    calibrator.collect(x)
    np.testing.assert_array_equal(calibrator.histogram.numpy(), _np_hist([x], calibrator.bin_edges))


def test_counts_beyond_float32_saturation(monkeypatch):
    """2^24 + 7 zeros in one bin: a float32 counter would stop at 2^24. Stride-0 input keeps memory small."""
    monkeypatch.setattr(_kernels, "use_compiled", lambda: False)
    monkeypatch.setattr(histogram, "_CPU_CHUNK", 1 << 22)
    calibrator = calib.HistogramCalibrator(num_bins=8)
    calibrator.collect(torch.tensor([1.0]))
    calibrator.collect(torch.zeros(()).expand(2**24 + 7))
    assert calibrator.histogram[0].item() == 2**24 + 7
    assert calibrator.histogram.sum().item() == 2**24 + 8


def test_skip_zeros(counting_path):
    x = torch.tensor([0.0, 0.0, -0.0, 0.5, 1.0, 0.25, 0.0])
    calibrator = calib.HistogramCalibrator(num_bins=4, skip_zeros=True)
    calibrator.collect(x)
    assert calibrator.histogram.tolist() == [0, 1, 1, 1]


def test_all_zero_first_batch(counting_path):
    calibrator = calib.HistogramCalibrator(num_bins=4)
    calibrator.collect(torch.zeros(10))
    assert calibrator.compute_amax("entropy").item() == 0.0
    assert calibrator.histogram.tolist() == [10]
    calibrator.collect(torch.tensor([0.0, 4.0]))
    assert calibrator.histogram.tolist() == [11, 0, 0, 1]
    assert calibrator.bin_edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_half_input_and_negative_values(counting_path):
    x = torch.tensor([-3.0, 1.0, 2.0, -0.5], dtype=torch.float16)
    calibrator = calib.HistogramCalibrator(num_bins=3)
    calibrator.collect(x)
    assert calibrator.histogram.tolist() == [1, 1, 2]


def test_non_finite_input_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        calib.HistogramCalibrator().collect(torch.tensor([1.0, float("nan")]))


def test_per_channel_is_rejected():
    with pytest.raises(ValueError, match="per-channel histograms are not supported"):
        calib.HistogramCalibrator(axis=0)


def test_no_data_is_none_and_reset():
    calibrator = calib.HistogramCalibrator()
    for method in ("max", "entropy", "mse", "percentile"):
        assert calibrator.compute_amax(method) is None
    calibrator.collect(torch.rand(100))
    calibrator.reset()
    assert calibrator.compute_amax("mse") is None and calibrator.histogram is None
    assert calibrator.num_batches == 0


def test_repr():
    calibrator = calib.HistogramCalibrator(num_bins=4)
    calibrator.collect(torch.tensor([0.0, 4.0]))
    assert repr(calibrator) == ("HistogramCalibrator(num_bits=8, axis=None, unsigned=False, num_bins=4, "
                                "skip_zeros=False, bins=4, range=[0, 4], num_batches=1)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_counts_match_cpu():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(64, 1000, generator=gen).relu() * (1 + i) for i in range(3)]
    on_cpu, on_gpu = calib.HistogramCalibrator(), calib.HistogramCalibrator()
    for x in batches:
        on_cpu.collect(x)
        on_gpu.collect(x.cuda().half().float())
    assert on_gpu.histogram.is_cuda
    cpu_half = calib.HistogramCalibrator()
    for x in batches:
        cpu_half.collect(x.half().float())
    assert torch.equal(on_gpu.histogram.cpu(), cpu_half.histogram)
    for method in ("entropy", "mse", "percentile"):
        assert on_gpu.compute_amax(method).item() == cpu_half.compute_amax(method).item()


# ---------------------------------------------------------------- compute_amax arguments

def test_unknown_method_suggests():
    calibrator = calib.HistogramCalibrator()
    calibrator.collect(torch.rand(10))
    with pytest.raises(ValueError, match="did you mean 'entropy'"):
        calibrator.compute_amax("entropi")
    with pytest.raises(ValueError, match="expected one of"):
        calibrator.compute_amax("kl")


def test_max_method_is_the_exact_largest_magnitude_over_batches():
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(257, generator=gen) * scale for scale in (1.0, 3.0, 0.5)]
    calibrator = calib.HistogramCalibrator()
    for x in batches:
        calibrator.collect(x)
    expected = max(x.abs().max().item() for x in batches)
    assert calibrator.compute_amax("max").item() == expected
    only_zeros = calib.HistogramCalibrator()
    only_zeros.collect(torch.zeros(4))
    assert only_zeros.compute_amax("max").item() == 0.0


@pytest.mark.parametrize("percentile", [-0.1, 100.5], ids=["below", "above"])
def test_percentile_out_of_range(percentile):
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        calib.HistogramCalibrator().compute_amax("percentile", percentile=percentile)


def test_start_bin_beyond_histogram():
    calibrator = calib.HistogramCalibrator(num_bins=64)
    calibrator.collect(torch.rand(100))
    with pytest.raises(ValueError, match="start_bin 128"):
        calibrator.compute_amax("entropy")


# ---------------------------------------------------------------- percentile

@pytest.mark.parametrize(("percentile", "expected"), [
    (0, 0.0), (40, 0.0), (50, 1.0), (75, 2.0), (90, 4.0), (99, 7.0), (100, 9.0),
], ids=lambda v: str(v))
def test_percentile_hand_computed(percentile, expected):
    # unit bins over [0, 10]; cumulative counts 50 70 80 90 95 98 99 100 100 101 (of 101)
    counts = [50, 20, 10, 10, 5, 3, 1, 1, 0, 0]
    values = torch.cat([torch.full((n,), k + 0.5) for k, n in enumerate(counts)] + [torch.tensor([10.0])])
    calibrator = calib.HistogramCalibrator(num_bins=10)
    calibrator.collect(values)
    assert calibrator.compute_amax("percentile", percentile=percentile).item() == expected


# ---------------------------------------------------------------- entropy and mse vs slow references

def _kl_like_scipy(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q): both normalised by their sums, then Σ rel_entr(p, q)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = p / p.sum(), q / q.sum()
        terms = np.where(p > 0, np.where(q > 0, p * np.log(p / q), np.inf), 0.0)
        terms[np.isnan(p) | np.isnan(q)] = np.nan
    return float(terms.sum())


def entropy_reference(counts: np.ndarray, num_bits: int, unsigned: bool, stride: int, start_bin: int):
    """The original algorithm step by step (linspace + digitize grouping); returns the KL per candidate."""
    bins = counts.copy()
    bins[0] = bins[1]
    nq = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, bins.size + 1, stride):
        group = np.digitize(np.arange(i), np.linspace(0, i, num=nq + 1)) - 1
        group[bins[:i] == 0] = -1
        used = group != -1
        group_sum, group_size = np.zeros(nq), np.zeros(nq)
        np.add.at(group_sum, group[used], bins[:i][used])
        np.add.at(group_size, group[used], 1)
        q = np.zeros(i)
        q[used] = group_sum[group[used]] / group_size[group[used]]
        p = bins[:i].astype(np.float64)
        p[-1] += bins[i:].sum()
        divergences.append(_kl_like_scipy(p, q))
    return np.array(divergences)


def mse_reference(counts: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool, stride: int,
                  start_bin: int):
    """Errors per candidate centre, built on fake_tensor_quant; returns (errors, amax of the first minimum).

    One fake_tensor_quant call quantizes the centres with every candidate amax (one row each).
    """
    centers = torch.from_numpy(((edges[:-1] + edges[1:]) / 2).astype(np.float32))
    candidates = centers[start_bin::stride]
    grid = centers.expand(candidates.numel(), -1)
    fq = fake_tensor_quant(grid, candidates[:, None], num_bits, unsigned, narrow_range=False)
    n = torch.from_numpy(counts).double()
    errors = (n * (fq.double() - grid.double()) ** 2).sum(dim=1).numpy()
    return errors, candidates[int(np.argmin(errors))].item()


def _one_hot(size: int, at: int, count: int = 1000) -> np.ndarray:
    out = np.zeros(size, dtype=np.int64)
    out[at] = count
    return out


def _histograms() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)

    def hist(values, n=512):
        return np.histogram(np.abs(values), bins=n, range=(0, np.abs(values).max()))[0].astype(np.int64)

    spiky = rng.poisson(3, 512)
    spiky[rng.choice(512, 5, replace=False)] += 100_000
    sparse = rng.integers(1, 50, 512) * (rng.random(512) < 0.1)
    gap = hist(rng.uniform(0.6, 1.0, 20_000))
    gap[:300] = 0
    tail = hist(rng.standard_t(2, 50_000))
    return {
        "halfnormal": hist(rng.standard_normal(100_000)),
        "halfnormal_2048": hist(rng.standard_normal(1_000_000), 2048),
        "relu_zero_spike": hist(np.maximum(rng.standard_normal(50_000), 0)),
        "uniform": hist(rng.uniform(0, 1, 30_000)),
        "laplace": hist(rng.laplace(size=50_000)),
        "student_t2_tail": tail,
        "spiky": spiky.astype(np.int64),
        "sparse_90pct_empty": sparse.astype(np.int64),
        "small_counts_ties": rng.integers(0, 3, 512).astype(np.int64),
        "all_ones": np.ones(512, dtype=np.int64),
        "one_bin_0": _one_hot(512, 0),
        "one_bin_1": _one_hot(512, 1),
        "one_bin_200": _one_hot(512, 200),
        "one_bin_last": _one_hot(512, 511),
        "first_and_last": _one_hot(512, 0) + _one_hot(512, 511, 3),
        "below_start_bin": np.concatenate([rng.integers(1, 100, 100), np.zeros(412, np.int64)]),
        "empty_start_gap": gap,
        "bimodal": hist(np.concatenate([rng.normal(0.2, 0.02, 20_000), rng.normal(0.8, 0.05, 5_000)])),
        "power_law": (1e6 / np.arange(1, 513) ** 2).astype(np.int64),
        "linear_decay": np.arange(512, 0, -1, dtype=np.int64),
        "three_singletons": _one_hot(512, 3, 1) + _one_hot(512, 150, 1) + _one_hot(512, 400, 1),
        "geometric": (1e7 * 0.97 ** np.arange(512)).astype(np.int64),
        "odd_size_777": hist(rng.standard_normal(50_000), 777),
        "grown_1000": np.concatenate([hist(rng.standard_normal(50_000)), rng.poisson(0.3, 488)]),
    }


HISTOGRAMS = _histograms()
# (num_bits, unsigned, stride, start_bin)
CONFIGS = {"int8": (8, False, 1, 128), "uint8": (8, True, 1, 128), "int4": (4, False, 1, 16),
           "int7_stride3": (7, False, 3, 100)}
ENTROPY_CASES = [(h, "int8") for h in HISTOGRAMS] + [
    (h, c) for h in ("halfnormal", "spiky", "small_counts_ties", "sparse_90pct_empty", "odd_size_777",
                     "empty_start_gap", "three_singletons") for c in ("uint8", "int4", "int7_stride3")]


@pytest.mark.parametrize(("hist_name", "config"), ENTROPY_CASES, ids=[f"{h}-{c}" for h, c in ENTROPY_CASES])
def test_entropy_matches_literal_reference(hist_name, config, sweep_path):
    counts = HISTOGRAMS[hist_name]
    num_bits, unsigned, stride, start_bin = config = CONFIGS[config]
    reference = entropy_reference(counts, *config)
    bins = counts.copy()
    bins[0] = bins[1]
    fast = _kernels.entropy_divergences(bins, start_bin, counts.size, stride, 1 << (num_bits - 1 + unsigned))
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(reference))
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(reference))
    finite = np.isfinite(reference)
    np.testing.assert_allclose(fast[finite], reference[finite], rtol=0, atol=1e-13)
    expected = start_bin + histogram._last_argmin(reference) * stride
    edges = np.arange(counts.size + 1, dtype=np.float64)  # amax == the chosen bin index
    assert histogram.amax_entropy(counts, edges, num_bits, unsigned, stride, start_bin) == expected


@pytest.mark.parametrize("hist_name", ["halfnormal", "halfnormal_2048", "laplace", "relu_zero_spike",
                                       "bimodal", "odd_size_777", "empty_start_gap", "one_bin_200"])
def test_entropy_matches_original_exact_argmin(hist_name):
    """Without ties the tolerance changes nothing: the original's exact last-argmin (np.argmin on the
    reversed divergences) picks the same bin, once the NaN candidates (an empty Q: a range below all the
    data, which the original would pick) are set aside."""
    counts = HISTOGRAMS[hist_name]
    reference = entropy_reference(counts, 8, False, 1, 128)
    finite = np.where(np.isnan(reference), np.inf, reference)
    original = 128 + reference.size - 1 - int(np.argmin(finite[::-1]))
    edges = np.arange(counts.size + 1, dtype=np.float64)
    assert histogram.amax_entropy(counts, edges, 8, False) == original


@pytest.mark.parametrize(("kl", "expected"), [
    ([0.3, 0.1, 0.2, 0.1], 3), ([0.1, 0.1 + 1e-15, 0.2], 1), ([np.nan, np.nan, 0.0, 0.5], 2),
    ([np.inf, np.inf], 1), ([0.0, np.inf, 0.0, np.inf], 2), ([np.nan, np.nan], 1),
], ids=["last_of_equal", "within_tolerance", "nan_never_chosen", "all_inf", "inf_between", "all_nan_last"])
def test_last_argmin_rule(kl, expected):
    assert histogram._last_argmin(np.array(kl)) == expected


MSE_CASES = [(h, "int8") for h in ("halfnormal", "halfnormal_2048", "spiky", "small_counts_ties", "one_bin_0",
                                   "one_bin_last", "empty_start_gap", "odd_size_777", "student_t2_tail")] + [
    (h, c) for h in ("halfnormal", "sparse_90pct_empty") for c in ("uint8", "int4", "int7_stride3")]


@pytest.mark.parametrize(("hist_name", "config"), MSE_CASES, ids=[f"{h}-{c}" for h, c in MSE_CASES])
def test_mse_matches_fake_tensor_quant_reference(hist_name, config, sweep_path):
    counts = HISTOGRAMS[hist_name]
    num_bits, unsigned, stride, start_bin = CONFIGS[config]
    edges = np.arange(counts.size + 1, dtype=np.float64) * (3.7 / counts.size)
    errors, expected = mse_reference(counts, edges, num_bits, unsigned, stride, start_bin)
    centers = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    lo, hi = (0.0, float(2 ** (num_bits - 1 + unsigned) - 1))
    fast = _kernels.mse_errors(counts, centers, start_bin, counts.size - 1, stride, lo, hi)
    np.testing.assert_allclose(fast, errors, rtol=1e-13, atol=0)
    assert histogram.amax_mse(counts, edges, num_bits, unsigned, stride, start_bin) == expected


def test_compute_amax_end_to_end():
    """The public path: collect, then each method equals the module-level function on the histogram."""
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(5)).relu()
    calibrator = calib.HistogramCalibrator(unsigned=True)
    calibrator.collect(x)
    counts, edges = calibrator.histogram.numpy(), calibrator.bin_edges.numpy()
    assert calibrator.compute_amax("entropy").item() == np.float32(histogram.amax_entropy(counts, edges, 8, True))
    assert calibrator.compute_amax("mse", stride=2).item() == histogram.amax_mse(counts, edges, 8, True, 2)
    assert calibrator.compute_amax("percentile").dtype == torch.float32


def test_entropy_never_picks_a_range_below_all_the_data():
    """Few distinct levels with an empty bottom (raw pixels 0..16 of 16): the original's NaN rule gave an
    amax of 1/16, below every non-zero value; here the amax covers the data."""
    levels = torch.arange(17, dtype=torch.float32) / 16
    data = levels.repeat_interleave(torch.tensor([4000] + [50] * 15 + [900]))
    calibrator = calib.HistogramCalibrator()
    calibrator.collect(data)
    assert calibrator.compute_amax("entropy").item() > 0.5


@pytest.mark.parametrize("skip_zeros", [False, True])
def test_kernel_counts_exactly_across_parallel_chunks_and_blocks(skip_zeros):
    """Enough elements for several parallel chunks and many blocks with partial tails (2^18 + 37), values on
    and next to every edge scattered among relu'd noise (long runs of one bin), against numpy."""
    assert _kernels.use_compiled()
    nbins, base_max = 512, 2.5
    edges = torch.arange(nbins + 1, dtype=torch.float64) * base_max / nbins
    gen = torch.Generator().manual_seed(5)
    near = _near_edges(edges, 2)
    noise = (torch.randn((1 << 18) + 37 - near.numel(), generator=gen) * 0.8).relu_().clamp_(max=base_max)
    x = torch.cat([noise, near])
    x = x[torch.randperm(x.numel(), generator=gen)]
    expected = _np_hist([x], edges, skip_zeros)
    counts = _kernels.count_abs(x.numpy(), edges.numpy(), nbins / base_max, skip_zeros)
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] > 1000 * (not skip_zeros) and counts.sum() == x.numel() - skip_zeros * int((x == 0).sum())


def test_kernel_refuses_arrays_it_would_misread():
    edges = np.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="expected a 1-d float32 array, got float64"):
        _kernels.count_abs(np.zeros(8), edges, 4.0, False)
    with pytest.raises(ValueError, match="expected a 1-d float64 array, got float32"):
        _kernels.count_abs(np.zeros(8, np.float32), edges.astype(np.float32), 4.0, False)
