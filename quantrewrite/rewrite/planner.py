"""Decide, without changing anything, what the rewrite does to every module and every functional op site.

Naming of functional-op quantizers (so that layer-name patterns reach them):

* an op site belongs to the module whose forward made the call (FX's ``nn_module_stack``), its *owner*;
* the site is called ``<owner>.<op>`` for the first op of that kind in the owner, then ``<op>_1``,
  ``<op>_2``, ... in graph order (``layer1.0.add``, ``layer1.0.add_1``); ops at the top level have no prefix;
* its quantizers live on the owner module: ``<site>_input_quantizer`` for the first quantized tensor
  argument, ``<site>_input1_quantizer``, ``<site>_input2_quantizer``, ... for the next ones (the other operand
  of an add, every tensor of a cat), and ``<site>_weight_quantizer`` for a weight argument (F.linear/F.conv).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from quantrewrite import registry
from quantrewrite.config import QuantConfig
from quantrewrite.descriptor import (
    QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL,
    QUANT_DESC_8BIT_PER_TENSOR,
    QuantDescriptor,
)
from quantrewrite.nn.modules.parametrized import computed_weight_note, original_class, unsupported_reason
from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, QuantMixin
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.placement.rules import is_candidate
from quantrewrite.plan import QUANTIZE, SKIP, Plan, PlanEntry
from quantrewrite.rewrite.model_checks import check_weights
from quantrewrite.rewrite.probe import ProbeResult
from quantrewrite.rewrite.runtime_plan import RuntimePlan, plan_runtime_ops, scope_note
from quantrewrite.rewrite.tracer import TraceResult
from quantrewrite.rewrite.weight_layout import from_config_axes, layout_note, to_config_axes

__all__ = ["ArgSlot", "ModuleAction", "OpAction", "RewritePlan", "build_plan"]

# Descriptors a functional op's quantizers start from, before the config's defaults/functions/layers.
FUNCTION_INPUT_DEFAULT = QUANT_DESC_8BIT_PER_TENSOR
FUNCTION_WEIGHT_DEFAULT = QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL

# FX call targets that only move shapes around: not listed in the plan.
_PLUMBING_FUNCTIONS = (getattr, operator.getitem)
_PLUMBING_METHODS = frozenset({"size", "dim"})
_SCALAR_METHODS = frozenset({"size", "dim", "numel", "item", "tolist", "__len__"})
_SCALAR_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda"})


@dataclass
class ModuleAction:
    name: str
    module: nn.Module
    quant_cls: type
    input: QuantDescriptor | None
    weight: QuantDescriptor | None
    rules: tuple[str, ...] = ()  # the config paths that contributed (Resolution.rules)


@dataclass
class ArgSlot:
    """Where a quantized argument sits in an FX node: ("args", i) or ("kwargs", key), plus a list index."""

    location: tuple[str, Any]
    index: int | None
    arg: fx.Node
    attr: str  # quantizer attribute name on the owner module
    descriptor: QuantDescriptor


@dataclass
class OpAction:
    scope: str  # the traced scope whose graph holds the node
    owner: str  # qualified name of the owner module (absolute)
    node: fx.Node
    slots: list[ArgSlot]


@dataclass
class RewritePlan:
    plan: Plan
    modules: list[ModuleAction] = field(default_factory=list)
    ops: list[OpAction] = field(default_factory=list)
    trace: TraceResult | None = None
    sites: dict[fx.Node, str] = field(default_factory=dict)  # every op site's node -> its site name
    rule_groups: list[tuple[str, list[str]]] = field(default_factory=list)  # groups placement rules create
    runtime: RuntimePlan = field(default_factory=RuntimePlan)  # op sites of untraced scopes (runtime_plan.py)


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _quantizer_attrs(quant_cls: type) -> tuple[str, ...]:
    paths = getattr(quant_cls, "quantizer_paths", None)
    if paths is not None:
        return tuple(paths)
    return ("_input_quantizer", "_weight_quantizer") if issubclass(quant_cls, QuantMixin) else ("_input_quantizer",)


def _class_defaults(quant_cls: type) -> tuple[QuantDescriptor | None, QuantDescriptor | None]:
    """The class's default descriptors, the weight's in the config's axis convention (weight_layout.py)."""
    weight = quant_cls.default_quant_desc_weight if issubclass(quant_cls, QuantMixin) else None
    return quant_cls.default_quant_desc_input, to_config_axes(quant_cls, weight)


