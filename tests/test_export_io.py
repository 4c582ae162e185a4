"""export_onnx's inputs and outputs: keyword inputs, readable names, dynamic batch, both exporters, the fallback.

onnxruntime is run here independently of export_onnx's own check (feeding by name, at a batch size the export
never saw) and compared with the PyTorch model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantrewrite import ExportError, QuantDescriptor, export_onnx
from quantrewrite.export_io import bind_example, output_names_of
from quantrewrite.nn import QuantConv2d, QuantLinear

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
needs_onnxscript = pytest.mark.skipif(not pytest.importorskip("importlib").util.find_spec("onnxscript"),
                                      reason="the dynamo exporter needs onnxscript")
dynamo_noise = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                                          "ignore::UserWarning")


def run_onnx(path, **inputs: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """Conv (input per tensor, weight per channel) -> ReLU -> flatten -> Linear (unsigned input), amax by hand."""
    torch.manual_seed(seed)
    model = nn.Sequential(QuantConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          QuantLinear(4 * 6 * 6, 5, quant_desc_input=QuantDescriptor(unsigned=True)))
    conv, linear = model[0], model[3]
    conv.input_quantizer.amax = torch.tensor(2.5)
    conv.weight_quantizer.amax = conv.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    linear.input_quantizer.amax = torch.tensor(1.75)
    linear.weight_quantizer.amax = linear.weight.detach().abs().amax(dim=1, keepdim=True)
    return model.eval()


class KeywordNet(nn.Module):
    """A model called with keywords that returns a dict, like a Hugging Face model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        desc = QuantDescriptor(amax=3.0)
        self.proj = QuantLinear(6, 4, quant_desc_input=desc, quant_desc_weight=QuantDescriptor(amax=0.5))
        self.head = QuantLinear(4, 2, quant_desc_input=desc, quant_desc_weight=QuantDescriptor(amax=0.5))

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0,
                use_cache: bool | None = None):
        hidden = self.proj(features) * scale
        if mask is not None:
            hidden = hidden * mask.unsqueeze(-1)
        return {"logits": self.head(hidden), "hidden": hidden}


# ------------------------------------------------------------------------------------------------ names
def test_names_follow_forward_and_the_returned_dict():
    model = KeywordNet()
    example = bind_example(model, (), {"mask": torch.ones(2, 3), "features": torch.randn(2, 3, 6)})
    assert example.names == ["features", "mask"]  # the signature's order, not the dict's
    assert list(example.kwargs) == ["features", "mask"]
    assert output_names_of(example.call(model)) == ["logits", "hidden"]
    assert output_names_of((torch.zeros(1), [torch.zeros(1), None])) == ["output_0", "output_1_0"]
    assert output_names_of(torch.zeros(1)) == ["output"]
    nested = bind_example(nn.GRU(2, 2), (torch.randn(1, 3, 2),), None)
    assert nested.names == ["input"]


def test_example_the_forward_does_not_take_is_refused_by_name(tmp_path):
    with pytest.raises(TypeError, match=r"KeywordNet.forward does not accept the example input.*'colour'"):
        export_onnx(KeywordNet(), (), tmp_path / "x.onnx", kwargs={"features": torch.randn(2, 6), "colour": 1})
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"dynamic_axes": "time"}, "dynamic_axes"),
    ({"exporter": "dynamo", "opset": 17}, "opset >= 18"),
], ids=["dynamic_axes", "dynamo_opset"])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(tiny_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "x.onnx", **kwargs)


