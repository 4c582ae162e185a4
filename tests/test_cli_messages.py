"""How the command line shows other libraries' messages: torch.load's refusals as whole plain sentences with
the fix, torch's warnings once and attributed to torch (TracerWarnings in the export report only), and the
small usage points of issue 8 item 10 (--method max, a mistyped command, a preset named as a file)."""

from __future__ import annotations

import pickle
import textwrap
import warnings

import numpy as np
import pytest
import torch

from quantrewrite.cli import main
from quantrewrite.cli.main import _WarningPrinter
from quantrewrite.cli.messages import plain_text, warning_line

# data-dependent control flow: torch.jit.trace (the ONNX export) raises a TracerWarning at line 13
FACTORY = textwrap.dedent('''\
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            if bool(y.mean() > -100):
                y = y.relu()
            return self.fc(y.mean(dim=(2, 3)))


    def build():
        torch.manual_seed(0)
        return Net().eval()
''')


@pytest.fixture
def factory(tmp_path):
    (tmp_path / "factory.py").write_text(FACTORY)
    return f"{tmp_path}/factory.py:build"


def quantize(capsys, factory, *extra):
    code = main(["quantize", factory, "-c", "int8_default", "--recipe", str(factory.split(":")[0] + ".yaml"),
                 *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


def only_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("quantrewrite: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_numpy_data_is_refused_in_plain_whole_sentences_with_the_fix(tmp_path, capsys, factory):
    torch.save({"x": np.zeros((4, 3, 8, 8), dtype=np.float32)}, tmp_path / "np.pt")
    code, out, err = quantize(capsys, factory, "--calib", tmp_path / "np.pt")
    line = only_error_line(err)
    assert code == 1 and out == ""
    assert "\x1b" not in err
    assert "np.pt holds numpy arrays (its pickle needs numpy." in line
    assert line.endswith("save torch tensors instead, e.g. torch.save(torch.from_numpy(array), 'calib.pt')")


@pytest.mark.parametrize("content, fragment", [
    ("pickle", ("with torch.load(weights_only=True) (WeightsUnpickler error: Unsupported operand 149): is it a "
                "file written by torch.save?")),
    ("text", "(KeyError: 101): expected a file written by torch.save holding a tensor or a list of batches"),
], ids=["plain-pickle", "not-a-torch-file"])
def test_other_unreadable_files_say_what_was_expected(tmp_path, capsys, factory, content, fragment):
    path = tmp_path / "data.pt"
    if content == "pickle":
        path.write_bytes(pickle.dumps(np.zeros(3), protocol=4))
    else:
        path.write_text("hello")
    code, _, err = quantize(capsys, factory, "--calib", path)
    assert code == 1 and "\x1b" not in err
    assert fragment in only_error_line(err)


def test_tracer_warning_is_shown_once_in_the_report_attributed_to_the_model_line(tmp_path, capsys, factory):
    code, out, err = quantize(capsys, factory, "--calib", "random:4x3x8x8", "--method", "max",
                              "--onnx", tmp_path / "m.onnx")
    assert code == 0, err
    assert "Converting a tensor to a Python boolean" not in err  # not as "quantrewrite: warning:"
    shown = [line for line in out.splitlines() if "Converting a tensor to a Python boolean" in line]
    assert shown == [("  warning: TracerWarning at factory.py:13: Converting a tensor to a Python boolean might "
                      "cause the trace to be incorrect")]
    assert "calibrated 4 quantizers" in out  # --method max is accepted


def test_warning_lines_name_who_warned():
    import quantrewrite.api

    assert warning_line("matched no quantizer", UserWarning, quantrewrite.api.__file__, 3) == "matched no quantizer"
    torch_file = torch.serialization.__file__
    assert warning_line("Detected pickle protocol 4", UserWarning, torch_file, 590) == \
        "UserWarning from torch at serialization.py:590: Detected pickle protocol 4"
    assert warning_line("\x1b[1mbold\x1b[0m\nnext", DeprecationWarning, "/home/me/model.py", 7) == \
        "DeprecationWarning at model.py:7: bold; next"
    assert plain_text("\x1b[96mstep 1/3\x1b[0m") == "step 1/3"


def test_each_warning_is_printed_once_and_tracer_warnings_are_left_to_the_report(capsys):
    printer = _WarningPrinter()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = printer
        for _ in range(2):
            warnings.warn_explicit("deprecated thing", FutureWarning, torch.__file__, 10)
            warnings.warn_explicit("data-dependent", torch.jit.TracerWarning, "/home/me/model.py", 4)
    err = capsys.readouterr().err
    assert err == "quantrewrite: warning: FutureWarning from torch at __init__.py:10: deprecated thing\n"


def test_preset_named_as_a_file_and_mistyped_command(capsys, factory):
    assert main(["plan", factory, "-c", "int8_default.yaml"]) == 1
    assert "the preset is named 'int8_default' (without .yaml)" in capsys.readouterr().err
    assert main(["calibrat"]) == 2
    assert "did you mean 'quantize'" not in capsys.readouterr().err  # no close command: the list of commands
    assert main(["qantize"]) == 2
    assert "did you mean 'quantize'? (see 'quantrewrite quantize --help')" in capsys.readouterr().err
