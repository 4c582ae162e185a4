"""``quantrewrite build-kernels``: compile the fused CPU kernels for this machine now.

``pip install`` builds them for the installing machine. Where it did not (no C compiler at install, or an
installation copied to a machine with another CPU, such as a container image built elsewhere), run this once
(a Dockerfile's ``RUN`` line, a CI image): every process afterwards opens the built library at its first
kernel call (about a millisecond) instead of compiling it in the background (about half a second, with the
eager paths running meanwhile). Registering it imports no torch (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import time

from quantrewrite.cli.errors import CLIError

__all__ = ["add_parser", "run_build_kernels"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the ``build-kernels`` subcommand."""
    p = sub.add_parser("build-kernels", parents=[common], help="compile the CPU kernels for this machine "
                       "(once, after installing)",
                       description="Compile the fused CPU kernels for this machine with the C compiler ($CC, "
                       "else cc) into the kernel cache ($QUANTREWRITE_KERNEL_CACHE, else "
                       "$XDG_CACHE_HOME/quantrewrite or ~/.cache/quantrewrite; set the variable at run time too "
                       "when you set it here), unless the install or an earlier run built them, and load them. "
                       "Exit status 1 when they cannot be built or loaded here (the eager paths are used then).")
    p.set_defaults(run=run_build_kernels)


def run_build_kernels(args: argparse.Namespace) -> int:
    from quantrewrite import _kernel_loader

    start = time.perf_counter()
    _kernel_loader.wait_loaded()  # loads even with QUANTREWRITE_EAGER=1 set
    error = _kernel_loader.load_error()
    if error is not None:
        raise CLIError(f"the compiled kernels cannot be built or loaded here: {error}")
    print(f"compiled CPU kernels ready in {time.perf_counter() - start:.1f} s: {_kernel_loader.library_path()}")
    return 0
