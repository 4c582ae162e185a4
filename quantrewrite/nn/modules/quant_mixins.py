"""Mixins that give a float module its quantizers: QuantMixin (input + weight) and QuantInputMixin (input).

A Quant module subclasses its float module and one mixin, in that order::

    class QuantLinear(nn.Linear, QuantMixin):
        def __init__(self, in_features, out_features, bias=True, **kwargs):
            super().__init__(in_features, out_features, bias)
            quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
            self.init_quantizer(quant_desc_input, quant_desc_weight)

        def forward(self, input):
            return F.linear(self._input_quantizer(input), self._weight_quantizer(self.weight), self.bias)

Every class gets ``from_float(module, quant_desc_input=None, quant_desc_weight=None)``, which builds the Quant
module around an existing float module's parameters, buffers and settings without re-running its __init__.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from quantrewrite.nn.modules.parametrized import hook_weight_norm_names, parametrize_like, parametrized_names
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["QuantInputMixin", "QuantMixin", "pop_quant_desc_in_kwargs"]


def _checked_descriptor(value: Any, what: str) -> QuantDescriptor:
    if not isinstance(value, QuantDescriptor):
        raise TypeError(f"{what} must be a QuantDescriptor, got {type(value).__name__}")
    if not value.fake_quant:
        raise ValueError(f"{what}: Only fake quantization is supported by Quant modules (fake_quant=True)")
    return value


def _float_base(quant_cls: type) -> type[nn.Module]:
    for base in quant_cls.__mro__[1:]:
        if issubclass(base, nn.Module) and not issubclass(base, (QuantInputMixin, QuantMixin)):
            return base
    raise TypeError(f"{quant_cls.__name__} has no float nn.Module base")


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        return tensor.device
    return None


def _shell_from_float(quant_cls: type, module: nn.Module) -> nn.Module:
    """A quant_cls instance that shares ``module``'s parameters, buffers, children and settings."""
    base = _float_base(quant_cls)
    if not isinstance(module, base):
        raise TypeError(f"{quant_cls.__name__}.from_float expects a {base.__name__}, got {type(module).__name__}")
    computed = parametrized_names(module) + hook_weight_norm_names(module)
    if computed and not getattr(quant_cls, "supports_parametrized_weight", False):
        raise TypeError(f"{quant_cls.__name__}.from_float: {computed} of this {base.__name__} are computed by a "
                        f"parametrization or weight-norm hook, which {quant_cls.__name__} does not support")
    quant = quant_cls.__new__(quant_cls)
    # Containers (parameters, buffers, children, hooks) are copied so that adding quantizers to the new
    # module leaves the float module as it was; the tensors themselves are shared.
    state = {key: copy.copy(value) if isinstance(value, (dict, set)) else value
             for key, value in module.__dict__.items()}
    quant.__dict__.update(state)
    parametrize_like(quant, module)  # a parametrized layer's twin evaluates the same parametrizations
    return quant


class _QuantizerDefaults:
    """Class-level default descriptors and the classmethods that change them for one class only.

    ``supports_parametrized_weight``: whether the forward reads its tensors as attributes (``self.weight``),
    so a layer whose weight a parametrization or the weight-norm hook computes can be swapped for it
    (``parametrized.py``).
    """

    default_quant_desc_input: QuantDescriptor = QUANT_DESC_8BIT_PER_TENSOR
    supports_parametrized_weight: bool = False

    @classmethod
    def set_default_quant_desc_input(cls, value: QuantDescriptor) -> None:
        """Change the input default of this class (other Quant classes keep theirs)."""
        cls.default_quant_desc_input = _checked_descriptor(value, "quant_desc_input")


class QuantInputMixin(_QuantizerDefaults):
    """Adds ``_input_quantizer`` to a module that quantizes only its input (pooling, ...)."""

    def init_quantizer(self, quant_desc_input: QuantDescriptor) -> None:
        self._input_quantizer = TensorQuantizer(_checked_descriptor(quant_desc_input, "quant_desc_input"))

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    @classmethod
    def from_float(cls, module: nn.Module, quant_desc_input: QuantDescriptor | None = None,
                   quant_desc_weight: QuantDescriptor | None = None) -> nn.Module:
        """Wrap an existing float module; ``quant_desc_weight`` is ignored (there is no weight quantizer)."""
        quant = _shell_from_float(cls, module)
        quant.init_quantizer(quant_desc_input or cls.default_quant_desc_input)
        device = _module_device(module)
        return quant.to(device) if device is not None else quant


class QuantMixin(_QuantizerDefaults):
    """Adds ``_input_quantizer`` and ``_weight_quantizer`` to a module with a weight (conv, linear, ...)."""

    default_quant_desc_weight: QuantDescriptor = QUANT_DESC_8BIT_PER_TENSOR

    @classmethod
    def set_default_quant_desc_weight(cls, value: QuantDescriptor) -> None:
        """Change the weight default of this class (other Quant classes keep theirs)."""
        cls.default_quant_desc_weight = _checked_descriptor(value, "quant_desc_weight")

    def init_quantizer(self, quant_desc_input: QuantDescriptor, quant_desc_weight: QuantDescriptor) -> None:
        self._input_quantizer = TensorQuantizer(_checked_descriptor(quant_desc_input, "quant_desc_input"))
        self._weight_quantizer = TensorQuantizer(_checked_descriptor(quant_desc_weight, "quant_desc_weight"))

    @property
    def input_quantizer(self) -> TensorQuantizer:
        return self._input_quantizer

    @property
    def weight_quantizer(self) -> TensorQuantizer:
        return self._weight_quantizer

    @classmethod
    def from_float(cls, module: nn.Module, quant_desc_input: QuantDescriptor | None = None,
                   quant_desc_weight: QuantDescriptor | None = None) -> nn.Module:
        """Wrap an existing float module, sharing its parameters and buffers."""
        quant = _shell_from_float(cls, module)
        quant.init_quantizer(quant_desc_input or cls.default_quant_desc_input,
                             quant_desc_weight or cls.default_quant_desc_weight)
        device = _module_device(module)
        return quant.to(device) if device is not None else quant


def pop_quant_desc_in_kwargs(quant_cls: type, input_only: bool = False,
                             **kwargs: Any) -> QuantDescriptor | tuple[QuantDescriptor, QuantDescriptor]:
    """Take ``quant_desc_input`` (and ``quant_desc_weight``) from kwargs, defaulting to the class defaults.

    Returns the input descriptor, or (input, weight) unless ``input_only``. Any other key is a TypeError
    ("Unused keys: ...").
    """
    quant_desc_input = kwargs.pop("quant_desc_input", None) or quant_cls.default_quant_desc_input
    if not input_only:
        quant_desc_weight = kwargs.pop("quant_desc_weight", None) or quant_cls.default_quant_desc_weight
    if kwargs:
        raise TypeError(f"Unused keys: {sorted(kwargs)}; {quant_cls.__name__} accepts quant_desc_input"
                        f"{'' if input_only else ' and quant_desc_weight'}")
    if input_only:
        return quant_desc_input
    return quant_desc_input, quant_desc_weight
