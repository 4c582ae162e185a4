"""Tracing for the rewrite: a tracer that keeps Quant modules and quantizers whole, and a fallback that
traces each scope separately when the whole model does not trace.

``trace_scopes(model)`` returns the traced scopes (disjoint subtrees, each with its FX graph) and the
untraced ones with the tracer's error. The whole model is tried first; when that fails each child is
tried, recursing into the children that fail, so a single untraceable ``if x.sum() > 0:`` costs only the
functional ops of the module that holds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from quantrewrite import registry
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, QuantMixin
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.rewrite.generated_forward import generated_forward_of

__all__ = ["QuantTracer", "TraceResult", "TracedScope", "scope_concrete_args", "trace_scopes"]


class QuantTracer(fx.Tracer):
    """An FX tracer whose leaves are torch.nn modules (FX's default), Quant modules, quantizers, every
    registered float type, container twins (QuantTransformerEncoderLayer, ...), and the user's extra leaf modules
    (types or qualified names)."""

    def __init__(self, leaf_modules: Iterable[type | str] = (), prefix: str = ""):
        super().__init__()
        self._prefix = prefix
        leaves = tuple(leaf_modules)
        self._leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self._leaf_names = frozenset(n for n in leaves if isinstance(n, str))

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (QuantMixin, QuantInputMixin, TensorQuantizer)):
            return True
        if self._leaf_types and isinstance(module, self._leaf_types):
            return True
        if self._leaf_names and _qualify(self._prefix, qualified_name) in self._leaf_names:
            return True
        if registry.quant_module_for(type(module)) is not None or registry.is_quant_container(module):
            return True
        return super().is_leaf_module(module, qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        count = _static_piece_count(node)
        return _PiecesProxy(node, self, count) if count is not None else super().proxy(node)

    def iter(self, obj: fx.Proxy) -> Iterator[fx.Proxy]:
        """Iterating the result of a chunk or split whose piece count is in the code (``list(x.chunk(2, 1))``,
        as in YOLOv8's C2f; ``x.split([16, 16], 1)``) gives one getitem per piece; anything else is FX's
        TraceError. ``chunk(n)`` is taken to give n pieces, as it does when the dimension's size is a multiple of
        n: where it gives fewer, the rewritten forward raises IndexError."""
        if not isinstance(obj, _PiecesProxy):
            return super().iter(obj)
        return iter([obj[i] for i in range(obj.count)])

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        """Trace a module rewritten before through its generated forward, not its class's float forward, so a
        second rewrite sees the quantizers the first one inserted."""
        generated = generated_forward_of(self.root) if is_module else None
        if generated is not None:
            root_fn = generated.func
        return super().create_args_for_root(root_fn, is_module, concrete_args)


class _PiecesProxy(fx.Proxy):
    """The result of a chunk/split with a static piece count: ``len()`` works (``list()`` asks for it)."""

    def __init__(self, node: fx.Node, tracer: fx.Tracer, count: int):
        super().__init__(node, tracer)
        self.count = count

    def __len__(self) -> int:
        return self.count


def _static_piece_count(node: fx.Node) -> int | None:
    """How many pieces a chunk/split node gives, when its arguments say so without the tensor's shape."""
    is_method = node.op == "call_method"
    if not (is_method and node.target in ("chunk", "split")
            or node.op == "call_function" and node.target in (torch.chunk, torch.split)):
        return None
    name = node.target if is_method else node.target.__name__
    keyword = "chunks" if name == "chunk" else ("split_size" if is_method else "split_size_or_sections")
    value = node.args[1] if len(node.args) > 1 else node.kwargs.get(keyword)
    if name == "chunk":
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return len(value)
    return None


@dataclass
class TracedScope:
    """A module whose forward traced: ``name`` is its qualified name ("" for the whole model)."""

    name: str
    module: nn.Module
    graph: fx.Graph


@dataclass
class TraceResult:
    traced: list[TracedScope] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # scope name -> the tracer's error


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first}"[:300]


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _none_default_used_as_tensor(graph: fx.Graph) -> str | None:
    """The first placeholder that defaults to None yet feeds a traced op (not just a leaf module).

    FX traces every argument as a tensor proxy, so ``if mask is not None: x = x + mask`` records the add;
    calling the traced graph without ``mask`` would then fail. Such a scope is treated as untraced. The
    guard FX adds for ``concrete_args={"mask": None}`` (``_assert_is_none``) is not a computation.
    """
    for node in graph.nodes:
        if node.op != "placeholder" or node.args != (None,):
            continue
        if any(user.op not in ("call_module", "output") and not _is_none_guard(user) for user in node.users):
            return str(node.target)
    return None


def _is_none_guard(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", None) == "_assert_is_none"


def scope_concrete_args(model: nn.Module, concrete_args: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Split ``concrete_args`` by scope: ``"mask"`` is the top-level forward's parameter ``mask``,
    ``"encoder.layer.0.mask"`` the parameter ``mask`` of the module ``encoder.layer.0`` (used when that module
    is traced on its own, i.e. when its parent did not trace). Parameter names have no dots, so the split is
    unambiguous.

    Raises:
        ValueError: a key names no module of ``model``, or no parameter of that module's forward.
    """
    scoped: dict[str, dict[str, Any]] = {}
    for key, value in (concrete_args or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"concrete_args: keys are parameter names or '<module>.<parameter>', got {key!r}")
        scope, _, param = key.rpartition(".")
        try:
            module = model.get_submodule(scope)
        except AttributeError:
            raise ValueError(f"concrete_args[{key!r}]: the model has no module {scope!r}") from None
        try:
            params = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):
            params = None
        if params is not None and param not in params:
            where = f"{scope!r} ({type(module).__name__})" if scope else f"the top-level {type(module).__name__}"
            raise ValueError(f"concrete_args[{key!r}]: the forward of {where} has no parameter {param!r}; it has "
                             f"{list(params)}")
        scoped.setdefault(scope, {})[param] = value
    return scoped


def trace_scopes(model: nn.Module, *, concrete_args: Mapping[str, Any] | None = None,
                 leaf_modules: Iterable[type | str] = ()) -> TraceResult:
    """Trace ``model``; where that fails, trace its children separately, recursively.

    Leaf modules (see QuantTracer) are never traced on their own: they need no graph to be swapped. That
    includes the model itself (``quantize_model(nn.Linear(...))`` swaps it whole). ``concrete_args`` is split
    by scope (``scope_concrete_args``): each scope is traced with its own.
    """
    leaf_modules = tuple(leaf_modules)
    per_scope = scope_concrete_args(model, concrete_args)
    result = TraceResult()

    def visit(module: nn.Module, name: str, args: dict[str, Any] | None) -> None:
        tracer = QuantTracer(leaf_modules, prefix=name)
        try:
            graph = tracer.trace(module, concrete_args=args)
        except Exception as error:  # noqa: BLE001 - any tracing failure means: fall back to the children
            result.failed[name] = _error_text(error)
            recurse(module, name)
            return
        unsafe = _none_default_used_as_tensor(graph)
        if unsafe is not None:
            key = _qualify(name, unsafe)
            result.failed[name] = (f"parameter {unsafe!r} defaults to None, but the traced graph computes with it; "
                                   f"if callers never pass it, concrete_args={{{key!r}: None}} traces it without")
            recurse(module, name)
            return
        result.traced.append(TracedScope(name, module, graph))

    def recurse(module: nn.Module, name: str) -> None:
        for child_name, child in module.named_children():
            qualified = _qualify(name, child_name)
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                recurse(child, qualified)  # no forward to trace (FX calls them leaves): visit their items
            elif not QuantTracer(leaf_modules).is_leaf_module(child, qualified):  # names are absolute here
                visit(child, qualified, per_scope.get(qualified))

    if isinstance(model, (nn.ModuleList, nn.ModuleDict)):
        recurse(model, "")
    elif not QuantTracer(leaf_modules).is_leaf_module(model, ""):
        visit(model, "", per_scope.get(""))
    return result
