"""The rewritten model keeps the user's classes, methods, attributes and names at every level (issue 9.6, 8.2):
only ``forward`` changes, as a generated forward installed on the instance."""

from __future__ import annotations

import copy
import gc
import inspect
import io
import pickle
import weakref

import pytest
import torch
import torch.nn.functional as F
from rewrite_toys import is_rewritten, sqnr_db
from torch import nn

from quantrewrite import disable_quantizers, list_quantizers, plan, quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.nn import modules as qnn
from quantrewrite.rewrite.generated_forward import GeneratedForward

ADD_ON = {"version": 1, "functions": {"add": {"quantize": True}}}


class Block(nn.Module):
    """A traced block whose children are named like GraphModule's own attributes."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.meta = nn.Linear(width, width)
        self.graph = nn.Linear(width, width)
        self.code = nn.Sequential(nn.Linear(width, width))
        self.gain = 0.5

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.meta(x) * self.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.meta(x) + self.graph(x))


class Net(nn.Module):
    """A top level with a functional op (quantized) and a user method."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.embedding = nn.Linear(width, width)
        self.meta = Block(width)
        self.head = nn.Linear(width, 3)
        self.temperature = 2.0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x) / self.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.meta(self.embed(x))
        return self.head(torch.matmul(h, h.transpose(-1, -2)) @ h)


