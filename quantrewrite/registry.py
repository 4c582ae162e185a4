"""The registry: which float modules have a Quant twin, and which functional ops get quantizers.

Two data tables, both extensible by users:

* modules: exact float module type -> Quant class (``register_quant_module``). A Quant class must subclass
  its float class, include ``QuantInputMixin`` or ``QuantMixin`` and define ``from_float``.
* functions: canonical op name -> ``FunctionSpec`` (``register_quant_function``): the call targets FX may
  show for the op (functions and operators for ``call_function`` nodes, method names for ``call_method``
  nodes) and which arguments get a quantizer.

Example (the seed document's pooling module, made the one the rewrite uses for ``nn.MaxPool2d``):

    @register_quant_module(nn.MaxPool2d, override=True)
    class MyQuantMaxPool2d(nn.MaxPool2d, QuantInputMixin):
        ...  # __init__, forward and from_float as in the seed document
"""

from __future__ import annotations

import importlib
import operator
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantrewrite.descriptor import did_you_mean

__all__ = [
    "ArgSpec",
    "FunctionSpec",
    "RegistryError",
    "function_spec",
    "function_spec_for_callable",
    "function_spec_for_target",
    "is_quant_container",
    "module_names",
    "quant_container_for",
    "quant_module_for",
    "register_quant_container",
    "register_quant_function",
    "register_quant_module",
    "registered_functions",
    "registered_modules",
    "unregister_quant_function",
    "unregister_quant_module",
]


class RegistryError(ValueError):
    """A registration is malformed or conflicts with an existing one."""


# ----------------------------------------------------------------------------------------------- modules

_MODULES: dict[type[nn.Module], type[nn.Module]] = {}
_DEFAULTS_LOADED = False

# Float classes of optional libraries, registered on first sight: (defining module, class name) -> the
# quantrewrite module whose import registers the twin. The twin module imports the library, so it is imported
# only when the library already is (a model holds the class, or its module is in sys.modules):
# ``import quantrewrite`` and a model without such layers never import transformers.
_LAZY_MODULES: dict[tuple[str, str], str] = {
    ("transformers.pytorch_utils", "Conv1D"): "quantrewrite.nn.modules.quant_hf_conv1d",
}


def _ensure_defaults() -> None:
    global _DEFAULTS_LOADED
    if not _DEFAULTS_LOADED:
        _DEFAULTS_LOADED = True
        from quantrewrite.nn import modules  # noqa: F401  (its import registers the built-in Quant classes)


def _load_lazy(float_cls: type | None = None) -> None:
    """Import the twin module of ``float_cls`` if it is a lazy entry; with None, of every lazy entry whose
    library is already imported. Each entry is loaded once (unregistering it later sticks)."""
    for key, provider in list(_LAZY_MODULES.items()):
        module_name = key[0]
        if float_cls is not None:
            if (getattr(float_cls, "__module__", None), getattr(float_cls, "__qualname__", None)) != key:
                continue
        elif module_name not in sys.modules:
            continue
        del _LAZY_MODULES[key]
        importlib.import_module(provider)


def _check_quant_class(float_cls: type, quant_cls: type) -> None:
    from quantrewrite.nn.modules._utils import QuantInputMixin, QuantMixin

    name = quant_cls.__name__
    if not (isinstance(quant_cls, type) and issubclass(quant_cls, float_cls)):
        raise RegistryError(f"{name} must subclass {float_cls.__name__}: declare it as "
                            f"`class {name}({float_cls.__name__}, QuantMixin)`")
    if not issubclass(quant_cls, (QuantMixin, QuantInputMixin)):
        raise RegistryError(f"{name} must include QuantMixin (input and weight quantizers) or QuantInputMixin "
                            f"(input only) in its bases: `class {name}({float_cls.__name__}, QuantMixin)`")
    if not callable(getattr(quant_cls, "from_float", None)):
        raise RegistryError(f"{name} must define a classmethod from_float(module, quant_desc_input=None, "
                            f"quant_desc_weight=None) that builds it from a {float_cls.__name__}")


