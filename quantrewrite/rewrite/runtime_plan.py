"""Plan the op sites of untraced scopes that a probe run found (probe.py), and attach them (runtime_ops.py).

The sites are named and resolved against the config exactly as the op sites of traced scopes are
(planner.py): ``<owner>.<op>``, ``<op>_1``, ... in call order, quantizers ``<site>_input_quantizer``,
``<site>_input1_quantizer``, ``<site>_weight_quantizer`` on the owner. Their plan entries say ``run time``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from quantrewrite import registry
from quantrewrite.config import QuantConfig
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.plan import QUANTIZE, SKIP, PlanEntry
from quantrewrite.rewrite import runtime_ops
from quantrewrite.rewrite.probe import ProbeResult
from quantrewrite.rewrite.runtime_ops import RuntimeSite, RuntimeSlot

__all__ = ["RuntimePlan", "attach", "plan_runtime_ops", "scope_note"]


@dataclass
class RuntimePlan:
    """What the rewrite does inside untraced scopes.

    Attributes:
        probed: whether a probe run looked for sites (False: no example inputs were given).
        ran: the untraced scopes whose forward the probe run reached.
        sites: owner -> op name -> its sites in call order (the tables the hooks match calls against).
        new_quantizers: (owner, attribute, descriptor) of every quantizer to create.
    """

    probed: bool = False
    ran: set[str] = field(default_factory=set)
    sites: dict[str, dict[str, list[RuntimeSite]]] = field(default_factory=dict)
    new_quantizers: list[tuple[str, str, QuantDescriptor]] = field(default_factory=list)

    def count(self, owner: str) -> int:
        return sum(len(sites) for sites in self.sites.get(owner, {}).values())


def scope_note(runtime: RuntimePlan, scope: str) -> str:
    """What happens to an untraced scope's own functional ops, for its plan entry."""
    if not runtime.probed:
        return "its functional ops stay float (give example_inputs to find them with a probe run)"
    if scope not in runtime.ran:
        return "the probe run did not reach it: its functional ops stay float"
    return f"its functional ops are quantized at run time ({runtime.count(scope)} op sites found by the probe run)"


def plan_runtime_ops(model: nn.Module, cfg: QuantConfig, probe: ProbeResult | None,
                     entries: list[PlanEntry]) -> RuntimePlan:
    """Name and resolve every probed site; append its plan entry to ``entries``. Changes nothing."""
    from quantrewrite.rewrite import planner  # the naming and resolution helpers of traced op sites

    runtime = RuntimePlan(probed=probe is not None, ran=set(probe.ran) if probe else set())
    if probe is None:
        return runtime
    module_names = {name for name, _ in model.named_modules()}
    counters: dict[tuple[str, str], int] = {}
    for found in probe.sites:
        spec = registry.function_spec(found.op)
        owner_module = model.get_submodule(found.owner)
        site = planner._site_name(found.owner, found.op, counters, module_names)
        table = runtime.sites.setdefault(found.owner, {}).setdefault(found.op, [])
        class_weight = planner.FUNCTION_WEIGHT_DEFAULT if spec.has_weight else None
        res = cfg.resolve(site, "function", spec.name, planner.FUNCTION_INPUT_DEFAULT, class_weight,
                          default_quantize=spec.enabled_by_default)
        if not res.quantize:
            entries.append(PlanEntry(site, "function", found.op, SKIP, res.reason, res.rules, runtime=True))
            table.append(RuntimeSite(site))
            continue
        named = planner._named_slots(site, [(o.arg, o.location, o.index, None) for o in found.operands], res)
        slots = tuple(RuntimeSlot(s.location, s.index, s.attr) for s in named)
        table.append(RuntimeSite(site, slots))
        quantizers = tuple(planner._qualify(found.owner, s.attr) for s in named)
        if any(isinstance(getattr(owner_module, s.attr, None), TensorQuantizer) for s in named):
            entries.append(PlanEntry(site, "function", found.op, SKIP, "already quantized", res.rules, runtime=True))
            continue
        runtime.new_quantizers.extend((found.owner, s.attr, s.descriptor) for s in named)
        entries.append(PlanEntry(site, "function", found.op, QUANTIZE, None, res.rules, res.input, res.weight,
                                 quantizers, planner._disabled(cfg, quantizers), runtime=True))
    return runtime


def attach(root: nn.Module, runtime: RuntimePlan, quantizers: list[TensorQuantizer]) -> None:
    """Set the new quantizers (one per ``runtime.new_quantizers``, built by the caller) on their owners and
    hook every untraced scope the probe reached; hooks of an earlier quantization are replaced."""
    for (owner, attr, _), quantizer in zip(runtime.new_quantizers, quantizers):
        module = root.get_submodule(owner)
        setattr(module, attr, quantizer.train(module.training))
    if not runtime.sites:
        return
    runtime_ops.remove_hooks(root)
    interceptor = runtime_ops.OpInterceptor()
    owners = {owner: runtime_ops.ScopeQuantizer(interceptor, owner, {op: tuple(sites) for op, sites in ops.items()})
              for owner, ops in runtime.sites.items()}
    runtime_ops.install(root, owners, interceptor)
