"""pytorch-quantization's automatic layer substitution: ``initialize()`` patches ``torch.nn`` classes with
their Quant twins, ``deactivate()`` puts the originals back.

This is the ONE place where quantrewrite patches torch, and only because migrated code calls it. Prefer
``quantrewrite.quantize_model(model, config)``: it swaps the modules of an existing model (its own class and
state_dict kept), touches nothing global, and also quantizes functional ops.

While patched, ``torch.nn.Conv2d(...)`` builds a ``QuantConv2d`` and so on, for the classes of
``DEFAULT_QUANT_MAP`` (the same list as pytorch-quantization: convolutions, transposed convolutions, Linear,
LSTM, LSTMCell, average pools and adaptive average pools). Patching reaches only code that looks the class
up as ``torch.nn.X`` / ``nn.X`` when it runs: a module that did ``from torch.nn import Conv2d`` before
``initialize()`` keeps the float class (pytorch-quantization's users met this in their issue #1502);
``initialize()`` warns, naming those modules.

Example:
    >>> from quantrewrite import quant_modules
    >>> quant_modules.initialize()
    >>> model = torchvision.models.resnet50()     # built with Quant modules
    >>> quant_modules.deactivate()                # torch.nn is float again
"""

from __future__ import annotations

import sys
import warnings
from collections import namedtuple
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from quantrewrite import nn as quant_nn

__all__ = ["DEFAULT_QUANT_MAP", "QuantModuleReplacementHelper", "deactivate", "enable_onnx_export", "initialize"]

quant_entry = namedtuple("quant_entry", "orig_mod mod_name replace_mod")

DEFAULT_QUANT_MAP: tuple[quant_entry, ...] = tuple(
    quant_entry(torch.nn, name, getattr(quant_nn, "Quant" + name))
    for name in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
                 "LSTM", "LSTMCell", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
                 "AdaptiveAvgPool2d", "AdaptiveAvgPool3d"))

# Where the patched classes may legitimately still be bound under their float identity.
_IGNORED_PREFIXES = ("torch", "quantrewrite", "transformers", "onnx", "numpy", "_pytest", "pytest")


def _checked_custom_entry(index: int, item: Any) -> quant_entry:
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise TypeError(f"custom_quant_modules[{index}]: expected (module, 'ClassName', QuantClass), got {item!r}")
    owner, name, replacement = item
    if not isinstance(name, str) or not hasattr(owner, name):
        raise ValueError(f"custom_quant_modules[{index}]: {getattr(owner, '__name__', owner)!r} has no attribute "
                         f"{name!r}")
    if not isinstance(replacement, type):
        raise TypeError(f"custom_quant_modules[{index}]: the replacement must be a class, got {replacement!r}")
    return quant_entry(owner, name, replacement)


class QuantModuleReplacementHelper:
    """Holds what ``initialize()`` patched so that ``deactivate()`` can restore it exactly.

    Attributes:
        default_quant_map: the built-in (torch.nn, name, Quant class) entries.
        quant_map: the entries that ``apply_quant_modules`` installs, in order.
        original_func_map: (owner, name, the object found there before any patch), one per patched name.
    """

    def __init__(self) -> None:
        self.default_quant_map: tuple[quant_entry, ...] = DEFAULT_QUANT_MAP
        self.quant_map: list[quant_entry] = []
        self.original_func_map: list[quant_entry] = []

    @property
    def orginal_func_map(self) -> list[quant_entry]:
        """pytorch-quantization's spelling of ``original_func_map``."""
        return self.original_func_map

    def _original_of(self, owner: Any, name: str) -> Any:
        """What was at owner.name before ANY helper patched it (so a second initialize() restores floats)."""
        for helper in _ACTIVE_HELPERS:
            for entry in helper.original_func_map:
                if entry.orig_mod is owner and entry.mod_name == name:
                    return entry.replace_mod
        return getattr(owner, name)

    def prepare_state(self, float_module_list: Sequence[str] | None = None,
                      custom_map: Iterable[Sequence[Any]] | None = None) -> None:
        """Choose what to patch: the defaults minus the names in ``float_module_list``, plus ``custom_map``
        entries ``(owner_module, "ClassName", QuantClass)`` (a custom entry wins over the deny list)."""
        skip = set(float_module_list or ())
        known = {entry.mod_name for entry in self.default_quant_map}
        unknown = sorted(str(name) for name in skip - known)
        if unknown:
            warnings.warn(f"quant_modules: float_module_list names {unknown} are not patched anyway (patched: "
                          f"{sorted(known)})", UserWarning, stacklevel=3)
        entries = [entry for entry in self.default_quant_map if entry.mod_name not in skip]
        entries += [_checked_custom_entry(i, item) for i, item in enumerate(custom_map or ())]
        for entry in entries:
            key = (id(entry.orig_mod), entry.mod_name)
            self.quant_map = [e for e in self.quant_map if (id(e.orig_mod), e.mod_name) != key] + [entry]
            if all((id(e.orig_mod), e.mod_name) != key for e in self.original_func_map):
                original = self._original_of(entry.orig_mod, entry.mod_name)
                self.original_func_map.append(quant_entry(entry.orig_mod, entry.mod_name, original))

    def apply_quant_modules(self) -> None:
        """Install every entry of ``quant_map``; warns about modules that bound a float class earlier."""
        if self not in _ACTIVE_HELPERS:
            _ACTIVE_HELPERS.append(self)
        for entry in self.quant_map:
            setattr(entry.orig_mod, entry.mod_name, entry.replace_mod)
        _warn_early_imports(self.original_func_map)

    def restore_float_modules(self) -> None:
        """Put back what was there before, and forget the state (a later prepare_state starts afresh)."""
        for entry in reversed(self.original_func_map):
            setattr(entry.orig_mod, entry.mod_name, entry.replace_mod)
        self.quant_map = []
        self.original_func_map = []
        if self in _ACTIVE_HELPERS:
            _ACTIVE_HELPERS.remove(self)


