"""examples/quickstart.py follows the README's path (quantize_model -> calibrate -> export_onnx -> recipe) and
runs without a warning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def called_names(path: Path) -> set[str]:
    """The attribute and function names the file calls."""
    calls = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            calls.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return calls


def test_quickstart_uses_the_recommended_verbs_and_no_hand_written_loop():
    calls = called_names(QUICKSTART)
    assert {"quantize_model", "calibrate", "export_onnx", "save_recipe", "load_recipe"} <= calls
    assert not calls & {"enable_calib", "disable_quant", "load_calib_amax", "enable_quant", "disable_calib"}


@pytest.mark.slow  # ~9 s of CPU: export and onnxruntime included
def test_quickstart_runs_and_prints_no_warning(tmp_path):
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, str(QUICKSTART), str(tmp_path)], check=False, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stderr
    assert "no data: none" in done.stdout and "verification: passed" in done.stdout
    assert "differs by at most 0\n" in done.stdout  # the recipe rebuilds the same model
    assert (tmp_path / "quickstart.onnx").exists() and (tmp_path / "quickstart.recipe.yaml").exists()
