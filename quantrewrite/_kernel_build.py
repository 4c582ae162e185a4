"""Builds the fused CPU kernels (``csrc/kernels.c``) with the system C compiler, once per machine.

The library is a plain C shared object (no Python API) that ``quantrewrite._kernel_loader`` opens with
ctypes. It is compiled for this CPU (``-march=native``) with OpenMP: by ``pip install`` into the package
directory (``setup.py``), or, where that did not happen, into a per-user cache (``$QUANTREWRITE_KERNEL_CACHE``
when set, else ``$XDG_CACHE_HOME/quantrewrite``, i.e. ``~/.cache/quantrewrite``). Its file name carries a hash
of the source, the flags and the CPU's model and feature flags, so a changed source, an installation copied
to another machine (a container image), or a home directory shared by different machines gets its own build
instead of a stale or illegal one. Where no cache directory is writable the library goes to a temporary
directory for this process.

The compiler is ``$CC`` or ``cc``. Where it lacks ``-march=native`` or OpenMP, the build retries without
them (slower kernels, the same bits). Compiling takes about half a second; the loader does it in a
background thread (the compiler is another process, so it holds no lock of this one), and
``quantrewrite build-kernels`` does it in the foreground after an install.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_VARIABLE", "PACKAGE_DIR", "SOURCE", "KernelBuildError", "build_library", "cached_library",
           "library_name"]

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
SOURCE = PACKAGE_DIR / "csrc" / "kernels.c"
CACHE_VARIABLE = "QUANTREWRITE_KERNEL_CACHE"
_COMMON_FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared")
# Tried in order until one compiles; numerics do not depend on the choice (no fast-math, no contraction).
_FLAG_SETS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())
_COMPILE_TIMEOUT_S = 300
_SUFFIX = ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled here; the message says why (and what the compiler printed)."""


def _cpu_fingerprint() -> str:
    """The CPU model and feature flags (a -march=native build runs only where these match)."""
    parts = [platform.machine(), platform.processor(), sys.platform]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            head = info.read(16384)  # the first processor's block: procfs generates no more than is read
    except OSError:
        head = ""
    parts += [line for line in head.splitlines()
              if line.split(":")[0].strip() in ("vendor_id", "model name", "flags", "Features", "CPU part")][:5]
    return "\n".join(parts)


def library_name() -> str:
    """The library's file name for this source, these flags and this CPU."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(repr((_COMMON_FLAGS, _FLAG_SETS)).encode())
    digest.update(_cpu_fingerprint().encode())
    return f"kernels-{digest.hexdigest()[:20]}{_SUFFIX}"


def _cache_dirs() -> list[Path]:
    chosen = os.environ.get(CACHE_VARIABLE)
    if chosen:
        return [Path(chosen)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(base) / "quantrewrite"]


def cached_library() -> Path | None:
    """The built library for this machine, when the package directory (built at install) or the cache holds
    it."""
    name = library_name()
    for directory in (PACKAGE_DIR, *_cache_dirs()):
        path = directory / name
        if path.is_file():
            return path
    return None


def _compiler() -> list[str]:
    """``$CC`` (split as a shell would), else the first of cc, gcc and clang on PATH."""
    chosen = shlex.split(os.environ.get("CC", ""))
    candidates = [chosen] if chosen else [["cc"], ["gcc"], ["clang"]]
    for command in candidates:
        if shutil.which(command[0]) is not None:
            return command
    tried = ", ".join(repr(command[0]) for command in candidates)
    raise KernelBuildError(f"no C compiler found ({tried} not on PATH): install one (e.g. gcc) or set CC; the "
                           "eager paths give the same results, slower")


def _writable_directory() -> Path:
    for directory in _cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    fallback = Path(tempfile.mkdtemp(prefix="quantrewrite-kernels-"))
    logger.warning("no writable kernel cache directory (%s); building the CPU kernels into %s for this process "
                   "only: set %s to a writable directory", ", ".join(map(str, _cache_dirs())), fallback,
                   CACHE_VARIABLE)
    return fallback


def build_library(directory: Path | None = None) -> Path:
    """Compile the kernels (the first flag set that compiles) into ``directory`` (default: the cache) and
    return the library's path.

    The library is written under a temporary name and renamed into place, so a process loading it never sees
    a partial file, and two processes building at once both end with a complete one.

    Raises:
        KernelBuildError: no compiler, or every flag set failed (the message holds the compiler's output).
    """
    compiler = _compiler()
    if directory is None:
        directory = _writable_directory()
    else:
        directory.mkdir(parents=True, exist_ok=True)
    target = directory / library_name()
    partial = directory / f".{target.name}.{os.getpid()}.partial"
    failures = []
    try:
        for flags in _FLAG_SETS:
            command = [*compiler, *_COMMON_FLAGS, *flags, "-o", str(partial), str(SOURCE), "-lm"]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S,
                                        check=False)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise KernelBuildError(f"running the C compiler failed: {shlex.join(command)}: {error}") from error
            if result.returncode == 0:
                os.replace(partial, target)
                logger.info("built the CPU kernels into %s (flags: %s)", target, " ".join(_COMMON_FLAGS + flags))
                return target
            failures.append(f"$ {shlex.join(command)}\n{result.stderr.strip()[-2000:]}")
    finally:
        partial.unlink(missing_ok=True)
    raise KernelBuildError("compiling the CPU kernels failed with every flag set:\n" + "\n".join(failures))
