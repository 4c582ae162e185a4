"""The compiled kernels: built once per machine into a cache, opened at the first call that would use them, and
the eager paths (the same bits) wherever they are not there yet or cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quantrewrite import _kernel_build, _kernel_loader


@pytest.fixture(autouse=True)
def _no_library_built_at_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests see only the cache they set (not the library ``pip install`` built into the package)."""
    monkeypatch.setattr(_kernel_build, "PACKAGE_DIR", tmp_path / "installed")


def _run(code: str, cache: Path, *args: str, **env_changes: str) -> subprocess.CompletedProcess:
    """Run code in a fresh process whose kernel cache is ``cache`` and whose package holds no library."""
    env = {key: value for key, value in os.environ.items() if key != "QUANTREWRITE_EAGER"}
    env.update({_kernel_build.CACHE_VARIABLE: str(cache), **env_changes})
    prelude = ("import pathlib\nfrom quantrewrite import _kernel_build\n"
               f"_kernel_build.PACKAGE_DIR = pathlib.Path({str(cache / 'installed')!r})\n")
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          check=False, timeout=300, env=env)


def _ok(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 and result.stdout.strip().endswith("ok")


def test_build_goes_to_the_cache_under_a_name_for_this_source_and_cpu(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(tmp_path / "cache"))
    assert _kernel_build.cached_library() is None
    built = _kernel_build.build_library()
    assert built == tmp_path / "cache" / _kernel_build.library_name() and built.is_file()
    assert _kernel_build.cached_library() == built
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name]  # no partial file left behind
    edited = tmp_path / "kernels.c"
    edited.write_bytes(_kernel_build.SOURCE.read_bytes() + b"\n/* edited */\n")
    monkeypatch.setattr(_kernel_build, "SOURCE", edited)
    assert _kernel_build.library_name() != built.name and _kernel_build.cached_library() is None
    monkeypatch.setattr(_kernel_build, "_cpu_fingerprint", lambda: "another cpu")
    assert _kernel_build.library_name() != built.name


def test_build_without_a_compiler_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(_kernel_build.KernelBuildError, match="no C compiler found .'no-such-compiler-here'"):
        _kernel_build.build_library()


def test_a_failing_compiler_is_quoted_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'fatal: this compiler is broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(_kernel_build.KernelBuildError) as error:
        _kernel_build.build_library()
    assert "every flag set" in str(error.value) and "fatal: this compiler is broken" in str(error.value)
    assert not any((tmp_path / "cache").iterdir())


def test_no_writable_cache_builds_into_a_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(blocker / "cache"))  # cannot be made: a file's child
    with caplog.at_level("WARNING", logger=_kernel_build.__name__):
        built = _kernel_build.build_library()
    try:
        assert built.is_file() and not built.is_relative_to(tmp_path)
        assert "no writable kernel cache directory" in caplog.text and _kernel_build.CACHE_VARIABLE in caplog.text
    finally:
        built.unlink()
        built.parent.rmdir()


HELD_BUILD = textwrap.dedent("""
    import threading
    import torch
    import quantrewrite
    from quantrewrite import _kernel_build, _kernel_loader
    release = threading.Event()
    real_build = _kernel_build.build_library
    def held_build():
        release.wait()
        return real_build()
    _kernel_build.build_library = held_build
    quantizer = quantrewrite.TensorQuantizer(quantrewrite.QuantDescriptor(amax=2.0))
    x = torch.randn(4, 70000, generator=torch.Generator().manual_seed(1))
    assert not _kernel_loader.fused_kernels_available(), "nothing is cached: the first call is eager"
    eager = quantizer(x)
    release.set()
    assert _kernel_loader.wait_loaded(timeout=120), _kernel_loader.load_error()
    fused = quantizer(x)
    assert torch.equal(eager.view(torch.int32), fused.view(torch.int32))
    print("ok")
""")


def test_quantization_runs_eagerly_while_the_kernels_build(tmp_path: Path) -> None:
    result = _run(HELD_BUILD, tmp_path)
    assert _ok(result), result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [_kernel_build.library_name()]


def test_a_library_built_at_install_is_found_in_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "installed"
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(tmp_path / "empty-cache"))
    assert _kernel_build.cached_library() is None
    built = _kernel_build.build_library(installed)  # what setup.py's build step does
    assert built.parent == installed and _kernel_build.cached_library() == built