def register_quant_module(float_cls: type[nn.Module], *, override: bool = False) -> Callable[[type], type]:
    """Class decorator: make ``quant_cls`` the Quant twin of the exact type ``float_cls``.

    Checked at once: the class must subclass ``float_cls``, include a quant mixin and define ``from_float``;
    registering a type that already has a twin needs ``override=True``.
    """
    if not (isinstance(float_cls, type) and issubclass(float_cls, nn.Module)):
        raise RegistryError(f"register_quant_module expects an nn.Module subclass, got {float_cls!r}")

    def decorator(quant_cls: type) -> type:
        _ensure_defaults()
        _LAZY_MODULES.pop((float_cls.__module__, float_cls.__qualname__), None)  # a user's twin wins over a lazy one
        if float_cls in _MODULES and _MODULES[float_cls] is not quant_cls and not override:
            raise RegistryError(f"{float_cls.__name__} is already registered to {_MODULES[float_cls].__name__}; "
                                f"pass override=True to replace it")
        _check_quant_class(float_cls, quant_cls)
        _MODULES[float_cls] = quant_cls
        return quant_cls

    return decorator


def unregister_quant_module(float_cls: type[nn.Module]) -> type[nn.Module]:
    """Remove ``float_cls`` from the table; returns the Quant class it had."""
    _ensure_defaults()
    _load_lazy(float_cls)
    if float_cls not in _MODULES:
        raise RegistryError(f"{getattr(float_cls, '__name__', float_cls)} is not registered")
    return _MODULES.pop(float_cls)


def quant_module_for(float_cls: type) -> type[nn.Module] | None:
    """The Quant class registered for exactly this type, or None (subclasses are not matched, except the
    ``Parametrized<Class>`` that ``torch.nn.utils.parametrize`` generates: it maps to its class's twin)."""
    _ensure_defaults()
    found = _MODULES.get(float_cls)
    if found is None and _LAZY_MODULES:
        _load_lazy(float_cls)
        found = _MODULES.get(float_cls)
    if found is None and isinstance(float_cls, type):
        from quantrewrite.nn.modules.parametrized import original_class

        original = original_class(float_cls)
        if original is not float_cls:
            return quant_module_for(original)
    return found


def registered_modules() -> dict[str, type[nn.Module]]:
    """Registered float class name -> float class (lazy entries count once their library is imported)."""
    _ensure_defaults()
    _load_lazy()
    return {cls.__name__: cls for cls in _MODULES}


def module_names() -> set[str]:
    """The names a config's ``modules`` section accepts: the registered classes and the lazy entries whose
    library is not imported (yet), like ``Conv1D`` of transformers."""
    return set(registered_modules()) | {class_name for _, class_name in _LAZY_MODULES}


# -------------------------------------------------------------------------------------------- containers

# Exact float container type -> its twin: a subclass whose forward runs the children (whose own forward would
# bypass them, e.g. a fused fast path). Swapped only when something inside is quantized; its children are
# planned and swapped as usual.
_CONTAINERS: dict[type[nn.Module], type[nn.Module]] = {}


def register_quant_container(float_cls: type[nn.Module], *,
                             override: bool = False) -> Callable[[type], type]:
    """Class decorator: make ``twin_cls`` the twin of the container type ``float_cls``.

    The twin must subclass ``float_cls`` and define ``from_float(module)``, returning a twin that shares the
    module's parameters and children. Example (see ``nn/modules/quant_transformer.py``)::

        @register_quant_container(nn.TransformerEncoderLayer)
        class QuantTransformerEncoderLayer(nn.TransformerEncoderLayer):
            @classmethod
            def from_float(cls, module): ...
            def forward(self, src, ...): ...  # the unfused path, calling the children
    """
    if not (isinstance(float_cls, type) and issubclass(float_cls, nn.Module)):
        raise RegistryError(f"register_quant_container expects an nn.Module subclass, got {float_cls!r}")

    def decorator(twin_cls: type) -> type:
        if float_cls in _CONTAINERS and _CONTAINERS[float_cls] is not twin_cls and not override:
            raise RegistryError(f"{float_cls.__name__} already has the container twin "
                                f"{_CONTAINERS[float_cls].__name__}; pass override=True to replace it")
        if not (isinstance(twin_cls, type) and issubclass(twin_cls, float_cls)):
            raise RegistryError(f"{getattr(twin_cls, '__name__', twin_cls)} must subclass {float_cls.__name__}")
        if not callable(getattr(twin_cls, "from_float", None)):
            raise RegistryError(f"{twin_cls.__name__} must define a classmethod from_float(module)")
        _CONTAINERS[float_cls] = twin_cls
        return twin_cls

    return decorator


