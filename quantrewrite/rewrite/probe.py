"""The probe run: find the functional op sites of untraced scopes by running the model once on example inputs.

The model runs in eval mode under ``torch.no_grad()`` with the same interception as a quantized model
(runtime_ops.py), except that each registered op call with a floating-point operand is recorded instead of
quantized. Its modes are restored afterwards and its hooks removed, so the model is left as it was. Run-time
interception hooks a model already carries (a model quantized before) are taken off during the probe and
put back after: the probe sees the float ops.

Sites are keyed by owner, op and call index within one run of the owner's forward; a site seen in several
runs (a shared module, a loop) merges the operands seen. Which sites exist depends on the example: a branch
or a loop length the example does not take is not found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantrewrite import registry
from quantrewrite.rewrite import runtime_ops
from quantrewrite.rewrite.runtime_ops import Operand

__all__ = ["ProbeError", "ProbeResult", "ProbedSite", "normalize_inputs", "probe"]


class ProbeError(RuntimeError):
    """The model did not run on the example inputs."""


@dataclass
class ProbedSite:
    """A registered op call of an untraced scope: owner, op name, call index, float operands (merged)."""

    owner: str
    op: str
    call: int
    operands: list[Operand]


@dataclass
class ProbeResult:
    """The sites in the order the probe first met them, and the untraced scopes whose forward ran."""

    sites: list[ProbedSite] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)


def normalize_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A tensor -> one positional argument; a tuple or list -> positional arguments; a mapping -> keyword
    arguments; ``(args_tuple, kwargs_dict)`` is not guessed (use a mapping for keywords)."""
    if isinstance(example_inputs, Mapping):
        if not all(isinstance(key, str) for key in example_inputs):
            raise TypeError("example_inputs: a mapping must have str keys (the forward's keyword arguments), "
                            f"got keys {list(example_inputs)!r}")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


class _Recorder(runtime_ops._Hooks):
    def __init__(self, interceptor: runtime_ops.OpInterceptor, name: str, result: ProbeResult,
                 index: dict[tuple[str, str, int], ProbedSite]):
        super().__init__(interceptor)
        self.name, self.result, self.index = name, result, index

    def handler(self) -> _Recorder:
        self.result.ran.add(self.name)
        return self

    def call(self, frame: Any, spec: registry.FunctionSpec, func: Any, args: tuple[Any, ...],
             kwargs: Mapping[str, Any], operands: list[Operand]) -> Any:
        call = frame.next_call(spec.name)
        key = (self.name, spec.name, call)
        site = self.index.get(key)
        if site is None:
            site = self.index[key] = ProbedSite(self.name, spec.name, call, [])
            self.result.sites.append(site)
        known = {(o.location, o.index) for o in site.operands}
        site.operands.extend(o for o in operands if (o.location, o.index) not in known)
        return func(*args, **kwargs)


def probe(model: nn.Module, scopes: Iterable[str], example_inputs: Any) -> ProbeResult:
    """Run ``model`` once on ``example_inputs`` and record the op sites of the untraced ``scopes``.

    Raises:
        ProbeError: the forward raised (the message names the error); the model is left as it was.
    """
    args, kwargs = normalize_inputs(example_inputs)
    result, index = ProbeResult(), {}
    interceptor = runtime_ops.OpInterceptor()
    owners = {name: _Recorder(interceptor, name, result, index) for name in scopes}
    modes = {module: module.training for module in model.modules()}
    previous = runtime_ops.remove_hooks(model)
    handles = runtime_ops.install(model, owners, interceptor)
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as error:
        raise ProbeError(f"the probe run on example_inputs failed: {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
        runtime_ops.restore_hooks(previous)
        for module, training in modes.items():
            module.training = training
    for site in result.sites:  # the spec's argument order, then sequence order: the quantizer naming order
        spec = registry.function_spec(site.op)
        site.operands.sort(key=lambda o: (spec.args.index(o.arg), -1 if o.index is None else o.index))
    return result