def _target(cfg: QuantConfig) -> str | None:
    return cfg.placement.target if cfg.placement is not None else None


def _disabled(cfg: QuantConfig, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        why = cfg.disabled_by(name)
        if why is not None:
            out[name] = why
    return out


def _plan_modules(model: nn.Module, cfg: QuantConfig, rp: RewritePlan) -> None:
    swapped: set[str] = set()  # modules handled as a whole: their descendants are not planned separately
    for name, module in model.named_modules():
        owner = _enclosing(name, swapped)
        type_name = type(module).__name__
        if owner is not None:
            if name:
                rp.plan.entries.append(PlanEntry(name, "module", type_name, SKIP,
                                                 f"part of {owner or '<root>'}, handled as a whole"))
            continue
        if isinstance(module, (QuantMixin, QuantInputMixin, TensorQuantizer)):
            swapped.add(name)
            what = "a quantizer" if isinstance(module, TensorQuantizer) else "already a Quant module"
            rp.plan.entries.append(PlanEntry(name, "module", type_name, SKIP, what))
            continue
        quant_cls = registry.quant_module_for(type(module))
        if quant_cls is None:
            if name:
                kind = "container; its children are listed" if next(module.children(), None) else "no registry entry"
                rp.plan.entries.append(PlanEntry(name, "module", type_name, SKIP, kind))
            continue
        unsupported = getattr(quant_cls, "unsupported", None)
        why_not = unsupported(module) if unsupported is not None else None
        why_not = why_not or unsupported_reason(module, quant_cls)
        if why_not:
            rp.plan.entries.append(PlanEntry(name, "module", type_name, SKIP, f"{quant_cls.__name__}: {why_not}"))
            continue
        class_input, class_weight = _class_defaults(quant_cls)
        config_name = original_class(type(module)).__name__  # ParametrizedConv1d is configured as Conv1d
        default = getattr(quant_cls, "enabled_by_default", True) or is_candidate(_target(cfg), config_name)
        res = cfg.resolve(name, "module", config_name, class_input, class_weight, default_quantize=default)
        if not res.quantize:
            rp.plan.entries.append(PlanEntry(name, "module", type_name, SKIP, res.reason, res.rules))
            continue
        swapped.add(name)
        weight = from_config_axes(quant_cls, res.weight)
        quantizers = tuple(_qualify(name, attr) for attr in _quantizer_attrs(quant_cls))
        quant_name = quant_cls.__name__ if config_name == type_name else f"Parametrized{quant_cls.__name__}"
        note = "; ".join(n for n in (layout_note(quant_cls, res.weight, weight), computed_weight_note(module)) if n)
        rp.plan.entries.append(PlanEntry(name, "module", type_name, QUANTIZE, None, res.rules, res.input,
                                         weight, quantizers, _disabled(cfg, quantizers), quant_name, note=note))
        rp.modules.append(ModuleAction(name, module, quant_cls, res.input, weight, res.rules))


def _plan_containers(model: nn.Module, rp: RewritePlan) -> None:
    """Swap each registered container (``registry.register_quant_container``) that holds a swapped module for
    its twin, which runs those children instead of bypassing them. Parents are swapped before their children."""
    swapped = [action.name for action in rp.modules]
    entries = {entry.name: i for i, entry in enumerate(rp.plan.entries) if entry.kind == "module"}
    order: dict[str, int] = {}
    root_entry = None
    for index, (name, module) in enumerate(model.named_modules()):
        order[name] = index
        twin = registry.quant_container_for(type(module))
        prefix = f"{name}." if name else ""
        if twin is None or name in swapped or not any(child.startswith(prefix) for child in swapped):
            continue
        entry = PlanEntry(name, "module", type(module).__name__, QUANTIZE, None, quant_class=twin.__name__)
        if name in entries:
            rp.plan.entries[entries[name]] = entry
        else:  # the model itself, which has no entry yet
            root_entry = entry
        rp.modules.append(ModuleAction(name, module, twin, None, None))
    if root_entry is not None:
        rp.plan.entries.insert(0, root_entry)
    rp.modules.sort(key=lambda action: order[action.name])


def _enclosing(name: str, scopes: set[str]) -> str | None:
    """The outermost member of ``scopes`` that strictly encloses ``name`` ("" encloses everything)."""
    if not scopes:
        return None
    if "" in scopes and name:
        return ""
    prefix = ""
    for part in name.split(".")[:-1]:
        prefix = f"{prefix}.{part}" if prefix else part
        if prefix in scopes:
            return prefix
    return None


def _is_scalar(node: Any, cache: dict[fx.Node, bool]) -> bool:
    """Best-effort: does this FX value hold a Python number (shape arithmetic) rather than a tensor?"""
    if not isinstance(node, fx.Node):
        return not isinstance(node, (list, tuple))
    if node in cache:
        return cache[node]
    result = False
    if node.op == "call_method" and node.target in _SCALAR_METHODS:
        result = True
    elif node.op == "call_function" and node.target is getattr:
        result = len(node.args) > 1 and node.args[1] in _SCALAR_ATTRS
    elif node.op == "call_function" and getattr(node.target, "__module__", None) in ("_operator", "math", "builtins"):
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        result = bool(inputs) and all(_is_scalar(a, cache) for a in inputs)
    cache[node] = result
    return result


def _arg_slots(node: fx.Node, spec: registry.FunctionSpec,
               cache: dict) -> list[tuple[registry.ArgSpec, tuple, int | None, fx.Node]] | None:
    """The quantizable tensor operands of ``node``; None when it is no tensor op at all (shape arithmetic
    like ``x.size(1) + 1``, or tuple concatenation like ``(h,) + outputs[1:]``, which share the op's target)."""
    found, tensor_op = [], False
    for arg in spec.args:
        if len(node.args) > arg.position:
            location, value = ("args", arg.position), node.args[arg.position]
        elif arg.keyword in node.kwargs:
            location, value = ("kwargs", arg.keyword), node.kwargs[arg.keyword]
        else:
            continue
        if arg.each:
            if isinstance(value, (list, tuple)):
                found.extend((arg, location, i, v) for i, v in enumerate(value)
                             if isinstance(v, fx.Node) and not _is_scalar(v, cache))
            tensor_op = tensor_op or isinstance(value, (list, tuple, fx.Node))  # a node: a whole sequence
        elif isinstance(value, (list, tuple)):
            return None
        elif isinstance(value, fx.Node) and not _is_scalar(value, cache):
            found.append((arg, location, None, value))
            tensor_op = True
    return found if tensor_op else None


def _owner(node: fx.Node, scope: str) -> str:
    stack = node.meta.get("nn_module_stack")
    inner = next(reversed(stack)) if stack else ""
    return _qualify(scope, inner)


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).strip("_") or "op"


