"""Functional ops inside scopes FX cannot trace are quantized at run time (rewrite/runtime_ops.py): found by a
probe run on example_inputs, named as in traced scopes, calibrated, saved, exported like any other."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from rewrite_toys import MatmulBlock, assert_unchanged, fake_quant_ref, is_rewritten, snapshot, sqnr_db
from torch import nn

from quantrewrite import (
    RewriteError,
    calibrate,
    disable_quantizers,
    list_quantizers,
    plan,
    quantize_model,
    summary,
)
from quantrewrite.nn import modules as qnn
from quantrewrite.rewrite import runtime_ops

ADD_ON = {"version": 1, "functions": {"add": {"quantize": True}}}


class Twin(nn.Module):
    """The same ops either way; with ``untraceable`` a data-dependent `if` makes FX fail on the root."""

    def __init__(self, untraceable: bool):
        super().__init__()
        self.untraceable = untraceable
        self.proj = nn.Linear(4, 4)
        self.block = MatmulBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.untraceable and x.sum() > -1e9:  # FX cannot trace this `if`; it does not change the result
            pass
        h = self.proj(x)
        scores = torch.matmul(h, x.transpose(-1, -2))
        out = scores @ x + h
        return self.block(out.add(x))


class Router(nn.Module):
    """User code with data-dependent control flow: the branch taken depends on the values."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.block = MatmulBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if h.mean() > 0:
            out = torch.matmul(h, x.transpose(-1, -2)) @ x
        else:
            out = h.matmul(x.transpose(-1, -2)).matmul(x) * 0.5
        return self.block(out)


def _calibrated(model: nn.Module, batches: list, cfg=None, **kwargs) -> nn.Module:
    qmodel = quantize_model(model, cfg or "int8_max", example_inputs=batches[0], **kwargs)
    calibrate(qmodel, batches, progress=False)
    return qmodel


def _call_counts(qmodel: nn.Module, *inputs) -> dict[str, int]:
    counts = dict.fromkeys(list_quantizers(qmodel), 0)
    handles = [q.register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, counts[n] + 1))
               for n, q in list_quantizers(qmodel).items()]
    with torch.no_grad():
        qmodel(*inputs)
    for handle in handles:
        handle.remove()
    return counts


def test_untraced_scope_gets_the_traced_names_and_numbers():
    # Reference: the same ops in a model that traces. Same quantizer names, same state_dict keys, same output.
    torch.manual_seed(0)
    traced, untraced = Twin(untraceable=False).eval(), Twin(untraceable=True).eval()
    untraced.load_state_dict(traced.state_dict())
    x = torch.randn(2, 3, 4)
    q_traced = _calibrated(traced, [x], ADD_ON)
    q_untraced = _calibrated(untraced, [x], ADD_ON)
    assert type(q_traced) is Twin and is_rewritten(q_traced) and type(q_untraced) is Twin
    assert q_untraced.quant_plan.untraced.keys() == {""}
    assert sorted(list_quantizers(q_untraced)) == sorted(list_quantizers(q_traced))
    assert "matmul_input_quantizer" in list_quantizers(q_untraced) and "add_1_input1_quantizer" in list_quantizers(
        q_untraced)
    assert set(q_untraced.state_dict()) == set(q_traced.state_dict())
    q_untraced.load_state_dict(q_traced.state_dict())
    with torch.no_grad():
        assert torch.equal(q_untraced(x), q_traced(x))
        assert torch.equal(q_untraced(-x), q_traced(-x))
    runtime = [e.name for e in q_untraced.quant_plan.functions() if e.runtime]
    assert runtime == ["matmul", "matmul_1", "add", "add_1"]  # block's matmuls are FX's: block traced
    assert all(not e.runtime for e in q_traced.quant_plan.functions())


def test_run_time_site_quantizes_its_operands_exactly():
    torch.manual_seed(0)
    model = Twin(untraceable=True).eval()
    x = torch.randn(2, 3, 4)
    qmodel = _calibrated(model, [x])
    seen = {}
    qmodel.matmul_input1_quantizer.register_forward_hook(lambda m, a, out: seen.update(in1=(a[0], out)))
    with torch.no_grad():
        qmodel(x)
    arg, out = seen["in1"]
    assert torch.equal(arg, x.transpose(-1, -2))  # the scope's second matmul operand, as the forward made it
    assert torch.equal(out, fake_quant_ref(arg, qmodel.matmul_input1_quantizer.amax))


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["probe-branch", "other-branch"])
def test_data_dependent_control_flow_both_branches(sign):
    torch.manual_seed(0)
    model = Router().eval()
    x = torch.randn(4, 3, 4)
    assert (model.proj(x).mean() > 0) != (model.proj(-x).mean() > 0)
    qmodel = _calibrated(model, [sign * x, -sign * x])
    entries = {e.name: e for e in qmodel.quant_plan.functions() if e.runtime}
    assert list(entries) == ["matmul", "matmul_1"] and all(e.quantized for e in entries.values())
    assert qmodel.quant_plan[""].reason.endswith("its functional ops are quantized at run time (2 op sites found "
                                                 "by the probe run)")
    counts = _call_counts(qmodel, x)
    assert counts["matmul_input_quantizer"] == counts["matmul_1_input1_quantizer"] == 1
    assert all(count == 1 for count in counts.values())  # nothing quantized twice (QuantLinear, traced block)
    with torch.no_grad():
        for batch in (x, -x):
            reference = model(batch)
            assert sqnr_db(reference, qmodel(batch)) > 25
    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        for batch in (x, -x):
            assert torch.equal(qmodel(batch), model(batch))


