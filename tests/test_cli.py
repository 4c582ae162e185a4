"""The `quantrewrite` command, run in-process with main([...]): plan, validate, quantize and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from quantrewrite import list_quantizers
from quantrewrite.cli import main
from quantrewrite.cli.inputs import CLIError, load_model
from quantrewrite.recipe import load_recipe

FACTORY = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x) + x)
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


    def build():
        torch.manual_seed(0)
        return Tiny()


    def broken():
        raise RuntimeError("no weights here")


    def not_a_module():
        return 42
''')

BAD_CONFIG = textwrap.dedent('''\
    version: 1
    defaults:
      input: {num_bits: eight}
    layers:
      - match: "fc"
        wieght: {num_bits: 4}
''')

UNMATCHED_CONFIG = "version: 1\ndisable: ['nothing.here']\n"


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "factory.py").write_text(FACTORY)
    torch.save(torch.randn(20, 3, 8, 8), tmp_path / "calib.pt")
    torch.save([torch.randn(4, 3, 8, 8) for _ in range(3)], tmp_path / "batches.pt")
    torch.save(torch.randn(20, 5, 8, 8), tmp_path / "wrong_shape.pt")
    torch.save({"x": torch.randn(2, 3, 8, 8)}, tmp_path / "dict.pt")
    (tmp_path / "bad.yaml").write_text(BAD_CONFIG)
    (tmp_path / "unmatched.yaml").write_text(UNMATCHED_CONFIG)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_prints_the_table(files, capsys):
    code, out, err = run(capsys, "plan", f"{files}/factory.py:build")
    assert code == 0, err
    assert "quantrewrite plan (config: preset int8_default)" in out
    assert "QuantConv2d" in out and "adaptive_avg_pool2d" in out
    assert err == ""


def test_plan_with_a_module_factory_and_a_preset(capsys):
    code, out, _ = run(capsys, "plan", "quantrewrite.demo_model:load_digits_cnn", "--config", "int8_max")
    assert code == 0
    assert "preset int8_max" in out and "calib=max" in out


def test_plan_warns_about_patterns_that_match_nothing_and_strict_fails(files, capsys):
    code, out, err = run(capsys, "plan", f"{files}/factory.py:build", "--config", files / "unmatched.yaml")
    assert code == 0
    assert "nothing.here" in out and "quantrewrite: warning:" in err
    code, _, err = run(capsys, "plan", f"{files}/factory.py:build", "--config", files / "unmatched.yaml", "--strict")
    assert code == 1
    assert_one_error_line(err, "nothing.here")


def test_validate_ok(capsys):
    code, out, err = run(capsys, "validate", "w4a8")
    assert code == 0 and err == ""
    assert out.startswith("OK: preset w4a8")
    assert "num_bits=4" in out


def test_validate_prints_every_located_error(files, capsys):
    code, out, err = run(capsys, "validate", files / "bad.yaml")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "defaults.input.num_bits" in lines[0] and "bad.yaml:3" in lines[0]
    assert "layers[0].wieght" in lines[1] and "did you mean 'weight'" in lines[1] and "bad.yaml:6" in lines[1]
    assert lines[2].endswith("bad.yaml: 2 problems") and lines[2].startswith("quantrewrite: error: ")
    assert "Traceback" not in err


def test_validate_with_a_model_checks_the_patterns(files, capsys):
    code, out, err = run(capsys, "validate", files / "unmatched.yaml", "--model", f"{files}/factory.py:build")
    assert code == 0
    assert "1 pattern(s) match nothing" in out and "nothing.here" in err
    code, _, err = run(capsys, "validate", files / "unmatched.yaml", "--model", f"{files}/factory.py:build",
                       "--strict")
    assert code == 1
    assert_one_error_line(err, "nothing.here")


def test_quantize_writes_a_recipe_that_loads_back(files, capsys):
    recipe = files / "out.recipe.yaml"
    code, out, err = run(capsys, "quantize", f"{files}/factory.py:build", "--config", "int8_default",
                         "--calib", files / "calib.pt", "--batch-size", "8", "--method", "percentile",
                         "--recipe", recipe)
    assert code == 0, err
    assert "calibrated 7 quantizers on 3 batches" in out
    assert "conv1._input_quantizer" in out and f"recipe: {recipe}" in out
    qmodel = load_recipe(load_model(f"{files}/factory.py:build"), recipe)
    assert all(q.amax is not None for q in list_quantizers(qmodel).values())


@pytest.mark.parametrize("data, extra, batches", [
    ("batches.pt", [], 3),
    ("random:2x3x8x8", ["--num-batches", "5"], 5),
], ids=["list-of-batches", "random"])
def test_quantize_data_sources(files, capsys, data, extra, batches):
    calib = files / data if data.endswith(".pt") else data
    code, out, err = run(capsys, "quantize", f"{files}/factory.py:build", "-c", "int8_max", "--calib", calib,
                         "--recipe", files / "r.yaml", *extra)
    assert code == 0, err
    assert f"on {batches} batches" in out


def test_quantize_digits_with_onnx(files, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    onnx_path, recipe = files / "digits.onnx", files / "digits.yaml"
    code, out, err = run(capsys, "quantize", "quantrewrite.demo_model:load_digits_cnn", "--config", "int8_default",
                         "--calib", "digits", "--num-batches", "4", "--recipe", recipe, "--onnx", onnx_path)
    assert code == 0, err
    assert onnx_path.is_file() and recipe.is_file()
    assert "verification: passed" in out and "Q/DQ pairs: 11 (expected 11" in out
    from quantrewrite.demo_model import DigitsCNN

    load_recipe(DigitsCNN(), recipe)


def test_quantize_onnx_with_input_shape(files, capsys):
    pytest.importorskip("onnxruntime")
    code, out, err = run(capsys, "quantize", f"{files}/factory.py:build", "-c", "int8_max", "--calib",
                         "random:4x3x8x8", "--recipe", files / "r.yaml", "--onnx", files / "t.onnx",
                         "--input-shape", "1x3x16x16")
    assert code == 0, err
    assert "verification: passed" in out


def test_quantize_default_recipe_path(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, _, err = run(capsys, "quantize", "factory.py:build", "-c", "int8_max", "--calib", "random:2x3x8x8")
    assert code == 0, err
    assert (files / "build.recipe.yaml").is_file()


def assert_one_error_line(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("quantrewrite: error: ") and fragment in lines[0], err
    assert "Traceback" not in err


BAD_INPUT = [
    ("missing-factory-file", ["plan", "{d}/nope.py:build"], 1, "no such file"),
    ("missing-module", ["plan", "no_such_package_xyz:build"], 1, "cannot import 'no_such_package_xyz'"),
    ("missing-attribute", ["plan", "{d}/factory.py:biuld"], 1, "did you mean 'build'"),
    ("factory-raises", ["plan", "{d}/factory.py:broken"], 1, "RuntimeError: no weights here"),
    ("factory-returns-non-module", ["plan", "{d}/factory.py:not_a_module"], 1, "returned a int"),
    ("malformed-config", ["plan", "{d}/factory.py:build", "-c", "{d}/bad.yaml"], 1, "2 problems"),
    ("missing-config-file", ["plan", "{d}/factory.py:build", "-c", "{d}/none.yaml"], 1, "config file not found"),
    ("unknown-preset", ["plan", "{d}/factory.py:build", "-c", "int8_defalt"], 1, "did you mean 'int8_default'"),
    ("unknown-preset-validate", ["validate", "int9"], 1, "unknown preset 'int9'"),
    ("wrong-data-shape", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "{d}/wrong_shape.pt"],
     1, "does not accept"),
    ("missing-data-file", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "{d}/none.pt"],
     1, "no such file"),
    ("data-is-a-dict", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "{d}/dict.pt"],
     1, "holds a dict"),
    ("data-not-a-pt-file", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "{d}/bad.yaml"],
     1, "cannot load"),
    ("recipe-folder-missing", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "random:2x3x8x8",
                               "--recipe", "{d}/no/such/dir/r.yaml"], 1, "does not exist"),
    ("model-spec-without-colon", ["plan", "factory"], 2, "expected 'package.module:factory'"),
    ("bad-random-shape", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "random:8xq"],
     2, "random:SHAPE"),
    ("batch-size-with-random", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "random:2x3x8x8",
                                "--batch-size", "4"], 2, "--batch-size"),
    ("bad-input-shape", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "random:2x3x8x8",
                         "--input-shape", "big"], 2, "--input-shape"),
    ("percentile-out-of-range", ["quantize", "{d}/factory.py:build", "-c", "int8_max", "--calib", "digits",
                                 "--percentile", "101"], 2, "--percentile"),
    ("missing-calib", ["quantize", "{d}/factory.py:build", "-c", "int8_max"], 2, "--calib"),
    ("mistyped-command", ["quantise"], 2, ("unknown command 'quantise'; did you mean 'quantize'? "
                                          "(see 'quantrewrite quantize --help')")),
    ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate' (choose from 'plan', 'quantize'"),
    ("no-command", [], 2, "required"),
]


@pytest.mark.parametrize("argv, code, fragment", [case[1:] for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_an_exit_status(files, capsys, argv, code, fragment):
    status, _, err = run(capsys, *(a.format(d=files) for a in argv))
    assert status == code
    assert_one_error_line(err, fragment)


def test_debug_shows_the_exception(files):
    with pytest.raises(CLIError) as info:
        main(["plan", f"{files}/factory.py:broken", "--debug"])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_help_exits_zero(capsys):
    assert main(["quantize", "--help"]) == 0
    assert "--calib DATA" in capsys.readouterr().out


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "quantrewrite", "--help"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("plan", "quantize", "validate", "demo"):
        assert command in result.stdout


AXIS_CONFIG = "version: 1\nlayers:\n  - match: conv1\n    weight: {axis: 7}\n  - match: fc\n    weight: {axis: 2}\n"


def test_validate_with_a_model_checks_weight_axes_and_locates_them(files, capsys):
    (files / "axis.yaml").write_text(AXIS_CONFIG)
    code, out, err = run(capsys, "validate", files / "axis.yaml", "--model", f"{files}/factory.py:build")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert "layers[0].weight.axis: expected an axis of the 4-D weight (-4..3), got 7, for conv1" in lines[0]
    assert lines[0].endswith("axis.yaml:4)")
    assert "layers[1].weight.axis" in lines[1] and "2-D weight" in lines[1] and lines[1].endswith("axis.yaml:6)")
    assert lines[2].endswith("axis.yaml: 2 problems")
    code, _, err = run(capsys, "quantize", f"{files}/factory.py:build", "-c", files / "axis.yaml", "--calib",
                       "random:2x3x8x8", "--recipe", files / "r.yaml")
    assert code == 1 and "layers[0].weight.axis" in err and "calibrat" not in err
    assert not (files / "r.yaml").exists()


def test_validate_refuses_zero_bits(files, capsys):
    (files / "zero.yaml").write_text("version: 1\ndefaults:\n  weight: {num_bits: 0}\n")
    code, _, err = run(capsys, "validate", files / "zero.yaml")
    assert code == 1
    assert_one_error_line(err, "defaults.weight.num_bits: expected an int >= 2")
    assert "zero.yaml:3" in err


def test_preset_named_as_a_file_suggests_the_preset(files, capsys):
    code, _, err = run(capsys, "plan", f"{files}/factory.py:build", "-c", "int8_default.yaml")
    assert code == 1
    assert_one_error_line(err, "config file not found: int8_default.yaml; the preset is named 'int8_default'")


def test_unknown_option_of_a_subcommand_points_to_its_help(files, capsys):
    code, _, err = run(capsys, "quantize", f"{files}/factory.py:build", "-c", "int8_max", "--calib", "digits",
                       "--methd", "max")
    assert code == 2
    assert_one_error_line(err, "unrecognized arguments: --methd max (did you mean --method? see 'quantrewrite "
                               "quantize --help')")
    code, _, err = run(capsys, "plan", f"{files}/factory.py:build", "--bogus")
    assert code == 2
    assert_one_error_line(err, "unrecognized arguments: --bogus (see 'quantrewrite plan --help')")


def test_int_arguments_name_their_bound():
    import argparse

    from quantrewrite.cli.arg_types import int_at_least

    parse = int_at_least(13, " (per-axis QuantizeLinear)")
    assert parse("13") == 13
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected an int >= 13 \(per-axis QuantizeLinear\), got 12"):
        parse("12")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an int >= 13, got 'x'"):
        parse("x")
