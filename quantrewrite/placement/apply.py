"""Apply a placement rule set (``placement: tensorrt`` or ``dla``) to a RewritePlan, before anything changes.

The config has resolved every module and op site; this pass decides, rule by rule (``rules.RULES``), which
of those quantizers TensorRT can use: it drops or skips the others, moves a conv's input quantizer before a
pad, and creates shared-range groups. Each decision is written on the plan entry (``PlanEntry.placement``,
the skip reason, the disable reason), and ``placement.exempt`` switches a rule off for matching names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from quantrewrite import registry
from quantrewrite.config import QuantConfig
from quantrewrite.patterns import pattern_matches
from quantrewrite.placement.graph import COMMUTING, GraphIndex, propagate_shapes
from quantrewrite.placement.rules import MAX_INT8_SEQ_LEN, MIN_GEMM_DIM, rule
from quantrewrite.plan import SKIP, PlanEntry
from quantrewrite.rewrite import planner
from quantrewrite.rewrite.planner import ArgSlot, ModuleAction, OpAction, RewritePlan

__all__ = ["apply_placement"]

_WEIGHTED = frozenset({"conv", "conv_transpose", "linear", "matmul"})


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


@dataclass
class _Site:
    """Where a plan entry's node sits: its scope's index and the node."""

    index: GraphIndex
    node: fx.Node
    scope: str


@dataclass
class _Placer:
    model: nn.Module
    cfg: QuantConfig
    rp: RewritePlan
    shapes: dict[fx.Node, Any]
    target: str
    module_sites: dict[str, _Site] = field(default_factory=dict)
    op_sites: dict[fx.Node, _Site] = field(default_factory=dict)
    indexes: list[tuple[str, GraphIndex]] = field(default_factory=list)
    entries: dict[str, PlanEntry] = field(default_factory=dict)

    def entry(self, name: str) -> PlanEntry:
        """The module or op-site entry called ``name`` (one dict lookup; the plan's own lookup scans)."""
        if not self.entries:
            for item in self.rp.plan.entries:
                if item.kind != "scope" or item.name not in self.entries:
                    self.entries[item.name] = item
        return self.entries[name]

    # ------------------------------------------------------------------------------------------ bookkeeping
    def exempt(self, rule_id: str, name: str) -> bool:
        patterns = self.cfg.placement.exempt.get(rule_id, ()) if self.cfg.placement else ()
        return any(pattern_matches(p, name) for p in patterns)

    def _note(self, entry: PlanEntry, rule_id: str) -> None:
        path = f"placement.{self.target}.{rule_id}"
        if path not in entry.rules:
            entry.rules = (*entry.rules, path)

    def placed(self, entry: PlanEntry, rule_id: str, quantizers: tuple[str, ...] | None = None) -> None:
        for qname in entry.quantizers if quantizers is None else quantizers:
            entry.placement.setdefault(qname, ("placed", rule_id))
        self._note(entry, rule_id)

    def skip_entry(self, entry: PlanEntry, rule_id: str, detail: str = "") -> None:
        for qname in entry.quantizers:
            entry.placement[qname] = ("skipped", rule_id)
        entry.action = SKIP
        entry.reason = f"{self.target} rule {rule_id}: {detail + '; ' if detail else ''}{rule(rule_id).reason}"
        entry.input = entry.weight = None
        entry.quantizers, entry.disabled, entry.quant_class = (), {}, None
        self._note(entry, rule_id)

    def skip_module(self, action: ModuleAction, rule_id: str, detail: str = "") -> None:
        self.rp.modules.remove(action)
        self.skip_entry(self.entry(action.name), rule_id, detail)

    def skip_op(self, op: OpAction, entry: PlanEntry, rule_id: str, detail: str = "") -> None:
        self.rp.ops.remove(op)
        self.skip_entry(entry, rule_id, detail)

    def drop_slot(self, op: OpAction, entry: PlanEntry, slot: ArgSlot, rule_id: str) -> None:
        qname = _qualify(op.owner, slot.attr)
        op.slots.remove(slot)
        entry.quantizers = tuple(q for q in entry.quantizers if q != qname)
        entry.disabled.pop(qname, None)
        entry.placement[qname] = ("skipped", rule_id)
        self._note(entry, rule_id)

    # ---------------------------------------------------------------------------------------------- index
    def build_index(self) -> None:
        for scope in self.rp.trace.traced if self.rp.trace else []:
            index = GraphIndex(scope.graph, scope.module)
            self.indexes.append((scope.name, index))
            for node in scope.graph.nodes:
                if node.op == "call_module":
                    name = _qualify(scope.name, str(node.target))
                    self.module_sites.setdefault(name, _Site(index, node, scope.name))
                elif node in self.rp.sites:
                    self.op_sites[node] = _Site(index, node, scope.name)

    def module_input(self, name: str) -> tuple[GraphIndex, fx.Node] | None:
        site = self.module_sites.get(name)
        if site is None:
            return None
        first = site.index.first_input(site.node)
        return (site.index, first) if first is not None else None


# ------------------------------------------------------------------------------------------- size rules
def _small_conv(weight_shape: tuple[int, ...], groups: int, first_layer: bool) -> str | None:
    """Why a Conv with this weight shape stays float (ModelOpt's int8 rule), or None when it is quantized."""
    c_out, c_in = weight_shape[0], weight_shape[1]
    kernel = tuple(weight_shape[2:])
    if c_out >= MIN_GEMM_DIM and c_in >= MIN_GEMM_DIM:
        return None
    if groups == 1 and (c_out % 8 == 0 or c_in % 8 == 0) and len(set(kernel)) <= 1 and (
            first_layer or c_out >= MIN_GEMM_DIM or c_in >= MIN_GEMM_DIM):
        return None
    if groups > 1 and c_out % 8 == 0 and all(k >= 3 for k in kernel):
        return None
    return f"C_in {c_in} (per group), C_out {c_out}, groups {groups}, kernel {list(kernel)}"


def _matmul_rule(a: Any, b: Any, both_activations: bool) -> tuple[str, str] | None:
    """(rule id, detail) that keeps a matmul of shapes ``a`` @ ``b`` float, or None."""
    if len(a) < 1 or len(b) < 1:
        return None
    m = a[-2] if len(a) >= 2 else 1
    k = a[-1]
    n = b[-1] if len(b) >= 2 else 1
    if m == 1 or n == 1:
        return "gemv", f"output {m}x{n}"
    if k < MIN_GEMM_DIM or n < MIN_GEMM_DIM:
        return "small_gemm", f"K {k}, N {n}"
    if both_activations and m > MAX_INT8_SEQ_LEN:
        return "attention_seq_len", f"sequence length {m}"
    return None


# ------------------------------------------------------------------------------------------ module rules
def _module_rules(p: _Placer) -> list[ModuleAction]:
    """Decide every swapped module; returns the average-pooling ones, decided last."""
    deferred = []
    for action in list(p.rp.modules):
        entry = p.entry(action.name)
        module = action.module
        if p.target == "dla":
            p.placed(entry, "weighted_inputs" if _is_weighted(module) else "dla_every_input")
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            where = p.module_input(action.name)
            first = where is not None and where[1].op == "placeholder" and p.module_sites[action.name].scope == ""
            why = _small_conv(tuple(module.weight.shape), module.groups, first)
            if why and not p.exempt("small_conv", action.name):
                p.skip_module(action, "small_conv", why)
                continue
            p.placed(entry, "weighted_inputs")
        elif (features := _linear_features(module, action.quant_cls)) is not None:
            if min(features) < MIN_GEMM_DIM and not p.exempt("small_gemm", action.name):
                p.skip_module(action, "small_gemm", f"K {features[0]}, N {features[1]}")
                continue
            p.placed(entry, "weighted_inputs")
        elif _is_weighted(module):
            p.placed(entry, "weighted_inputs")
        elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if not p.exempt("max_pool_commutes", action.name):
                p.skip_module(action, "max_pool_commutes")
        elif isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                                 nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            deferred.append(action)
        elif _module_kind(p, action.name) == "pad":
            pass  # decided by the pad rule
        elif isinstance(module, nn.LayerNorm):
            where = p.module_input(action.name)
            fed_by_conv = where is not None and where[0].backbone(where[1], through_copies=True) is not None
            if fed_by_conv or p.exempt("layernorm_conv_input", action.name):
                p.placed(entry, "layernorm_conv_input")
            else:
                p.skip_module(action, "layernorm_conv_input", "no conv feeds it")
        elif not p.exempt("float_ops", action.name):
            p.skip_module(action, "float_ops", type(module).__name__)
    return deferred


def _linear_features(module: nn.Module, quant_cls: type) -> tuple[int, int] | None:
    """(in, out) features of a GEMM layer: an nn.Linear, or a layer whose twin says it is one
    (``linear_features``: Hugging Face's Conv1D); None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    features = getattr(quant_cls, "linear_features", None)
    return features(module) if features is not None else None


def _module_kind(p: _Placer, name: str) -> str | None:
    """The node kind of module ``name``'s call (None when it is not called in a traced scope)."""
    site = p.module_sites.get(name)
    return site.index.kind.get(site.node) if site is not None else None


def _is_weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                               nn.ConvTranspose3d, nn.Linear, nn.MultiheadAttention))


