"""Untraceable models never make quantize_model fail (unless strict=True): per-scope fallback, FX leaves
(nn.MultiheadAttention), None-default arguments."""

from __future__ import annotations

import pytest
import torch
from rewrite_toys import (
    AttentionModel,
    DataDependentRoot,
    MaskDefault,
    MatmulBlock,
    SizeLoopRoot,
    assert_unchanged,
    is_rewritten,
    snapshot,
    sqnr_db,
)
from torch import fx, nn

from quantrewrite import RewriteError, disable_quantizers, list_quantizers, plan, quantize_model
from quantrewrite.nn import modules as qnn

ADD_ON = {"version": 1, "functions": {"add": {"quantize": True}}}


def _fx_error(model: nn.Module) -> str:
    """The error plain torch.fx gives for ``model``, as '<type>: <first line>'."""
    try:
        fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing error is what we want to see
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    raise AssertionError("expected the model not to trace")


def _assert_float_when_disabled(model, qmodel, *inputs):
    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        assert torch.equal(qmodel(*inputs), model(*inputs))


# ------------------------------------------------------------------ (a) data-dependent `if` at the top


def test_data_dependent_root_falls_back_to_its_children():
    torch.manual_seed(0)
    model = DataDependentRoot().eval()
    qmodel = quantize_model(model, ADD_ON)

    assert type(qmodel) is DataDependentRoot and not is_rewritten(qmodel)  # the root did not trace
    assert type(qmodel.stem) is qnn.QuantConv2d and type(qmodel.fc) is qnn.QuantLinear
    assert is_rewritten(qmodel.block)  # the child traced and got its add quantized
    assert type(qmodel.block.conv1) is qnn.QuantConv2d and type(qmodel.block.conv2) is qnn.QuantConv2d
    quantizers = list_quantizers(qmodel)
    assert "block.add_input_quantizer" in quantizers and "block.add_input1_quantizer" in quantizers
    assert not any(name.startswith("adaptive_avg_pool2d") for name in quantizers)  # root op stays float

    error = _fx_error(DataDependentRoot())
    assert error.startswith("TraceError: symbolically traced variables cannot be used as inputs to control flow")
    p = qmodel.quant_plan
    assert p.untraced == {"": error}
    root = p[""]
    assert (root.kind, root.target, root.action) == ("scope", "DataDependentRoot", "skip")
    assert error in root.reason and "modules inside are still swapped" in root.reason
    assert [e.name for e in p.functions() if not e.name.startswith("block.")] == []
    assert "untraced scopes: 1" in str(p)

    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for sign in (1, -1):  # both branches of the `if`
            assert qmodel(sign * x).shape == (2, 3)
    for sign in (1, -1):
        _assert_float_when_disabled(model, qmodel, sign * x)


def test_strict_makes_an_untraced_scope_an_error_and_leaves_the_model_alone():
    model = DataDependentRoot()
    before = snapshot(model)
    with pytest.raises(RewriteError) as info:
        quantize_model(model, strict=True)
    assert "1 scope(s) did not trace" in str(info.value)
    assert f"<root>: {_fx_error(DataDependentRoot())}" in str(info.value)
    assert_unchanged(model, before)
    with pytest.raises(RewriteError):
        plan(model, strict=True)


# -------------------------------------------------------------- (b) a helper looping over x.size(0)


def test_size_loop_root_quantizes_the_blocks_inside_a_module_list():
    torch.manual_seed(0)
    model = SizeLoopRoot().eval()
    qmodel = quantize_model(model)
    p = qmodel.quant_plan
    assert p.untraced == {"": _fx_error(SizeLoopRoot())}
    assert "'Proxy' object cannot be interpreted as an integer" in p.untraced[""]
    assert type(qmodel.head) is qnn.QuantLinear
    quantizers = list_quantizers(qmodel)
    for block in ("blocks.0", "blocks.1"):
        assert is_rewritten(qmodel.get_submodule(block))
        assert type(qmodel.get_submodule(f"{block}.fc")) is qnn.QuantLinear
        for site in ("matmul", "matmul_1"):
            assert p[f"{block}.{site}"].quantized
            assert f"{block}.{site}_input_quantizer" in quantizers
            assert f"{block}.{site}_input1_quantizer" in quantizers
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        assert sqnr_db(model(x), qmodel(x)) > 20
    _assert_float_when_disabled(model, qmodel, x)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = MatmulBlock()

    def forward(self, x):
        if x.mean() > 0:
            return self.inner(x)
        return self.inner(-x)


