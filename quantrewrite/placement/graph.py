"""What placement rules need to know about an FX graph: what kind of op each node is, fused conv branches,
path lengths to common ancestors, and (given example inputs) tensor shapes."""

from __future__ import annotations

import heapq
import logging
import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["GraphIndex", "node_kind", "propagate_shapes"]

logger = logging.getLogger(__name__)

# Node kinds by module type (exact types and subclasses) and by call target.
_MODULE_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv_transpose"),
    ((nn.Linear,), "linear"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "bn"),
    ((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.ELU), "act"),
    ((nn.Sigmoid,), "sigmoid"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d), "max_pool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
      nn.AdaptiveAvgPool3d), "avg_pool"),
    ((nn.LayerNorm,), "layer_norm"),
    ((nn.Upsample,), "resize"),
    ((nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
      nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
      nn.ReplicationPad3d), "pad"),
    ((nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten), "copy"),
)
_FUNCTION_KINDS: dict[Any, str] = {
    **{f: "conv" for f in (F.conv1d, F.conv2d, F.conv3d)},
    **{f: "conv_transpose" for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    F.linear: "linear",
    F.batch_norm: "bn",
    **{f: "act" for f in (F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.hardswish, F.elu)},
    **{f: "sigmoid" for f in (torch.sigmoid, F.sigmoid)},
    **{f: "mul" for f in (operator.mul, torch.mul)},
    **{f: "add" for f in (operator.add, operator.iadd, torch.add)},
    **{f: "cat" for f in (torch.cat, torch.concat)},
    **{f: "matmul" for f in (torch.matmul, operator.matmul, torch.bmm)},
    **{f: "max_pool" for f in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d)},
    **{f: "avg_pool" for f in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                               F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)},
    F.layer_norm: "layer_norm",
    **{f: "resize" for f in (F.interpolate, F.upsample)},
    F.pad: "pad",
    **{f: "copy" for f in (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
                           torch.unsqueeze, operator.getitem, F.dropout)},
}
_METHOD_KINDS = {
    "relu": "act", "sigmoid": "sigmoid", "mul": "mul", "add": "add", "add_": "add", "matmul": "matmul",
    "bmm": "matmul", "__matmul__": "matmul",
    **{m: "copy" for m in ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze",
                           "unsqueeze", "expand", "view_as", "reshape_as")},
}
FUSED_INTO_CONV = frozenset({"bn", "act", "sigmoid", "mul"})  # kinds a conv's epilogue may absorb
COMMUTING = frozenset({"copy", "max_pool", "pad", "resize", "cat"})  # Q/DQ moves across them


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The kind of op ``node`` is ("conv", "add", "copy", ..., "input", "param", "other")."""
    if node.op == "placeholder":
        return "input"
    if node.op == "get_attr":
        return "param"
    if node.op == "call_module":
        module = modules.get(str(node.target))
        for types, kind in _MODULE_KINDS:
            if isinstance(module, types):
                return kind
        return "other"
    if node.op == "call_function":
        try:
            return _FUNCTION_KINDS.get(node.target, "other")
        except TypeError:
            return "other"
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target), "other")
    return "other"


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(value: Any) -> None:
        if isinstance(value, fx.Node):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(node.args)
    visit(node.kwargs)
    return found


class GraphIndex:
    """Kinds and data-flow questions over one traced scope's graph.

    Args:
        graph: the scope's FX graph.
        module: the scope's module (call_module targets are relative to it).
    """

    def __init__(self, graph: fx.Graph, module: nn.Module):
        self.graph = graph
        self.modules = dict(module.named_modules())
        self.kind = {node: node_kind(node, self.modules) for node in graph.nodes}
        self.inputs = {node: _tensor_args(node) for node in graph.nodes}

    def data_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The node's tensor inputs that are activations (not parameters)."""
        return [n for n in self.inputs[node] if self.kind.get(n) != "param"]

    def first_input(self, node: fx.Node) -> fx.Node | None:
        inputs = self.data_inputs(node)
        return inputs[0] if inputs else None

    def _silu_source(self, node: fx.Node) -> fx.Node | None:
        """For ``y * sigmoid(y)`` (either order) return y, else None."""
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if len(args) != 2:
            return None
        for a, b in (args, args[::-1]):
            if self.kind.get(b) == "sigmoid" and self.first_input(b) is a:
                return a
        return None

    def backbone(self, node: fx.Node, through_copies: bool = False) -> fx.Node | None:
        """The conv whose fused chain (conv -> bn -> act, or -> sigmoid*mul) ends at ``node``, or None."""
        current: fx.Node | None = node
        for _ in range(8):
            if current is None:
                return None
            kind = self.kind.get(current)
            if kind in ("conv", "conv_transpose"):
                return current
            if kind == "mul":
                current = self._silu_source(current)
            elif kind in ("bn", "act") or (through_copies and kind == "copy"):
                current = self.first_input(current)
            else:
                return None
        return None

    def _distances(self, start: fx.Node) -> dict[fx.Node, int]:
        """Steps from ``start`` back to each ancestor; a node fused into a conv's epilogue costs nothing."""
        best = {start: 0}
        heap = [(0, id(start), start)]
        while heap:
            dist, _, node = heapq.heappop(heap)
            if dist > best.get(node, dist):
                continue
            for parent in self.data_inputs(node):
                step = 0 if self.kind.get(node) in FUSED_INTO_CONV else 1
                if dist + step < best.get(parent, 1 << 30):
                    best[parent] = dist + step
                    heapq.heappush(heap, (dist + step, id(parent), parent))
        return best

    def common_ancestor(self, a: fx.Node, b: fx.Node) -> tuple[fx.Node | None, int, int]:
        """The nearest common ancestor of ``a`` and ``b`` (least total distance) and each one's distance."""
        da, db = self._distances(a), self._distances(b)
        common = [(da[n] + db[n], n) for n in da if n in db]
        if not common:
            return None, 0, 0
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        _, lca = min(common, key=lambda item: (item[0], -order[item[1]]))
        return lca, da[lca], db[lca]

    def users(self, node: fx.Node) -> Iterable[fx.Node]:
        return node.users.keys()


def propagate_shapes(model: nn.Module, scopes: list[Any], example_inputs: Any) -> dict[fx.Node, Any]:
    """Output shapes of every node of the traced ``scopes`` (TracedScope objects), from one forward of ``model``
    on ``example_inputs`` (a tensor, a tuple of positional arguments or a dict of keyword arguments); nodes of a
    scope that was not reached, or whose run fails, are absent."""
    from quantrewrite.rewrite.probe import normalize_inputs

    args, kwargs = normalize_inputs(example_inputs)
    captured: dict[str, tuple[Any, ...]] = {}
    handles = []
    for scope in scopes:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = scope.name) -> None:
            if name not in captured and not kwargs:
                captured[name] = args
        handles.append(scope.module.register_forward_pre_hook(hook, with_kwargs=True))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    shapes: dict[fx.Node, Any] = {}
    for scope in scopes:
        if scope.name not in captured:
            continue
        recorder = _ShapeRecorder(scope.module, scope.graph)  # runs on the module itself: any child names work
        try:
            with torch.no_grad():
                recorder.run(*captured[scope.name])
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as error:
            logger.info("no shapes for scope %s (the shape rules treat its ops as shape-unknown): %s",
                        scope.name or "<root>", error)
            continue
        shapes.update(recorder.shapes)
    return shapes


class _ShapeRecorder(fx.Interpreter):
    """Runs a scope's graph on its module, recording each tensor-valued node's output shape."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, graph=graph)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        return result