def quant_container_for(float_cls: type) -> type[nn.Module] | None:
    """The container twin registered for exactly this type, or None."""
    _ensure_defaults()
    return _CONTAINERS.get(float_cls)


def is_quant_container(module: nn.Module) -> bool:
    """Whether ``module`` is a registered container twin (the rewrite does not trace into it)."""
    _ensure_defaults()
    return type(module) in _CONTAINERS.values()


# --------------------------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class ArgSpec:
    """One quantized argument of an op: its position, its keyword name, and its role.

    ``role`` is "input" or "weight". ``each`` marks a sequence argument (``torch.cat``'s tensors) whose every
    tensor element gets its own quantizer.
    """

    position: int
    keyword: str
    role: str = "input"
    each: bool = False


@dataclass(frozen=True)
class FunctionSpec:
    """A functional op the rewrite can quantize.

    Attributes:
        name: canonical op name, used in configs (``functions: {add: ...}``) and quantizer names.
        functions: targets of ``call_function`` nodes (``F.linear``, ``operator.add``, ...).
        methods: method names of ``call_method`` nodes (``"add"`` for ``x.add(y)``).
        args: the quantized arguments, in quantizer-naming order.
        enabled_by_default: whether the op is quantized when the config does not mention it.
    """

    name: str
    functions: tuple[Callable[..., Any], ...]
    methods: tuple[str, ...]
    args: tuple[ArgSpec, ...]
    enabled_by_default: bool = True

    @property
    def has_weight(self) -> bool:
        return any(a.role == "weight" for a in self.args)


_FUNCTIONS: dict[str, FunctionSpec] = {}
# (FX op, target) -> spec, derived from _FUNCTIONS: the rewrite looks up every graph node here.
_BY_TARGET: dict[tuple[str, Any], FunctionSpec] = {}
# The callable a torch function mode sees -> spec, derived from _FUNCTIONS: run-time interception inside
# untraced scopes looks up every torch call here.
_BY_CALLABLE: dict[Any, FunctionSpec] = {}


def _runtime_callables(spec: FunctionSpec) -> list[Any]:
    """What ``__torch_function__`` receives for the spec's targets: the functions themselves, the Tensor
    method of each ``operator`` function (``x + y`` arrives as ``Tensor.add``, ``x += y`` as ``Tensor.add_``,
    ``x @ y`` as ``Tensor.matmul``), and the Tensor method of each method name."""
    found = []
    for function in spec.functions:
        found.append(function)
        if getattr(function, "__module__", None) in ("_operator", "operator"):
            name = function.__name__
            method = f"{name[1:]}_" if name.startswith("i") and hasattr(operator, name[1:]) else name
            found.append(getattr(torch.Tensor, method, None))
    found.extend(getattr(torch.Tensor, method, None) for method in spec.methods)
    return [target for target in found if target is not None]


def _reindex() -> None:
    _BY_TARGET.clear()
    _BY_CALLABLE.clear()
    for spec in _FUNCTIONS.values():
        _BY_TARGET.update({("call_function", f): spec for f in spec.functions})
        _BY_TARGET.update({("call_method", m): spec for m in spec.methods})
        for target in _runtime_callables(spec):
            try:
                _BY_CALLABLE[target] = spec
            except TypeError:  # an unhashable callable cannot be looked up anyway
                continue