class Nested(nn.Module):
    """Root and its child `gate` do not trace; the grandchild `gate.inner` and `stack` do."""

    def __init__(self):
        super().__init__()
        self.gate = Gate()
        self.stack = nn.Sequential(MatmulBlock(), MatmulBlock())

    def forward(self, x):
        x = SizeLoopRoot._per_sample_norm(x)
        return self.stack(self.gate(x))


def test_fallback_recurses_into_children_that_fail():
    torch.manual_seed(0)
    model = Nested().eval()
    qmodel = quantize_model(model)
    p = qmodel.quant_plan
    assert list(p.untraced) == ["", "gate"]
    assert p.untraced["gate"] == _fx_error(Gate())
    assert [e.name for e in p if e.kind == "scope"] == ["", "gate"]
    quantized_sites = [e.name for e in p.functions() if e.quantized]
    assert quantized_sites == ["gate.inner.matmul", "gate.inner.matmul_1", "stack.0.matmul", "stack.0.matmul_1",
                               "stack.1.matmul", "stack.1.matmul_1"]
    assert is_rewritten(qmodel.gate.inner) and is_rewritten(qmodel.stack)
    x = torch.randn(2, 3, 4)
    _assert_float_when_disabled(model, qmodel, x)


@pytest.mark.parametrize("leaf", ["stack.1", MatmulBlock], ids=["by-name", "by-type"])
def test_leaf_modules_keep_their_functional_ops_float(leaf):
    qmodel = quantize_model(Nested(), leaf_modules=[leaf])
    quantized_sites = {e.name for e in qmodel.quant_plan.functions() if e.quantized}
    assert "stack.1.matmul" not in quantized_sites
    assert ("stack.0.matmul" in quantized_sites) is isinstance(leaf, str)
    assert type(qmodel.get_submodule("stack.1.fc")) is qnn.QuantLinear  # a leaf's children are still swapped


# ------------------------------------------------------------------------ (c) nn.MultiheadAttention


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
def test_multihead_attention_becomes_quant_multihead_attention(batch_first):
    torch.manual_seed(0)
    model = AttentionModel(batch_first=batch_first).eval()
    qmodel = quantize_model(model, "int8_max")
    attn = qmodel.attn
    assert type(attn) is qnn.QuantMultiheadAttention and type(attn.out_proj) is qnn.QuantLinear
    assert torch.equal(attn.in_proj_weight, model.attn.in_proj_weight)
    assert torch.equal(attn.out_proj.weight, model.attn.out_proj.weight)
    entry = qmodel.quant_plan["attn"]
    assert entry.quantized and entry.quant_class == "QuantMultiheadAttention"
    assert entry.quantizers == ("attn._input_quantizer", "attn._weight_quantizer",
                                "attn.out_proj._input_quantizer", "attn.out_proj._weight_quantizer")
    assert qmodel.quant_plan["attn.out_proj"].reason == "part of attn, handled as a whole"
    assert attn._weight_quantizer.axis == (0,)

    seen: dict[str, list[torch.Tensor]] = {}
    for name in entry.quantizers:
        quantizer = qmodel.get_submodule(name)
        quantizer.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0]))
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    with torch.no_grad():
        out = qmodel(x)
    # h and kv are two distinct tensors (kv is key and value: quantized once); one in-projection weight
    assert [len(seen[name]) for name in entry.quantizers] == [2, 1, 1, 1]
    assert seen["attn._weight_quantizer"][0] is attn.in_proj_weight
    assert seen["attn.out_proj._weight_quantizer"][0] is attn.out_proj.weight
    assert seen["attn.out_proj._input_quantizer"][0].shape[-1] == 8
    with torch.no_grad():
        reference = model(x)
    assert not torch.equal(out, reference)
    assert sqnr_db(reference, out) > 20

    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        # Not bit-exact: QuantMultiheadAttention runs the attention with an identity out-projection and
        # then out_proj as its own linear, so the float rounding differs from nn.MultiheadAttention's fused
        # out-projection (and its eval fast path) by a few ulps.
        torch.testing.assert_close(qmodel(x), reference, atol=1e-6, rtol=0)


