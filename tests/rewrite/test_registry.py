"""The registry: built-in Quant classes, checked registrations, the seed document's QuantMaxPool2d, and
user-registered functional ops."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from rewrite_toys import fake_quant_ref, generated_graph, registry_snapshot
from torch import fx, nn
from torch.nn.modules import pooling

from quantrewrite import (
    ArgSpec,
    RegistryError,
    TensorQuantizer,
    disable_quantizers,
    list_quantizers,
    plan,
    quantize_model,
    register_quant_function,
    register_quant_module,
    registry,
    unregister_quant_function,
    unregister_quant_module,
)
from quantrewrite.nn import modules as qnn
from quantrewrite.nn.modules import _utils


@pytest.fixture(autouse=True)
def restore_registry():
    with registry_snapshot():
        yield


# ----------------------------------------------------------------------------------------- built-ins

BUILTINS = [
    (nn.Conv1d, qnn.QuantConv1d), (nn.Conv2d, qnn.QuantConv2d), (nn.Conv3d, qnn.QuantConv3d),
    (nn.ConvTranspose1d, qnn.QuantConvTranspose1d), (nn.ConvTranspose2d, qnn.QuantConvTranspose2d),
    (nn.ConvTranspose3d, qnn.QuantConvTranspose3d), (nn.Linear, qnn.QuantLinear),
    (nn.MaxPool1d, qnn.QuantMaxPool1d), (nn.MaxPool2d, qnn.QuantMaxPool2d), (nn.MaxPool3d, qnn.QuantMaxPool3d),
    (nn.AvgPool1d, qnn.QuantAvgPool1d), (nn.AvgPool2d, qnn.QuantAvgPool2d), (nn.AvgPool3d, qnn.QuantAvgPool3d),
    (nn.AdaptiveAvgPool1d, qnn.QuantAdaptiveAvgPool1d), (nn.AdaptiveAvgPool2d, qnn.QuantAdaptiveAvgPool2d),
    (nn.AdaptiveAvgPool3d, qnn.QuantAdaptiveAvgPool3d), (nn.InstanceNorm1d, qnn.QuantInstanceNorm1d),
    (nn.InstanceNorm2d, qnn.QuantInstanceNorm2d), (nn.InstanceNorm3d, qnn.QuantInstanceNorm3d),
    (nn.MultiheadAttention, qnn.QuantMultiheadAttention),
    (nn.LSTM, qnn.QuantLSTM), (nn.GRU, qnn.QuantGRU), (nn.LSTMCell, qnn.QuantLSTMCell), (nn.GRUCell, qnn.QuantGRUCell),
    (nn.LayerNorm, qnn.QuantLayerNorm),
    *[(getattr(nn, f"{kind}Pad{n}d"), getattr(qnn, f"Quant{kind}Pad{n}d"))
      for kind in ("Zero", "Constant", "Reflection", "Replication") for n in (1, 2, 3)],
]


@pytest.mark.parametrize(("float_cls", "quant_cls"), BUILTINS, ids=[f.__name__ for f, _ in BUILTINS])
def test_builtin_quant_class_is_registered_for_its_exact_float_type(float_cls, quant_cls):
    assert registry.quant_module_for(float_cls) is quant_cls
    assert issubclass(quant_cls, float_cls)
    assert registry.registered_modules()[float_cls.__name__] is float_cls


CONTAINERS = [(nn.TransformerEncoderLayer, qnn.QuantTransformerEncoderLayer),
              (nn.TransformerEncoder, qnn.QuantTransformerEncoder)]


def test_every_exported_quant_class_is_registered():
    exported = {getattr(qnn, name) for name in qnn.__all__
                if name.startswith("Quant") and name not in ("QuantMixin", "QuantInputMixin")}
    registered = {registry.quant_module_for(cls) for cls in registry.registered_modules().values()}
    registered |= {registry.quant_container_for(cls) for cls, _ in CONTAINERS}
    assert exported == {quant for _, quant in BUILTINS + CONTAINERS}
    assert exported <= registered


def test_subclass_of_a_registered_float_type_is_not_matched():
    class MyLinear(nn.Linear):
        pass

    assert registry.quant_module_for(MyLinear) is None
    model = nn.Sequential(MyLinear(4, 4), nn.Linear(4, 4))
    qmodel = quantize_model(model)
    assert type(qmodel.get_submodule("0")) is MyLinear
    assert type(qmodel.get_submodule("1")) is qnn.QuantLinear
    assert qmodel.quant_plan["0"].reason == "no registry entry"
    # FX traces into the unregistered subclass, so its F.linear is quantized as a functional op instead.
    assert qmodel.quant_plan["0.linear"].quantizers == ("0.linear_input_quantizer", "0.linear_weight_quantizer")


# ------------------------------------------------------------------------------- checked registration


def _not_a_subclass():
    class NotAPool(nn.Module, _utils.QuantInputMixin):
        pass

    return NotAPool


def _mixin_missing():
    class NoMixin(nn.MaxPool2d):
        @classmethod
        def from_float(cls, module, quant_desc_input=None, quant_desc_weight=None):
            return module

    return NoMixin


def _from_float_missing():
    class NoFromFloat(nn.MaxPool2d, _utils.QuantInputMixin):
        from_float = None

    return NoFromFloat


def _duplicate():
    class AnotherQuantMaxPool2d(nn.MaxPool2d, _utils.QuantInputMixin):
        pass

    return AnotherQuantMaxPool2d


# (make the class, override=, fragments of the message): override=True isolates the class checks.
BAD_REGISTRATIONS = {
    "not-a-subclass": (_not_a_subclass, True, ["must subclass MaxPool2d", "class NotAPool(MaxPool2d, "]),
    "mixin-missing": (_mixin_missing, True, ["QuantMixin", "QuantInputMixin", "in its bases"]),
    "from-float-missing": (_from_float_missing, True, ["must define a classmethod from_float(module"]),
    "already-registered": (_duplicate, False, ["already registered to QuantMaxPool2d", "override=True"]),
}


@pytest.mark.parametrize("case", list(BAD_REGISTRATIONS))
def test_bad_registration_fails_at_once_with_the_fix(case):
    make, override, fragments = BAD_REGISTRATIONS[case]
    quant_cls = make()
    with pytest.raises(RegistryError) as info:
        register_quant_module(nn.MaxPool2d, override=override)(quant_cls)  # raises at once, before any model
    for fragment in fragments:
        assert fragment in str(info.value)
    assert registry.quant_module_for(nn.MaxPool2d) is qnn.QuantMaxPool2d


def test_register_needs_a_module_type():
    with pytest.raises(RegistryError, match="expects an nn.Module subclass"):
        register_quant_module(int)


def test_override_replaces_and_unregister_removes():
    class MyQuantLinear(nn.Linear, _utils.QuantMixin):
        pass

    assert register_quant_module(nn.Linear, override=True)(MyQuantLinear) is MyQuantLinear
    assert registry.quant_module_for(nn.Linear) is MyQuantLinear
    model = nn.Sequential(nn.Linear(3, 3))
    assert type(quantize_model(model)[0]) is MyQuantLinear

    assert unregister_quant_module(nn.Linear) is MyQuantLinear
    assert registry.quant_module_for(nn.Linear) is None
    assert "Linear" not in registry.registered_modules()
    qmodel = quantize_model(model)
    assert type(qmodel[0]) is nn.Linear
    assert qmodel.quant_plan["0"].reason == "no registry entry"
    with pytest.raises(RegistryError, match="Linear is not registered"):
        unregister_quant_module(nn.Linear)


# ------------------------------------------------------------------ the seed document's QuantMaxPool2d


# The class body exactly as in the seed document (creating_custom_quantized_modules.rst).
class QuantMaxPool2d(pooling.MaxPool2d, _utils.QuantInputMixin):
    """Quantized 2D maxpool"""
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices=False, ceil_mode=False, **kwargs):
        super(QuantMaxPool2d, self).__init__(kernel_size, stride, padding, dilation,  # noqa: UP008
                                             return_indices, ceil_mode)
        quant_desc_input = _utils.pop_quant_desc_in_kwargs(self.__class__, input_only=True, **kwargs)
        self.init_quantizer(quant_desc_input)

    def forward(self, input):
        quant_input = self._input_quantizer(input)
        return super(QuantMaxPool2d, self).forward(quant_input)  # noqa: UP008

    @property
    def input_quantizer(self):
        return self._input_quantizer


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x):
        return self.pool(self.conv(x))


def test_seed_quant_maxpool2d_registered_with_override_is_used_by_quantize_model():
    assert QuantMaxPool2d is not qnn.QuantMaxPool2d
    register_quant_module(nn.MaxPool2d, override=True)(QuantMaxPool2d)
    torch.manual_seed(0)
    model = PoolNet().eval()
    cfg = {"version": 1, "layers": [{"match": "pool", "input": {"amax": 0.5}}]}
    qmodel = quantize_model(model, cfg)

    assert type(qmodel.pool) is QuantMaxPool2d
    assert (qmodel.pool.kernel_size, qmodel.pool.stride) == (2, 2)
    assert qmodel.pool.input_quantizer is list_quantizers(qmodel)["pool._input_quantizer"]
    assert qmodel.quant_plan["pool"].quantizers == ("pool._input_quantizer",)

    x = torch.randn(2, 2, 6, 6)
    disable_quantizers(qmodel, "conv")
    with torch.no_grad():
        expected = F.max_pool2d(fake_quant_ref(model.conv(x), 0.5), 2, 2)
        assert torch.equal(qmodel(x), expected)
        disable_quantizers(qmodel, "pool")
        assert torch.equal(qmodel(x), model(x))


def test_seed_quant_maxpool2d_constructs_from_kwargs_like_the_document():
    layer = QuantMaxPool2d(2, quant_desc_input=qnn.QuantLinear.default_quant_desc_input)
    assert isinstance(layer.input_quantizer, TensorQuantizer)
    with pytest.raises(TypeError, match="Unused keys"):
        QuantMaxPool2d(2, bogus=1)


# ---------------------------------------------------------------------------------- functional ops


def my_scale(x, y):
    return x * y.sigmoid()


fx.wrap("my_scale")  # FX records my_scale(...) as one call_function node instead of tracing into it


class ScaleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, y):
        h = my_scale(self.fc(x), y)
        return my_scale(h, h)


def _register_my_scale(**kwargs):
    return register_quant_function("my_scale", functions=[my_scale], args=[ArgSpec(0, "x"), ArgSpec(1, "y")],
                                   **kwargs)


def test_user_op_gets_quantizers_named_after_it():
    spec = _register_my_scale()
    assert registry.function_spec("my_scale") is spec
    torch.manual_seed(0)
    model = ScaleNet().eval()
    qmodel = quantize_model(model, "int8_max")

    names = [n for n in list_quantizers(qmodel) if n.startswith("my_scale")]
    assert names == ["my_scale_input_quantizer", "my_scale_input1_quantizer",
                     "my_scale_1_input_quantizer", "my_scale_1_input1_quantizer"]
    calls = [n for n in generated_graph(qmodel).nodes if n.op == "call_function" and n.target is my_scale]
    assert [[a.target for a in node.args] for node in calls] == [names[:2], names[2:]]
    assert qmodel.quant_plan["my_scale_1"].quantizers == tuple(names[2:])

    x, y = torch.randn(3, 4), torch.randn(3, 4)
    disable_quantizers(qmodel, "fc")
    with torch.no_grad():
        h = my_scale(fake_quant_ref(model.fc(x), model.fc(x).abs().max()), fake_quant_ref(y, y.abs().max()))
        hq = fake_quant_ref(h, h.abs().max())
        assert torch.equal(qmodel(x, y), my_scale(hq, hq))


def test_user_op_off_by_default_is_turned_on_by_the_config():
    _register_my_scale(enabled_by_default=False)
    model = ScaleNet()
    assert plan(model)["my_scale"].reason == "functions.my_scale: off unless a config turns it on"
    entry = plan(model, {"version": 1, "functions": {"my_scale": {"quantize": True}}})["my_scale"]
    assert entry.quantized and entry.rules == ("functions.my_scale",)


def test_user_op_weight_argument_gets_a_per_channel_weight_quantizer():
    register_quant_function("my_scale", functions=[my_scale],
                            args=[ArgSpec(0, "x"), ArgSpec(1, "y", role="weight")])
    qmodel = quantize_model(ScaleNet(), {"version": 1})
    quantizers = list_quantizers(qmodel)
    assert quantizers["my_scale_weight_quantizer"].axis == (0,)
    assert quantizers["my_scale_input_quantizer"].axis is None


def test_unregistered_user_op_is_listed_but_not_quantized():
    _register_my_scale()
    assert plan(ScaleNet())["my_scale"].quantized
    assert unregister_quant_function("my_scale").name == "my_scale"
    entry = plan(ScaleNet())["my_scale"]
    assert (entry.action, entry.reason) == ("skip", "op not registered")
    with pytest.raises(RegistryError, match="not registered"):
        unregister_quant_function("my_scale")


BAD_FUNCTIONS = {
    "duplicate-name": ({"name": "add", "functions": [my_scale]}, "already registered; pass override=True"),
    "taken-target": ({"name": "my_add", "functions": [torch.add]}, "already belong to op 'add'; unregister it"),
    "taken-method": ({"name": "my_mm", "methods": ["matmul"]}, "already belong to op 'matmul'"),
    "dashed-name": ({"name": "my-op", "functions": [my_scale]}, "must be an identifier"),
    "empty-name": ({"name": "", "functions": [my_scale]}, "must be an identifier"),
    "non-string-name": ({"name": 3, "functions": [my_scale]}, "must be an identifier"),
    "no-targets": ({"name": "my_op"}, "give at least one target"),
    "no-args": ({"name": "my_op", "functions": [my_scale], "args": ()}, "give at least one ArgSpec"),
    "bad-role": ({"name": "my_op", "functions": [my_scale], "args": [ArgSpec(0, "x", role="bias")]},
                 "role must be 'input' or 'weight'"),
}


@pytest.mark.parametrize("case", list(BAD_FUNCTIONS))
def test_bad_function_registration_is_a_registry_error(case):
    kwargs, fragment = BAD_FUNCTIONS[case]
    before = registry.registered_functions()
    with pytest.raises(RegistryError) as info:
        register_quant_function(**kwargs)
    assert fragment in str(info.value)
    assert registry.registered_functions() == before


BUILTIN_OPS = {
    "add": ([operator.add, operator.iadd, torch.add], ["add"], ["input", "input"], False),
    "cat": ([torch.cat, torch.concat], [], ["input"], False),
    "matmul": ([torch.matmul, operator.matmul, torch.bmm], ["matmul"], ["input", "input"], True),
    "linear": ([F.linear], [], ["input", "weight"], True),
    "conv2d": ([F.conv2d], [], ["input", "weight"], True),
    "interpolate": ([F.interpolate], [], ["input"], True),
    "pad": ([F.pad], [], ["input"], False),
    **{f"{kind}{d}d": ([getattr(F, f"{kind}{d}d")], [], ["input"], True)
       for kind in ("adaptive_avg_pool", "avg_pool", "max_pool") for d in (1, 2, 3)},
    **{f"conv{d}d": ([getattr(F, f"conv{d}d")], [], ["input", "weight"], True) for d in (1, 3)},
}


@pytest.mark.parametrize("name", list(BUILTIN_OPS))
def test_builtin_op_table(name):
    functions, methods, roles, on = BUILTIN_OPS[name]
    spec = registry.function_spec(name)
    for target in functions:
        assert registry.function_spec_for_target("call_function", target) is spec
    for method in methods:
        assert registry.function_spec_for_target("call_method", method) is spec
    assert [a.role for a in spec.args] == roles
    assert [a.position for a in spec.args] == list(range(len(roles)))
    assert spec.enabled_by_default is on
