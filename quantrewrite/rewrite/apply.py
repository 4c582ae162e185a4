"""Carry out a RewritePlan: swap modules for their Quant twins and insert quantizers before op sites.

Everything that can fail (building Quant modules and quantizers) happens before the first change to the
model, so a failure leaves the model as it was. A traced scope becomes a GraphModule only when one of its
op sites gets quantizers; it keeps the original module's children, parameters and buffers (also those its
forward never touches), so state_dict keys do not change, and its plain attributes, which an untraced
parent's forward may read.
"""

from __future__ import annotations

from torch import fx, nn

from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.rewrite.planner import ArgSlot, OpAction, RewritePlan
from quantrewrite.rewrite.runtime_plan import attach

__all__ = ["apply_plan"]


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (root.get_submodule(parent) if parent else root), leaf


def _relative(name: str, scope: str) -> str:
    if not scope:
        return name
    return name[len(scope) + 1:] if name != scope else ""


def _replace_arg(node: fx.Node, slot: ArgSlot, new: fx.Node) -> None:
    kind, key = slot.location
    container = list(node.args) if kind == "args" else dict(node.kwargs)
    value = container[key]
    if slot.index is not None:
        items = list(value)
        items[slot.index] = new
        value = type(value)(items) if isinstance(value, tuple) else items
    else:
        value = new
    container[key] = value
    if kind == "args":
        node.args = tuple(container)
    else:
        node.kwargs = container


def _graph_module(module: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    for name, child in module._modules.items():  # the real children (aliases too), not FX's partial copies
        if child is not None:
            setattr(gm, name, child)
    for name, param in module.named_parameters(recurse=False):
        if name not in gm._parameters:
            gm.register_parameter(name, param)
    for name, buf in module.named_buffers(recurse=False):
        if name not in gm._buffers:
            gm.register_buffer(name, buf, persistent=name not in module._non_persistent_buffers_set)
    for name, value in vars(module).items():  # plain attributes, which untraced code may still read
        if name not in vars(gm) and name != "forward":
            gm.__dict__[name] = value
    gm.train(module.training)
    gm.graph.lint()
    return gm


def apply_plan(model: nn.Module, rp: RewritePlan) -> nn.Module:
    """Apply ``rp`` to ``model`` (the model the plan was built from) and return the rewritten model."""
    # 1. Build every new module first: nothing is changed if one of these raises.
    swaps = [(action.name, action.quant_cls.from_float(action.module, action.input, action.weight))
             for action in rp.modules]
    quantizers = [(op, slot, TensorQuantizer(slot.descriptor)) for op in rp.ops for slot in op.slots]
    runtime_quantizers = [TensorQuantizer(descriptor) for _, _, descriptor in rp.runtime.new_quantizers]
    for action, (_, quant) in zip(rp.modules, swaps):  # new quantizers follow the mode of the module they join
        for module in quant.modules():
            if isinstance(module, TensorQuantizer):
                module.train(action.module.training)

    # 2. Attach Quant modules and op quantizers to the module tree.
    root = model
    for name, quant in swaps:
        if name == "":
            root = quant
        else:
            parent, leaf = _parent(model, name)
            setattr(parent, leaf, quant)
    # A module held under several names (named_modules() lists only the first) is swapped under all of them.
    twins = {id(action.module): quant for action, (name, quant) in zip(rp.modules, swaps) if name}
    for module in list(model.modules()):
        for key, child in list(module._modules.items()):
            if child is not None and id(child) in twins:
                module._modules[key] = twins[id(child)]
    scopes_to_rebuild: dict[str, list[OpAction]] = {}
    for op, slot, quantizer in quantizers:
        owner = model.get_submodule(op.owner) if op.owner else model
        setattr(owner, slot.attr, quantizer.train(owner.training))
        target = _relative(f"{op.owner}.{slot.attr}" if op.owner else slot.attr, op.scope)
        graph = op.node.graph
        with graph.inserting_before(op.node):
            qnode = graph.call_module(target, (slot.arg,))
        _replace_arg(op.node, slot, qnode)
        scopes_to_rebuild.setdefault(op.scope, []).append(op)

    # 3. Rebuild the scopes whose graphs changed (traced scopes are disjoint subtrees: order does not matter).
    for scope in rp.trace.traced if rp.trace else []:
        if scope.name not in scopes_to_rebuild:
            continue
        gm = _graph_module(scope.module, scope.graph)
        if scope.name == "":
            root = gm
        else:
            parent, leaf = _parent(model, scope.name)
            setattr(parent, leaf, gm)

    # 4. Op sites of untraced scopes: their quantizers join the owners, which are hooked (runtime_ops.py).
    attach(root, rp.runtime, runtime_quantizers)

    # 5. Quantizers that the config disables start disabled; group members learn their group.
    for entry in rp.plan.entries:
        for qname in entry.disabled:
            root.get_submodule(qname).disable()
    for group, members in rp.plan.groups.items():
        for qname in members:
            root.get_submodule(qname).share_group = group
    return root
