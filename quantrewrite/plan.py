"""The rewrite plan: for every module instance and every functional op site, what happens and why.

``plan(model, cfg)`` returns one without touching the model; ``quantize_model`` carries out the same plan and
leaves it on the returned model as ``model.quant_plan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from quantrewrite.descriptor import QuantDescriptor

__all__ = ["QUANTIZE", "SKIP", "Plan", "PlanEntry"]

QUANTIZE = "quantize"
SKIP = "skip"


@dataclass
class PlanEntry:
    """One module instance, functional op site, or untraced scope.

    Attributes:
        name: qualified module name, or op site name (``layer1.0.add``, ``layer1.0.add_1``), or scope name.
        kind: "module", "function" or "scope" (an untraced scope).
        target: the float class name, or the op (canonical name when registered, else the FX target).
        action: "quantize" or "skip".
        reason: why it is skipped (None when quantized).
        rules: the config paths that contributed, in the order applied.
        input: the input descriptor when quantized (None for a weight-only thing or a skip).
        weight: the weight descriptor when quantized and there is a weight quantizer.
        quantizers: the qualified names of the quantizers it gets.
        disabled: quantizer name -> the ``disable`` entry that starts it disabled.
        quant_class: the Quant class name a module is swapped for.
        placement: quantizer name -> (what a placement rule did: "placed" or "skipped", the rule's id), for
            every quantizer a placement rule set (``quantrewrite.placement.rules``) placed or left out.
        runtime: an op site of an untraced scope, matched at run time by owner and call order (found by the
            probe run on example inputs) instead of in an FX graph.
        note: what a quantized entry does that its descriptors do not show (a weight layout translated from
            the config's axes, an effective weight computed by a parametrization), or "".
    """

    name: str
    kind: str
    target: str
    action: str
    reason: str | None = None
    rules: tuple[str, ...] = ()
    input: QuantDescriptor | None = None
    weight: QuantDescriptor | None = None
    quantizers: tuple[str, ...] = ()
    disabled: dict[str, str] = field(default_factory=dict)
    quant_class: str | None = None
    placement: dict[str, tuple[str, str]] = field(default_factory=dict)
    runtime: bool = False
    note: str = ""

    @property
    def quantized(self) -> bool:
        return self.action == QUANTIZE


@dataclass
class Plan:
    """The ordered entries of one rewrite, the config it came from, and which scopes did not trace."""

    entries: list[PlanEntry]
    config_source: str
    untraced: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # the normalised config (QuantConfig.to_dict())
    groups: dict[str, list[str]] = field(default_factory=dict)  # shared-range group -> its quantizers
    config_chain: list[str] = field(default_factory=list)  # QuantConfig.chain: its bases first, then itself

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> PlanEntry:
        """The module or op-site entry called ``name`` (an untraced scope's entry only if nothing else is)."""
        found = [entry for entry in self.entries if entry.name == name]
        if not found:
            raise KeyError(name)
        return next((entry for entry in found if entry.kind != "scope"), found[0])

    def modules(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.kind == "module"]

    def functions(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.kind == "function"]

    def quantized(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.quantized]

    def quantizer_names(self) -> list[str]:
        return [q for e in self.entries for q in e.quantizers]

    def counts(self) -> dict[str, int]:
        counts = {
            "modules quantized": sum(e.quantized for e in self.modules()),
            "ops quantized": sum(e.quantized for e in self.functions()),
            "quantizers": len(self.quantizer_names()),
            "disabled": sum(len(e.disabled) for e in self.entries),
            "untraced scopes": len(self.untraced),
        }
        if self.groups:
            counts["shared-range groups"] = len(self.groups)
        return counts

    def __str__(self) -> str:
        rows = [("name", "kind", "type/op", "action", "details")]
        for e in self.entries:
            rows.append((e.name or "<root>", e.kind, e.target, e.action, _details(e)))
        widths = [min(48, max(len(r[i]) for r in rows)) for i in range(4)]
        lines = [f"quantrewrite plan (config: {self.config_source})"]
        for i, row in enumerate(rows):
            cells = [row[c].ljust(widths[c]) for c in range(4)]
            lines.append("  ".join(cells + [row[4]]).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  -------")
        lines.append(", ".join(f"{k}: {v}" for k, v in self.counts().items()))
        lines.extend(f"group {name}: {', '.join(members)}" for name, members in self.groups.items())
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _short(desc: QuantDescriptor | None) -> str:
    return str(desc) if desc is not None else "-"


def _placement_text(entry: PlanEntry) -> str:
    return "placement: " + "; ".join(f"{q.rsplit('.', 1)[-1]} {what} by {rule}"
                                     for q, (what, rule) in entry.placement.items())


def _details(entry: PlanEntry) -> str:
    if not entry.quantized:
        return f"run time: {entry.reason}" if entry.runtime else entry.reason or ""
    parts = ["run time"] if entry.runtime else []
    if entry.input is not None:
        parts.append(f"in: {_short(entry.input)}")
    if entry.weight is not None:
        parts.append(f"w: {_short(entry.weight)}")
    if entry.quant_class:
        parts.append(f"-> {entry.quant_class}")
    if entry.note:
        parts.append(entry.note)
    if entry.rules:
        parts.append(f"rules: {', '.join(entry.rules)}")
    if entry.placement:
        parts.append(_placement_text(entry))
    if entry.disabled:
        parts.append("disabled: " + "; ".join(f"{q.rsplit('.', 1)[-1]} by {why}"
                                               for q, why in entry.disabled.items()))
    return " | ".join(parts)
