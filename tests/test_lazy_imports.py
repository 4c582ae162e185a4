"""``import quantrewrite`` and the command line's help load nothing heavy; every public name still resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import quantrewrite
from quantrewrite.cli import build_parser

HEAVY = ("torch", "numpy", "onnx")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return result.stdout.split()


def _subcommands() -> list[str]:
    parser = build_parser()
    return sorted(next(a for a in parser._actions if a.dest == "command").choices)


def test_import_quantrewrite_loads_nothing_heavy() -> None:
    assert _loaded_after("import quantrewrite") == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[name, "--help"] for name in _subcommands()],
                         ids=lambda argv: " ".join(argv))
def test_help_does_not_import_torch(argv: list[str]) -> None:
    code = ("import contextlib, io\nfrom quantrewrite.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main({argv!r}) == 0")
    assert _loaded_after(code) == []


def test_every_public_name_resolves() -> None:
    assert set(quantrewrite.__all__) == {"__version__", *quantrewrite._SUBMODULES, *quantrewrite._EXPORTS}
    for name in quantrewrite.__all__:
        assert getattr(quantrewrite, name) is not None, name
    assert quantrewrite.quantize_model.__module__ == "quantrewrite.api"
    with pytest.raises(AttributeError, match="no attribute 'quantise_model'"):
        quantrewrite.quantise_model  # noqa: B018
    assert "quantize_model" in dir(quantrewrite)


def test_functions_named_like_submodules_win() -> None:
    # quantrewrite.plan and quantrewrite.calibration are functions even after their modules are imported.
    code = ("import quantrewrite, quantrewrite.plan, quantrewrite.calibration\n"
            "from quantrewrite import plan, calibration\n"
            "assert callable(plan) and plan.__module__ == 'quantrewrite.api', plan\n"
            "assert calibration.__module__ == 'quantrewrite.calibration' and callable(calibration)\n"
            "assert quantrewrite.plan is plan and quantrewrite.calibration is calibration")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