def _quantizer_outputs(scope_module: nn.Module, graph: fx.Graph) -> set[fx.Node]:
    """Nodes that are already the output of a TensorQuantizer (a model quantized before)."""
    targets = {name for name, m in scope_module.named_modules() if isinstance(m, TensorQuantizer)}
    return {n for n in graph.nodes if n.op == "call_module" and n.target in targets} if targets else set()


def _plan_ops(cfg: QuantConfig, rp: RewritePlan, model: nn.Module) -> None:
    module_names = {name for name, _ in model.named_modules()}
    for scope in rp.trace.traced:
        counters: dict[tuple[str, str], int] = {}
        scalar_cache: dict[fx.Node, bool] = {}
        quantized_already = _quantizer_outputs(scope.module, scope.graph)
        for node in scope.graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            if node.target in _PLUMBING_FUNCTIONS or (node.op == "call_method" and node.target in _PLUMBING_METHODS):
                continue
            spec = registry.function_spec_for_target(node.op, node.target)
            operands = _arg_slots(node, spec, scalar_cache) if spec is not None else None
            if spec is not None and operands is None:
                continue  # shape arithmetic or tuple plumbing that shares the op's target: not an op site
            owner = _owner(node, scope.name)
            op_name = spec.name if spec is not None else _target_name(node)
            site = _site_name(owner, op_name, counters, module_names)
            rp.sites[node] = site
            if spec is None:
                rp.plan.entries.append(PlanEntry(site, "function", op_name, SKIP, "op not registered"))
                continue
            if any(value in quantized_already for *_, value in operands):
                rp.plan.entries.append(PlanEntry(site, "function", op_name, SKIP, "already quantized"))
                continue
            class_weight = FUNCTION_WEIGHT_DEFAULT if spec.has_weight else None
            default = spec.enabled_by_default or is_candidate(_target(cfg), spec.name)
            res = cfg.resolve(site, "function", spec.name, FUNCTION_INPUT_DEFAULT, class_weight,
                              default_quantize=default)
            if not res.quantize:
                rp.plan.entries.append(PlanEntry(site, "function", op_name, SKIP, res.reason, res.rules))
                continue
            if not operands:
                rp.plan.entries.append(PlanEntry(site, "function", op_name, SKIP, "no tensor operands", res.rules))
                continue
            slots = _named_slots(site, operands, res)
            quantizers = tuple(_qualify(owner, s.attr) for s in slots)
            rp.plan.entries.append(PlanEntry(site, "function", op_name, QUANTIZE, None, res.rules,
                                             res.input, res.weight, quantizers, _disabled(cfg, quantizers)))
            rp.ops.append(OpAction(scope.name, owner, node, slots))