def register_quant_function(name: str, *, functions: Sequence[Callable[..., Any]] = (),
                            methods: Sequence[str] = (), args: Sequence[ArgSpec] = (ArgSpec(0, "input"),),
                            enabled_by_default: bool = True, override: bool = False) -> FunctionSpec:
    """Register a functional op so the rewrite inserts quantizers before it.

    Example:
        >>> spec = register_quant_function("my_gelu", functions=[my_gelu], args=[ArgSpec(0, "input")])
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise RegistryError(f"op name must be an identifier (it becomes part of quantizer names), got {name!r}")
    if name in _FUNCTIONS and not override:
        raise RegistryError(f"op {name!r} is already registered; pass override=True to replace it")
    if not functions and not methods:
        raise RegistryError(f"op {name!r}: give at least one target in functions= or methods=")
    if not args:
        raise RegistryError(f"op {name!r}: give at least one ArgSpec in args=")
    for arg in args:
        if arg.role not in ("input", "weight"):
            raise RegistryError(f"op {name!r}: ArgSpec role must be 'input' or 'weight', got {arg.role!r}")
    spec = FunctionSpec(name, tuple(functions), tuple(methods), tuple(args), enabled_by_default)
    for other in _FUNCTIONS.values():
        if other.name == name:
            continue
        shared = set(other.functions) & set(spec.functions) or set(other.methods) & set(spec.methods)
        if shared:
            raise RegistryError(f"op {name!r}: targets {sorted(map(_target_name, shared))} already belong to "
                                f"op {other.name!r}; unregister it first")
    _FUNCTIONS[name] = spec
    _reindex()
    return spec


def unregister_quant_function(name: str) -> FunctionSpec:
    if name not in _FUNCTIONS:
        raise RegistryError(f"op {name!r} is not registered{did_you_mean(name, _FUNCTIONS)}")
    spec = _FUNCTIONS.pop(name)
    _reindex()
    return spec


def function_spec(name: str) -> FunctionSpec | None:
    return _FUNCTIONS.get(name)


def function_spec_for_target(op: str, target: Any) -> FunctionSpec | None:
    """The spec for an FX node's (op, target): ``call_function`` with a callable or ``call_method`` with a
    method name; None when the op is not registered."""
    try:
        return _BY_TARGET.get((op, target))
    except TypeError:  # an unhashable callable target cannot be a registered one
        return None


def function_spec_for_callable(func: Any) -> FunctionSpec | None:
    """The spec for a callable as a torch function mode receives it (``torch.matmul``, ``Tensor.add``,
    ``F.linear``); None when the op is not registered."""
    try:
        return _BY_CALLABLE.get(func)
    except TypeError:
        return None


def registered_functions() -> dict[str, FunctionSpec]:
    return dict(_FUNCTIONS)


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


# The built-in functional ops. Each row is data: name, call targets, quantized arguments.
_INPUT = (ArgSpec(0, "input"),)
_BINARY = (ArgSpec(0, "input"), ArgSpec(1, "other"))
_WEIGHTED = (ArgSpec(0, "input"), ArgSpec(1, "weight", role="weight"))

for _dims in (1, 2, 3):
    register_quant_function(f"adaptive_avg_pool{_dims}d", functions=[getattr(F, f"adaptive_avg_pool{_dims}d")],
                            args=_INPUT)
    register_quant_function(f"avg_pool{_dims}d", functions=[getattr(F, f"avg_pool{_dims}d")], args=_INPUT)
    register_quant_function(f"max_pool{_dims}d", functions=[getattr(F, f"max_pool{_dims}d")], args=_INPUT)
    register_quant_function(f"conv{_dims}d", functions=[getattr(F, f"conv{_dims}d")], args=_WEIGHTED)
register_quant_function("interpolate", functions=[F.interpolate], args=_INPUT)
register_quant_function("linear", functions=[F.linear], args=_WEIGHTED)
register_quant_function("matmul", functions=[torch.matmul, operator.matmul, torch.bmm],
                        methods=["matmul", "bmm", "__matmul__"], args=(ArgSpec(0, "input"), ArgSpec(1, "other")))
register_quant_function("sdpa", functions=[F.scaled_dot_product_attention],
                        args=(ArgSpec(0, "query"), ArgSpec(1, "key"), ArgSpec(2, "value")))
register_quant_function("add", functions=[operator.add, operator.iadd, torch.add], methods=["add", "add_"],
                        args=_BINARY, enabled_by_default=False)
register_quant_function("cat", functions=[torch.cat, torch.concat], args=(ArgSpec(0, "tensors", each=True),),
                        enabled_by_default=False)
register_quant_function("pad", functions=[F.pad], args=_INPUT, enabled_by_default=False)