# -------------------------------------------------------------------------------------------- op rules
def _param_shape(site: _Site, node: Any) -> tuple[int, ...] | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        try:
            value = site.index.modules[""].get_parameter(str(node.target))
        except AttributeError:
            try:
                value = site.index.modules[""].get_buffer(str(node.target))
            except AttributeError:
                return None
        return tuple(value.shape)
    return None


def _residual_input(index: GraphIndex, a: fx.Node, b: fx.Node) -> fx.Node | None:
    """The non-shortcut input of ``a + b`` (the branch that fuses into its conv), or None if not residual."""
    if a is b:
        return None
    bb_a, bb_b = index.backbone(a), index.backbone(b)
    if bb_a is None and bb_b is None:
        return None
    lca, da, db = index.common_ancestor(a, b)
    if bb_a is not None and bb_b is not None:
        if bb_a is bb_b:
            return None
        return a if da > db else b
    backbone, branch = (bb_a, a) if bb_a is not None else (bb_b, b)
    return None if lca is backbone else branch


def _op_rules(p: _Placer) -> list[tuple[OpAction, PlanEntry]]:
    """Decide every quantized op site; returns the average-pooling ones (decided last)."""
    deferred = []
    for op in list(p.rp.ops):
        site_name = p.rp.sites[op.node]
        entry = p.entry(site_name)
        kind = p.op_sites[op.node].index.kind[op.node] if op.node in p.op_sites else "other"
        site = p.op_sites.get(op.node)
        if p.target == "dla":
            p.placed(entry, "weighted_inputs" if kind in _WEIGHTED else "dla_every_input")
            continue
        if kind in ("conv", "linear"):
            weight = next((s.arg for s in op.slots if s.attr.endswith("weight_quantizer")), None)
            shape = _param_shape(site, weight) if site else None
            if shape is not None:
                if kind == "linear":
                    why = ("small_gemm", f"K {shape[1]}, N {shape[0]}") if min(shape) < MIN_GEMM_DIM else None
                else:
                    groups = op.node.kwargs.get("groups", op.node.args[6] if len(op.node.args) > 6 else 1)
                    detail = _small_conv(shape, int(groups), False)
                    why = ("small_conv", detail) if detail else None
                if why and not p.exempt(why[0], site_name):
                    p.skip_op(op, entry, *why)
                    continue
            p.placed(entry, "weighted_inputs")
        elif kind == "matmul":
            operands = [s.arg for s in op.slots]
            shapes = [p.shapes.get(n) for n in operands]
            both = site is not None and all(site.index.kind.get(n) != "param" for n in operands)
            why = _matmul_rule(shapes[0], shapes[1], both) if len(shapes) == 2 and None not in shapes else None
            if why and not p.exempt(why[0], site_name):
                p.skip_op(op, entry, *why)
                continue
            p.placed(entry, "weighted_inputs")
        elif kind == "add":
            _add_rule(p, op, entry, site, site_name)
        elif kind == "cat":
            if not p.exempt("concat_shared", site_name):
                p.skip_op(op, entry, "concat_shared")
        elif kind == "resize":
            if not p.exempt("resize_float_input", site_name):
                p.skip_op(op, entry, "resize_float_input")
        elif kind == "max_pool":
            if not p.exempt("max_pool_commutes", site_name):
                p.skip_op(op, entry, "max_pool_commutes")
        elif kind == "avg_pool":
            deferred.append((op, entry))
        elif kind == "pad":
            pass  # decided by the pad rule
        elif not p.exempt("float_ops", site_name):
            p.skip_op(op, entry, "float_ops", entry.target)
    return deferred