def test_multihead_attention_quantizers_calibrate():
    torch.manual_seed(0)
    qmodel = quantize_model(AttentionModel().eval(), "int8_max")
    quantizers = {n: q for n, q in list_quantizers(qmodel).items() if n.startswith("attn.")}
    assert len(quantizers) == 4
    for quantizer in quantizers.values():
        quantizer.disable_quant()
        quantizer.enable_calib()
    with torch.no_grad():
        qmodel(torch.randn(2, 5, 8))
    for name, quantizer in quantizers.items():
        quantizer.disable_calib()
        assert quantizer.load_calib_amax() is not None, name
    expected = qmodel.attn.in_proj_weight.abs().amax(dim=1, keepdim=True)
    assert torch.equal(quantizers["attn._weight_quantizer"].amax, expected)


def test_multihead_attention_with_kdim_is_left_float_with_the_reason():
    torch.manual_seed(0)
    model = AttentionModel(kdim=4).eval()
    qmodel = quantize_model(model)
    assert type(qmodel.attn) is nn.MultiheadAttention
    assert type(qmodel.inp) is qnn.QuantLinear and type(qmodel.kv) is qnn.QuantLinear
    entry = qmodel.quant_plan["attn"]
    assert entry.action == "skip"
    assert entry.reason == ("QuantMultiheadAttention: separate q/k/v projection weights (kdim or vdim != "
                            "embed_dim) are not supported")
    assert not any(name.startswith("attn.") for name in list_quantizers(qmodel))
    x = torch.randn(2, 5, 8)
    _assert_float_when_disabled(model, qmodel, x)


# --------------------------------------------------------------------- (d) a None default in arithmetic


def test_none_default_used_in_arithmetic_makes_the_scope_untraced():
    torch.manual_seed(0)
    model = MaskDefault().eval()
    qmodel = quantize_model(model)
    reason = qmodel.quant_plan.untraced[""]
    assert reason.startswith("parameter 'mask' defaults to None, but the traced graph computes with it")
    assert "concrete_args={'mask': None}" in reason
    assert reason in qmodel.quant_plan[""].reason
    assert type(qmodel.fc) is qnn.QuantLinear
    assert "block.matmul_input_quantizer" in list_quantizers(qmodel)
    x, mask = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        assert qmodel(x).shape == qmodel(x, mask).shape == (2, 3, 4)
        assert not torch.equal(qmodel(x), qmodel(x, mask))
    _assert_float_when_disabled(model, qmodel, x)
    _assert_float_when_disabled(model, qmodel, x, mask)
    with pytest.raises(RewriteError, match="parameter 'mask' defaults to None"):
        quantize_model(model, strict=True)


def test_concrete_args_make_the_none_default_scope_trace():
    # The advice in the untraced reason works: FX's own `_assert_is_none` guard is not a use of the mask.
    torch.manual_seed(0)
    model = MaskDefault().eval()
    p = plan(model, concrete_args={"mask": None})
    assert p.untraced == {}
    assert p["block.matmul"].quantized
    qmodel = quantize_model(model, concrete_args={"mask": None})
    assert is_rewritten(qmodel)
    x = torch.randn(2, 3, 4)
    _assert_float_when_disabled(model, qmodel, x)
    with pytest.raises(AssertionError, match="specialized to have value None"):
        qmodel(x, torch.randn(2, 3, 4))


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = 2.0
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.matmul(self.fc(x), x.transpose(-1, -2)) * self.scale


class ReadsChildAttribute(nn.Module):
    """An untraced root whose Python forward reads a plain attribute of a child that traces."""

    def __init__(self):
        super().__init__()
        self.block = Scaled()

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.block(x) / self.block.scale


def test_a_traced_child_keeps_the_attributes_its_untraced_parent_reads():
    torch.manual_seed(0)
    model = ReadsChildAttribute().eval()
    qmodel = quantize_model(model)
    assert is_rewritten(qmodel.block) and qmodel.quant_plan["block.matmul"].quantized
    assert qmodel.block.scale == 2.0
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert qmodel(x).shape == (3, 3)
    _assert_float_when_disabled(model, qmodel, x)
