"""Plan-time shared-range groups: the config's ``share`` patterns and the groups placement rules create,
resolved to quantizer names, overlapping groups united, members checked to be able to share one amax."""

from __future__ import annotations

from quantrewrite.calib.groups import group_problems
from quantrewrite.config import QuantConfig, QuantConfigError
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.patterns import pattern_matches
from quantrewrite.rewrite.planner import RewritePlan

__all__ = ["quantizer_descriptors", "resolve_groups"]


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def quantizer_descriptors(rp: RewritePlan) -> dict[str, QuantDescriptor]:
    """Qualified quantizer name -> the descriptor it will be built with, for every planned quantizer."""
    out: dict[str, QuantDescriptor] = {}
    for action in rp.modules:
        entry = rp.plan[action.name] if action.name else None
        names = entry.quantizers if entry is not None else ()
        for qname in names:
            desc = action.weight if qname.endswith("weight_quantizer") else action.input
            if desc is not None:
                out[qname] = desc
    for op in rp.ops:
        for slot in op.slots:
            out[_qualify(op.owner, slot.attr)] = slot.descriptor
    return out


def _unite(groups: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Merge groups that share a member; a merged group is named by its parts joined with '+'."""
    result: list[tuple[list[str], list[str]]] = []  # (names, members)
    for name, members in groups:
        names, united = [name], list(dict.fromkeys(members))
        keep = []
        for other_names, other_members in result:
            if set(other_members) & set(united):
                names = other_names + names
                united = list(dict.fromkeys(other_members + united))
            else:
                keep.append((other_names, other_members))
        result = keep + [(names, united)]
    return [("+".join(names), members) for names, members in result]


def resolve_groups(cfg: QuantConfig, rp: RewritePlan) -> dict[str, list[str]]:
    """Group name -> member quantizer names (two or more each); sets ``rp.plan.groups``.

    Raises:
        QuantConfigError: a ``share`` group's members cannot share one amax (different bits, signedness,
            calibrator, or a per-channel member); the error names the group and the differing members.
    """
    descriptors = quantizer_descriptors(rp)
    names = list(descriptors)
    declared = []
    errors = []
    for index, patterns in enumerate(cfg.share):
        members = [q for q in names if any(pattern_matches(p, q) for p in patterns)]
        problems = group_problems(f"share[{index}]", {q: descriptors[q] for q in members})
        errors += [(f"share[{index}]", problem) for problem in problems]
        declared.append((f"share[{index}]", members))
    if errors:
        raise QuantConfigError(errors)
    candidates = declared + [(name, [q for q in members if q in descriptors]) for name, members in rp.rule_groups]
    groups = {}
    for name, members in _unite([g for g in candidates if g[1]]):
        if len(members) < 2:
            continue
        problems = group_problems(name, {q: descriptors[q] for q in members})
        if problems:
            rp.plan.warnings.append(f"shared-range group {name} not created: {'; '.join(problems)}")
            continue
        groups[name] = members
    rp.plan.groups = groups
    return groups
