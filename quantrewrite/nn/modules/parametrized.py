"""Quant twins of layers whose weight is computed: ``torch.nn.utils.parametrize`` and the old weight-norm hook.

``torch.nn.utils.parametrize.register_parametrization`` (``parametrizations.weight_norm``,
``spectral_norm``, ``orthogonal``, user parametrizations) moves a tensor into
``parametrizations.<name>.original`` (``original0``/``original1`` for weight norm) and replaces the module's
class by a generated subclass, ``Parametrized<Class>``, whose property ``<name>`` evaluates the
parametrization. Such a layer gets the twin of the class it came from: ``QuantConv1d`` for a
``ParametrizedConv1d``, given the same property with torch's own helpers (its class becomes
``ParametrizedQuantConv1d``). The twin's forward reads ``self.weight`` as before, so the weight quantizer sees
the effective weight, evaluated at every forward: training ``original0``/``original1`` still works, the
state_dict keys stay ``parametrizations.weight.original0/1``, ``parametrize.cached()`` and
``remove_parametrizations`` behave as on the float layer. The ONNX exporters evaluate the property too.

The old ``torch.nn.utils.weight_norm`` keeps the class and recomputes a plain ``weight`` attribute from
``weight_g``/``weight_v`` in a forward pre-hook, which the twin keeps: it quantizes the effective weight too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["effective_weights", "hook_weight_norm_names", "is_parametrized", "original_class", "parametrize_like",
           "parametrized_names"]

_GENERATED_MODULE = parametrize.__name__  # where torch defines the Parametrized<Class> classes it generates


def is_parametrized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module)


def original_class(cls: type) -> type:
    """The class a ``Parametrized<Class>`` was generated from, else ``cls`` itself."""
    bases = cls.__bases__
    if cls.__module__ == _GENERATED_MODULE and cls.__name__.startswith("Parametrized") and len(bases) == 1:
        return bases[0]
    return cls


def parametrized_names(module: nn.Module) -> list[str]:
    """The parametrized tensors of ``module`` ("weight", ...), in registration order ([] when none)."""
    return list(module.parametrizations) if is_parametrized(module) else []


def describe(module: nn.Module) -> str:
    """``weight (_WeightNorm)`` for each parametrized tensor, for the plan."""
    return ", ".join(f"{name} ({' -> '.join(type(p).__name__ for p in module.parametrizations[name])})"
                     for name in parametrized_names(module))


def parametrize_like(quant: nn.Module, module: nn.Module) -> None:
    """Give ``quant`` (a twin that shares ``module``'s children, ``parametrizations`` included) the
    parametrized properties of ``module``, the way ``register_parametrization`` gives them: a generated
    subclass holding one property per parametrized tensor."""
    names = parametrized_names(module)
    if not names:
        return
    parametrize._inject_new_class(quant)
    for name in names:
        parametrize._inject_property(quant, name)


def hook_weight_norm_names(module: nn.Module) -> list[str]:
    """The tensors that ``torch.nn.utils.weight_norm`` (the deprecated hook) recomputes before each forward."""
    from torch.nn.utils.weight_norm import WeightNorm

    return [hook.name for hook in module._forward_pre_hooks.values() if isinstance(hook, WeightNorm)]


def effective_weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a module's weight descriptor applies to, as its forward sees them: parameters named
    ``weight`` or ``*_weight`` (conv and linear weights, attention's packed in-projection), and the same names
    when a parametrization or the weight-norm hook computes them (evaluated here, without autograd)."""
    def is_weight(name: str) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        return leaf == "weight" or leaf.endswith("_weight")

    found = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, parametrize.ParametrizationList):
            continue
        names = [name for name, _ in sub.named_parameters(recurse=False) if is_weight(name)]
        names += [name for name in hook_weight_norm_names(sub) if is_weight(name)]
        found += [(f"{prefix}.{name}" if prefix else name, getattr(sub, name)) for name in names]
        found += [(f"{prefix}.{name}" if prefix else name, _evaluated(sub, name))
                  for name in parametrized_names(sub) if is_weight(name)]
    return found


def _evaluated(module: nn.Module, name: str) -> torch.Tensor:
    """The parametrized tensor ``name``, computed without changing anything: no autograd, and the
    parametrizations in eval mode meanwhile (``spectral_norm`` updates its power-iteration buffers in training
    mode)."""
    parametrization = module.parametrizations[name]
    modes = [(sub, sub.training) for sub in parametrization.modules()]
    try:
        parametrization.eval()
        with torch.no_grad():
            return getattr(module, name)
    finally:
        for sub, training in modes:
            sub.train(training)


def unsupported_reason(module: nn.Module, quant_cls: type) -> str | None:
    """Why ``quant_cls`` cannot take ``module``'s computed weight (the plan's skip reason), or None."""
    if getattr(quant_cls, "supports_parametrized_weight", False):
        return None
    if is_parametrized(module):
        return f"parametrized ({describe(module)}), which {quant_cls.__name__} does not support: it stays float"
    hooked = hook_weight_norm_names(module)
    if hooked:
        return (f"{hooked} computed by the torch.nn.utils.weight_norm hook, which {quant_cls.__name__} does not "
                "support: it stays float")
    return None


def computed_weight_note(module: nn.Module) -> str:
    """What the plan says about a quantized layer whose weight is computed ("" when it is a plain parameter)."""
    if is_parametrized(module):
        return f"quantizes the effective {describe(module)} at every forward"
    hooked = hook_weight_norm_names(module)
    if hooked:
        return f"quantizes {', '.join(hooked)} as the torch.nn.utils.weight_norm hook recomputes it"
    return ""
