"""Builds the fused CPU kernels at install time, for the installing machine (``quantrewrite/_kernel_build.py``).

The project's metadata is in pyproject.toml; this file only adds the build step. The library is a plain C
shared object opened through ctypes, not a Python extension module: the build uses the project's own compile
function (its flags, its file name, which carries the CPU it was built for), declared as an extension so that
every kind of install (wheel, editable) runs it. A failed build never fails the install: the package then
builds the library at first use, or runs its eager paths where there is no C compiler.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
logger = logging.getLogger("quantrewrite.setup")


def _kernel_build():
    """quantrewrite/_kernel_build.py, loaded by path (importing the package would need its dependencies)."""
    path = HERE / "quantrewrite" / "_kernel_build.py"
    spec = importlib.util.spec_from_file_location("_quantrewrite_kernel_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildKernels(build_ext):
    """Compiles csrc/kernels.c into the package directory (in place for an editable install)."""

    def run(self) -> None:
        self._built: list[str] = []
        kernel_build = _kernel_build()
        package_dir = HERE / "quantrewrite" if self.inplace else Path(self.build_lib) / "quantrewrite"
        for stale in package_dir.glob("kernels-*"):  # earlier installs' builds (another source or CPU)
            stale.unlink()
        try:
            self._built.append(str(kernel_build.build_library(package_dir)))
        except kernel_build.KernelBuildError as error:
            logger.warning("quantrewrite: the CPU kernels were not built at install (%s); they will be built at "
                           "first use, or the eager paths run", error)

    def get_outputs(self) -> list[str]:
        return list(getattr(self, "_built", []))


setup(ext_modules=[Extension("quantrewrite._kernels_library", sources=["quantrewrite/csrc/kernels.c"])],
      cmdclass={"build_ext": BuildKernels})