def test_without_example_inputs_the_plan_says_ops_stay_float():
    qmodel = quantize_model(Router().eval())
    p = qmodel.quant_plan
    assert not any(e.runtime for e in p.functions())
    assert "its functional ops stay float (give example_inputs to find them with a probe run)" in p[""].reason
    assert any("no example_inputs were given" in w for w in p.warnings)
    assert sorted(list_quantizers(qmodel)) == ["block.fc._input_quantizer", "block.fc._weight_quantizer",
                                               "block.matmul_1_input1_quantizer", "block.matmul_1_input_quantizer",
                                               "block.matmul_input1_quantizer", "block.matmul_input_quantizer",
                                               "proj._input_quantizer", "proj._weight_quantizer"]
    assert runtime_ops.scope_hooks(qmodel) == {}


def test_plan_with_example_inputs_lists_sites_and_leaves_the_model_alone():
    model = Router().train()
    before = snapshot(model)
    p = plan(model, ADD_ON, example_inputs=torch.randn(2, 3, 4))
    assert [e.name for e in p.functions() if e.runtime] == ["matmul", "matmul_1"]
    assert p["matmul"].quantizers == ("matmul_input_quantizer", "matmul_input1_quantizer")
    assert "run time | in: 8bit" in str(p)
    assert_unchanged(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_state_dict_survives_into_a_freshly_quantized_model():
    torch.manual_seed(0)
    model = Router().eval()
    x = torch.randn(2, 3, 4)
    qmodel = _calibrated(model, [x, -x])
    fresh = quantize_model(copy.deepcopy(model), "int8_max", example_inputs=torch.randn(5, 3, 4))
    fresh.load_state_dict(qmodel.state_dict())  # strict: same keys
    with torch.no_grad():
        assert torch.equal(fresh(x), qmodel(x)) and torch.equal(fresh(-x), qmodel(-x))
    copied = copy.deepcopy(qmodel)
    copied.matmul_input_quantizer.amax = qmodel.matmul_input_quantizer.amax * 0.5
    with torch.no_grad():
        assert not torch.equal(copied(x), qmodel(x))  # the copy's hooks use the copy's quantizers
        assert torch.equal(qmodel(x), fresh(x))
    text = summary(qmodel)
    assert "matmul_1_input1_quantizer" in text


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self.fc(x), x.transpose(-1, -2))
        if x.sum() > 1e6:
            raise ValueError("too big")
        return y


def test_the_mode_is_popped_when_the_forward_raises():
    qmodel = quantize_model(Raises().eval(), example_inputs=torch.randn(2, 4))
    assert qmodel.quant_plan["matmul"].quantized
    with pytest.raises(ValueError, match="too big"):
        qmodel(torch.full((2, 4), 1e6))
    assert torch._C._len_torch_function_stack() == 0
    assert torch.equal(torch.matmul(torch.eye(2), torch.eye(2)), torch.eye(2))


