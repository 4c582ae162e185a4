"""The config's ``share`` and ``placement`` sections: validation with located errors, and their plain form.

``share`` lists shared-range groups: each group is a list of quantizer-name patterns (globs or ``re:``
regexes, as in ``disable``); every quantizer a group's patterns match gets one amax, calibrated from the
union of the members' statistics (see ``quantrewrite.calib.groups``)::

    share:
      - ["neck.cat_conv._input_quantizer", "backbone.stage3.*._input_quantizer"]

``placement`` names a rule set applied after the config has resolved every module and op site (see
``quantrewrite.placement``), either as a name or as a mapping with per-layer exemptions::

    placement: tensorrt
    placement:
      target: tensorrt
      exempt:                      # rule id -> module / op-site names where that rule is not applied
        small_gemm: ["head.fc"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantrewrite.config.schema import Checker, item_name, join_path
from quantrewrite.descriptor import did_you_mean
from quantrewrite.patterns import PatternError, compile_pattern

__all__ = ["EXTRA_KEYS", "Placement", "parse_extras", "placement_dict"]

EXTRA_KEYS = ("share", "placement")
_PLACEMENT_KEYS = ("target", "exempt")


@dataclass(frozen=True)
class Placement:
    """A validated ``placement`` section: the rule set and, per rule id, the names it is not applied to."""

    target: str
    exempt: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _patterns(ck: Checker, path: str, value: Any, what: str) -> tuple[str, ...] | None:
    if not isinstance(value, (list, tuple)) or not value:
        ck.error(path, f"expected a non-empty list of {what} patterns (globs or 're:' regexes)", value)
        return None
    ok = True
    for index, pattern in enumerate(value):
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            ck.error(f"{path}[{index}]", exc.reason, pattern)
            ok = False
    return tuple(value) if ok else None


def _share(ck: Checker, value: Any, names: Mapping[str, Sequence[str]] | None) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        ck.error("share", "expected a list of groups, each a list of quantizer-name patterns", value)
        return ()
    groups = []
    for index, group in enumerate(value):
        patterns = _patterns(ck, item_name(names, "share", index), group, "quantizer-name")
        if patterns is not None:
            groups.append(patterns)
    return tuple(groups)


def _placement(ck: Checker, value: Any) -> Placement | None:
    from quantrewrite.placement.rules import RULES, TARGETS

    if value is None:
        return None
    mapping = {"target": value} if isinstance(value, str) else value
    if not isinstance(mapping, Mapping):
        ck.error("placement", f"expected a rule-set name ({', '.join(TARGETS)}) or a mapping with the keys "
                              f"{', '.join(_PLACEMENT_KEYS)}", value)
        return None
    ck.keys("placement", mapping, _PLACEMENT_KEYS)
    target = mapping.get("target")
    where = "placement" if isinstance(value, str) else "placement.target"
    if target not in TARGETS:
        hint = did_you_mean(str(target), TARGETS) if isinstance(target, str) else ""
        ck.error(where, f"unknown placement rule set{hint}; expected one of: {', '.join(TARGETS)}", target)
        return None
    exempt_raw = mapping.get("exempt") or {}
    if not isinstance(exempt_raw, Mapping):
        ck.error("placement.exempt", "expected a mapping of rule id to a list of module / op-site patterns",
                 exempt_raw)
        return None
    known = [rule.id for rule in RULES if target in rule.targets]
    exempt = {}
    for rule_id, patterns in exempt_raw.items():
        path = join_path("placement.exempt", str(rule_id))
        if rule_id not in known:
            ck.error(path, f"unknown {target} rule{did_you_mean(str(rule_id), known)}; rules: {', '.join(known)}")
            continue
        checked = _patterns(ck, path, patterns, "module or op-site name")
        if checked is not None:
            exempt[rule_id] = checked
    return Placement(target, exempt)


def parse_extras(data: Any, ck: Checker, names: Mapping[str, Sequence[str]] | None = None
                 ) -> tuple[tuple[tuple[str, ...], ...], Placement | None]:
    """Validate ``share`` and ``placement`` of config data; errors go to ``ck``; ``names`` as for ``parse``."""
    if not isinstance(data, Mapping):
        return (), None
    return _share(ck, data.get("share"), names), _placement(ck, data.get("placement"))


def placement_dict(placement: Placement | None) -> dict[str, Any] | None:
    """The plain form of a ``placement`` section (what ``_placement`` reads back)."""
    if placement is None:
        return None
    return {"target": placement.target, "exempt": {k: list(v) for k, v in placement.exempt.items()}}
