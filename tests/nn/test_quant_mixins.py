"""What every Quant module shares: kwargs, class defaults, registration, from_float and state_dict."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from quantrewrite import descriptor as d
from quantrewrite import nn as quant_nn
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import quant_module_for


def spec(quant_cls: type, float_cls: type, args: tuple, shape: tuple[int, ...], weight_desc: Any = None,
         **kwargs: Any) -> Any:
    """One Quant class: its float class, constructor arguments, an input shape and its default weight desc."""
    return pytest.param(quant_cls, float_cls, args, kwargs, shape, weight_desc, id=quant_cls.__name__)


MODULES = [
    spec(quant_nn.QuantConv1d, nn.Conv1d, (4, 6, 3), (2, 4, 8), d.QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL,
         stride=2, groups=2, padding_mode="circular", padding=1),
    spec(quant_nn.QuantConv2d, nn.Conv2d, (4, 6, 3), (2, 4, 6, 6), d.QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL,
         dilation=2, groups=2, padding="same"),
    spec(quant_nn.QuantConv3d, nn.Conv3d, (2, 3, 2), (1, 2, 3, 4, 4), d.QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL,
         bias=False),
    spec(quant_nn.QuantConvTranspose1d, nn.ConvTranspose1d, (4, 6, 3), (2, 4, 5),
         d.QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL, stride=2, output_padding=1, groups=2),
    spec(quant_nn.QuantConvTranspose2d, nn.ConvTranspose2d, (4, 2, 3), (1, 4, 4, 4),
         d.QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL, stride=2, dilation=2, output_padding=1),
    spec(quant_nn.QuantConvTranspose3d, nn.ConvTranspose3d, (2, 4, 2), (1, 2, 2, 3, 3),
         d.QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL, groups=2),
    spec(quant_nn.QuantLinear, nn.Linear, (8, 5), (3, 8), d.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW),
    spec(quant_nn.QuantMaxPool1d, nn.MaxPool1d, (3,), (2, 3, 9), stride=2, padding=1),
    spec(quant_nn.QuantMaxPool2d, nn.MaxPool2d, (2,), (2, 3, 6, 6), return_indices=True),
    spec(quant_nn.QuantMaxPool3d, nn.MaxPool3d, (2,), (1, 2, 4, 4, 5), ceil_mode=True),
    spec(quant_nn.QuantAvgPool1d, nn.AvgPool1d, (3,), (2, 3, 9), count_include_pad=False, padding=1),
    spec(quant_nn.QuantAvgPool2d, nn.AvgPool2d, (3,), (2, 3, 7, 7), divisor_override=4),
    spec(quant_nn.QuantAvgPool3d, nn.AvgPool3d, (2,), (1, 2, 4, 4, 4)),
    spec(quant_nn.QuantAdaptiveAvgPool1d, nn.AdaptiveAvgPool1d, (3,), (2, 3, 8)),
    spec(quant_nn.QuantAdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, ((2, 3),), (2, 3, 7, 7)),
    spec(quant_nn.QuantAdaptiveAvgPool3d, nn.AdaptiveAvgPool3d, (2,), (1, 2, 4, 5, 4)),
    spec(quant_nn.QuantInstanceNorm1d, nn.InstanceNorm1d, (3,), (2, 3, 8)),
    spec(quant_nn.QuantInstanceNorm2d, nn.InstanceNorm2d, (3,), (2, 3, 5, 5), affine=True,
         track_running_stats=True),
    spec(quant_nn.QuantInstanceNorm3d, nn.InstanceNorm3d, (3,), (1, 3, 3, 3, 4), affine=True, momentum=0.3),
]
ALL_CLASSES = [p.values[0] for p in MODULES]


@pytest.fixture
def restore_defaults() -> Iterator[None]:
    """Put every Quant class's default descriptors back after a test that changes them."""
    saved = {cls: dict(vars(cls)) for cls in ALL_CLASSES}
    try:
        yield
    finally:
        for cls, attrs in saved.items():
            for name in ("default_quant_desc_input", "default_quant_desc_weight"):
                if name in attrs:
                    setattr(cls, name, attrs[name])


