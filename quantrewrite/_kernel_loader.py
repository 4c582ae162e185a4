"""Loads the compiled CPU kernels (numba) in a background thread, so that no call waits for them.

Loading numba's CPU target and the cached kernels costs about half a second of CPU in every new process
(and a few seconds of compilation on the first run after an install, when numba's cache is empty). Paid on
the first fake quantization or histogram of a process, that is a stall in the middle of the user's first
calibration. Instead the first ``fused_kernels_available()`` (asked by a CPU fake quantization, histogram
count or amax sweep, the first moment a kernel would be used) calls ``start_loading()``, which starts one
thread that imports the kernel modules and runs every kernel once on tiny buffers; until it is done
``fused_kernels_available()`` is False and callers take the eager torch / numpy paths, which give
bit-identical results (the tests check both paths against the same references). A process that never asks
(max calibration only, CUDA tensors) never loads numba.

``wait_loaded()`` blocks until the kernels are ready (benchmarks and tests that want the fused path from the
first call use it). ``QUANTREWRITE_EAGER=1`` disables the fused kernels (and the loading); a platform
without numba gets the eager paths. numba keeps its compiled code next to the kernel modules, or in a
per-user cache directory when the package directory is read-only (numba's own fallback).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from types import ModuleType

__all__ = ["cache_locations", "compiled", "compiled_calib", "fused_kernels_available", "load_error", "start_loading",
           "wait_loaded"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_started = False
_done = threading.Event()
_kernels: ModuleType | None = None  # quantrewrite._kernels_numba, once warmed up
_calib_kernels: ModuleType | None = None  # quantrewrite.calib._kernels_numba, once warmed up
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

    Callers ask only when a kernel would run now (CPU tensors), so the first ask starts the background
    loading (``start_loading``) and answers False: that call and the next ones until the kernels are ready
    take the eager paths.
    """
    if _calib_kernels is not None:
        return not _eager_forced()
    start_loading()
    return False


def _import_kernel_modules() -> tuple[ModuleType, ModuleType]:
    """Import (compile or load from numba's cache) the two kernel modules.

    numba refuses to define a cached kernel when no cache directory is writable (a read-only package directory
    and no writable home, e.g. a container running as a user without one): the kernels then compile into a
    temporary directory for this process rather than leave the process on the eager paths.
    """
    try:
        from quantrewrite import _kernels_numba
        from quantrewrite.calib import _kernels_numba as calib_kernels_numba
    except RuntimeError as error:
        if "no locator available" not in str(error):
            raise
        from numba.core import config

        config.CACHE_DIR = tempfile.mkdtemp(prefix="quantrewrite-numba-")
        logger.warning("numba has no writable cache directory here (%s); compiling the kernels into %s for this "
                       "process: set NUMBA_CACHE_DIR to a writable directory, or run 'quantrewrite build-kernels' "
                       "where the package is writable", error, config.CACHE_DIR)
        from quantrewrite import _kernels_numba
        from quantrewrite.calib import _kernels_numba as calib_kernels_numba
    return _kernels_numba, calib_kernels_numba


def _load() -> None:
    global _kernels, _calib_kernels, _error
    try:
        from quantrewrite._kernel_warmup import warm_calib_kernels, warm_fake_quant_kernels

        _kernels_numba, calib_kernels_numba = _import_kernel_modules()
        warm_fake_quant_kernels(_kernels_numba)
        warm_calib_kernels(calib_kernels_numba)
    except Exception as error:  # noqa: BLE001 - numba missing or broken: the eager paths give the same results
        _error = error
        logger.info("compiled kernels unavailable, using the eager paths: %s", error)
    else:
        _kernels = _kernels_numba
        _calib_kernels = calib_kernels_numba  # set last: fused_kernels_available() tests this one
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
    """Start loading the kernels in a background thread (once per process; a no-op afterwards).

    The thread is not a daemon: interpreter exit waits for it rather than stopping it inside LLVM.
    """
    if _started or _eager_forced() or not _claim():
        return
    threading.Thread(target=_load, name="quantrewrite-kernel-loader").start()


def wait_loaded(timeout: float | None = None) -> bool:
    """Wait until the kernels are loaded (at most ``timeout`` seconds) and say whether they are available.

    When no load has started, the kernels are loaded in the calling thread, even while
    ``QUANTREWRITE_EAGER=1`` is set (the switch is read per call; the tests flip it).
    """
    if _claim():
        _load()
    else:
        _done.wait(timeout)
    return fused_kernels_available()


def load_error() -> BaseException | None:
    """Why the kernels could not be loaded (None when they loaded, or before any load finished)."""
    return _error


def cache_locations() -> list[str]:
    """The directories numba keeps the loaded kernels in (empty before they are loaded)."""
    places = set()
    for module in (_kernels, _calib_kernels):
        for value in vars(module).values() if module is not None else ():
            place = getattr(getattr(value, "_cache", None), "_cache_path", None)  # numba's dispatcher cache
            if isinstance(place, str):
                places.add(place)
    return sorted(places)


def _require(module: ModuleType | None) -> ModuleType:
    if module is None:
        raise RuntimeError(f"the compiled kernels are not available here: {_error}")
    return module


def compiled() -> ModuleType:
    """The compiled fake-quantization kernels, waiting for the loader if needed.

    Raises:
        RuntimeError: the kernels cannot be loaded here (numba missing or failing); the message says why.
    """
    if _kernels is None:
        wait_loaded()
    return _require(_kernels)


def compiled_calib() -> ModuleType:
    """The compiled calibration kernels, waiting for the loader if needed (see ``compiled``)."""
    if _calib_kernels is None:
        wait_loaded()
    return _require(_calib_kernels)
