"""Shared helpers for the rewrite tests: toy models, a plain-torch fake-quant reference, registry snapshots.

Imported by the test modules of this folder (pytest puts the folder on sys.path; basenames are unique).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from quantrewrite import registry
from quantrewrite.models import BasicBlock
from quantrewrite.rewrite.generated_forward import generated_forward_of
from quantrewrite.rewrite.tracer import QuantTracer

# ------------------------------------------------------------------------------------------ references


def fake_quant_ref(x: torch.Tensor, amax: torch.Tensor | float, num_bits: int = 8) -> torch.Tensor:
    """Signed full-range fake quantization written out in plain torch (the descriptor default:
    narrow_range False): scale = max_bound / amax, round half to even, clamp, divide back."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    max_bound = 2.0 ** (num_bits - 1) - 1
    scale = torch.full_like(amax, max_bound) / amax
    return torch.clamp(torch.round(x * scale), -max_bound - 1, max_bound) / scale


def per_channel_amax(weight: torch.Tensor) -> torch.Tensor:
    """max |w| over every dim but 0, kept as [C, 1, ...] (a per-output-channel amax)."""
    return weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).double().pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise))


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, type]]:
    """Deep copies of the state_dict tensors and the type of every module, to prove nothing changed."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    types = {name: type(m) for name, m in model.named_modules()}
    return state, types


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, type]]) -> None:
    state, types = before
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert torch.equal(now[key], value), key
    assert {name: type(m) for name, m in model.named_modules()} == types


def rewritten(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` whose forward the rewrite generated, by qualified name."""
    return {name: m for name, m in model.named_modules() if generated_forward_of(m) is not None}


def is_rewritten(module: nn.Module) -> bool:
    return generated_forward_of(module) is not None


def generated_graph(module: nn.Module) -> fx.Graph:
    """The FX graph of ``module``'s generated forward, traced again from the generated code."""
    assert is_rewritten(module), f"{type(module).__name__} has no generated forward"
    return QuantTracer().trace(module)


def call_module_nodes(model: nn.Module) -> dict[str, fx.Node]:
    """Every call_module node of every generated forward in ``model``, by absolute qualified target."""
    out = {}
    for name, module in rewritten(model).items():
        for node in generated_graph(module).nodes:
            if node.op == "call_module":
                out[f"{name}.{node.target}" if name else str(node.target)] = node
    return out


@contextlib.contextmanager
def registry_snapshot() -> Iterator[None]:
    """Restore the module and function registries (through the public API) however the body changed them."""
    modules = {cls: registry.quant_module_for(cls) for cls in registry.registered_modules().values()}
    functions = registry.registered_functions()
    try:
        yield
    finally:
        for cls in list(registry.registered_modules().values()):
            if cls not in modules:
                registry.unregister_quant_module(cls)
        for cls, quant_cls in modules.items():
            if registry.quant_module_for(cls) is not quant_cls:
                registry.register_quant_module(cls, override=True)(quant_cls)
        for name, spec in registry.registered_functions().items():
            if functions.get(name) is not spec:
                registry.unregister_quant_function(name)
        for name, spec in functions.items():
            if registry.function_spec(name) is not spec:
                registry.register_quant_function(name, functions=spec.functions, methods=spec.methods,
                                                 args=spec.args, enabled_by_default=spec.enabled_by_default)


def eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


# ---------------------------------------------------------------------------------------------- models


class ResNetLike(nn.Module):
    """The names of the issue's example config: conv1, a MaxPool2d, layer1..layer4 (basic blocks; layer2..4
    have downsample paths), an F.adaptive_avg_pool2d head, classifier.0/.2 (Linear) and fc."""

    def __init__(self, width: int = 4, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 2 * width, 2))
        self.layer4 = nn.Sequential(BasicBlock(2 * width, 4 * width), BasicBlock(4 * width, 4 * width))
        self.classifier = nn.Sequential(nn.Linear(4 * width, 4 * width), nn.ReLU(), nn.Linear(4 * width, 4 * width))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.classifier(x))


class TinyRef(nn.Module):
    """Small enough to rebuild by hand: conv -> F.adaptive_avg_pool2d -> fc -> F.linear(parameter) -> add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)
        self.w = nn.Parameter(torch.randn(4, 4) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        h = self.fc(pooled)
        return F.linear(h, self.w) + h


class TwoAdds(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = x + y
        return a + x


class Wrapper(nn.Module):
    """Puts a child's op sites one scope down (``block.<op>``) next to a root op."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.block(x, y) + y


class CatThree(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y, x * 2], dim=1)


class DataDependentRoot(nn.Module):
    """Top-level ``if x.sum() > 0`` (untraceable), children that trace and hold functional ops."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = BasicBlock(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.sum() > 0:
            x = self.block(x)
        else:
            x = self.block(-x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # in the untraced root: stays float
        return self.fc(x)


class MatmulBlock(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.fc(x), x.transpose(-1, -2)) @ x


class SizeLoopRoot(nn.Module):
    """The root forward calls a helper looping over ``range(x.size(0))``; blocks sit in a ModuleList."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList([MatmulBlock(width), MatmulBlock(width)])
        self.head = nn.Linear(width, 2)

    @staticmethod
    def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[i] / (x[i].norm() + 1) for i in range(x.size(0))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._per_sample_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class AttentionModel(nn.Module):
    """nn.MultiheadAttention (an FX leaf) between two Linear layers."""

    def __init__(self, embed_dim: int = 8, heads: int = 2, batch_first: bool = True, kdim: int | None = None):
        super().__init__()
        self.inp = nn.Linear(embed_dim, embed_dim)
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(embed_dim, kdim or embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        kv = self.kv(x)
        a, _ = self.attn(h, kv, kv)
        return self.out(a + h)


class MaskDefault(nn.Module):
    """``mask=None`` by default, used in arithmetic: the traced graph would compute ``x + None``."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.block = MatmulBlock(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(x)
        if mask is not None:
            h = h + mask
        return self.block(h)