class Untraced(nn.Module):
    """An untraced top level (data-dependent branch) holding a traced child named ``graph``."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.graph = Block(width)
        self.code = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.code(self.graph(x))


def _inputs() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 6)


def _calibrated(model: nn.Module, cfg=ADD_ON) -> nn.Module:
    qmodel = quantize_model(model, cfg)
    calibrate(qmodel, [_inputs()], progress=False)
    return qmodel.eval()


def test_the_model_keeps_its_class_methods_and_attributes_at_every_level():
    torch.manual_seed(0)
    model = Net().eval()
    qmodel = quantize_model(model, ADD_ON)
    assert type(qmodel) is Net and type(qmodel.meta) is Block  # not GraphModules, not new classes
    assert is_rewritten(qmodel)  # the top level's matmul got quantizers: a generated forward on the instance
    assert isinstance(qmodel.forward, GeneratedForward) and "matmul_input_quantizer" in qmodel.forward.code
    assert "forward" not in vars(model)  # the caller's model is untouched (a copy was rewritten)
    assert qmodel.temperature == 2.0 and qmodel.meta.gain == 0.5
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(qmodel.embed(x), qmodel.embedding(x) / 2.0)  # the user's method on the Quant child
        assert qmodel.meta.mix(x).shape == (4, 6)
    assert type(qmodel.embedding) is qnn.QuantLinear and type(qmodel.meta.code[0]) is qnn.QuantLinear


@pytest.mark.parametrize("factory", [Net, Untraced, lambda: nn.Sequential(Block())],
                         ids=["traced-root", "untraced-root", "sequential"])
def test_children_named_meta_graph_code_work_at_every_level(factory):
    model = factory().eval()
    p = plan(model, ADD_ON)
    qmodel = _calibrated(model)
    quantizers = list_quantizers(qmodel)
    for entry in p.entries:  # what the plan said is what happened
        for name in entry.quantizers:
            assert name in quantizers
    (block,) = [name for name, module in qmodel.named_modules() if type(module) is Block]
    for name in ("add_input_quantizer", "meta._weight_quantizer", "graph._weight_quantizer", "code.0._input_quantizer"):
        assert f"{block}.{name}" in quantizers
    x = _inputs()
    with torch.no_grad():
        reference, out = model(x), qmodel(x)
        assert out.shape == reference.shape and sqnr_db(reference, out) > 20
        disable_quantizers(qmodel, "*")
        assert torch.equal(qmodel(x), reference)


def test_state_dict_keys_keep_their_order_and_quantizers_only_add_keys():
    model = Net().eval()
    qmodel = _calibrated(model)
    float_keys = list(model.state_dict())
    quant_keys = [key for key in qmodel.state_dict() if "_quantizer" not in key]
    assert quant_keys == float_keys
    assert all(torch.equal(qmodel.state_dict()[key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_run_their_own_generated_forward(how):
    qmodel = _calibrated(Untraced().eval())
    qmodel.code = _calibrated(Net().eval())  # a rewritten root inside a rewritten child of an untraced root
    if how == "deepcopy":
        twin = copy.deepcopy(qmodel)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(qmodel))
    else:
        buffer = io.BytesIO()
        torch.save(qmodel, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    assert type(twin) is Untraced and type(twin.code) is Net and not is_rewritten(twin)
    assert twin.graph.forward.module is twin.graph and twin.code.forward.module is twin.code
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(twin(x), qmodel(x))
        twin.code.head.weight.mul_(2)  # the copy runs on its own parameters
        assert not torch.equal(twin(x), qmodel(x))
    assert twin.code.forward.code == qmodel.code.forward.code


def test_hooks_of_a_rewritten_module_keep_running():
    model = Net().eval()
    seen = []
    model.meta.register_forward_hook(lambda module, args, out: seen.append(type(module).__name__))
    qmodel = quantize_model(model, ADD_ON)
    with torch.no_grad():
        qmodel(_inputs())
    assert seen == ["Block"]


def test_the_generated_signature_is_the_forwards():
    qmodel = quantize_model(Net(), ADD_ON)
    assert list(inspect.signature(qmodel.forward).parameters) == ["x"]
    assert repr(qmodel.forward) == "<generated forward of Net>"


def test_a_deleted_model_is_freed():
    qmodel = quantize_model(Net(), ADD_ON)
    ref = weakref.ref(qmodel)
    del qmodel
    gc.collect()  # the forward bound to its module is a reference cycle, as for any instance-level forward
    assert ref() is None


def test_a_second_rewrite_sees_the_first_ones_quantizers():
    qmodel = _calibrated(Net().eval())
    amax = qmodel.matmul_input_quantizer.amax.clone()
    again = quantize_model(qmodel, ADD_ON)
    functions = {e.name: e for e in again.quant_plan.functions()}
    assert functions["matmul"].reason == "already quantized"
    assert [e.name for e in again.quant_plan.functions() if e.quantized] == []
    assert torch.equal(again.matmul_input_quantizer.amax, amax)  # the calibrated quantizer was not replaced
    with torch.no_grad():
        assert torch.equal(again(_inputs()), qmodel(_inputs()))


def test_inplace_rewrites_the_callers_object():
    model = Net()
    embedding = model.embedding
    qmodel = quantize_model(model, ADD_ON, inplace=True)
    assert qmodel is model and isinstance(vars(model)["forward"], GeneratedForward)
    assert model.embedding is not embedding and model.embedding.weight is embedding.weight


class Functional(nn.Module):
    """Only functional ops: F.linear with a parameter, nothing to swap."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def test_a_functional_only_module_keeps_its_class_and_parameter():
    model = Functional()
    qmodel = quantize_model(model)
    assert type(qmodel) is Functional and next(iter(qmodel.state_dict())) == "weight"
    assert "linear_weight_quantizer" in qmodel.forward.code


@pytest.mark.parametrize("factory", [Net, Untraced], ids=["traced-root", "untraced-root"])
def test_children_named_meta_graph_code_work_with_example_inputs(factory):
    """Example inputs run the scopes' graphs for shapes and probe untraced scopes: on the user's modules."""
    model = factory().eval()
    qmodel = quantize_model(model, "tensorrt", example_inputs=_inputs())
    assert type(qmodel) is factory
    with torch.no_grad():
        disable_quantizers(qmodel, "*")
        assert torch.equal(qmodel(_inputs()), model(_inputs()))