def _add_rule(p: _Placer, op: OpAction, entry: PlanEntry, site: _Site | None, site_name: str) -> None:
    args = [s.arg for s in op.slots]
    residual = _residual_input(site.index, *args) if site is not None and len(args) == 2 else None
    if residual is None:
        if not p.exempt("add_not_residual", site_name):
            p.skip_op(op, entry, "add_not_residual")
        return
    if p.exempt("residual_shortcut", site_name):
        p.placed(entry, "residual_shortcut")
        return
    for slot in [s for s in op.slots if s.arg is residual]:
        p.drop_slot(op, entry, slot, "residual_shortcut")
    p.placed(entry, "residual_shortcut")


# ------------------------------------------------------------------------------------------ pad -> conv
_COPYING_PAD_MODES = frozenset({"reflect", "replicate", "circular"})  # they only copy values


def _pad_commutes(index: GraphIndex, pad: fx.Node) -> bool:
    """Whether a quantizer commutes with this pad (F.pad call or padding module): zero padding and padding
    that copies values (reflection, replication) do; another constant may be off the quantization grid."""
    if pad.op == "call_module":
        module = index.modules.get(str(pad.target))
        if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return module.value == 0
        return module is not None
    mode = pad.kwargs.get("mode", pad.args[2] if len(pad.args) > 2 else "constant")
    value = pad.kwargs.get("value", pad.args[3] if len(pad.args) > 3 else None)
    return mode in _COPYING_PAD_MODES or (mode == "constant" and value in (None, 0, 0.0))


