"""Shared-range groups: quantizers that must end with one amax, calibrated from all members' statistics.

TensorRT fuses Q/DQ across a concat (or the three projections of one input) only when the quantizers
involved have the same scale. A group is declared by a config's ``share`` section or created by a placement
rule; the rewrite sets each member's ``share_group`` to the group's name.

When amax is loaded, the members' statistics are merged and every member's calibrator gets the merged
statistics, so every member computes the same amax:

* max calibrators: the max of the members' maxima;
* histogram calibrators: the members' histograms re-binned onto one common grid (the first non-empty
  member's bin width, grown to the largest range; see ``distributed.merge_histograms``).

Merging runs after the ranks of a distributed calibration have combined their statistics, on identical
statistics on every rank, so groups stay consistent across ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from quantrewrite.calib import distributed
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["GroupError", "group_problems", "merge_group_statistics", "shared_groups"]

# Descriptor fields every member of a group must agree on (one scale needs one grid and one calibrator kind).
_SAME_FIELDS = ("num_bits", "unsigned", "narrow_range", "calib_method", "axis")


class GroupError(ValueError):
    """The members of a shared-range group cannot share one amax."""


def shared_groups(model: nn.Module) -> dict[str, list[str]]:
    """Group name -> qualified names of its quantizers, in module order."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.share_group is not None:
            groups.setdefault(module.share_group, []).append(name)
    return groups


def group_problems(group: str, members: Mapping[str, object]) -> list[str]:
    """Why the descriptors ``members`` (quantizer name -> QuantDescriptor) cannot share one amax; [] if they can."""
    problems = []
    items = list(members.items())
    if not items:
        return problems
    first_name, first = items[0]
    if first.axis is not None:
        problems.append(f"group {group}: {first_name} has per-channel axis {first.axis}; shared ranges are "
                        "per tensor")
    for field_name in _SAME_FIELDS:
        differ = [n for n, d in items[1:] if getattr(d, field_name) != getattr(first, field_name)]
        if differ:
            values = ", ".join(f"{n}={getattr(members[n], field_name)!r}" for n in differ)
            problems.append(f"group {group}: {field_name} differs ({first_name}={getattr(first, field_name)!r}, "
                            f"{values})")
    return problems


def _kinds(quantizers: Iterable[TensorQuantizer]) -> set[str]:
    return {type(q.calibrator).__name__ for q in quantizers}


def merge_group_statistics(quantizers: Mapping[str, TensorQuantizer]) -> dict[str, list[str]]:
    """Give every member of each group among ``quantizers`` the group's merged statistics.

    Args:
        quantizers: the quantizers about to load their amax (name -> quantizer, with a calibrator).

    Returns:
        Group name -> the members merged (groups with one calibrating member are left alone).

    Raises:
        GroupError: a group's members use different calibrator kinds (max and histogram).
    """
    groups: dict[str, list[str]] = {}
    for name, quantizer in quantizers.items():
        if quantizer.share_group is not None and quantizer.calibrator is not None:
            groups.setdefault(quantizer.share_group, []).append(name)
    merged = {}
    for group, names in groups.items():
        members = [quantizers[n] for n in names]
        if len(members) < 2:
            continue
        kinds = _kinds(members)
        if len(kinds) > 1:
            raise GroupError(f"shared-range group {group} mixes calibrators {sorted(kinds)} ({', '.join(names)}); "
                             "give its members one calib_method")
        states = [distributed.calibrator_state(q.calibrator) for q in members]
        batches = sum(q.calibrator.num_batches for q in members)
        for quantizer in members:
            distributed.apply_states(quantizer.calibrator, states)
            quantizer.calibrator._num_batches = batches
        merged[group] = names
    return merged
