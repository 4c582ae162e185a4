"""QuantHFConv1D (Hugging Face's Conv1D, weight [in, out]) against a hand-computed reference, and its registry
entry: lazy (no transformers import until a model holds a Conv1D), config axes read as nn.Linear's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from quantrewrite import QuantConfig, QuantConfigError, plan, quantize_model
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.tensor_quant import fake_tensor_quant

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D

from quantrewrite.nn.modules.quant_hf_conv1d import QuantHFConv1D


def _layer(nx: int = 16, nf: int = 8) -> Conv1D:
    torch.manual_seed(0)
    layer = Conv1D(nf, nx)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


def _fq(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    return fake_tensor_quant(x, amax, narrow_range=False)  # the descriptor default: full signed range


def _by_hand(layer: torch.nn.Module, x: torch.Tensor, in_amax: torch.Tensor,
             w_amax: torch.Tensor) -> torch.Tensor:
    """x @ fake_quant(W) + b, as Conv1D computes it (one addmm over the flattened rows)."""
    qx = _fq(x, in_amax)
    qw = _fq(layer.weight.detach(), w_amax)
    out = torch.addmm(layer.bias.detach(), qx.reshape(-1, x.shape[-1]), qw)
    return out.view(*x.shape[:-1], qw.shape[1])


@pytest.mark.parametrize("shape", [(4, 16), (2, 5, 16)], ids=["2d", "3d"])
def test_matches_x_times_fake_quant_weight_plus_bias(shape: tuple[int, ...]) -> None:
    float_layer = _layer()
    quant = QuantHFConv1D.from_float(float_layer)
    x = torch.randn(shape)
    in_amax = x.abs().amax() * 0.5  # static, below max|x|: clipping happens
    w_amax = float_layer.weight.detach().abs().amax(dim=0, keepdim=True) * 0.8
    quant.input_quantizer.amax = in_amax
    quant.weight_quantizer.amax = w_amax
    expected = _by_hand(float_layer, x, in_amax, w_amax)
    assert torch.equal(quant(x), expected)
    # the same product written as x @ W + b (a separate matmul and add round differently, by a few ulps)
    qx, qw = _fq(x, in_amax), _fq(float_layer.weight.detach(), w_amax)
    torch.testing.assert_close(quant(x), qx @ qw + float_layer.bias.detach(), rtol=1e-5, atol=1e-5)


def test_weight_is_per_output_feature_on_axis_1() -> None:
    float_layer = _layer(nx=12, nf=5)
    quant = QuantHFConv1D.from_float(float_layer)
    x = torch.randn(3, 12)
    quant(x)  # dynamic amax: computed from the tensors themselves
    assert quant.weight_quantizer.axis == (1,)
    with torch.no_grad():
        quant.weight_quantizer.enable_calib()
        quant.weight_quantizer.disable_quant()
        quant(x)
        quant.weight_quantizer.load_calib_amax()
    expected = float_layer.weight.detach().abs().amax(dim=0)
    assert quant.weight_quantizer.amax.shape == (1, 5)
    assert torch.equal(quant.weight_quantizer.amax.reshape(-1), expected)
    quant.weight_quantizer.enable_quant()
    quant.weight_quantizer.disable_calib()
    assert torch.equal(quant(x), _by_hand(float_layer, x, x.abs().amax(), expected.reshape(1, 5)))


def test_disabled_equals_float_and_parameters_are_shared() -> None:
    float_layer = _layer()
    quant = QuantHFConv1D.from_float(float_layer)
    quant.input_quantizer.disable()
    quant.weight_quantizer.disable()
    x = torch.randn(2, 3, 16)
    assert torch.equal(quant(x), float_layer(x))
    assert quant.weight is float_layer.weight and quant.bias is float_layer.bias
    assert list(quant.state_dict())[:2] == ["weight", "bias"]


def test_constructor_takes_real_axes() -> None:
    layer = QuantHFConv1D(8, 16, quant_desc_weight=QuantDescriptor(axis=0))  # per INPUT feature, as asked
    assert layer.weight.shape == (16, 8) and layer.weight_quantizer.axis == (0,)


# ------------------------------------------------------------------------------------ registry and configs


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = _layer()
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(x))


def test_config_axis_0_means_output_features_as_for_linear() -> None:
    entry = plan(Block(), "int8_max")["proj"]  # the preset says weight axis 0 for every layer
    assert entry.quant_class == "QuantHFConv1D" and entry.weight.axis == (1,)
    assert "axis [1] of this weight" in entry.note
    assert plan(Block(), "int8_max")["head"].weight.axis == (0,)
    qmodel = quantize_model(Block(), "int8_max")
    assert isinstance(qmodel.proj, QuantHFConv1D) and qmodel.proj.weight_quantizer.axis == (1,)


def test_config_axis_1_is_per_input_feature_and_static_amax_is_transposed() -> None:
    cfg = {"version": 1, "modules": {"Conv1D": {"weight": {"axis": 1, "amax": [[0.5]] * 8}}}}
    weight = plan(Block(), cfg)["proj"].weight  # config amax [out=8, 1] (Linear layout) -> [1, 8]
    assert weight.axis == (0,) and weight.to_dict()["amax"] == [[0.5] * 8]


def test_config_axis_outside_the_weight_is_a_located_error() -> None:
    cfg = QuantConfig({"version": 1, "modules": {"Conv1D": {"weight": {"axis": 2}}}})
    with pytest.raises(QuantConfigError, match=r"modules\.Conv1D\.weight\.axis.*got 2.*proj \(Conv1D \[16, 8\]\)"):
        quantize_model(Block(), cfg)


def test_registry_entry_is_lazy() -> None:
    code = ("import sys\nimport torch\nimport quantrewrite\nfrom quantrewrite import registry\n"
            "from quantrewrite.config import QuantConfig\n"
            "quantrewrite.quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), 'int8_max')\n"
            "QuantConfig({'version': 1, 'modules': {'Conv1D': {'quantize': False}}})\n"
            "assert 'transformers' not in sys.modules, 'imported too early'\n"
            "from transformers.pytorch_utils import Conv1D\n"
            "assert registry.quant_module_for(Conv1D).__name__ == 'QuantHFConv1D'\n"
            "assert 'Conv1D' in registry.registered_modules()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class Gemms(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wide = Conv1D(64, 64)
        self.narrow = Conv1D(8, 64)  # N 8 < 16: TensorRT runs it faster in FP16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.narrow(self.wide(x))


def test_tensorrt_placement_treats_conv1d_as_a_gemm() -> None:
    p = plan(Gemms(), "tensorrt", example_inputs=torch.randn(2, 8, 64))
    assert p["wide"].quantized and "weighted_inputs" in str(p["wide"].placement)
    assert not p["narrow"].quantized and "small_gemm" in p["narrow"].reason and "K 64, N 8" in p["narrow"].reason
