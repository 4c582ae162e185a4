"""Carry out a RewritePlan: swap modules for their Quant twins and insert quantizers before op sites.

Everything that can fail (building Quant modules and quantizers, generating the new forwards) happens before
the first change to the model, so a failure leaves the model as it was. The model keeps its class, methods
and attributes at every level: a traced scope whose graph gained quantizers only gets a generated ``forward``
on its instance (see ``generated_forward.py``); children, parameters and buffers stay where they were, so
state_dict keys do not change.
"""

from __future__ import annotations

from torch import fx, nn

from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.rewrite.generated_forward import GeneratedForward
from quantrewrite.rewrite.planner import ArgSlot, RewritePlan
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


def apply_plan(model: nn.Module, rp: RewritePlan) -> nn.Module:
    """Apply ``rp`` to ``model`` (the model the plan was built from) and return the rewritten model: ``model``
    itself, unless the plan swaps the model as a whole (``quantize_model(nn.Linear(...))``)."""
    # 1. Build every new module, insert the quantizer calls into the scope graphs (which are not part of the
    #    model) and generate the new forwards: nothing in the model is changed if one of these raises.
    swaps = [(action.name, action.quant_cls.from_float(action.module, action.input, action.weight))
             for action in rp.modules]
    quantizers = [(op, slot, TensorQuantizer(slot.descriptor)) for op in rp.ops for slot in op.slots]
    runtime_quantizers = [TensorQuantizer(descriptor) for _, _, descriptor in rp.runtime.new_quantizers]
    for action, (_, quant) in zip(rp.modules, swaps):  # new quantizers follow the mode of the module they join
        for module in quant.modules():
            if isinstance(module, TensorQuantizer):
                module.train(action.module.training)
    changed_scopes: set[str] = set()
    for op, slot, _ in quantizers:
        target = _relative(f"{op.owner}.{slot.attr}" if op.owner else slot.attr, op.scope)
        graph = op.node.graph
        with graph.inserting_before(op.node):
            qnode = graph.call_module(target, (slot.arg,))
        _replace_arg(op.node, slot, qnode)
        changed_scopes.add(op.scope)
    forwards = []
    for scope in rp.trace.traced if rp.trace else []:
        if scope.name in changed_scopes:
            scope.graph.lint()
            forwards.append((scope.module, GeneratedForward.from_graph(scope.module, scope.graph)))

    # 2. Attach Quant modules and op quantizers to the module tree, then install the generated forwards.
    root = model
    for name, quant in swaps:  # parents before children: a swapped container (a twin) receives its children's swaps
        if name == "":
            root = quant
        else:
            parent, leaf = _parent(root, name)
            setattr(parent, leaf, quant)
    # A module held under several names (named_modules() lists only the first) is swapped under all of them.
    twins = {id(action.module): quant for action, (name, quant) in zip(rp.modules, swaps) if name}
    for module in list(root.modules()):
        for key, child in list(module._modules.items()):
            if child is not None and id(child) in twins:
                module._modules[key] = twins[id(child)]
    for op, slot, quantizer in quantizers:
        owner = root.get_submodule(op.owner) if op.owner else root
        setattr(owner, slot.attr, quantizer.train(owner.training))
    for module, forward in forwards:  # the instance attribute shadows the class's forward
        module.forward = forward

    # 3. Op sites of untraced scopes: their quantizers join the owners, which are hooked (runtime_ops.py).
    attach(root, rp.runtime, runtime_quantizers)

    # 4. Quantizers that the config disables start disabled; group members learn their group.
    for entry in rp.plan.entries:
        for qname in entry.disabled:
            root.get_submodule(qname).disable()
    for group, members in rp.plan.groups.items():
        for qname in members:
            root.get_submodule(qname).share_group = group
    return root