class Loop(nn.Module):
    """A data-dependent loop: one matmul per row of the input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        for _ in range(int(x.shape[0])):
            if h.abs().max() > 0:
                h = torch.matmul(h, self.fc.weight) / 4
        return h


def test_calls_the_probe_did_not_see_run_float_and_are_logged_once(caplog):
    model = Loop().eval()
    qmodel = quantize_model(model, example_inputs=torch.randn(2, 4))
    assert [e.name for e in qmodel.quant_plan.functions() if e.runtime] == ["matmul", "matmul_1"]
    disable_quantizers(qmodel, "*")
    with caplog.at_level(logging.WARNING, logger="quantrewrite.rewrite.runtime_ops"), torch.no_grad():
        x = torch.randn(3, 4)
        assert torch.equal(qmodel(x), model(x))
        qmodel(x)
    assert [r.getMessage() for r in caplog.records] == [
        "<root>: call 2 of matmul was not seen by the probe run; it has no quantizers and runs float"]


class InPlace(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            return x
        ids = ids + 1  # integer operands: no op site
        z = x.clone()
        z.add_(y)  # in place: z itself must change
        return z * ids


def test_in_place_ops_still_change_their_tensor_and_integer_ops_are_not_sites():
    torch.manual_seed(0)
    model = InPlace().eval()
    inputs = (torch.randn(3, 4), torch.randn(3, 4), torch.arange(4))
    qmodel = quantize_model(model, ADD_ON, example_inputs=inputs)
    assert [e.name for e in qmodel.quant_plan.functions() if e.runtime] == ["add"]
    for quantizer in list_quantizers(qmodel).values():
        quantizer.amax = torch.tensor(4.0)
    x, y, ids = inputs
    with torch.no_grad():
        expected = (fake_quant_ref(x, 4.0) + fake_quant_ref(y, 4.0)) * (ids + 1)
        assert torch.equal(qmodel(*inputs), expected)


def test_a_failing_probe_is_a_rewrite_error_and_changes_nothing():
    model = Router()
    before = snapshot(model)
    with pytest.raises(RewriteError, match="the probe run on example_inputs failed: RuntimeError"):
        quantize_model(model, example_inputs=torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="mapping must have str keys"):
        quantize_model(model, example_inputs={0: torch.randn(2, 3, 4)})
    assert_unchanged(model, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_quantizing_again_keeps_the_run_time_quantizers():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    qmodel = _calibrated(Router().eval(), [x])
    again = quantize_model(qmodel, "int8_max", example_inputs=x)
    assert again.quant_plan["matmul"].reason == "already quantized"
    assert list(list_quantizers(again)) == list(list_quantizers(qmodel))
    with torch.no_grad():
        assert torch.equal(again(x), qmodel(x))
    assert _call_counts(again, x)["matmul_input_quantizer"] == 1


class Shell(nn.Module):
    """An untraceable parent around a child whose mask defaults to None (the child fails FX on its own)."""

    def __init__(self):
        super().__init__()
        from rewrite_toys import MaskDefault

        self.child = MaskDefault()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.child(x)


def test_plan_advice_for_a_child_scope_is_applicable():
    model = Shell().eval()
    reason = plan(model).untraced["child"]
    assert "concrete_args={'child.mask': None} traces it without" in reason
    p = plan(model, concrete_args={"child.mask": None})
    assert "child" not in p.untraced and p.untraced.keys() == {""}
    qmodel = quantize_model(model, concrete_args={"child.mask": None})
    assert is_rewritten(qmodel.child) and type(qmodel.child.fc) is qnn.QuantLinear
    disable_quantizers(qmodel, "*")
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        assert torch.equal(qmodel(x), model(x))


@pytest.mark.parametrize(("key", "message"), [
    ("nope.mask", "concrete_args['nope.mask']: the model has no module 'nope'"),
    ("child.nope", "concrete_args['child.nope']: the forward of 'child' (MaskDefault) has no parameter 'nope'"),
    ("nope", "concrete_args['nope']: the forward of the top-level Shell has no parameter 'nope'"),
], ids=["module", "child-parameter", "top-parameter"])
def test_bad_concrete_args_keys_name_the_key(key, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan(Shell(), concrete_args={key: None})


def test_recipe_round_trip_needs_the_example_inputs(tmp_path):
    from quantrewrite import RecipeError, load_recipe, save_recipe

    torch.manual_seed(0)
    model = Router().eval()
    x = torch.randn(2, 3, 4)
    qmodel = _calibrated(model, [x, -x])
    path = save_recipe(qmodel, tmp_path / "router.yaml")
    loaded = load_recipe(copy.deepcopy(model), path, example_inputs=x)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    with pytest.raises(RecipeError, match="matmul_input_quantizer.*pass example_inputs="):
        load_recipe(copy.deepcopy(model), path)


def test_export_carries_the_run_time_quantizers(tmp_path):
    pytest.importorskip("onnxruntime")
    from quantrewrite.export import export_onnx

    torch.manual_seed(0)
    model = Router().eval()
    x = torch.randn(2, 3, 4)
    qmodel = _calibrated(model, [x, -x])
    report = export_onnx(qmodel, x, tmp_path / "router.onnx")
    assert report.passed
    assert {"matmul_input_quantizer", "matmul_input1_quantizer", "matmul_1_input_quantizer",
            "matmul_1_input1_quantizer"} <= set(report.quantizers)
    assert report.expected_pairs == len(list_quantizers(qmodel)) == 12
    assert report.qdq_pairs == 12
    assert torch._C._len_torch_function_stack() == 0
