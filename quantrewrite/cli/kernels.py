"""``quantrewrite build-kernels``: compile the fused CPU kernels into numba's cache now.

Run it once where the package is installed (a Dockerfile's ``RUN`` line, a CI image, after ``pip install``):
the first process afterwards loads the cached kernels (about half a second in a background thread) instead of
compiling them (a few seconds of background CPU, with the eager paths running meanwhile). Registering it
imports no torch (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import time

from quantrewrite.cli.errors import CLIError

__all__ = ["add_parser", "run_build_kernels"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the ``build-kernels`` subcommand."""
    p = sub.add_parser("build-kernels", parents=[common], help="compile the CPU kernels into numba's cache "
                       "(once, after installing)",
                       description="Load the fused CPU kernels (numba) in the foreground, compiling those missing "
                       "from numba's cache: next to the package, or the per-user cache (~/.cache/numba) when the "
                       "package directory is read-only, or NUMBA_CACHE_DIR when set (then set it at run time "
                       "too). Exit status 1 when they cannot be loaded here (the eager paths are used then).")
    p.set_defaults(run=run_build_kernels)


def run_build_kernels(args: argparse.Namespace) -> int:
    from quantrewrite import _kernel_loader

    start = time.perf_counter()
    _kernel_loader.wait_loaded()  # loads even with QUANTREWRITE_EAGER=1 set
    error = _kernel_loader.load_error()
    if error is not None:
        raise CLIError(f"the compiled kernels cannot be loaded here: {error}")
    places = ", ".join(_kernel_loader.cache_locations()) or "unknown"
    print(f"compiled CPU kernels ready in {time.perf_counter() - start:.1f} s; numba cache: {places}")
    return 0