_ACTIVE_HELPERS: list[QuantModuleReplacementHelper] = []


def _early_bindings(originals: Sequence[quant_entry]) -> list[str]:
    """'module.Name' for each module-level name outside torch/quantrewrite bound to a float class now patched."""
    patched = {id(entry.replace_mod): entry.mod_name for entry in originals
               if getattr(entry.orig_mod, entry.mod_name) is not entry.replace_mod}
    found = []
    for module_name, module in list(sys.modules.items()):
        if not isinstance(module, ModuleType) or module_name.split(".")[0] in _IGNORED_PREFIXES:
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for attr, value in list(namespace.items()):
            if id(value) in patched and isinstance(value, type):
                found.append(f"{module_name}.{attr}")
    return sorted(found)


def _warn_early_imports(originals: Sequence[quant_entry]) -> None:
    found = _early_bindings(originals)
    if found:
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        warnings.warn(f"quant_modules.initialize(): {shown} bound a float class before initialize() and will "
                      "build float layers: import those modules after initialize(), or use "
                      "quantrewrite.quantize_model(model, ...) on the built model", UserWarning, stacklevel=3)


_HELPER = QuantModuleReplacementHelper()


def initialize(float_module_list: Sequence[str] | None = None,
               custom_quant_modules: Iterable[Sequence[Any]] | None = None) -> None:
    """Patch ``torch.nn`` (and any ``custom_quant_modules`` owners) with Quant classes until ``deactivate()``.

    Args:
        float_module_list: names of ``DEFAULT_QUANT_MAP`` classes to leave float, e.g. ``["Linear"]``.
        custom_quant_modules: extra ``(owner_module, "ClassName", QuantClass)`` entries; they win over
            ``float_module_list``.

    Calling it again adds to the patch; one ``deactivate()`` restores everything.
    """
    _HELPER.prepare_state(float_module_list, custom_quant_modules)
    _HELPER.apply_quant_modules()


def deactivate() -> None:
    """Restore every class ``initialize()`` replaced (a no-op when nothing is patched)."""
    _HELPER.restore_float_modules()


@contextmanager
def enable_onnx_export():
    """pytorch-quantization's export switch, kept so migrated export code runs unchanged.

    quantrewrite needs no switch: TensorQuantizer emits QuantizeLinear/DequantizeLinear whenever torch is
    exporting to ONNX, with or without this block. Inside it, ``TensorQuantizer._enable_onnx_export`` is True
    (restored on exit, also on error), which only says that an export is intended.

    Example:
        >>> with quantrewrite.enable_onnx_export():
        ...     torch.onnx.export(model, dummy_input, "model.onnx", dynamo=False)
    """
    previous = quant_nn.TensorQuantizer._enable_onnx_export
    quant_nn.TensorQuantizer._enable_onnx_export = True
    try:
        yield
    finally:
        quant_nn.TensorQuantizer._enable_onnx_export = previous
