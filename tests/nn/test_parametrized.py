"""Layers whose weight is computed (``torch.nn.utils.parametrize`` weight norm, the old weight-norm hook) are
swapped for their twins, which quantize the effective weight at every forward; checked against hand-computed
references, gradients to ``original0``/``original1``, state_dict keys, torch's parametrize helpers and export."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from quantrewrite import disable_quantizers, plan, quantize_model
from quantrewrite.nn import QuantConv1d, QuantLinear
from quantrewrite.tensor_quant import fake_tensor_quant


def _fq(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    return fake_tensor_quant(x, amax, narrow_range=False)  # the descriptor default: full signed range


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    """||v|| over every dim but ``dim``, kept for broadcasting (weight norm by hand)."""
    dims = [d for d in range(v.dim()) if d != dim]
    return v.pow(2).sum(dim=dims, keepdim=True).sqrt()


class Net(nn.Module):
    def __init__(self, hook: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        norm = torch.nn.utils.weight_norm if hook else parametrizations.weight_norm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the hook is deprecated: that is the point
            self.conv = norm(nn.Conv1d(4, 8, 3, padding=1), dim=0)
            self.fc = norm(nn.Linear(8, 6))
        self.plain = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.plain(self.fc(self.conv(x).transpose(1, 2)))


def _static_amax(qmodel: nn.Module, x: torch.Tensor) -> None:
    """Static amax below the max, so clipping happens, computed from the effective weights by hand."""
    qmodel.conv.input_quantizer.amax = x.abs().amax() * 0.7
    v, g = qmodel.conv.parametrizations.weight.original1, qmodel.conv.parametrizations.weight.original0
    qmodel.conv.weight_quantizer.amax = (g * v / _norm_except(v, 0)).detach().abs().amax(dim=(1, 2), keepdim=True) * 0.9


def test_plan_lists_parametrized_layers_as_quantized_with_their_parametrization() -> None:
    p = plan(Net(), "int8_max")
    for name, float_class in (("conv", "Conv1d"), ("fc", "Linear")):
        entry = p[name]
        assert entry.quantized and entry.target == f"Parametrized{float_class}"
        assert entry.quant_class == f"ParametrizedQuant{float_class}"
        assert "effective weight (_WeightNorm)" in entry.note
    assert p["conv.parametrizations.weight.0"].reason == "part of conv, handled as a whole"
    cfg = {"version": 1, "modules": {"Conv1d": {"quantize": False}}}  # configured by the class it came from
    assert not plan(Net(), cfg)["conv"].quantized and plan(Net(), cfg)["fc"].quantized


def test_effective_weight_is_quantized_exactly() -> None:
    model = Net().eval()
    qmodel = quantize_model(model, "int8_max")
    assert type(qmodel.conv).__name__ == "ParametrizedQuantConv1d" and isinstance(qmodel.conv, QuantConv1d)
    x = torch.randn(2, 4, 5)
    _static_amax(qmodel, x)
    disable_quantizers(qmodel, "fc", "plain")
    g, v = model.conv.parametrizations.weight.original0, model.conv.parametrizations.weight.original1
    by_hand = g * v / _norm_except(v, 0)
    torch.testing.assert_close(by_hand, model.conv.weight, rtol=1e-6, atol=1e-7)  # the hand formula is weight norm
    # the twin quantizes what the parametrization computes, every forward
    qw = _fq(model.conv.weight.detach(), qmodel.conv.weight_quantizer.amax)
    expected_conv = F.conv1d(_fq(x, qmodel.conv.input_quantizer.amax), qw, model.conv.bias, padding=1)
    with torch.no_grad():
        assert torch.equal(qmodel.conv(x), expected_conv)
        qmodel.conv.parametrizations.weight.original0.mul_(2.0)  # a new g: a new effective weight, no stale copy
        qw2 = _fq(qmodel.conv.weight, qmodel.conv.weight_quantizer.amax)
        assert torch.equal(qmodel.conv(x), F.conv1d(_fq(x, qmodel.conv.input_quantizer.amax), qw2,
                                                    model.conv.bias, padding=1))
        assert not torch.equal(qw2, qw)


def test_gradients_reach_original0_and_original1_and_training_works() -> None:
    qmodel = quantize_model(Net(), "int8_max").train()
    x = torch.randn(3, 4, 5)
    qmodel(x).pow(2).sum().backward()
    for layer in (qmodel.conv, qmodel.fc):
        g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
        assert g.grad is not None and v.grad is not None
        assert g.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    before = qmodel.conv.weight.detach().clone()
    torch.optim.SGD(qmodel.parameters(), lr=0.1).step()
    assert not torch.equal(qmodel.conv.weight.detach(), before)


def test_state_dict_keys_and_parametrize_helpers_are_those_of_the_float_layer() -> None:
    model = Net()
    qmodel = quantize_model(model, "int8_max")
    float_keys = list(model.state_dict())
    assert "conv.parametrizations.weight.original0" in float_keys
    assert [k for k in qmodel.state_dict() if "quantizer" not in k] == float_keys
    qmodel.load_state_dict(model.state_dict(), strict=False)
    assert parametrize.is_parametrized(qmodel.conv, "weight")
    x = torch.randn(2, 4, 5)
    with torch.no_grad():
        with parametrize.cached():
            cached = qmodel(x)
        assert torch.equal(cached, qmodel(x))
        expected = qmodel(x)
        twin = copy.deepcopy(qmodel)
        assert torch.equal(twin(x), expected)
        assert twin.conv.parametrizations.weight.original0 is not qmodel.conv.parametrizations.weight.original0
        # back to a plain QuantConv1d holding the effective weight (torch removes the property from the class,
        # which a deep copy shares, as for float layers: qmodel is not used after this)
        parametrize.remove_parametrizations(twin.conv, "weight")
        assert type(twin.conv) is QuantConv1d and not parametrize.is_parametrized(twin.conv)
        assert torch.equal(twin(x), expected)


def test_float_model_is_left_as_it_was() -> None:
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_model(model, "int8_max")
    assert type(model.conv).__name__ == "ParametrizedConv1d" and not hasattr(model.conv, "_weight_quantizer")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_old_weight_norm_hook_is_quantized_too() -> None:
    model = Net(hook=True).eval()
    p = plan(model, "int8_max")
    assert p["conv"].quantized and "weight_norm hook" in p["conv"].note
    qmodel = quantize_model(model, "int8_max")  # deep-copies a model that copy.deepcopy alone refuses
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)
    assert type(qmodel.conv) is QuantConv1d and type(qmodel.fc) is QuantLinear
    x = torch.randn(2, 4, 5)
    _amax = x.abs().amax() * 0.7
    qmodel.conv.input_quantizer.amax = _amax
    with torch.no_grad():
        effective = qmodel.conv.weight_g * qmodel.conv.weight_v / _norm_except(qmodel.conv.weight_v, 0)
        w_amax = effective.abs().amax(dim=(1, 2), keepdim=True) * 0.9
        qmodel.conv.weight_quantizer.amax = w_amax
        qmodel.conv.weight_g.mul_(0.5)  # the hook recomputes the weight from the new g at the next forward
        out = qmodel.conv(x)
        expected_weight = torch._weight_norm(qmodel.conv.weight_v, qmodel.conv.weight_g, 0)
        torch.testing.assert_close(expected_weight, effective * 0.5, rtol=1e-6, atol=1e-7)
        expected = F.conv1d(_fq(x, _amax), _fq(expected_weight, w_amax), qmodel.conv.bias, padding=1)
        assert torch.equal(out, expected)
    assert {"conv.weight_g", "conv.weight_v"} <= set(qmodel.state_dict())


def test_twin_without_support_stays_float_and_says_why() -> None:
    norm = nn.LayerNorm(6)
    parametrize.register_parametrization(norm, "weight", nn.Identity())
    model = nn.Sequential(nn.Linear(4, 6), norm)
    entry = plan(model, {"version": 1, "modules": {"LayerNorm": {"quantize": True}}})["1"]
    assert not entry.quantized and "parametrized (weight (Identity))" in entry.reason and "stays float" in entry.reason


def test_export_evaluates_the_parametrization_and_verifies(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from quantrewrite import calibrate, export_onnx

    qmodel = quantize_model(Net(), "int8_max")
    calibrate(qmodel, [torch.randn(2, 4, 5) for _ in range(2)], progress=False)
    report = export_onnx(qmodel, torch.randn(2, 4, 5), tmp_path / "wn.onnx")
    assert report.passed, report.failures
    assert {"conv._weight_quantizer", "fc._weight_quantizer"} <= set(report.quantizers)


def test_wav2vec2_positional_conv_is_quantized_per_output_channel() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=16,
        vocab_size=10)
    model = transformers.Wav2Vec2Model(config).eval()
    conv = model.encoder.pos_conv_embed.conv
    assert type(conv).__name__ == "ParametrizedConv1d" and conv.groups == 16  # weight_norm(dim=2)
    audio = [torch.randn(2, 400, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    qmodel = quantize_model(model, "int8_max")
    entry = qmodel.quant_plan["encoder.pos_conv_embed.conv"]
    assert entry.quantized and entry.weight.axis == (0,) and "_WeightNorm" in entry.note
    qconv = qmodel.encoder.pos_conv_embed.conv
    from quantrewrite import calibrate

    calibrate(qmodel, audio[:2], progress=False)
    with torch.no_grad():  # max calibration of the effective weight, one amax per output channel
        expected = conv.weight.abs().amax(dim=(1, 2), keepdim=True)
        assert torch.equal(qconv.weight_quantizer.amax, expected)
        ref = model(audio[2]).last_hidden_state
        out = qmodel(audio[2]).last_hidden_state
        assert not torch.equal(out, ref)
        assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
        disable_quantizers(qmodel, "*")
        assert torch.equal(qmodel(audio[2]).last_hidden_state, ref)


@pytest.mark.parametrize("hook", [False, True], ids=["parametrize", "hook"])
def test_weight_axis_is_checked_against_the_effective_weight(hook: bool) -> None:
    from quantrewrite import QuantConfigError

    cfg = {"version": 1, "modules": {"Conv1d": {"weight": {"axis": 3}}}}
    with pytest.raises(QuantConfigError, match=r"modules\.Conv1d\.weight\.axis.*got 3.*conv \(\w*Conv1d \[8, 4, 3\]\)"):
        quantize_model(Net(hook=hook), cfg)


def test_plan_of_a_training_spectral_norm_layer_changes_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(8, 8)), nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.endswith("_u") for k in before)  # the power-iteration buffers that a training forward updates
    entry = plan(model, "int8_max")["0"]
    assert entry.quantized and "_SpectralNorm" in entry.note
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model[0].training
    qmodel = quantize_model(model, "int8_max")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    qmodel(torch.randn(2, 8))  # the twin runs the parametrization as the float layer does: u is updated
    key = "0.parametrizations.weight.0._u"
    assert not torch.equal(qmodel.state_dict()[key], before[key])
