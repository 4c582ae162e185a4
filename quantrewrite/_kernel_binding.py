"""The compiled kernel library's C signatures, bound with ctypes (the library: ``csrc/kernels.c``).

Every pointer argument is a plain int address (a tensor's ``data_ptr()``, a numpy array's ``ctypes.data``);
the callers in ``quantrewrite._kernels`` and ``quantrewrite.calib._kernels`` check dtypes, contiguity and
sizes first, because a wrong buffer here is memory corruption, not an exception. ctypes releases the GIL
for the duration of each call.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

__all__ = ["ABI_VERSION", "CHECK", "CLIP", "FAKE", "NEGATIVE", "OUTSIDE", "PARALLEL", "CompiledKernels", "Plan"]

ABI_VERSION = 1  # csrc/kernels.c's qr_abi_version()
FAKE, CHECK, CLIP, PARALLEL = 1, 2, 4, 8  # plan flags (CLIP is passed per call)
NEGATIVE, OUTSIDE = 1, 2  # the bits qr_quant returns

_P, _I64, _I32, _F32, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float, ctypes.c_double


class Plan(ctypes.Structure):
    """``qr_plan``: one quantization bound to its layout and per-channel values (same field order)."""

    _fields_ = [("rows", _I64), ("width", _I64), ("channels", _I64), ("tail", _I64), ("scale", _P),
                ("inv_scale", _P), ("amax", _P), ("lo", _F32), ("hi", _F32), ("flags", _I32)]


def _bind(function, restype, argtypes: list) -> ctypes._CFuncPtr:
    function.restype = restype
    function.argtypes = argtypes
    return function


class CompiledKernels:
    """The library's kernels, each a ctypes function with its C signature (see ``csrc/kernels.c``).

    Raises:
        OSError: the library cannot be opened.
        RuntimeError: it was built from another version of the source (its ABI or plan layout differs).
    """

    def __init__(self, path: Path) -> None:
        library = ctypes.CDLL(str(path))
        version = _bind(library.qr_abi_version, _I32, [])()
        plan_size = _bind(library.qr_plan_size, _I64, [])()
        if version != ABI_VERSION or plan_size != ctypes.sizeof(Plan):
            raise RuntimeError(f"{path} was built from another version of the kernels (ABI {version}, plan "
                               f"{plan_size} bytes; expected {ABI_VERSION}, {ctypes.sizeof(Plan)})")
        self.path = path
        self.quant = _bind(library.qr_quant, _I32, [_P, _P, _P, _I32])  # (plan, x, out, clip) -> found bits
        self.ste = _bind(library.qr_ste, None, [_P, _P, _P, _I64, _I64, _I64, _P, _I32])
        self.same_bytes = _bind(library.qr_same_bytes, _I32, [_P, _P, _I64, _I32])
        self.count_abs = _bind(library.qr_count_abs, _I32, [_P, _I64, _P, _I64, _F64, _I32, _P, _I64])
        self.mse_errors = _bind(library.qr_mse_errors, None, [_P, _P, _I64, _P, _I64, _P, _F32, _F32])
        self.entropy_divergences = _bind(library.qr_entropy_divergences, None,
                                         [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _P, _I64])
        self.max_threads = _bind(library.qr_max_threads, _I32, [])
