"""The FX pass: module swaps, quantizers inserted before functional ops (names, operands, per consumer),
lint, exact float equality with every quantizer disabled, and an exact hand-built reference."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from rewrite_toys import (
    CatThree,
    ResNetLike,
    TinyRef,
    TwoAdds,
    Wrapper,
    call_module_nodes,
    fake_quant_ref,
    generated_graph,
    is_rewritten,
    per_channel_amax,
    rewritten,
)
from torch import nn

import quantrewrite as qr
from quantrewrite import TensorQuantizer, disable_quantizers, list_quantizers, quantize_model, registry
from quantrewrite.models import ResidualCNN, TransformerStack
from quantrewrite.nn import modules as qnn

ADD_ON = {"version": 1, "functions": {"add": {"quantize": True}}}
ADD_CAT_ON = {"version": 1, "functions": {"add": {"quantize": True}, "cat": {"quantize": True}}}


def _residual_cnn():
    return ResidualCNN(num_blocks=2, width=4), torch.randn(2, 3, 8, 8)


def _transformer():
    return TransformerStack(num_blocks=2, width=16, heads=2, vocab=50), torch.randint(0, 50, (2, 5))


def _resnet_like():
    return ResNetLike(), torch.randn(2, 3, 16, 16)


MODELS = {"ResidualCNN": _residual_cnn, "TransformerStack": _transformer, "ResNetLike": _resnet_like}


def _build(name):
    torch.manual_seed(0)
    model, x = MODELS[name]()
    return model.eval(), x


# --------------------------------------------------------------------------------------- module swaps


@pytest.mark.parametrize("name", list(MODELS))
def test_registered_modules_are_swapped_and_weights_preserved(name):
    model, _ = _build(name)
    qmodel = quantize_model(model, ADD_ON)
    swapped = 0
    for module_name, module in model.named_modules():
        quant_cls = registry.quant_module_for(type(module))
        if quant_cls is not None and module_name and getattr(quant_cls, "enabled_by_default", True):
            assert type(qmodel.get_submodule(module_name)) is quant_cls, module_name
            swapped += 1
    assert swapped >= 5
    qstate = qmodel.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(qstate[key], value), key
    extra = set(qstate) - set(model.state_dict())
    assert all("quantizer" in key for key in extra)


def test_inplace_swap_shares_the_very_weight_tensors():
    model, _ = _build("ResidualCNN")
    params = dict(model.named_parameters())
    qmodel = quantize_model(model, inplace=True)
    for key, param in qmodel.named_parameters():
        assert param is params[key], key
    assert isinstance(model.layers[0].conv1, nn.Conv2d) and type(model.layers[0].conv1).__name__ == "QuantConv2d"


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_keeps_every_float_key(name):
    model, x = _build(name)
    qmodel = quantize_model(model, {"version": 1, "defaults": {"input": {"amax": 3.0}}, **ADD_CAT_ON})
    keys = set(qmodel.state_dict())
    assert set(model.state_dict()) <= keys
    assert any(k.endswith("_quantizer._amax") for k in keys - set(model.state_dict()))
    reloaded = quantize_model(model, {"version": 1, "defaults": {"input": {"amax": 3.0}}, **ADD_CAT_ON})
    reloaded.load_state_dict(qmodel.state_dict())  # strict: same keys both ways
    with torch.no_grad():
        assert torch.equal(reloaded(x), qmodel(x))


# ---------------------------------------------------------------------------------- inserted quantizers


def test_quantizer_inserted_before_adaptive_avg_pool2d():
    model, _ = _build("ResidualCNN")
    qmodel = quantize_model(model)
    quantizer = list_quantizers(qmodel)["adaptive_avg_pool2d_input_quantizer"]
    assert isinstance(quantizer, TensorQuantizer)
    node = call_module_nodes(qmodel)["adaptive_avg_pool2d_input_quantizer"]
    (pool,) = node.users
    assert pool.op == "call_function" and pool.target is F.adaptive_avg_pool2d
    assert pool.args[0] is node and pool.args[1] == 1
    assert node.args[0].op == "call_function" and node.args[0].target is F.relu  # the last block's output


def test_residual_add_gets_both_operand_quantizers_in_its_block():
    model, _ = _build("ResidualCNN")
    qmodel = quantize_model(model, ADD_ON)
    quantizers = list_quantizers(qmodel)
    for block in ("layers.0", "layers.1"):
        assert isinstance(quantizers[f"{block}.add_input_quantizer"], TensorQuantizer)
        assert isinstance(quantizers[f"{block}.add_input1_quantizer"], TensorQuantizer)
    assert not any("add_1" in name for name in quantizers)  # one add per block
    nodes = call_module_nodes(qmodel)
    (add,) = nodes["layers.0.add_input_quantizer"].users
    assert add.target is operator.add
    assert add.args == (nodes["layers.0.add_input_quantizer"], nodes["layers.0.add_input1_quantizer"])
    # the second operand of layers.1's add is its downsample path
    assert nodes["layers.1.add_input1_quantizer"].args[0].target == "layers.1.downsample.1"


def test_adds_are_float_unless_the_config_turns_them_on():
    model, _ = _build("ResidualCNN")
    names = list_quantizers(quantize_model(model))
    assert not any(".add" in name for name in names)


def test_second_add_in_a_scope_is_numbered():
    qmodel = quantize_model(Wrapper(TwoAdds()), ADD_ON)
    assert list(list_quantizers(qmodel)) == [
        "block.add_input_quantizer", "block.add_input1_quantizer",
        "block.add_1_input_quantizer", "block.add_1_input1_quantizer",
        "add_input_quantizer", "add_input1_quantizer"]
    assert [e.name for e in qmodel.quant_plan.functions()] == ["block.add", "block.add_1", "add"]


def test_transformer_residual_adds_are_numbered_per_block():
    model, _ = _build("TransformerStack")
    quantizers = list_quantizers(quantize_model(model, ADD_ON))
    for block in ("blocks.0", "blocks.1"):
        for site in ("add", "add_1", "matmul", "matmul_1"):
            assert f"{block}.{site}_input_quantizer" in quantizers
            assert f"{block}.{site}_input1_quantizer" in quantizers


@pytest.mark.parametrize("call", ["list", "tuple-concat", "keyword"])
def test_cat_quantizes_every_tensor_input(call):
    class Cat(nn.Module):
        def forward(self, x, y):
            z = x * 2
            if call == "list":
                return torch.cat([x, y, z], dim=1)
            if call == "tuple-concat":
                return torch.concat((x, y, z), 1)
            return torch.cat(tensors=[x, y, z], dim=1)

    qmodel = quantize_model(Cat(), ADD_CAT_ON)
    names = ["cat_input_quantizer", "cat_input1_quantizer", "cat_input2_quantizer"]
    assert list(list_quantizers(qmodel)) == names
    (cat,) = [n for n in generated_graph(qmodel).nodes if n.target in (torch.cat, torch.concat)]
    tensors = cat.args[0] if cat.args else cat.kwargs["tensors"]
    assert [t.target for t in tensors] == names
    assert [t.args[0].name for t in tensors] == ["x", "y", "mul"]


def test_cat_is_float_by_default():
    assert list_quantizers(quantize_model(CatThree())) == {}


def _mm_torch(x, y):
    return torch.matmul(x, y)


def _mm_operator(x, y):
    return x @ y


def _mm_method(x, y):
    return x.matmul(y)


def _mm_bmm(x, y):
    return torch.bmm(x, y)


@pytest.mark.parametrize("fn", [_mm_torch, _mm_operator, _mm_method, _mm_bmm],
                         ids=["torch.matmul", "operator-@", "Tensor.matmul", "torch.bmm"])
def test_matmul_quantizes_both_operands(fn):
    class MM(nn.Module):
        def forward(self, x, y):
            return fn(x, y)

    qmodel = quantize_model(MM(), "int8_max")
    assert list(list_quantizers(qmodel)) == ["matmul_input_quantizer", "matmul_input1_quantizer"]
    (op,) = [n for n in generated_graph(qmodel).nodes if n.op in ("call_function", "call_method")]
    assert [a.target for a in op.args] == ["matmul_input_quantizer", "matmul_input1_quantizer"]
    assert [a.args[0].name for a in op.args] == ["x", "y"]
    x, y = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    with torch.no_grad():
        expected = torch.matmul(fake_quant_ref(x, x.abs().max()), fake_quant_ref(y, y.abs().max()))
        assert torch.equal(qmodel(x, y), expected)


class FunctionalLinearConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(4, 2, 3, 3))
        self.conv_b = nn.Parameter(torch.randn(4))
        self.lin_w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        y = F.conv2d(x, self.conv_w, self.conv_b, padding=1)
        return F.linear(y.mean(dim=(2, 3)), self.lin_w)


@pytest.mark.parametrize("cfg", [None, {"version": 1}], ids=["int8_default", "empty-config"])
def test_functional_linear_and_conv_get_per_channel_weight_quantizers(cfg):
    qmodel = quantize_model(FunctionalLinearConv(), cfg)
    quantizers = list_quantizers(qmodel)
    assert list(quantizers) == ["conv2d_input_quantizer", "conv2d_weight_quantizer",
                                "linear_input_quantizer", "linear_weight_quantizer"]
    for site in ("conv2d", "linear"):
        assert quantizers[f"{site}_weight_quantizer"].axis == (0,)
        assert quantizers[f"{site}_input_quantizer"].axis is None
    nodes = call_module_nodes(qmodel)
    assert nodes["conv2d_weight_quantizer"].args[0].op == "get_attr"
    assert nodes["conv2d_weight_quantizer"].args[0].target == "conv_w"
    assert nodes["linear_weight_quantizer"].args[0].target == "lin_w"
    (conv,) = nodes["conv2d_weight_quantizer"].users
    assert conv.args[2].op == "get_attr" and conv.args[2].target == "conv_b"  # the bias stays float


def test_functional_conv_matches_a_per_channel_reference():
    torch.manual_seed(0)
    model = FunctionalLinearConv()
    qmodel = quantize_model(model, "int8_max")
    disable_quantizers(qmodel, "linear_*")
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        y = F.conv2d(fake_quant_ref(x, x.abs().max()), fake_quant_ref(model.conv_w, per_channel_amax(model.conv_w)),
                     model.conv_b, padding=1)
        assert torch.equal(qmodel(x), F.linear(y.mean(dim=(2, 3)), model.lin_w))


class ScalarAdds(nn.Module):
    def forward(self, x):
        n = x.size(1) + 1  # shape arithmetic: never quantized
        y = x + 1
        z = 2 + y
        return z.flatten(1) + n


def test_scalar_operand_gets_one_quantizer_and_shape_arithmetic_none():
    qmodel = quantize_model(ScalarAdds(), ADD_ON)
    plan = qmodel.quant_plan
    # the shape arithmetic is not an op site at all: it takes no name, so the tensor adds start at "add"
    assert [e.name for e in plan.functions() if e.target == "add"] == ["add", "add_1", "add_2"]
    assert plan["add"].quantizers == ("add_input_quantizer",)
    assert plan["add_1"].quantizers == ("add_1_input_quantizer",)
    assert plan["add_2"].quantizers == ("add_2_input_quantizer",)
    assert list(list_quantizers(qmodel)) == ["add_input_quantizer", "add_1_input_quantizer",
                                             "add_2_input_quantizer"]
    nodes = call_module_nodes(qmodel)
    (radd,) = nodes["add_1_input_quantizer"].users
    assert radd.args[0] == 2 and radd.args[1] is nodes["add_1_input_quantizer"]
    (last,) = nodes["add_2_input_quantizer"].users
    assert last.args[1].target is operator.add  # the shape value n, unquantized
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert not torch.equal(qmodel(x), ScalarAdds()(x))
        disable_quantizers(qmodel, "*")
        assert torch.equal(qmodel(x), ScalarAdds()(x))


class SharedValue(nn.Module):
    """y feeds a quantized op (matmul) and an unquantized one (relu) and the output."""

    def forward(self, x):
        y = x * 3
        return torch.matmul(y, y.transpose(-1, -2)), torch.relu(y), y


def test_insertion_is_per_consumer():
    qmodel = quantize_model(SharedValue(), "int8_max")
    nodes = {n.name: n for n in generated_graph(qmodel).nodes}
    y = nodes["mul"]
    assert nodes["relu"].args[0] is y
    assert nodes["transpose"].args[0] is y
    assert nodes["output"].args[0][2] is y
    quantizer = nodes["matmul_input_quantizer"]
    assert quantizer.args[0] is y and nodes["matmul"].args[0] is quantizer
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        out = qmodel(x)
    assert torch.equal(out[1], torch.relu(x * 3)) and torch.equal(out[2], x * 3)
    assert not torch.equal(out[0], torch.matmul(x * 3, (x * 3).transpose(-1, -2)))


# ---------------------------------------------------------------------------------- graph and numerics


@pytest.mark.parametrize("name", list(MODELS))
def test_graphs_lint_and_recompiled_code_calls_the_quantizers(name):
    model, _ = _build(name)
    qmodel = quantize_model(model, ADD_CAT_ON)
    scopes = rewritten(qmodel)
    assert scopes
    inserted = set(call_module_nodes(qmodel))
    for module in scopes.values():
        graph = generated_graph(module)
        graph.lint()
        for node in graph.nodes:
            if node.op == "call_module":
                assert isinstance(module.get_submodule(node.target), nn.Module)
    for entry in qmodel.quant_plan.functions():
        for quantizer in entry.quantizers:
            assert quantizer in inserted
            assert quantizer.rsplit(".", 1)[-1] in qmodel.forward.code


TOYS = {
    **MODELS,
    "TinyRef": lambda: (TinyRef(), torch.randn(2, 2, 5, 5)),
    "TwoAdds": lambda: (Wrapper(TwoAdds()), (torch.randn(2, 3), torch.randn(2, 3))),
    "CatThree": lambda: (CatThree(), (torch.randn(2, 3), torch.randn(2, 3))),
    "ScalarAdds": lambda: (ScalarAdds(), torch.randn(2, 3)),
    "FunctionalLinearConv": lambda: (FunctionalLinearConv(), torch.randn(2, 2, 5, 5)),
}


@pytest.mark.parametrize("name", list(TOYS))
def test_every_quantizer_disabled_gives_the_float_output_exactly(name):
    torch.manual_seed(0)
    model, x = TOYS[name]()
    model.eval()
    args = x if isinstance(x, tuple) else (x,)
    qmodel = quantize_model(model, ADD_CAT_ON)
    with torch.no_grad():
        expected = model(*args)
        assert not torch.equal(qmodel(*args), expected)  # quantization is really there
        changed = disable_quantizers(qmodel, "*")
        assert changed == list(list_quantizers(qmodel))
        assert torch.equal(qmodel(*args), expected)


def test_tiny_model_equals_a_hand_built_reference():
    torch.manual_seed(0)
    model = TinyRef().eval()
    cfg = {"version": 1, "functions": {"add": {"quantize": True}},
           "defaults": {"input": {"amax": 2.0}, "weight": {"axis": 0}},
           "layers": [{"match": "fc", "input": {"amax": 0.25}}, {"match": "add", "input": {"amax": 1.5}}]}
    qmodel = quantize_model(model, cfg)
    weights = {"conv": model.conv.weight, "fc": model.fc.weight, "linear": model.w}
    amax = {name: per_channel_amax(w) * 0.75 for name, w in weights.items()}  # static, and clipping
    quantizers = list_quantizers(qmodel)
    quantizers["conv._weight_quantizer"].amax = amax["conv"]
    quantizers["fc._weight_quantizer"].amax = amax["fc"]
    quantizers["linear_weight_quantizer"].amax = amax["linear"]
    assert sorted(quantizers) == sorted([
        "conv._input_quantizer", "conv._weight_quantizer", "adaptive_avg_pool2d_input_quantizer",
        "fc._input_quantizer", "fc._weight_quantizer", "linear_input_quantizer", "linear_weight_quantizer",
        "add_input_quantizer", "add_input1_quantizer"])

    x = torch.randn(3, 2, 5, 5) * 2
    with torch.no_grad():
        conv = F.conv2d(fake_quant_ref(x, 2.0), fake_quant_ref(model.conv.weight, amax["conv"]),
                        model.conv.bias, padding=1)
        pooled = F.adaptive_avg_pool2d(fake_quant_ref(conv, 2.0), 1).flatten(1)
        h = F.linear(fake_quant_ref(pooled, 0.25), fake_quant_ref(model.fc.weight, amax["fc"]), model.fc.bias)
        z = F.linear(fake_quant_ref(h, 2.0), fake_quant_ref(model.w, amax["linear"]))
        expected = fake_quant_ref(z, 1.5) + fake_quant_ref(h, 1.5)
        out = qmodel(x)
    assert torch.equal(out, expected)
    assert not torch.equal(out, model(x))


class Tied(nn.Module):
    """One Linear reachable under two names (``b`` is ``a``), called once under each."""

    def __init__(self, with_op: bool):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a
        self.with_op = with_op

    def forward(self, x):
        h = self.a(x)
        if self.with_op:
            h = torch.matmul(h, x.transpose(-1, -2))
        return self.b(h)


@pytest.mark.parametrize("with_op", [False, True], ids=["root-kept", "root-rebuilt"])
def test_a_module_reachable_under_two_names_is_swapped_under_both(with_op):
    torch.manual_seed(0)
    model = Tied(with_op).eval()
    qmodel = quantize_model(model, "int8_max")
    assert type(qmodel.a) is qnn.QuantLinear
    assert qmodel.b is qmodel.a  # still one module, so both calls are quantized
    assert set(model.state_dict()) <= set(qmodel.state_dict())
    calls = []
    qmodel.a._input_quantizer.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(4, 4)
    with torch.no_grad():
        qmodel(x)
    assert len(calls) == 2
    assert list_quantizers(qmodel.b) == {"_input_quantizer": qmodel.a._input_quantizer,
                                         "_weight_quantizer": qmodel.a._weight_quantizer}
    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        assert torch.equal(qmodel(x), model(x))


@pytest.mark.parametrize("make", [lambda: nn.Linear(4, 3), lambda: nn.Conv2d(2, 3, 1),
                                  lambda: nn.MultiheadAttention(4, 2)], ids=["Linear", "Conv2d", "MHA"])
def test_a_registered_module_as_the_whole_model_is_swapped_whole(make):
    torch.manual_seed(0)
    model = make().eval()
    quant_cls = registry.quant_module_for(type(model))
    qmodel = quantize_model(model, {"version": 1, "disable": ["*"]})
    assert type(qmodel) is quant_cls
    plan = qmodel.quant_plan
    assert plan[""].quant_class == quant_cls.__name__ and plan.functions() == [] and plan.untraced == {}
    assert set(list_quantizers(qmodel)) == set(plan.quantizer_names())
    assert not any(q.is_enabled for q in list_quantizers(qmodel).values())
    assert list_quantizers(model) == {}


def test_a_module_dict_as_the_whole_model_has_its_items_traced():
    from quantrewrite.models import BasicBlock

    qmodel = quantize_model(nn.ModuleDict({"a": BasicBlock(2, 2), "b": TwoAdds()}), ADD_ON)
    assert type(qmodel) is nn.ModuleDict and is_rewritten(qmodel["a"])
    assert [n for n in list_quantizers(qmodel) if "add" in n] == [
        "a.add_input_quantizer", "a.add_input1_quantizer", "b.add_input_quantizer", "b.add_input1_quantizer",
        "b.add_1_input_quantizer", "b.add_1_input1_quantizer"]


class CatOfChunks(nn.Module):
    """torch.cat of a sequence that one op produced: the graph shows one node, not the tensors."""

    def forward(self, x):
        parts = x.chunk(2, dim=1)
        return torch.cat(parts, dim=1) + torch.cat([parts[1], parts[0]], dim=1)


def test_cat_of_a_sequence_node_is_left_float_and_runs():
    qmodel = quantize_model(CatOfChunks(), ADD_CAT_ON)
    plan = qmodel.quant_plan
    assert (plan["cat"].action, plan["cat"].reason) == ("skip", "no tensor operands")
    assert plan["cat_1"].quantizers == ("cat_1_input_quantizer", "cat_1_input1_quantizer")
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert qmodel(x).shape == (2, 4)
        disable_quantizers(qmodel, "*")
        assert torch.equal(qmodel(x), CatOfChunks()(x))


class TupleConcat(nn.Module):
    """The HF idiom ``(hidden,) + outputs[1:]``: an add of sequences, not of tensors."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)

    def forward(self, x):
        out = self.attn(x, x, x)
        return (out[0] + x,) + out[1:]