def _quantize_pad_module(p: _Placer, name: str, module: nn.Module, conv: ModuleAction) -> bool:
    """Plan an input quantizer (the conv's input descriptor) on padding module ``name``; False if none can be."""
    quant_cls = registry.quant_module_for(type(module))
    if quant_cls is None:
        return False
    entry = p.entry(name)
    p.rp.modules.append(ModuleAction(name, module, quant_cls, conv.input, None, entry.rules))
    entry.action, entry.reason, entry.input = "quantize", None, conv.input
    entry.quantizers, entry.disabled, entry.quant_class = (f"{name}._input_quantizer",), {}, quant_cls.__name__
    return True


def _quantize_pad_op(p: _Placer, pad: fx.Node, pad_site: str, conv: ModuleAction) -> bool:
    """Plan an input quantizer (the conv's input descriptor) on the F.pad call ``pad``; False if none can be."""
    scope = p.op_sites[pad].scope
    owner = planner._owner(pad, scope)
    operands = planner._arg_slots(pad, registry.function_spec("pad"), {}) or []
    slots = [ArgSlot(loc, idx, value_node, f"{pad_site.rsplit('.', 1)[-1]}_input_quantizer", conv.input)
             for _, loc, idx, value_node in operands[:1]]
    if not slots:
        return False
    p.rp.ops.append(OpAction(scope, owner, pad, slots))
    entry = p.entry(pad_site)
    entry.action, entry.reason, entry.input = "quantize", None, conv.input
    entry.quantizers = tuple(_qualify(owner, s.attr) for s in slots)
    return True


