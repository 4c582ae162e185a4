"""GPT-2 from a small config (the `hf` extra; nothing downloaded): every Conv1D is swapped for QuantHFConv1D
with per-output-feature weights (axis 1), calibrates, and exports to ONNX with keyword inputs, verified in
onnxruntime, each weight's DequantizeLinear on axis 1 of the [in, out] weight."""

from __future__ import annotations

import pytest
import torch

from quantrewrite import calibrate, disable_quantizers, list_quantizers, quantize_model

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D

from quantrewrite.nn.modules.quant_hf_conv1d import QuantHFConv1D


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                     bos_token_id=1, eos_token_id=2, use_cache=False)  # no KV cache output
    return transformers.GPT2LMHeadModel(config).eval()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(seed))}


@pytest.fixture(scope="module")
def calibrated() -> tuple[torch.nn.Module, torch.nn.Module]:
    model = _gpt2()
    qmodel = quantize_model(model, "int8_max", example_inputs=_batch(0))
    result = calibrate(qmodel, [_batch(1), _batch(2)], progress=False)
    assert not result.no_data
    return model, qmodel


def test_every_weight_layer_is_quantized(calibrated) -> None:
    model, qmodel = calibrated
    conv1d = [name for name, m in model.named_modules() if type(m) is Conv1D]
    weight_layers = conv1d + [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert len(conv1d) == 8 and len(weight_layers) == 9  # c_attn, c_proj, c_fc, mlp.c_proj per block; lm_head
    entries = {e.name: e for e in qmodel.quant_plan.modules()}
    assert all(entries[name].quantized for name in weight_layers)
    for name in conv1d:
        layer = qmodel.get_submodule(name)
        assert isinstance(layer, QuantHFConv1D)
        expected = layer.weight.detach().abs().amax(dim=0, keepdim=True)
        assert torch.equal(layer.weight_quantizer.amax, expected), name  # max calibration, per output feature
    assert list(qmodel.state_dict()) == [k for k in qmodel.state_dict() if "quantizer" in k or k in model.state_dict()]
    assert set(model.state_dict()) <= set(qmodel.state_dict())


def test_quantized_output_is_close_and_disabled_is_float(calibrated) -> None:
    model, qmodel = calibrated
    with torch.no_grad():
        ref = model(**_batch(3)).logits
        out = qmodel(**_batch(3)).logits
        assert not torch.equal(out, ref)
        cosine = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99
        disable_quantizers(qmodel, "*")
        try:
            assert torch.equal(qmodel(**_batch(3)).logits, ref)
        finally:
            for quantizer in list_quantizers(qmodel).values():
                quantizer.enable()


def test_export_with_keyword_inputs_verifies_with_axis_1_weights(calibrated, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from quantrewrite import export_onnx

    _, qmodel = calibrated
    # with an attention mask: without one, transformers' mask code calls aten::diff (no TorchScript export)
    example = {**_batch(4), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    report = export_onnx(qmodel, (), tmp_path / "gpt2.onnx", kwargs=example, fallback=False)
    assert report.passed, report.failures
    graph = onnx.load(str(tmp_path / "gpt2.onnx")).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                 if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"}
    tensors = {**initializers, **constants}
    weight_shapes = {tuple(qmodel.get_submodule(name).weight.shape)
                     for name, m in qmodel.named_modules() if isinstance(m, QuantHFConv1D)}
    conv1d_pairs = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in tensors:
            continue
        shape = tuple(tensors[node.input[0]].shape)
        if shape in weight_shapes:
            axis = next(a.i for a in node.attribute if a.name == "axis")
            assert axis == 1, node.name
            assert tensors[node.input[1]].shape == (shape[1],)  # one scale per output feature
            conv1d_pairs += 1
    assert conv1d_pairs == 8