def randomize(module: nn.Module) -> nn.Module:
    """Random parameters and running statistics, so that sharing and copying are visible."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return module


def outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("quant_cls,float_cls,args,kwargs,shape,weight_desc", MODULES)
def test_class_is_registered_subclass_with_expected_defaults(quant_cls: type, float_cls: type, args: tuple,
                                                             kwargs: dict, shape: tuple, weight_desc: Any) -> None:
    assert quant_module_for(float_cls) is quant_cls
    assert issubclass(quant_cls, float_cls)
    # Each concrete class owns its defaults (so set_default_* on it cannot leak into a sibling).
    assert vars(quant_cls)["default_quant_desc_input"] is d.QUANT_DESC_8BIT_PER_TENSOR
    if weight_desc is None:
        assert issubclass(quant_cls, QuantInputMixin) and "default_quant_desc_weight" not in vars(quant_cls)
    else:
        assert issubclass(quant_cls, QuantMixin) and vars(quant_cls)["default_quant_desc_weight"] is weight_desc
    module = quant_cls(*args, **kwargs)
    assert module.input_quantizer.quant_desc is d.QUANT_DESC_8BIT_PER_TENSOR
    if weight_desc is not None:
        assert module.weight_quantizer.quant_desc is weight_desc


@pytest.mark.parametrize("quant_cls,float_cls,args,kwargs,shape,weight_desc", MODULES)
def test_constructor_takes_the_float_arguments(quant_cls: type, float_cls: type, args: tuple, kwargs: dict,
                                               shape: tuple, weight_desc: Any) -> None:
    """Same names, order, kinds and defaults as the float constructor, plus **kwargs for the descriptors."""
    def described(cls: type) -> list[tuple[str, Any, Any]]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [(p.name, p.kind, p.default) for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]

    assert described(quant_cls) == described(float_cls)
    assert list(inspect.signature(quant_cls.__init__).parameters.values())[-1].kind is \
        inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize("quant_cls,float_cls,args,kwargs,shape,weight_desc", MODULES)
def test_unused_keys_and_quant_desc_kwargs(quant_cls: type, float_cls: type, args: tuple, kwargs: dict,
                                           shape: tuple, weight_desc: Any) -> None:
    with pytest.raises(TypeError, match="Unused keys.*quant_desc_inptu"):
        quant_cls(*args, quant_desc_inptu=QuantDescriptor(), **kwargs)
    desc_in = QuantDescriptor(num_bits=6, unsigned=False, name="in")
    if weight_desc is None:
        module = quant_cls(*args, quant_desc_input=desc_in, **kwargs)
        with pytest.raises(TypeError, match="Unused keys"):
            quant_cls(*args, quant_desc_weight=QuantDescriptor(), **kwargs)
    else:
        desc_w = QuantDescriptor(num_bits=5, axis=0, name="w")
        module = quant_cls(*args, quant_desc_input=desc_in, quant_desc_weight=desc_w, **kwargs)
        assert module.weight_quantizer.quant_desc is desc_w
        assert module.weight_quantizer.num_bits == 5
    assert module.input_quantizer.quant_desc is desc_in
    assert module.input_quantizer.num_bits == 6


@pytest.mark.parametrize("quant_cls,float_cls,args,kwargs,shape,weight_desc", MODULES)
def test_from_float_keeps_everything_and_disabled_equals_float(quant_cls: type, float_cls: type, args: tuple,
                                                                kwargs: dict, shape: tuple,
                                                                weight_desc: Any) -> None:
    torch.manual_seed(0)
    float_module = randomize(float_cls(*args, **kwargs))
    untouched = copy.deepcopy(float_module)
    quant = quant_cls.from_float(float_module)

    assert type(quant) is quant_cls
    # parameters and buffers are the float module's own tensors; settings are the same
    float_state = float_module.state_dict()
    quant_state = quant.state_dict()
    assert all(quant_state[k] is v or quant_state[k].data_ptr() == v.data_ptr() for k, v in float_state.items())
    assert {k for k in quant_state if "_quantizer" not in k} == set(float_state)
    for name, value in vars(float_module).items():
        if not name.startswith("_"):
            assert getattr(quant, name) == value, name
    assert float_module.extra_repr() == quant.extra_repr()
    # the float module is left as it was: no quantizers were added to it
    assert not any("_quantizer" in name for name, _ in float_module.named_modules())

    x = torch.randn(shape)
    quant.input_quantizer.disable()
    if weight_desc is not None:
        quant.weight_quantizer.disable()
    assert outputs_equal(quant(x), untouched(x))
    for key, value in untouched.state_dict().items():  # running statistics updated the same way
        assert torch.equal(quant.state_dict()[key], value), key

    # enabled: the same as a Quant module built by its constructor with the same state
    quant.input_quantizer.enable()
    if weight_desc is not None:
        quant.weight_quantizer.enable()
    built = quant_cls(*args, **kwargs)
    built.load_state_dict(quant.state_dict())
    assert outputs_equal(quant(x), built(x))


@pytest.mark.parametrize("quant_cls,float_cls,args,kwargs,shape,weight_desc", MODULES)
def test_from_float_honours_descriptors(quant_cls: type, float_cls: type, args: tuple, kwargs: dict,
                                        shape: tuple, weight_desc: Any) -> None:
    desc_in, desc_w = QuantDescriptor(num_bits=4), QuantDescriptor(num_bits=6, axis=0)
    quant = quant_cls.from_float(float_cls(*args, **kwargs), quant_desc_input=desc_in, quant_desc_weight=desc_w)
    assert quant.input_quantizer.quant_desc is desc_in
    if weight_desc is not None:
        assert quant.weight_quantizer.quant_desc is desc_w
    with pytest.raises(TypeError, match=float_cls.__name__):
        quant_cls.from_float(nn.Identity())


def test_set_default_changes_only_its_class(restore_defaults: None) -> None:
    new_weight = QuantDescriptor(num_bits=4, axis=0)
    new_input = QuantDescriptor(num_bits=6)
    quant_nn.QuantConv2d.set_default_quant_desc_weight(new_weight)
    quant_nn.QuantConv2d.set_default_quant_desc_input(new_input)
    quant_nn.QuantMaxPool2d.set_default_quant_desc_input(new_input)

    conv = quant_nn.QuantConv2d(2, 2, 1)
    assert conv.weight_quantizer.quant_desc is new_weight and conv.input_quantizer.quant_desc is new_input
    assert quant_nn.QuantMaxPool2d(2).input_quantizer.quant_desc is new_input
    for other in (quant_nn.QuantConv1d, quant_nn.QuantConv3d, quant_nn.QuantConvTranspose2d,
                  quant_nn.QuantLinear):
        assert other.default_quant_desc_weight is not new_weight
        assert other.default_quant_desc_input is d.QUANT_DESC_8BIT_PER_TENSOR
    assert quant_nn.QuantConv1d.default_quant_desc_weight is d.QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL
    assert quant_nn.QuantConv3d.default_quant_desc_weight is d.QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL
    assert quant_nn.QuantLinear.default_quant_desc_weight is d.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    assert quant_nn.QuantLinear(2, 2).weight_quantizer.quant_desc is d.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    for other in (quant_nn.QuantMaxPool1d, quant_nn.QuantAvgPool2d, quant_nn.QuantInstanceNorm2d):
        assert other.default_quant_desc_input is d.QUANT_DESC_8BIT_PER_TENSOR
    # the mixins' own defaults (what a user-written class inherits) are untouched too
    assert QuantMixin.default_quant_desc_input is d.QUANT_DESC_8BIT_PER_TENSOR
    assert QuantMixin.default_quant_desc_weight is d.QUANT_DESC_8BIT_PER_TENSOR
    # from_float uses the class default as well
    assert quant_nn.QuantConv2d.from_float(nn.Conv2d(2, 2, 1)).weight_quantizer.quant_desc is new_weight


def test_set_default_rejects_non_descriptors(restore_defaults: None) -> None:
    with pytest.raises(TypeError, match="QuantDescriptor"):
        quant_nn.QuantLinear.set_default_quant_desc_weight({"num_bits": 8})
    with pytest.raises(ValueError, match="fake"):
        quant_nn.QuantLinear.set_default_quant_desc_input(QuantDescriptor(fake_quant=False))


def test_pop_quant_desc_in_kwargs() -> None:
    desc = QuantDescriptor(num_bits=4)
    assert pop_quant_desc_in_kwargs(quant_nn.QuantLinear) == (d.QUANT_DESC_8BIT_PER_TENSOR,
                                                              d.QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW)
    assert pop_quant_desc_in_kwargs(quant_nn.QuantLinear, quant_desc_weight=desc)[1] is desc
    assert pop_quant_desc_in_kwargs(quant_nn.QuantAvgPool1d, input_only=True, quant_desc_input=desc) is desc
    with pytest.raises(TypeError, match="Unused keys.*bias_quantizer"):
        pop_quant_desc_in_kwargs(quant_nn.QuantLinear, bias_quantizer=desc)


def _model() -> nn.Sequential:
    return nn.Sequential(quant_nn.QuantConv2d(3, 4, 3, padding=1), quant_nn.QuantMaxPool2d(2),
                         quant_nn.QuantConvTranspose2d(4, 2, 2, stride=2), nn.Flatten(),
                         quant_nn.QuantLinear(2 * 8 * 8, 5))


def test_state_dict_amax_keys_round_trip_on_cpu() -> None:
    torch.manual_seed(1)
    model = _model()
    x = torch.randn(2, 3, 8, 8)
    for module in model.modules():
        if isinstance(module, (QuantMixin, QuantInputMixin)):
            module.input_quantizer.amax = 2.5
        if isinstance(module, QuantMixin):
            weight = module.weight.detach()
            module.weight_quantizer.amax = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
    state = model.state_dict()
    for key in ("0._input_quantizer._amax", "0._weight_quantizer._amax", "1._input_quantizer._amax",
                "2._input_quantizer._amax", "2._weight_quantizer._amax", "4._input_quantizer._amax",
                "4._weight_quantizer._amax"):
        assert key in state, key
    assert state["0._weight_quantizer._amax"].shape == (4, 1, 1, 1)
    assert state["2._weight_quantizer._amax"].shape == (4, 1, 1, 1)  # ConvTranspose: Cin of [Cin, Cout, k, k]
    assert state["4._weight_quantizer._amax"].shape == (5, 1)

    fresh = _model()
    assert fresh[0].input_quantizer.amax is None and fresh[0].weight_quantizer.amax is None
    fresh.load_state_dict(state)  # strict: the missing _amax buffers are created, on the CPU
    assert fresh[0].weight_quantizer.amax.device.type == "cpu"
    assert torch.equal(fresh[4].weight_quantizer.amax, state["4._weight_quantizer._amax"])
    assert torch.equal(fresh(x), model(x))


def test_repr_shows_the_quantizers() -> None:
    text = repr(quant_nn.QuantConv2d(2, 3, 3))
    assert text.startswith("QuantConv2d(\n  2, 3, kernel_size=(3, 3), stride=(1, 1)\n")
    assert "(_input_quantizer): TensorQuantizer(8bit fake per-tensor" in text
    assert "(_weight_quantizer): TensorQuantizer(8bit fake axis=0" in text