def _site_name(owner: str, op_name: str, counters: dict[tuple[str, str], int], taken: set[str]) -> str:
    """``<owner>.<op>``, then ``<op>_1``, ``<op>_2``, ...; a name that a module already has is skipped."""
    while True:
        count = counters.get((owner, op_name), 0)
        counters[(owner, op_name)] = count + 1
        site = _qualify(owner, op_name if count == 0 else f"{op_name}_{count}")
        if site not in taken:
            return site


def _named_slots(site: str, operands: list, res: Any) -> list[ArgSlot]:
    leaf = site.rsplit(".", 1)[-1]
    slots, inputs = [], 0
    for arg, location, index, value in operands:
        if arg.role == "weight":
            attr, desc = f"{leaf}_weight_quantizer", res.weight
        else:
            attr = f"{leaf}_input_quantizer" if inputs == 0 else f"{leaf}_input{inputs}_quantizer"
            desc, inputs = res.input, inputs + 1
        slots.append(ArgSlot(location, index, value, attr, desc))
    return slots


def _plan_scopes(model: nn.Module, rp: RewritePlan) -> None:
    for name, error in rp.trace.failed.items():
        target = type(model.get_submodule(name)).__name__
        reason = f"not traced ({error}); modules inside are still swapped; {scope_note(rp.runtime, name)}"
        rp.plan.entries.append(PlanEntry(name, "scope", target, SKIP, reason))


def build_plan(model: nn.Module, cfg: QuantConfig, trace: TraceResult, *, strict: bool = False,
               example_inputs: Any = None, probe: ProbeResult | None = None) -> RewritePlan:
    """Resolve every module and op site of ``model`` against ``cfg``, then apply the config's placement rules
    (``example_inputs`` gives them tensor shapes) and resolve its shared-range groups. Changes nothing.

    ``probe`` holds the op sites of the untraced scopes that a probe run found (None: no probe was run).
    """
    from quantrewrite.placement.apply import apply_placement
    from quantrewrite.rewrite.share import resolve_groups

    rp = RewritePlan(Plan([], cfg.source, dict(trace.failed), config=cfg.to_dict(), config_chain=list(cfg.chain)),
                     trace=trace)
    runtime_entries: list[PlanEntry] = []
    rp.runtime = plan_runtime_ops(model, cfg, probe, runtime_entries)
    _plan_scopes(model, rp)
    _plan_modules(model, cfg, rp)
    check_weights(cfg, [(a.name, a.module, a.weight, a.rules) for a in rp.modules])
    _plan_containers(model, rp)
    _plan_ops(cfg, rp, model)
    rp.plan.entries.extend(runtime_entries)
    if trace.failed and probe is None:
        rp.plan.warnings.append(f"{len(trace.failed)} scope(s) did not trace and no example_inputs were given: the "
                                "functional ops inside them stay float (pass example_inputs= to find and quantize "
                                "them at run time)")
    if cfg.placement is not None:
        apply_placement(model, cfg, rp, example_inputs)
    resolve_groups(cfg, rp)
    names = [e.name for e in rp.plan.entries if e.kind != "scope"]
    rp.plan.warnings.extend(cfg.check_unmatched(names, rp.plan.quantizer_names(), strict=strict))
    return rp