# ------------------------------------------------------------------------------------ keyword inputs, batch
def test_keyword_inputs_dynamic_batch_torchscript(tmp_path):
    model = KeywordNet().train()
    path = tmp_path / "kw.onnx"
    features, mask = torch.randn(2, 3, 6), torch.ones(2, 3)
    report = export_onnx(model, {"features": features, "mask": mask, "use_cache": False}, path,
                         dynamic_axes="batch")
    assert model.training and model.proj.training  # modes restored (the exporter's wrapper included)
    assert report.passed and report.exporter == "torchscript" and report.batch_sizes == [2, 4]
    graph = onnx.load(str(path)).graph
    assert [(i.name, dims(i)[0]) for i in graph.input] == [("features", "batch"), ("mask", "batch")]
    assert [(o.name, dims(o)[0]) for o in graph.output] == [("logits", "batch"), ("hidden", "batch")]
    assert [str(spec) for spec in report.inputs] == ["features float32 [batch, 3, 6]", "mask float32 [batch, 3]"]
    other = torch.randn(5, 3, 6)  # a batch size the export never saw
    other_mask = (torch.rand(5, 3) > 0.3).float()
    logits, hidden = run_onnx(path, features=other.numpy(), mask=other_mask.numpy())
    model.eval()
    with torch.no_grad():
        expected = model(other, mask=other_mask)
    assert logits.shape == (5, 3, 2)
    np.testing.assert_allclose(hidden, expected["hidden"].numpy(), atol=report.tolerance)
    np.testing.assert_allclose(logits, expected["logits"].numpy(), atol=report.tolerance)


def test_positional_call_keeps_working_with_user_names(tmp_path):
    path = tmp_path / "pos.onnx"
    report = export_onnx(tiny_cnn(), torch.randn(2, 3, 8, 8), path, input_names=["images"],
                         output_names=["logits"], dynamic_axes="batch")
    assert [spec.name for spec in report.inputs] == ["images"] and report.outputs[0].shape == ("batch", 5)
    (out,) = run_onnx(path, images=np.random.default_rng(0).standard_normal((7, 3, 8, 8), dtype=np.float32))
    assert out.shape == (7, 5)


def test_static_by_default(tmp_path):
    report = export_onnx(tiny_cnn(), torch.randn(2, 3, 8, 8), tmp_path / "s.onnx")
    assert report.inputs[0].shape == (2, 3, 8, 8) and report.batch_sizes == [2]
    assert "input float32 [2, 3, 8, 8]" in str(report)


# ------------------------------------------------------------------------------------------------- dynamo
@needs_onnxscript
@dynamo_noise
def test_dynamo_writes_plain_qdq_pairs_with_a_dynamic_batch(tmp_path):
    model = tiny_cnn()
    path = tmp_path / "dyn.onnx"
    report = export_onnx(model, torch.randn(2, 3, 8, 8), path, exporter="dynamo", dynamic_axes="batch")
    assert report.passed and report.opset == 18 and report.qdq_pairs == 4 and report.batch_sizes == [2, 4]
    graph = onnx.load(str(path)).graph
    assert "Clip" not in {n.op_type for n in graph.node}  # nothing between QuantizeLinear and DequantizeLinear
    values = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    scales = sorted(values[n.input[1]].size for n in quantize)
    assert scales == [1, 1, 4, 5]  # two per-tensor, the conv's 4 and the linear's 5 channels
    zero_types = sorted(values[n.input[2]].dtype.name for n in quantize)
    assert zero_types == ["int8", "int8", "int8", "uint8"]  # the linear's input quantizer is unsigned
    linear_scale = next(values[n.input[1]] for n in quantize if values[n.input[2]].dtype == np.uint8)
    assert linear_scale == np.float32(1.75) / np.float32(255)  # exactly the quantizer's scale
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    (out,) = run_onnx(path, input=x.numpy())
    np.testing.assert_allclose(out, expected, atol=report.tolerance)


class Diff(nn.Module):
    """torch.diff: the TorchScript exporter has no symbolic for aten::diff, the dynamo one has."""

    def __init__(self):
        super().__init__()
        self.fc = QuantLinear(5, 5, quant_desc_input=QuantDescriptor(amax=2.0),
                              quant_desc_weight=QuantDescriptor(amax=0.5))

    def forward(self, x):
        return torch.diff(self.fc(x), dim=-1)