def test_sequence_concatenation_is_not_quantized():
    torch.manual_seed(0)
    model = TupleConcat().eval()
    qmodel = quantize_model(model, ADD_ON)
    plan = qmodel.quant_plan
    assert plan["add"].quantizers == ("add_input_quantizer", "add_input1_quantizer")
    # tuple concatenation shares operator.add but is no tensor op: it is not an op site at all
    assert [e.name for e in plan.functions() if e.target == "add"] == ["add"]
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        out = qmodel(x)
    assert len(out) == 2 and out[0].shape == x.shape


class _ShapeThenAdd(nn.Module):
    def forward(self, x, y):
        width = x.size(1) + 1  # shape arithmetic: not an op site
        return (x + y)[:, :width]


def test_shape_arithmetic_does_not_take_the_first_op_name():
    qmodel = qr.quantize_model(_ShapeThenAdd(), {"version": 1, "functions": {"add": {"quantize": True}}})
    names = list(qr.list_quantizers(qmodel))
    assert names == ["add_input_quantizer", "add_input1_quantizer"]


class _HasModuleNamedAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.add = nn.Identity()

    def forward(self, x):
        return self.add(x) + x


def test_op_site_names_never_take_a_module_name():
    qmodel = qr.quantize_model(_HasModuleNamedAdd(), {"version": 1, "functions": {"add": {"quantize": True}}})
    assert "add_1" in [e.name for e in qmodel.quant_plan.functions()]
    assert isinstance(qmodel.add, nn.Identity)
    x = torch.randn(2, 3)
    qr.disable_quantizers(qmodel, "*")
    assert torch.equal(qmodel(x), 2 * x)


def test_quantizing_a_quantized_model_adds_no_second_quantizer():
    from quantrewrite.models import ResidualCNN

    config = {"version": 1, "functions": {"add": {"quantize": True}}}
    once = qr.quantize_model(ResidualCNN(2, 8).eval(), config)
    twice = qr.quantize_model(once, config)
    assert list(qr.list_quantizers(twice)) == list(qr.list_quantizers(once))
    reasons = {e.name: e.reason for e in twice.quant_plan.functions() if e.target in ("add", "adaptive_avg_pool2d")}
    assert reasons and set(reasons.values()) == {"already quantized"}
