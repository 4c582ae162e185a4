"""The inputs and outputs of an ONNX export: example arguments bound to ``forward``, readable names, dynamic batch.

``export_onnx`` takes positional ``args`` and keyword ``kwargs`` (Hugging Face models take keyword inputs);
both exporters write one graph input per tensor the call passes, positional ones first, then keyword ones in
the order of ``forward``'s signature (the TorchScript exporter orders them so; they are handed to the
torch.export-based one in that order too). Graph inputs are named after ``forward``'s parameters
(``x``, ``input_ids``, ``attention_mask``; ``past.0``, ``past.1`` for the tensors of a nested argument);
outputs ``output`` (one tensor), ``output_0``, ``output_1`` (a tuple) or after their keys (a dict, a Hugging
Face ``ModelOutput``: ``last_hidden_state``, ``logits``).

Example:
    >>> inputs = bind_example(model, (), {"input_ids": ids, "attention_mask": mask})
    >>> inputs.names
    ['input_ids', 'attention_mask']
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["BATCH", "ExampleInputs", "KeywordCall", "batch_dynamic_axes", "bind_example", "output_names_of",
           "tensor_leaves", "with_other_batch"]

BATCH = "batch"


def tensor_leaves(value: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a (nested tuple/list/dict) value with their names: ``name``, ``name.0``, ``name.key``."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value) for leaf in tensor_leaves(item, f"{name}.{i}")]
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items() for leaf in tensor_leaves(item, f"{name}.{key}")]
    return []


def _output_leaves(value: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    if isinstance(value, (tuple, list)):
        base = prefix or "output"
        return [leaf for i, item in enumerate(value) for leaf in _output_leaves(item, f"{base}_{i}")]
    if isinstance(value, Mapping):
        return [leaf for key, item in value.items()
                for leaf in _output_leaves(item, f"{prefix}.{key}" if prefix else str(key))]
    return []


def output_names_of(outputs: Any) -> list[str]:
    """Readable names for the tensors a forward returned, in the order the exporters flatten them."""
    return [name for name, _ in _output_leaves(outputs, "")]


@dataclass
class ExampleInputs:
    """The example call, as the exporters see it.

    Attributes:
        args: positional arguments.
        kwargs: keyword arguments, in the order of ``forward``'s signature.
        names: one name per tensor passed (the graph inputs), in graph order.
        tensors: those tensors, in the same order.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    names: list[str]
    tensors: list[torch.Tensor]

    def call(self, model: nn.Module) -> Any:
        """Run ``model`` on the example."""
        return model(*self.args, **self.kwargs)


def _parameters(model: nn.Module) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C forward: no signature
        return []


def bind_example(model: nn.Module, args: Any, kwargs: Mapping[str, Any] | None) -> ExampleInputs:
    """Bind the example call to ``model.forward``: order the keywords as the signature does and name every tensor.

    Args:
        model: the model to export.
        args: a tensor, a tuple of positional arguments, or a dict of keyword arguments (when ``kwargs`` is
            None: the form of a calibration batch).
        kwargs: keyword arguments.

    Raises:
        TypeError: ``forward`` does not accept the call (names the model and the arguments).
    """
    if isinstance(args, Mapping) and kwargs is None:
        args, kwargs = (), args
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    parameters = _parameters(model)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if parameters:
        try:
            inspect.signature(model.forward).bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{type(model).__name__}.forward does not accept the example input: {error} "
                            f"(positional: {len(args)}, keywords: {list(kwargs)})") from None
    order = [p.name for p in parameters]
    ordered = {key: kwargs[key] for key in order if key in kwargs}
    ordered.update((key, value) for key, value in kwargs.items() if key not in ordered)  # **kwargs
    varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    leaves: list[tuple[str, torch.Tensor]] = []
    for index, value in enumerate(args):
        named = index < len(positional) and not (varargs and index >= len(positional))
        leaves += tensor_leaves(value, positional[index].name if named else f"input_{index}")
    for key, value in ordered.items():
        leaves += tensor_leaves(value, key)
    return ExampleInputs(args, ordered, [name for name, _ in leaves], [tensor for _, tensor in leaves])


class KeywordCall(nn.Module):
    """Calls ``model`` with the example's keyword arguments given positionally, for the TorchScript exporter.

    That exporter turns keyword arguments into positional ones by ``forward``'s signature, filling every
    parameter in between with its default; Hugging Face forwards, whose decorators pass some of those
    (``use_cache``) again as keywords, then fail with "got multiple values". Here the tensors travel
    positionally and are passed back as the keywords they were; non-tensor keywords (``use_cache=False``) are
    constants of the call. Initializer names get the prefix ``model.``.
    """

    def __init__(self, model: nn.Module, inputs: ExampleInputs):
        super().__init__()
        self.model = model
        self.train(model.training)  # the exporter restores this module's mode, and with it the model's
        self._positional = len(inputs.args)
        self._tensor_keys = [key for key, value in inputs.kwargs.items() if tensor_leaves(value, key)]
        self._constants = {key: value for key, value in inputs.kwargs.items() if key not in self._tensor_keys}

    def forward(self, *values: Any) -> Any:
        args, tensors = values[:self._positional], values[self._positional:]
        return self.model(*args, **dict(zip(self._tensor_keys, tensors)), **self._constants)

    def example_args(self, inputs: ExampleInputs) -> tuple[Any, ...]:
        """The positional arguments to export it with (an empty dict last: a trailing dict would be taken for
        keyword arguments)."""
        values = (*inputs.args, *(inputs.kwargs[key] for key in self._tensor_keys))
        return (*values, {}) if values and isinstance(values[-1], Mapping) else values


def batch_dynamic_axes(inputs: ExampleInputs, input_names: Sequence[str], outputs: Any,
                       output_names: Sequence[str]) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` that make dim 0 of every input and output tensor (of rank >= 1) the dynamic ``batch``."""
    axes = {name: {0: BATCH} for name, tensor in zip(input_names, inputs.tensors) if tensor.dim() >= 1}
    leaves = [tensor for _, tensor in _output_leaves(outputs, "")]
    axes.update((name, {0: BATCH}) for name, tensor in zip(output_names, leaves) if tensor.dim() >= 1)
    return axes


def _other_batch(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value.flip(0)]) if value.dim() >= 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_other_batch(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _other_batch(item) for key, item in value.items()}
    return value


def with_other_batch(inputs: ExampleInputs) -> ExampleInputs:
    """The example at twice its batch size (each tensor followed by itself reversed along dim 0), to check that a
    dynamic batch really is one."""
    args = tuple(_other_batch(value) for value in inputs.args)
    kwargs = {key: _other_batch(value) for key, value in inputs.kwargs.items()}
    tensors = [_other_batch(tensor) for tensor in inputs.tensors]
    return ExampleInputs(args, kwargs, list(inputs.names), tensors)