@needs_onnxscript
@dynamo_noise
def test_torchscript_failure_is_reported_and_retried_with_dynamo(tmp_path, caplog):
    report = export_onnx(Diff(), torch.randn(2, 5), tmp_path / "diff.onnx", dynamic_axes="batch")
    assert report.passed and report.exporter == "dynamo" and report.opset == 18 and report.qdq_pairs == 2
    assert any("torchscript exporter failed" in w and "diff" in w and "dynamo exporter at opset 18" in w
               for w in report.warnings)
    assert "retrying with the dynamo exporter" in caplog.text
    with pytest.raises(ExportError, match="the torchscript exporter failed: .*diff"):
        export_onnx(Diff(), torch.randn(2, 5), tmp_path / "diff2.onnx", fallback=False)


class BakedBatch(nn.Module):
    """Under TorchScript tracing, the batch size becomes a constant (as ``int(x.shape[0])`` or a Python loop over
    the batch would make it); torch.export keeps it symbolic."""

    def __init__(self):
        super().__init__()
        self.fc = QuantLinear(4, 3, quant_desc_input=QuantDescriptor(amax=2.0),
                              quant_desc_weight=QuantDescriptor(amax=0.5))

    def forward(self, x):
        rows = 2 if torch.jit.is_tracing() else x.shape[0]
        return self.fc(x) + torch.arange(rows, dtype=x.dtype).unsqueeze(1)


@needs_onnxscript
@dynamo_noise
def test_a_batch_size_baked_in_by_torchscript_is_caught_and_retried(tmp_path):
    report = export_onnx(BakedBatch(), torch.randn(2, 4), tmp_path / "baked.onnx", dynamic_axes="batch")
    assert report.passed and report.exporter == "dynamo" and report.batch_sizes == [2, 4]
    assert any("does not hold at batch size 4" in w for w in report.warnings)
    with pytest.raises(ExportError, match="at batch size 4: onnxruntime failed"):
        export_onnx(BakedBatch(), torch.randn(2, 4), tmp_path / "baked2.onnx", dynamic_axes="batch",
                    fallback=False)


# ----------------------------------------------------------------------------------------- Hugging Face
@dynamo_noise
@pytest.mark.parametrize("exporter", ["torchscript",
                                      pytest.param("dynamo", marks=[needs_onnxscript, pytest.mark.slow])])
def test_hf_bert_exports_with_keyword_inputs_and_a_dynamic_batch(tmp_path, exporter):
    transformers = pytest.importorskip("transformers")
    from quantrewrite import calibrate, quantize_model

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    qmodel = quantize_model(transformers.BertModel(config).eval(), "int8_default")
    batch = {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    calibrate(qmodel, [batch], progress=False)
    path = tmp_path / "bert.onnx"
    report = export_onnx(qmodel, (), path, kwargs=batch, dynamic_axes="batch", exporter=exporter)
    assert report.passed and report.exporter == exporter and report.batch_sizes == [2, 4]
    assert [spec.name for spec in report.inputs] == ["input_ids", "attention_mask"]
    assert [spec.name for spec in report.outputs] == ["last_hidden_state", "pooler_output"]
    ids = torch.randint(0, 50, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 6:] = 0  # padding: the mask really is an input
    hidden, pooled = run_onnx(path, input_ids=ids.numpy(), attention_mask=mask.numpy())
    with torch.no_grad():
        expected = qmodel(input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(hidden, expected.last_hidden_state.numpy(), atol=report.tolerance)
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=report.tolerance)


def test_export_leaves_the_eval_outputs_bit_identical(tmp_path):
    # the eval-mode weight cache must not keep what a quantizer computed for the exporter
    model = tiny_cnn()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        export_onnx(model, x[:2], tmp_path / "c.onnx", verify=False)
        after = model(x)
    assert torch.equal(before, after)
