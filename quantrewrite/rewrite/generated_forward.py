"""A module's rewritten forward: Python generated from its FX graph and installed on that one module instance.

The rewrite keeps every module the user had, with its class, its methods and its attributes. A traced scope
whose graph gained quantizers changes in one place only: its instance gets a ``forward`` attribute (a
``GeneratedForward``), which ``nn.Module.__call__`` finds before the class's ``forward``. The generated code
reaches children, parameters and quantizers through the module itself (``self.fc(x)``), so any child name
works (``meta``, ``graph`` and ``code`` included), hooks stay, and ``state_dict`` keys do not change.

The generated forward survives ``copy.deepcopy`` (the copy runs on the copied module) and pickling (the code
is recompiled on load), and shows its source as ``module.forward.code``. Like any forward bound to its module
and stored on it, it makes a reference cycle: a deleted model is freed by Python's cyclic collector.

Example:
    >>> qmodel = quantize_model(model, "int8_default")
    >>> isinstance(qmodel, type(model)), isinstance(qmodel.forward, GeneratedForward)
    (True, True)
    >>> print(qmodel.forward.code)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import linecache
import types
from typing import Any

from torch import fx, nn

__all__ = ["GeneratedForward", "generated_forward_of"]

# Names the pytree code generator (used by FX for structured concrete_args) reads from the module; the generated
# forward reads them from its own globals instead, so nothing is added to the user's module.
_PYTREE_SPECS = {"self._in_spec": "_quantrewrite_in_spec", "self._out_spec": "_quantrewrite_out_spec"}


@functools.lru_cache(maxsize=512)
def _compile(src: str) -> tuple[types.CodeType, str]:
    """Compile generated source once per distinct text (repeated blocks share it); register it with linecache
    so tracebacks through the generated forward show its lines."""
    filename = f"<quantrewrite generated forward {hashlib.sha1(src.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)
    return compile(src, filename, "exec"), filename


def _portable(namespace: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split the generated code's globals into imported modules (by name, as modules do not pickle) and objects."""
    modules = {name: value.__name__ for name, value in namespace.items() if isinstance(value, types.ModuleType)}
    objects = {name: value for name, value in namespace.items()
               if name not in modules and name != "__builtins__" and name != "forward"}
    return modules, objects


def _restore(module: nn.Module, src: str, modules: dict[str, str], objects: dict[str, Any]) -> GeneratedForward:
    """Unpickling: rebuild the generated forward of ``module`` from its source and globals."""
    namespace = {name: importlib.import_module(path) for name, path in modules.items()}
    namespace.update(objects)
    return GeneratedForward._from_source(module, src, namespace)


class GeneratedForward(functools.partial):
    """The ``forward`` of one module instance: ``functools.partial(<generated function>, module)``.

    A partial, as exporters and compilers expect of an instance-level forward (``torch.export`` reads
    ``forward.func.__code__``; ``inspect.signature`` shows the generated arguments without ``self``).
    """

    @classmethod
    def from_graph(cls, module: nn.Module, graph: fx.Graph) -> GeneratedForward:
        """Generate the forward of ``module`` from ``graph``, a graph traced from it (targets relative to it)."""
        python_code = graph.python_code(root_module="self")
        src, namespace = python_code.src, dict(python_code.globals)
        pytree_info = getattr(graph._codegen, "pytree_info", None)
        if pytree_info is not None:
            for attribute, name in _PYTREE_SPECS.items():
                src = src.replace(attribute, name)
            namespace[_PYTREE_SPECS["self._in_spec"]] = pytree_info.in_spec
            namespace[_PYTREE_SPECS["self._out_spec"]] = pytree_info.out_spec
        return cls._from_source(module, src, namespace)

    @classmethod
    def _from_source(cls, module: nn.Module, src: str, namespace: dict[str, Any]) -> GeneratedForward:
        code, _ = _compile(src)
        exec(code, namespace)  # noqa: S102 - runs only the `def forward` that FX generated from the graph
        return cls._bind(namespace["forward"], module, src, namespace)

    @classmethod
    def _bind(cls, function: types.FunctionType, module: nn.Module, src: str,
              namespace: dict[str, Any]) -> GeneratedForward:
        generated = super().__new__(cls, function, module)
        generated._src = src
        generated._namespace = namespace
        return generated

    @property
    def code(self) -> str:
        """The generated Python source (as ``torch.fx.GraphModule.code`` shows it)."""
        return self._src

    @property
    def module(self) -> nn.Module:
        """The module this forward belongs to."""
        return self.args[0]

    def __repr__(self) -> str:
        return f"<generated forward of {type(self.module).__name__}>"

    def __deepcopy__(self, memo: dict[int, Any]) -> GeneratedForward:
        # The compiled function and its globals hold no module state: the copy shares them.
        return self._bind(self.func, copy.deepcopy(self.module, memo), self._src, self._namespace)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        modules, objects = _portable(self._namespace)
        return _restore, (self.module, self._src, modules, objects)


def generated_forward_of(module: nn.Module) -> GeneratedForward | None:
    """The generated forward installed on ``module`` by the rewrite, or None."""
    forward = vars(module).get("forward")
    return forward if isinstance(forward, GeneratedForward) else None
