"""Loads the compiled CPU kernels (``csrc/kernels.c``, through ctypes) at the first moment one would run.

The first ``fused_kernels_available()`` (asked by a CPU fake quantization, histogram count or amax sweep, the
first moment a kernel would be used) calls ``start_loading()``. When this machine's build of the library is
in the cache (``quantrewrite._kernel_build``), it is opened right there: a ``dlopen`` of a small library,
about a millisecond, so even the first call of a process runs the kernels. Otherwise one background thread
compiles it (about half a second, in a compiler process that holds no lock of this one) and opens it;
until then ``fused_kernels_available()`` is False and callers take the eager torch / numpy paths, which give
bit-identical results (the tests check both paths against the same references). A process that never asks
(max calibration only, CUDA tensors) never loads the library.

``wait_loaded()`` blocks until the kernels are ready (benchmarks and tests that want the fused path from the
first call use it). ``QUANTREWRITE_EAGER=1`` disables the fused kernels (and the loading); a machine without
a C compiler gets the eager paths (``load_error()`` says why).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantrewrite._kernel_binding import CompiledKernels

__all__ = ["compiled", "fused_kernels_available", "library_path", "load_error", "start_loading", "wait_loaded"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_started = False
_done = threading.Event()
_kernels: CompiledKernels | None = None  # set last, once the library is open
_error: BaseException | None = None

_EAGER_VARIABLE = "QUANTREWRITE_EAGER"


def _environ_lookup() -> tuple[dict, object, object] | None:
    """os.environ's own dict, with the switch's key and the value "1" as it stores them (CPython's
    ``os._Environ``): read there, the switch costs a dict lookup per call instead of the ~1 us that
    ``os.environ.get`` spends raising and catching a KeyError when the variable is unset. None (use
    ``os.environ.get``) where os.environ is built otherwise."""
    try:
        data, encode_key, encode_value = os.environ._data, os.environ.encodekey, os.environ.encodevalue
        key, one = encode_key(_EAGER_VARIABLE), encode_value("1")
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - another Python implementation
        return None
    return (data, key, one) if isinstance(data, dict) else None


_ENVIRON = _environ_lookup()


def _eager_forced() -> bool:
    if _ENVIRON is not None:
        data, key, one = _ENVIRON
        return data.get(key) == one
    return os.environ.get(_EAGER_VARIABLE, "0") == "1"  # pragma: no cover - another Python implementation


def fused_kernels_available() -> bool:
    """True when the compiled kernels are loaded and ``QUANTREWRITE_EAGER=1`` is not set (read per call).

    Callers ask only when a kernel would run now (CPU tensors), so the first ask starts the loading
    (``start_loading``): True right away when this machine's build is cached, else False until the
    background build is done (those calls take the eager paths).
    """
    if _kernels is None:
        start_loading()
        if _kernels is None:
            return False
    return not _eager_forced()


def _open(path: Path) -> None:
    global _kernels
    from quantrewrite._kernel_binding import CompiledKernels

    _kernels = CompiledKernels(path)


def _open_cached() -> bool:
    """Open this machine's build where the package or the cache holds it (and mark loading done); False when
    there is none, or it cannot be opened (a damaged or foreign file: it is built again)."""
    from quantrewrite._kernel_build import cached_library

    path = cached_library()
    if path is None:
        return False
    try:
        _open(path)
    except (OSError, RuntimeError, AttributeError) as error:
        logger.info("rebuilding the CPU kernels: %s", error)
        return False
    _done.set()
    return True


def _build_and_open() -> None:
    """Compile and open the library; record why not on failure."""
    global _error
    from quantrewrite._kernel_build import build_library

    try:
        _open(build_library())
    except Exception as error:  # noqa: BLE001 - no compiler, or a failed build: the eager paths give the same bits
        _error = error
        logger.info("compiled CPU kernels unavailable, using the eager paths: %s", error)
    finally:
        _done.set()


def _claim() -> bool:
    """Mark loading as started; True for the one caller that must do it."""
    global _started
    with _lock:
        if _started:
            return False
        _started = True
        return True


def start_loading() -> None:
    """Open the cached library now, or start building it in a background thread (once per process; a no-op
    afterwards, and while ``QUANTREWRITE_EAGER=1`` is set).

    The thread is not a daemon: interpreter exit waits for the compiler rather than leave a partial file.
    """
    if _started or _eager_forced() or not _claim() or _open_cached():
        return
    threading.Thread(target=_build_and_open, name="quantrewrite-kernel-build").start()


def wait_loaded(timeout: float | None = None) -> bool:
    """Wait until the kernels are loaded (at most ``timeout`` seconds) and say whether they are available.

    When no load has started, the kernels are built (if needed) and opened in the calling thread, even while
    ``QUANTREWRITE_EAGER=1`` is set (the switch is read per call; the tests flip it).
    """
    if _claim():
        if not _open_cached():
            _build_and_open()
    else:
        _done.wait(timeout)
    return fused_kernels_available()


def load_error() -> BaseException | None:
    """Why the kernels could not be loaded (None when they loaded, or before any load finished)."""
    return _error


def library_path() -> Path | None:
    """The loaded library's file (None before it is loaded)."""
    return None if _kernels is None else _kernels.path


def compiled() -> CompiledKernels:
    """The compiled kernels, waiting for the loader (or loading them) if needed.

    Raises:
        RuntimeError: the kernels cannot be built or loaded here; the message says why.
    """
    if _kernels is None:
        wait_loaded()
        if _kernels is None:
            raise RuntimeError(f"the compiled kernels are not available here: {_error}")
    return _kernels
