"""calibrate(), calibration() and load_calib_amax(model), including ranks merged with torch.distributed."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import quantrewrite as qr
from quantrewrite.calib.distributed import merge_histograms
from quantrewrite.calibration import CALIB_METHODS, DEFAULT_METHOD, calibrate, calibration, load_calib_amax
from quantrewrite.models import ResidualCNN

MAX_CONFIG = "int8_max"

# TwoBranch's unused branch warns on purpose; the test that checks the warning captures it itself.
pytestmark = pytest.mark.filterwarnings("ignore:.*saw no calibration data:UserWarning")


class TwoBranch(nn.Module):
    """A model whose second branch never runs in forward: its quantizers see no data."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(8, 4)
        self.unused = nn.Linear(8, 4)

    def forward(self, x, scale=1.0):
        return self.used(x) * scale


def _batches(count=3, shape=(4, 3, 16, 16), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


def test_max_calibration_sets_amax_to_running_max_of_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    qmodel = qr.quantize_model(model, MAX_CONFIG)
    batches = _batches(4, (5, 8))
    result = calibrate(qmodel, batches, progress=False)
    expected_input = torch.stack([b.abs().max() for b in batches]).max()
    assert torch.equal(qmodel[0].input_quantizer.amax, expected_input)
    # the weight's per-row amax is max |w| over the input dim
    assert torch.equal(qmodel[0].weight_quantizer.amax, model[0].weight.abs().amax(dim=1, keepdim=True))
    hidden = torch.cat([F.relu(model[0](b)) for b in batches])
    assert torch.equal(qmodel[2].input_quantizer.amax, hidden.abs().max())
    assert sorted(result.calibrated) == sorted(qr.list_quantizers(qmodel))
    assert result.batches == 4 and not result.no_data


def test_calibrate_restores_modes_and_switches():
    qmodel = qr.quantize_model(ResidualCNN(2, 8), MAX_CONFIG)
    qmodel.train()
    calibrate(qmodel, _batches(), progress=False)
    assert qmodel.training
    assert all(m.training for m in qmodel.modules())
    for quantizer in qr.list_quantizers(qmodel).values():
        assert quantizer.is_quant_enabled and not quantizer.is_calib_enabled
        assert quantizer.amax is not None


def test_calibrate_runs_in_eval_mode_so_batchnorm_stats_do_not_move():
    qmodel = qr.quantize_model(ResidualCNN(2, 8), MAX_CONFIG).train()
    before = qmodel.bn1.running_mean.clone()
    calibrate(qmodel, _batches(), progress=False)
    assert torch.equal(qmodel.bn1.running_mean, before)


@pytest.mark.parametrize("method", CALIB_METHODS)
def test_histogram_methods_give_amax_within_data_range(method):
    qmodel = qr.quantize_model(ResidualCNN(2, 8), "int8_default")
    batches = _batches()
    calibrate(qmodel, batches, method=method, progress=False)
    amax = qmodel.conv1.input_quantizer.amax
    assert 0 < amax.item() <= max(b.abs().max().item() for b in batches) * 1.001


def test_max_method_on_histogram_calibrators_equals_max_calibration():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = _batches(3, (5, 8))
    by_histogram = qr.quantize_model(model, "int8_default")
    by_max = qr.quantize_model(model, MAX_CONFIG)
    result = calibrate(by_histogram, batches, method="max", progress=False)
    calibrate(by_max, batches, progress=False)
    assert result.method == "max"
    for name, quantizer in qr.list_quantizers(by_max).items():
        assert torch.equal(qr.list_quantizers(by_histogram)[name].amax, quantizer.amax), name


def test_default_method_is_an_accepted_method():
    assert DEFAULT_METHOD in CALIB_METHODS
    assert calibrate.__kwdefaults__["method"] == DEFAULT_METHOD


def test_percentile_parameter_reaches_the_calibrator():
    qmodel = qr.quantize_model(nn.Sequential(nn.Linear(16, 4)), "int8_default")
    batches = _batches(2, (64, 16))
    calibrate(qmodel, batches, method="percentile", percentile=50.0, progress=False)
    low = qmodel[0].input_quantizer.amax.item()
    calibrate(qmodel, batches, method="percentile", percentile=99.99, progress=False)
    high = qmodel[0].input_quantizer.amax.item()
    median = torch.cat(batches).abs().median().item()
    assert low < high
    assert abs(low - median) < 0.05 * torch.cat(batches).abs().max().item()


def test_unused_branch_is_named_once_and_keeps_dynamic_amax():
    qmodel = qr.quantize_model(TwoBranch(), MAX_CONFIG)
    with pytest.warns(UserWarning, match="saw no calibration data") as record:
        result = calibrate(qmodel, _batches(2, (3, 8)), progress=False)
    (warning,) = [w for w in record if "saw no calibration data" in str(w.message)]
    assert warning.filename == __file__  # attributed to the caller's line, not to quantrewrite's internals
    assert sorted(result.no_data) == ["unused._input_quantizer", "unused._weight_quantizer"]
    with qr.calibration(qmodel):
        qmodel(torch.randn(3, 8))
    with pytest.warns(UserWarning, match="saw no calibration data") as record:
        qr.load_calib_amax(qmodel, "max")
    assert [w.filename for w in record if "saw no calibration data" in str(w.message)] == [__file__]
    assert qmodel.unused.input_quantizer.amax is None
    assert qmodel.unused.weight_quantizer.amax is None


def test_batches_as_tuple_dict_and_custom_forward():
    qmodel = qr.quantize_model(TwoBranch(), MAX_CONFIG)
    x = torch.randn(3, 8)
    calibrate(qmodel, [(x, 2.0)], progress=False)
    calibrate(qmodel, [{"x": x, "scale": 0.5}], progress=False)
    seen = []
    calibrate(qmodel, [("ignored", x)], forward=lambda m, b: seen.append(m(b[1])), progress=False)
    assert len(seen) == 1
    assert torch.equal(qmodel.used.input_quantizer.amax, x.abs().max())


def test_num_batches_limits_the_loop_and_errors_are_clear():
    qmodel = qr.quantize_model(TwoBranch(), MAX_CONFIG)
    batches = [torch.full((1, 8), float(i)) for i in range(1, 6)]
    result = calibrate(qmodel, batches, num_batches=2, progress=False)
    assert result.batches == 2
    assert qmodel.used.input_quantizer.amax.item() == 2.0
    with pytest.raises(ValueError, match="method"):
        calibrate(qmodel, batches, method="kl", progress=False)
    with pytest.raises(ValueError, match="did you mean 'entropy'"):
        calibrate(qmodel, batches, method="entropi", progress=False)
    with pytest.raises(ValueError, match="no batch"):
        calibrate(qmodel, [], progress=False)
    with pytest.raises(TypeError, match="forward="):
        calibrate(qmodel, ["text"], progress=False)


def test_context_manager_restores_quantization_even_on_error():
    qmodel = qr.quantize_model(TwoBranch(), MAX_CONFIG)
    with pytest.raises(RuntimeError), calibration(qmodel):
        raise RuntimeError("boom")
    assert all(q.is_quant_enabled and not q.is_calib_enabled for q in qr.list_quantizers(qmodel).values())
    with calibration(qmodel) as quantizers, torch.no_grad():
        assert all(q.is_calib_enabled and not q.is_quant_enabled for q in quantizers.values())
        qmodel(torch.ones(2, 8))
    load_calib_amax(qmodel)
    assert qmodel.used.input_quantizer.amax.item() == 1.0


def test_disabled_quantizers_are_skipped():
    qmodel = qr.quantize_model(TwoBranch(), {"version": 1, "disable": ["used._input_quantizer"]})
    result = calibrate(qmodel, _batches(1, (2, 8)), progress=False)
    assert "used._input_quantizer" in result.skipped
    assert qmodel.used.input_quantizer.amax is None


def test_merge_histograms_equal_widths_is_exact():
    a = torch.tensor([1, 2, 3, 4])
    b = torch.tensor([4, 0, 1, 0, 7])  # the same width, one bin more (grown)
    base, merged = merge_histograms([(4.0, a, 0), (4.0, b, 2)], num_bins=4)
    assert base == 4.0
    assert merged.tolist() == [1 + 4 + 2, 2, 4, 4, 7]


def test_merge_histograms_spreads_other_widths_through_the_cumulative_count():
    first = torch.zeros(8, dtype=torch.int64)  # width 0.5 over [0, 4]: the common grid
    coarse = torch.tensor([4, 0, 2, 6])  # width 1 over [0, 4]
    base, merged = merge_histograms([(4.0, first, 0), (8.0, coarse, 0)], num_bins=8)
    assert base == 4.0 and merged.sum().item() == 12
    assert merged.tolist() == [2, 2, 0, 0, 1, 1, 3, 3]


def test_merge_histograms_grows_to_the_largest_range():
    _, merged = merge_histograms([(2.0, torch.ones(2, dtype=torch.int64), 0),
                                  (8.0, torch.tensor([0, 4], dtype=torch.int64), 0)], num_bins=2)
    assert merged.tolist() == [1, 1, 0, 0, 1, 1, 1, 1]  # 4 counts over [4, 8) spread evenly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_CASES = ((MAX_CONFIG, "entropy"),) + tuple(("int8_default", method) for method in CALIB_METHODS)


def _distributed_worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for config, method in DISTRIBUTED_CASES:
            torch.manual_seed(0)
            qmodel = qr.quantize_model(ResidualCNN(2, 8).eval(), config)
            batches = _batches(4, seed=7)[rank::world]
            calibrate(qmodel, batches, method=method, progress=False)
            results[(rank, config, method)] = {n: q.amax.clone() for n, q in qr.list_quantizers(qmodel).items()}
            results[(rank, config, method, "width")] = {
                n: (q.calibrator.bin_edges[1] - q.calibrator.bin_edges[0]).item()
                for n, q in qr.list_quantizers(qmodel).items() if hasattr(q.calibrator, "bin_edges")}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes with gloo: ~30-60 s on a loaded 2-core machine
def test_two_ranks_agree_with_each_other_and_with_one_process():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_distributed_worker, args=(world, _free_port(), results), nprocs=world, join=True)
        results = dict(results)
    for config, method in DISTRIBUTED_CASES:
        rank0, rank1 = results[(0, config, method)], results[(1, config, method)]
        torch.manual_seed(0)
        single = qr.quantize_model(ResidualCNN(2, 8).eval(), config)
        batches = _batches(4, seed=7)
        calibrate(single, batches[0::2] + batches[1::2], method=method, progress=False)
        for name, quantizer in qr.list_quantizers(single).items():
            assert torch.equal(rank0[name], rank1[name]), name
            if quantizer.calibrator.__class__.__name__ == "MaxCalibrator":
                assert torch.equal(rank0[name], quantizer.amax), name
            else:  # histogram methods: the same grid as the single process, amax within one bin of it
                width = (quantizer.calibrator.bin_edges[1] - quantizer.calibrator.bin_edges[0]).item()
                assert results[(0, config, method, "width")][name] == pytest.approx(width)
                gap = abs(rank0[name].item() - quantizer.amax.item())
                if method == "max":
                    assert gap == 0, name
                elif method == "entropy":
                    # KL's minimum is flat on few samples: re-binning moves it (13% on one quantizer here), which
                    # is one reason entropy is not the default. The ranks still agree (checked above).
                    continue
                else:
                    assert gap <= width * 1.01, (name, method, gap)
