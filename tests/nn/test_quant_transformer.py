"""nn.TransformerEncoderLayer / nn.TransformerEncoder take their fused fast path in eval mode under no_grad;
their twins always run the quantized children (issue 9.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantrewrite import disable_quantizers, export_onnx, list_quantizers, plan, quantize_model, registry
from quantrewrite.calibration import calibrate
from quantrewrite.nn import modules as qnn
from quantrewrite.registry import RegistryError

WIDTH, HEADS = 16, 4


def _encoder(norm_first: bool = False) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=not norm_first).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True  # a padded batch: the float encoder would turn it into a nested tensor
    return torch.randn(3, 7, WIDTH), padding


def _calibrated(model: nn.Module) -> tuple[nn.Module, list[str]]:
    qmodel = quantize_model(model, "int8_max")
    x, padding = _batch()
    result = calibrate(qmodel, [{"src": x, "src_key_padding_mask": padding}], progress=False)
    return qmodel.eval(), result.no_data


def test_the_float_layer_takes_the_fast_path_that_bypasses_its_children():
    """The premise: in eval mode under no_grad the float layer never calls linear1's forward."""
    layer = _encoder().layers[0]
    calls = []
    layer.linear1.register_forward_pre_hook(lambda *_: calls.append(1))
    layer.linear1._forward_pre_hooks.clear()  # a hook anywhere in the layer disables the fast path itself
    with torch.no_grad():
        layer(_batch()[0])
    assert calls == []


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the float reference's fused path
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_calibration_sees_data_and_the_output_is_quantized_in_eval_under_no_grad(norm_first):
    model = _encoder(norm_first)
    qmodel, no_data = _calibrated(model)
    assert type(qmodel) is qnn.QuantTransformerEncoder and not qmodel.use_nested_tensor
    assert all(type(layer) is qnn.QuantTransformerEncoderLayer for layer in qmodel.layers)
    assert no_data == []
    assert all(q.amax is not None for q in list_quantizers(qmodel).values())
    x, padding = _batch()
    keep = ~padding  # the fused float path writes zeros at padded positions; compare the real tokens
    with torch.no_grad():
        reference = model(x, src_key_padding_mask=padding)
        quantized = qmodel(x, src_key_padding_mask=padding)
        assert not torch.allclose(quantized[keep], reference[keep], atol=1e-4)
        error = (quantized[keep] - reference[keep]).abs().max()
        assert error < 0.2 * reference[keep].abs().max()
        disable_quantizers(qmodel, "*")
        torch.testing.assert_close(qmodel(x, src_key_padding_mask=padding)[keep], reference[keep],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qmodel(x), model(x), atol=1e-5, rtol=1e-5)


def test_the_float_model_keeps_its_classes_and_nested_tensor_setting():
    model = _encoder()
    quantize_model(model)
    assert type(model) is nn.TransformerEncoder and model.use_nested_tensor
    assert type(model.layers[0]) is nn.TransformerEncoderLayer and type(model.layers[0].linear1) is nn.Linear


def test_the_plan_lists_the_twins_and_skips_them_when_nothing_inside_is_quantized():
    model = _encoder()
    entries = {e.name: e for e in plan(model)}
    assert entries[""].quant_class == "QuantTransformerEncoder"
    assert entries["layers.0"].quant_class == "QuantTransformerEncoderLayer" and entries["layers.0"].quantized
    off = {"version": 1, "layers": [{"match": "layers.1", "quantize": False}]}
    entries = {e.name: e for e in plan(model, off)}
    assert entries["layers.0"].quantized and not entries["layers.1"].quantized
    assert entries["layers.1"].reason == "container; its children are listed"
    qmodel = quantize_model(model, off)
    assert type(qmodel.layers[1]) is nn.TransformerEncoderLayer  # all float inside: it may keep its fast path


def test_a_layer_on_its_own_and_inside_a_user_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 32, dropout=0.0, batch_first=True)
            self.head = nn.Linear(WIDTH, 2)

        def forward(self, x):
            return self.head(self.layer(x).mean(dim=1))

    model = Net().eval()
    qmodel, no_data = _calibrated_plain(model)
    assert type(qmodel) is Net and type(qmodel.layer) is qnn.QuantTransformerEncoderLayer and no_data == []


def _calibrated_plain(model: nn.Module) -> tuple[nn.Module, list[str]]:
    qmodel = quantize_model(model, "int8_max")
    result = calibrate(qmodel, [_batch()[0]], progress=False)
    return qmodel.eval(), result.no_data


def test_export_carries_the_encoder_quantizers(tmp_path):
    pytest.importorskip("onnxruntime")
    qmodel, _ = _calibrated_plain(_encoder())
    report = export_onnx(qmodel, (_batch()[0],), tmp_path / "encoder.onnx")
    assert report.passed, str(report)
    assert report.qdq_pairs >= len(list_quantizers(qmodel)) - 2 * len(qmodel.layers)  # merged shared inputs


def test_a_container_twin_must_subclass_its_float_class():
    with pytest.raises(RegistryError, match="must subclass TransformerDecoderLayer"):
        registry.register_quant_container(nn.TransformerDecoderLayer)(nn.Linear)
    assert registry.quant_container_for(nn.TransformerDecoderLayer) is None


def test_a_bare_layer_as_the_whole_model():
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 32, dropout=0.0, batch_first=True).eval()
    qlayer, no_data = _calibrated_plain(layer)
    assert type(qlayer) is qnn.QuantTransformerEncoderLayer and no_data == []
    assert type(qlayer.linear1) is qnn.QuantLinear and type(qlayer.self_attn) is qnn.QuantMultiheadAttention
    assert type(layer.linear1) is nn.Linear
