"""The compiled kernels load in the background: nothing compiles at the first real call, and the eager paths
that run until the kernels are ready give the same bits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from quantrewrite import _kernel_loader, _kernels_numba, calib
from quantrewrite.calib import _kernels_numba as calib_kernels_numba
from quantrewrite.tensor_quant import fake_tensor_quant

KERNELS = ((_kernels_numba, ("quant_rows", "quant_rows_serial", "quant_serial", "ste_flat", "ste_rows", "ste_serial")),
           (calib_kernels_numba, ("count_abs", "entropy_divergences", "mse_errors")))


def _signatures() -> dict[str, list]:
    return {f"{module.__name__}.{name}": list(getattr(module, name).signatures)
            for module, names in KERNELS for name in names}


def test_warm_up_covers_the_signatures_of_real_calls() -> None:
    # Every kernel the warm-up ran has one specialization; a real workload must not compile another one
    # (that would be a compilation stall at the user's first call, the thing the loader exists to avoid).
    assert _kernel_loader.wait_loaded()
    before = _signatures()
    assert all(len(signatures) == 1 for signatures in before.values()), before
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(3, 40000, generator=gen, requires_grad=True)
    fake_tensor_quant(big, torch.tensor(2.0)).sum().backward()  # parallel rows, a serial tail, flat STE
    weight = torch.randn(8, 4, 3, 3, generator=gen, requires_grad=True)
    fake_tensor_quant(weight, weight.detach().abs().amax((1, 2, 3), keepdim=True)).sum().backward()
    fake_tensor_quant(torch.rand(5), torch.tensor(1.0), unsigned=True)  # serial only, negative check
    histogram = calib.HistogramCalibrator()
    histogram.collect(big.detach())
    for method in ("entropy", "mse", "percentile"):
        histogram.compute_amax(method)
    after = _signatures()
    assert after == before


LOADER_HELD_BACK = textwrap.dedent("""
    import sys, threading
    import quantrewrite
    from quantrewrite import _kernel_loader
    assert "numba" not in sys.modules, "import quantrewrite must not import numba"
    release = threading.Event()
    real_load = _kernel_loader._load
    def held_load():
        release.wait()
        real_load()
    _kernel_loader._load = held_load
    import torch
    quantizer = quantrewrite.TensorQuantizer(quantrewrite.QuantDescriptor(amax=2.0))
    x = torch.randn(4, 70000, generator=torch.Generator().manual_seed(1))
    assert not _kernel_loader.fused_kernels_available()
    eager = quantizer(x)
    release.set()
    assert _kernel_loader.wait_loaded(timeout=120)
    fused = quantizer(x)
    assert torch.equal(eager.view(torch.int32), fused.view(torch.int32))
    print("ok")
""")


def test_quantization_runs_eagerly_while_the_kernels_load() -> None:
    result = subprocess.run([sys.executable, "-c", LOADER_HELD_BACK], capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_direct_kernel_calls_wait_for_the_loader() -> None:
    # The wrappers are usable right away: called directly they get the compiled kernels, not an error.
    x = torch.linspace(-1, 1, 9)
    out = torch.empty_like(x)
    scale = np.array([127.0], dtype=np.float32)
    from quantrewrite import _kernels

    _kernels.fake_quant_into(x, out, (1, 1, 9), scale, np.float32(1.0) / scale, -128.0, 127.0)
    assert torch.equal(out, torch.round(x * 127) / 127)


START_POINTS = textwrap.dedent("""
    import sys
    import torch
    import quantrewrite
    from quantrewrite import _kernel_loader, calib

    def started():
        return _kernel_loader._started

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    batch = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    if sys.argv[1] == "max":
        qmodel = quantrewrite.quantize_model(model, "int8_max")
        quantrewrite.calibrate(qmodel, [batch], progress=False)
        assert not started() and "numba" not in sys.modules, "max calibration needs no compiled kernel"
        with torch.no_grad():
            qmodel(batch)
        assert started(), "the first quantized forward starts the loading"
    else:
        histogram = calib.HistogramCalibrator()
        quantizer = quantrewrite.TensorQuantizer(quantrewrite.QuantDescriptor(amax=1.0))
        quantrewrite.tensor_quant.prepare_grid(1.0)
        assert not started(), "making a calibrator, a quantizer or a grid loads nothing"
        histogram.collect(batch)
        assert started(), "the first histogram count starts the loading"
    print("ok")
""")


@pytest.mark.parametrize("scenario", ["max", "histogram"])
def test_loading_starts_where_the_kernels_are_first_useful(scenario: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "QUANTREWRITE_EAGER"}
    result = subprocess.run([sys.executable, "-c", START_POINTS, scenario], capture_output=True, text=True,
                            check=False, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_eager_switch_never_starts_the_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kernel_loader, "_started", False)
    monkeypatch.setattr(_kernel_loader, "_calib_kernels", None)
    monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    assert not _kernel_loader.fused_kernels_available()
    assert not _kernel_loader._started


def test_build_kernels_command_loads_them_and_names_the_cache(capsys: pytest.CaptureFixture[str]) -> None:
    from quantrewrite.cli import main

    assert main(["build-kernels"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compiled CPU kernels ready in ")
    places = _kernel_loader.cache_locations()
    assert places and all(os.path.isdir(place) and place in out for place in places)


def test_build_kernels_command_reports_why_they_cannot_load(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from quantrewrite.cli import main

    monkeypatch.setattr(_kernel_loader, "_error", ImportError("No module named 'numba'"))
    assert main(["build-kernels"]) == 1
    assert "cannot be loaded here: No module named 'numba'" in capsys.readouterr().err


NO_CACHE_LOCATION = textwrap.dedent("""
    from numba.core import caching, config
    from quantrewrite import _kernel_loader
    # no writable place: only the NUMBA_CACHE_DIR locator, and NUMBA_CACHE_DIR unset
    config.CACHE_DIR = ""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # numba renamed them in 0.60
    impl._locator_classes = [getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator]
    assert _kernel_loader.wait_loaded(), _kernel_loader.load_error()
    assert all(place.startswith(config.CACHE_DIR) for place in _kernel_loader.cache_locations())
    print("ok")
""")


def test_kernels_load_without_a_writable_cache_directory() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("QUANTREWRITE_EAGER", "NUMBA_CACHE_DIR")}
    result = subprocess.run([sys.executable, "-c", NO_CACHE_LOCATION], capture_output=True, text=True,
                            check=False, timeout=600, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
    assert "no writable cache directory" in result.stderr
