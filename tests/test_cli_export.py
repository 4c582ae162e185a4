"""``quantrewrite quantize --onnx``: a deployable file (dynamic batch, names, opset, several inputs, fp16), a
failed check that leaves no OUT.onnx, and the untraced scopes printed."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from quantrewrite.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(5, 4)

        def forward(self, image, extra):
            return self.a(image) + self.b(extra), self.a(image).relu()


    class Branchy(nn.Module):  # data-dependent control flow: FX cannot trace it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x) + x
            return self.fc(x)


    class WithBranchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Branchy()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.inner(x))


    class BranchyMatmul(nn.Module):  # untraced, with a matmul before the branch
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            y = torch.matmul(self.fc(x), self.w)
            return y * 2 if y.sum() > 0 else y


    class WrongInTrace(nn.Module):  # exports something else than it computes: the check must fail
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y * 3 if torch.jit.is_tracing() else y


    def two_inputs():
        torch.manual_seed(0)
        return TwoInputs()


    def with_branchy():
        torch.manual_seed(0)
        return WithBranchy()


    def branchy_matmul():
        torch.manual_seed(0)
        return nn.Sequential(BranchyMatmul(), nn.Linear(4, 2))


    def wrong_in_trace():
        torch.manual_seed(0)
        return WrongInTrace()


    def half():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).half()
''')


@pytest.fixture
def files(tmp_path):
    (tmp_path / "models.py").write_text(FACTORY)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    torch.save([(torch.randn(4, 3), torch.randn(4, 5)) for _ in range(2)], tmp_path / "pairs.pt")
    return tmp_path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_inputs_named_dynamic_batch_and_opset(files, capsys):
    path = files / "two.onnx"
    code, out, err = run(capsys, "quantize", files / "models.py:two_inputs", "-c", "int8_max", "--calib",
                         files / "pairs.pt", "--recipe", files / "r.yaml", "--onnx", path, "--input-names",
                         "image,extra", "--output-names", "sum,relu", "--opset", "15")
    assert code == 0, err
    assert "inputs: image float32 [batch, 3]; extra float32 [batch, 5]" in out
    assert "outputs: sum float32 [batch, 4]; relu float32 [batch, 4]" in out
    assert "at batch size 4 and 8" in out and "verification: passed" in out
    model = onnx.load(str(path))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 15
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    total, relu = session.run(None, {"image": rng.standard_normal((3, 3), dtype=np.float32),
                                     "extra": rng.standard_normal((3, 5), dtype=np.float32)})
    assert total.shape == relu.shape == (3, 4)


def test_several_input_shapes_and_static_batch(files, capsys):
    code, out, err = run(capsys, "quantize", files / "models.py:two_inputs", "-c", "int8_max", "--calib",
                         files / "pairs.pt", "--recipe", files / "r.yaml", "--onnx", files / "s.onnx",
                         "--input-shape", "2x3", "--input-shape", "2x5", "--static-batch")
    assert code == 0, err
    assert "inputs: image float32 [2, 3]; extra float32 [2, 5]" in out  # forward's parameter names
    assert "outputs: output_0 float32 [2, 4]; output_1 float32 [2, 4]" in out


def test_half_precision_model_with_random_half_data(files, capsys):
    code, out, err = run(capsys, "quantize", files / "models.py:half", "-c", "int8_max", "--calib",
                         "random:8x6", "--dtype", "float16", "--recipe", files / "r.yaml", "--onnx",
                         files / "h.onnx", "--input-shape", "2x6")
    assert code == 0, err
    assert "inputs: input float16 [batch, 6]" in out and "verification: passed" in out


def test_failed_verification_keeps_no_deployable_file(files, capsys):
    path = files / "wrong.onnx"
    path.write_text("an older file")  # never left in place looking valid
    code, out, err = run(capsys, "quantize", files / "models.py:wrong_in_trace", "-c", "int8_max", "--calib",
                         "random:4x4", "--recipe", files / "r.yaml", "--onnx", path)
    assert code == 1
    failed = files / "wrong.failed.onnx"
    assert not path.exists() and failed.is_file()
    onnx.checker.check_model(str(failed))  # the file itself is kept for inspection
    assert "verification: FAILED" in out  # the report, in full, on stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "failed verification" in lines[0] and str(failed) in lines[0]


def test_untraced_scopes_are_printed(files, capsys):
    code, out, err = run(capsys, "quantize", files / "models.py:with_branchy", "-c", "int8_max", "--calib",
                         "random:4x4", "--recipe", files / "r.yaml")
    assert code == 0, err
    assert "untraced scopes: " in out
    assert "  inner (Branchy): not traced" in out


def test_ops_inside_untraced_scopes_are_quantized(files, capsys):
    # quantize hands the first calibration batch to quantize_model as example_inputs: the matmul inside the
    # untraced scope gets its run-time quantizers, is calibrated, and nothing is reported as staying float.
    code, out, err = run(capsys, "quantize", files / "models.py:branchy_matmul", "-c", "int8_max", "--calib",
                         "random:4x4", "--recipe", files / "r.yaml", "--onnx", files / "m.onnx")
    assert code == 0, err
    assert "  0 (BranchyMatmul): not traced" in out and "stays float" not in out
    assert "0.matmul_input_quantizer" in out and "0.matmul_input1_quantizer" in out
    assert "verification: passed" in out


@pytest.mark.parametrize("flag,value", [("--tolerance-steps", "-1"), ("--opset", "12"), ("--dtype", "int8"),
                                        ("--input-names", "a,,b")], ids=["tolerance", "opset", "dtype", "names"])
def test_bad_export_flags_are_usage_errors(files, capsys, flag, value):
    code, _, err = run(capsys, "quantize", files / "models.py:half", "-c", "int8_max", "--calib", "random:2x6",
                       flag, value)
    assert code == 2 and flag in err