def _pad_rule(p: _Placer) -> None:
    for action in list(p.rp.modules):
        if not isinstance(action.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or action.input is None:
            continue
        where = p.module_input(action.name)
        if where is None:
            continue
        index, pad = where
        if index.kind.get(pad) != "pad" or not _pad_commutes(index, pad) or p.exempt("pad_conv", action.name):
            continue
        if pad.op == "call_module":
            pad_name = _qualify(p.module_sites[action.name].scope, str(pad.target))
        elif pad.op == "call_function" and pad in p.rp.sites:
            pad_name = p.rp.sites[pad]
        else:
            continue
        pad_entry = p.entry(pad_name)
        if not pad_entry.quantized:
            placed = (_quantize_pad_module(p, pad_name, index.modules[str(pad.target)], action)
                      if pad.op == "call_module" else _quantize_pad_op(p, pad, pad_name, action))
            if not placed:
                continue
        entry = p.entry(action.name)
        conv_input = next(q for q in entry.quantizers if not q.endswith("weight_quantizer"))
        entry.disabled[conv_input] = f"{p.target} rule pad_conv: moved before {pad_name}"
        entry.placement[conv_input] = ("skipped", "pad_conv")
        p._note(entry, "pad_conv")
        p.placed(pad_entry, "pad_conv")


# ------------------------------------------------------------------------------------------ average pool
def _quantized_inputs(p: _Placer, exclude: set[str]) -> set[fx.Node]:
    """Nodes whose value some remaining input quantizer quantizes (module inputs and op operands)."""
    nodes = set()
    for action in p.rp.modules:
        entry = p.entry(action.name)
        inputs = [q for q in entry.quantizers if not q.endswith("weight_quantizer") and q not in entry.disabled]
        if action.name in exclude or not inputs:
            continue
        where = p.module_input(action.name)
        if where is not None:
            nodes.add(where[1])
    for op in p.rp.ops:
        if p.rp.sites.get(op.node) not in exclude:
            nodes.update(s.arg for s in op.slots if not s.attr.endswith("weight_quantizer"))
    return nodes


def _avg_pool_rule(p: _Placer, modules: list[ModuleAction], ops: list[tuple[OpAction, PlanEntry]]) -> None:
    names = {a.name for a in modules} | {p.rp.sites[o.node] for o, _ in ops}
    quantized = _quantized_inputs(p, names)
    candidates = [(a.name, p.module_sites.get(a.name), a, None) for a in modules]
    candidates += [(p.rp.sites[o.node], p.op_sites.get(o.node), o, e) for o, e in ops]
    for name, site, action, entry in candidates:
        neighbour = False
        if site is not None:
            first = site.index.first_input(site.node)
            outputs, frontier = set(), [site.node]
            while frontier:  # the pooled value and its copies (flatten, view, ...)
                node = frontier.pop()
                outputs.add(node)
                frontier += [u for u in node.users if site.index.kind.get(u) == "copy" and u not in outputs]
            neighbour = first in quantized or bool(outputs & quantized)
        if neighbour or p.exempt("avg_pool_neighbour", name):
            p.placed(entry or p.entry(name), "avg_pool_neighbour")
        elif entry is None:
            p.skip_module(action, "avg_pool_neighbour", "no quantized neighbour")
        else:
            p.skip_op(action, entry, "avg_pool_neighbour", "no quantized neighbour")


# ---------------------------------------------------------------------------------------------- groups
def _groups(p: _Placer) -> None:
    """Quantizers of one tensor, and of the tensors joined by a concat (through ops Q/DQ commutes with),
    become shared-range groups."""
    parent: dict[fx.Node, fx.Node] = {}

    def find(node: fx.Node) -> fx.Node:
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    def union(a: fx.Node, b: fx.Node) -> None:
        ra, rb = find(a), find(b)
        if ra is not rb:
            parent[rb] = ra

    concat_of: dict[fx.Node, str] = {}
    for _, index in p.indexes:
        for node in index.graph.nodes:
            kind = index.kind[node]
            if kind == "cat":
                name = p.rp.sites.get(node, node.name)
                if p.exempt("concat_shared", name):
                    continue
                for arg in index.data_inputs(node):
                    union(node, arg)
                concat_of[node] = name
            elif kind in COMMUTING and index.first_input(node) is not None:
                union(index.first_input(node), node)
    members: dict[fx.Node, list[str]] = {}
    for action in p.rp.modules:
        entry = p.entry(action.name)
        where = p.module_input(action.name)
        if where is None:
            continue
        for qname in entry.quantizers:
            if not qname.endswith("weight_quantizer") and qname not in entry.disabled:
                members.setdefault(find(where[1]), []).append(qname)
    for op in p.rp.ops:
        for slot in op.slots:
            if not slot.attr.endswith("weight_quantizer"):
                members.setdefault(find(slot.arg), []).append(_qualify(op.owner, slot.attr))
    roots_with_cat = {find(node): name for node, name in concat_of.items()}
    for root, names in members.items():
        if len(names) < 2:
            continue
        if root in roots_with_cat:
            p.rp.rule_groups.append((f"concat_shared:{roots_with_cat[root]}", names))
        elif not any(p.exempt("same_tensor", n) for n in names):
            p.rp.rule_groups.append((f"same_tensor:{names[0]}", names))


def apply_placement(model: nn.Module, cfg: QuantConfig, rp: RewritePlan,
                    example_inputs: Any = None) -> None:
    """Apply ``cfg.placement``'s rule set to ``rp`` (see the module docstring). Changes only the plan."""
    shapes = {}
    if example_inputs is not None and rp.trace is not None:
        shapes = propagate_shapes(model, rp.trace.traced, example_inputs)
    p = _Placer(model, cfg, rp, shapes, cfg.placement.target)
    p.build_index()
    pools = _module_rules(p)
    pool_ops = _op_rules(p)
    if p.target == "tensorrt":
        _pad_rule(p)
        _avg_pool_rule(p, pools, pool_ops)
    else:
        for action in pools:
            p.placed(p.entry(action.name), "dla_every_input")
    _groups(p)