FIRST_CALL = textwrap.dedent("""
    import threading
    import torch
    from quantrewrite import _kernel_loader
    from quantrewrite.tensor_quant import fake_tensor_quant
    x = torch.randn(1000)
    fake_tensor_quant(x, torch.tensor(2.0))
    assert _kernel_loader.fused_kernels_available(), _kernel_loader.load_error()
    assert threading.active_count() == 1, "a cached build opens at once, in the calling thread"
    print("ok")
""")


def test_a_cached_build_is_used_from_the_first_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_kernel_build.CACHE_VARIABLE, str(tmp_path))
    _kernel_build.build_library()
    result = _run(FIRST_CALL, tmp_path, CC="no-such-compiler-here")  # nothing may be compiled
    assert _ok(result), result.stdout + result.stderr


def test_a_damaged_cached_library_is_rebuilt(tmp_path: Path) -> None:
    (tmp_path / _kernel_build.library_name()).write_bytes(b"not a shared library")
    result = _run("from quantrewrite import _kernel_loader\n"
                  "assert _kernel_loader.wait_loaded(), _kernel_loader.load_error()\nprint('ok')", tmp_path)
    assert _ok(result), result.stdout + result.stderr
    assert (tmp_path / _kernel_build.library_name()).read_bytes()[:4] == b"\x7fELF"


def test_without_a_compiler_the_eager_paths_run_and_say_why(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import torch
        from quantrewrite import _kernel_loader
        from quantrewrite.tensor_quant import fake_tensor_quant
        x = torch.tensor([0.3, -1.26, 1.9])
        assert not _kernel_loader.wait_loaded()
        assert "no C compiler found" in str(_kernel_loader.load_error())
        assert torch.equal(fake_tensor_quant(x, torch.tensor(2.0)), torch.round(x * 63.5) / 63.5)
        print("ok")
    """)
    result = _run(code, tmp_path, CC="no-such-compiler-here")
    assert _ok(result), result.stdout + result.stderr


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
        assert not started(), "max calibration needs no compiled kernel"
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
def test_loading_starts_where_the_kernels_are_first_useful(scenario: str, tmp_path: Path) -> None:
    result = _run(START_POINTS, tmp_path, scenario)
    assert _ok(result), result.stdout + result.stderr


def test_eager_switch_never_starts_the_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kernel_loader, "_started", False)
    monkeypatch.setattr(_kernel_loader, "_kernels", None)
    monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    assert not _kernel_loader.fused_kernels_available()
    assert not _kernel_loader._started


def test_kernels_share_torchs_thread_pool() -> None:
    # One OpenMP runtime (torch's): torch.set_num_threads sets the kernels' threads too, so a process that
    # limits torch to one thread gets no second pool of spinning threads.
    kernels = _kernel_loader.compiled()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert kernels.max_threads() == 1
        torch.set_num_threads(2)
        assert kernels.max_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_direct_kernel_calls_wait_for_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wrappers are usable right away: called directly in a process that loaded nothing yet, they load the
    # compiled kernels (not an error, not the eager path).
    import threading

    import numpy as np

    from quantrewrite import _kernels

    installed = _kernel_loader.library_path()
    assert installed is not None
    monkeypatch.setattr(_kernel_build, "PACKAGE_DIR", installed.parent)  # where the session's kernels are
    monkeypatch.setattr(_kernel_loader, "_kernels", None)
    monkeypatch.setattr(_kernel_loader, "_started", False)
    monkeypatch.setattr(_kernel_loader, "_done", threading.Event())

    x = torch.linspace(-1, 1, 9)
    out = torch.empty_like(x)
    scale = np.array([127.0], dtype=np.float32)
    _kernels.fake_quant_into(x, out, (1, 1, 9), scale, np.float32(1.0) / scale, -128.0, 127.0)
    assert torch.equal(out, torch.round(x * 127) / 127)
    assert _kernel_loader._kernels is not None and _kernel_loader.library_path() == installed


def test_build_kernels_command_builds_them_and_names_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    from quantrewrite.cli import main

    assert main(["build-kernels"]) == 0
    out = capsys.readouterr().out
    path = _kernel_loader.library_path()
    assert out.startswith("compiled CPU kernels ready in ") and path is not None and str(path) in out
    assert path.is_file()


def test_build_kernels_command_reports_why_they_cannot_load(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from quantrewrite.cli import main

    monkeypatch.setattr(_kernel_loader, "_error", _kernel_build.KernelBuildError("no C compiler found ('cc')"))
    assert main(["build-kernels"]) == 1
    assert "cannot be built or loaded here: no C compiler found ('cc')" in capsys.readouterr().err
