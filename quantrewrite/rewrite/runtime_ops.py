"""Functional ops inside scopes that FX cannot trace, quantized at run time.

A module whose forward FX could not trace (an *untraced scope*, see tracer.py) has no graph to insert
quantizers into. Its functional ops are quantized while it runs instead:

* the scope's module gets a forward pre-hook and an always-called forward hook (``register_forward_hook(...,
  always_call=True)``: it runs also when the forward raises). While the outermost untraced scope's forward
  runs, an ``OpInterceptor`` (a ``torch.overrides.TorchFunctionMode``) is active on the current thread; it is
  popped when that forward returns or raises. Nothing global stays changed, torch is not patched.
* ownership follows FX's rule: an op belongs to the innermost module whose forward is running. Every other
  module inside an untraced scope (Quant modules, traced children, FX leaves) gets a hook pair that suspends
  interception while its forward runs, so the ops inside a ``QuantLinear`` or a traced child stay theirs.
* a call is matched to its op site by owner and call order: within one run of the owner's forward, the k-th
  call of a registered op (``registry.function_spec_for_callable``) that has a floating-point tensor operand
  is site k of that op, named as in traced scopes (``<owner>.matmul``, ``<owner>.matmul_1``; planner.py).
  Its quantizers are ordinary submodules of the owner (``matmul_input_quantizer``), looked up by name at
  each call, so calibration, state_dict loading and export treat them like any other.

The sites are found before quantizing, by a probe run (probe.py), so the quantizers exist before the first
real forward. A call the probe did not see (a longer data-dependent loop) runs float, logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from quantrewrite import registry
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["OpInterceptor", "Operand", "RuntimeSite", "RuntimeSlot", "ScopeQuantizer", "float_operands",
           "install", "remove_hooks", "scope_hooks"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ operands
@dataclass(frozen=True)
class Operand:
    """Where a quantizable operand sits in a call: ("args", i) or ("kwargs", key), an element index of a
    sequence argument (``torch.cat``'s tensors), and the registry's ArgSpec for it."""

    arg: registry.ArgSpec
    location: tuple[str, Any]
    index: int | None


def _is_float_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def float_operands(spec: registry.FunctionSpec, args: tuple[Any, ...], kwargs: Mapping[str, Any]
                   ) -> list[Operand]:
    """The operands of a call of ``spec`` that are floating-point tensors (integer and boolean tensors, e.g.
    masks and position ids, are never quantized; a call without any float operand is no op site)."""
    found = []
    for arg in spec.args:
        if len(args) > arg.position:
            location, value = ("args", arg.position), args[arg.position]
        elif arg.keyword in kwargs:
            location, value = ("kwargs", arg.keyword), kwargs[arg.keyword]
        else:
            continue
        if arg.each and isinstance(value, (list, tuple)):
            found.extend(Operand(arg, location, i) for i, item in enumerate(value) if _is_float_tensor(item))
        elif _is_float_tensor(value):
            found.append(Operand(arg, location, None))
    return found


def _get(args: list[Any], kwargs: dict[str, Any], location: tuple[str, Any], index: int | None) -> Any:
    value = args[location[1]] if location[0] == "args" else kwargs[location[1]]
    return value[index] if index is not None else value


def _set(args: list[Any], kwargs: dict[str, Any], location: tuple[str, Any], index: int | None, new: Any) -> None:
    container, key = (args, location[1]) if location[0] == "args" else (kwargs, location[1])
    if index is None:
        container[key] = new
        return
    items = list(container[key])
    items[index] = new
    container[key] = type(container[key])(items) if isinstance(container[key], tuple) else items


# ------------------------------------------------------------------------------------------- the mode
class _Frame:
    """One running forward on the owner stack: an owner (``handler`` set) or a suspended module. ``entered``:
    this frame pushed the mode; ``left``: this frame popped it (pushed back when the frame ends)."""

    __slots__ = ("counts", "entered", "handler", "left", "module")

    def __init__(self, module: nn.Module, handler: Any):
        self.module = module
        self.handler = handler
        self.counts: dict[str, int] = {}
        self.entered = self.left = False

    def next_call(self, op: str) -> int:
        count = self.counts.get(op, 0)
        self.counts[op] = count + 1
        return count


class OpInterceptor(TorchFunctionMode):
    """Routes calls of registered ops made directly by an untraced scope's forward to that scope's handler.

    One per model, shared by all its hooks. The owner stack is per thread; the mode is on the torch function
    mode stack exactly while it is not empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()
        self._unseen: set[tuple[str, str, int]] = set()

    def __getstate__(self) -> dict[str, Any]:  # thread-local state is not copied (deepcopy, pickle)
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def _stack(self) -> list[_Frame]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _on_top(self) -> bool:
        depth = torch._C._len_torch_function_stack()
        return depth > 0 and torch._C._get_function_stack_at(depth - 1) is self

    def push(self, module: nn.Module, handler: Any) -> None:
        """Enter ``module``'s forward: as an owner (``handler`` set) or suspended (None, only inside a scope).

        The mode is active exactly while an owner frame is the innermost: a suspended module (a QuantLinear,
        a traced child) takes it off the torch function mode stack while it runs (when it is on top, i.e. the
        forward pushed no mode of its own), so its ops pay nothing for the interception.
        """
        stack = self._stack()
        if handler is None and not stack:
            return  # a module called outside any untraced scope: nothing to suspend
        frame = _Frame(module, handler)
        active = getattr(self._local, "active", False)
        if handler is not None and not active:
            self.__enter__()
            frame.entered, self._local.active = True, True
        elif handler is None and active and self._on_top():
            self.__exit__(None, None, None)
            frame.left, self._local.active = True, False
        stack.append(frame)

    def pop(self, module: nn.Module) -> None:
        stack = self._stack()
        if not stack or stack[-1].module is not module:
            return
        frame = stack.pop()
        if frame.entered:
            self.__exit__(None, None, None)
            self._local.active = False
        elif frame.left:
            self.__enter__()
            self._local.active = True

    def unseen(self, owner: str, op: str, call: int) -> None:
        key = (owner, op, call)
        if key not in self._unseen:
            self._unseen.add(key)
            logger.warning("%s: call %d of %s was not seen by the probe run; it has no quantizers and runs float",
                           owner or "<root>", call, op)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        spec = registry.function_spec_for_callable(func)
        if spec is not None:
            stack = self._stack()
            frame = stack[-1] if stack else None
            if frame is not None and frame.handler is not None:
                operands = float_operands(spec, args, kwargs)
                if operands:
                    return frame.handler.call(frame, spec, func, args, kwargs, operands)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------ quantizing sites
@dataclass(frozen=True)
class RuntimeSlot:
    """One quantized operand of a run-time site and the owner's quantizer attribute for it."""

    location: tuple[str, Any]
    index: int | None
    attr: str


@dataclass(frozen=True)
class RuntimeSite:
    """An op site of an untraced scope: its qualified name and its quantized operands (none: it runs float,
    because the config skips it)."""

    name: str
    slots: tuple[RuntimeSlot, ...] = ()


class _Hooks:
    """A forward pre-hook and an always-called forward hook that push and pop one frame."""

    def __init__(self, interceptor: OpInterceptor):
        self.interceptor = interceptor

    def handler(self) -> Any:
        return None

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.interceptor.push(module, self.handler())

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.interceptor.pop(module)


class _Suspend(_Hooks):
    """Hooks of a module inside an untraced scope that is not one: its forward's ops are not the scope's."""


class ScopeQuantizer(_Hooks):
    """Hooks of an untraced scope in a quantized model: its op calls go through the owner's quantizers.

    Attributes:
        name: the scope's qualified name.
        sites: op name -> its sites in call order.
    """

    def __init__(self, interceptor: OpInterceptor, name: str, sites: Mapping[str, tuple[RuntimeSite, ...]]):
        super().__init__(interceptor)
        self.name = name
        self.sites = dict(sites)

    def handler(self) -> ScopeQuantizer:
        return self

    def call(self, frame: _Frame, spec: registry.FunctionSpec, func: Callable[..., Any], args: tuple[Any, ...],
             kwargs: Mapping[str, Any], operands: list[Operand]) -> Any:
        call = frame.next_call(spec.name)
        sites = self.sites.get(spec.name, ())
        if call >= len(sites):
            self.interceptor.unseen(self.name, spec.name, call)
            return func(*args, **kwargs)
        if not sites[call].slots:
            return func(*args, **kwargs)
        new_args, new_kwargs = list(args), dict(kwargs)
        for slot in sites[call].slots:
            value = _get(new_args, new_kwargs, slot.location, slot.index)
            if _is_float_tensor(value):
                quantizer = getattr(frame.module, slot.attr)
                _set(new_args, new_kwargs, slot.location, slot.index, quantizer(value))
        out = func(*new_args, **new_kwargs)
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and new_args[0] is not args[0]:
            args[0].copy_(out)  # an in-place op (x.add_(y)) must still change x
            return args[0]
        return out


# ----------------------------------------------------------------------------------------- installing
def _hook_objects(module: nn.Module) -> Iterable[tuple[Any, Any]]:
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key, hook in list(hooks.items()):
            yield hooks, key, getattr(hook, "__self__", None)


def remove_hooks(model: nn.Module) -> dict[nn.Module, list[tuple[dict, Any, Any]]]:
    """Remove every run-time interception hook from ``model``; returns what was removed (for ``restore``)."""
    removed: dict[nn.Module, list[tuple[dict, Any, Any]]] = {}
    for module in model.modules():
        for hooks, key, owner in _hook_objects(module):
            if isinstance(owner, _Hooks):
                removed.setdefault(module, []).append((hooks, key, hooks.pop(key)))
                module._forward_hooks_always_called.pop(key, None)
    return removed


def restore_hooks(removed: Mapping[nn.Module, list[tuple[dict, Any, Any]]]) -> None:
    """Put back hooks taken by ``remove_hooks`` (at their old ids, so their order is kept)."""
    for module, entries in removed.items():
        for hooks, key, hook in entries:
            hooks[key] = hook
            if hooks is module._forward_hooks:
                module._forward_hooks_always_called[key] = True


def scope_hooks(model: nn.Module) -> dict[str, ScopeQuantizer]:
    """The ScopeQuantizer of every untraced scope of a quantized model, by qualified name."""
    found = {}
    for name, module in model.named_modules():
        for _, _, owner in _hook_objects(module):
            if isinstance(owner, ScopeQuantizer):
                found[name] = owner
    return found


def _enclosed(name: str, scopes: Iterable[str]) -> bool:
    return any(scope == "" or name.startswith(f"{scope}.") for scope in scopes)


def install(model: nn.Module, owners: Mapping[str, _Hooks], interceptor: OpInterceptor) -> list[Any]:
    """Hook every scope in ``owners`` (qualified name -> its hooks) and suspend every other module inside
    them (quantizers excepted: they only ever run inside a handler). Returns the hook handles."""
    handles = []
    suspend = _Suspend(interceptor)
    for name, module in model.named_modules():
        hooks = owners.get(name)
        if hooks is None:
            if isinstance(module, TensorQuantizer) or not _enclosed(name, owners):
                continue
            hooks = suspend
        handles.append(module.register_forward_pre_hook(hooks.pre))
        handles.append(module.register_forward_hook(hooks.post, always_call=True))
    return handles
