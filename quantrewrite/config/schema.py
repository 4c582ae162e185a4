"""Validation of config data: every problem collected with its YAML path, value, hint and line.

Package-internal: ``QuantConfig`` (quant_config.py) calls ``parse`` and raises ``QuantConfigError`` with all
errors at once. Line numbers come from ``yaml_lines``, which walks the composed YAML node tree (node marks)
separately from the ``yaml.safe_load`` of the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from quantrewrite.descriptor import (
    FIELD_NAMES,
    QuantDescriptor,
    QuantDescriptorError,
    did_you_mean,
    validate_field,
)
from quantrewrite.patterns import PatternError, compile_pattern

__all__ = ["MIN_CONFIG_BITS", "MISSING", "ROLES", "TOP_KEYS", "VERSION", "Checker", "QuantConfigError", "Rule",
           "item_name", "join_path", "parse", "show", "yaml_lines"]

VERSION = 1
# QuantDescriptor accepts 0 bits (pytorch-quantization does); a config never means it: a signed 0- or 1-bit
# grid has max_bound 0 and zeroes the tensor.
MIN_CONFIG_BITS = 2
ROLES = ("input", "weight")
TOP_KEYS = ("version", "base", "defaults", "modules", "functions", "layers", "disable", "share", "placement")
_ENTRY_KEYS = ("quantize", "input", "weight")
_RULE_KEYS = ("match", "quantize", "input", "weight")
MISSING = object()
_PARENT = re.compile(r"(?:^|\.)[^.\[]*$|\[\d+\]$")


class QuantConfigError(ValueError):
    """A config is invalid or cannot be read.

    Attributes:
        errors: every problem as ``(yaml path, message)``; the path is "" for the config as a whole. str() of
            the exception shows each as ``path: message`` on its own line.
    """

    def __init__(self, errors: Iterable[tuple[str, str]]):
        self.errors = list(errors)
        lines = [f"{path}: {message}" if path else message for path, message in self.errors]
        if len(lines) == 1:
            text = lines[0]
        else:
            text = f"{len(lines)} problems in the quantization config:\n" + "\n".join(f"  {x}" for x in lines)
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.errors,)


@dataclass(frozen=True)
class Rule:
    """One validated source of settings: ``defaults``, a modules/functions entry or a layers rule."""

    path: str
    quantize: bool | None = None
    input: dict[str, Any] = field(default_factory=dict)
    weight: dict[str, Any] = field(default_factory=dict)
    match: str | None = None


def join_path(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def item_name(names: Mapping[str, Sequence[str]] | None, section: str, index: int) -> str:
    """The name of item ``index`` of a list section: ``layers[2]``. In a config with ``base`` the list starts
    with the base's items, named by ``names`` (``base.layers[0]``..., see inherit.py); the config's own items
    follow, named by their index in its own list."""
    given = (names or {}).get(section, ())
    return given[index] if index < len(given) else f"{section}[{index - len(given)}]"


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Checker:
    """Collects (path, message) errors, each located in the YAML text when line numbers are known."""

    def __init__(self, lines: Mapping[str, int | tuple[str | None, int | None]] | None, where: str | None):
        self.lines = lines or {}  # path -> line, or (file, line) in a config with ``base`` (several files)
        self.where = where
        self.errors: list[tuple[str, str]] = []

    def locate(self, path: str) -> str:
        """" (file.yaml:LINE)" for the path or its nearest ancestor with a known line; "" for plain data."""
        while path and path not in self.lines:
            parent = _PARENT.sub("", path)  # "a.b[1].c" -> "a.b[1]" -> "a.b" -> "a" -> ""
            path = "" if parent == path else parent
        spot = self.lines.get(path)
        where, line = spot if isinstance(spot, tuple) else (self.where, spot)
        if where is None:
            return ""
        return f" ({where}:{line})" if line else f" ({where})"

    def error(self, path: str, expected: str, value: Any = MISSING) -> None:
        got = "" if value is MISSING else f", got {show(value)}"
        self.errors.append((path, f"{expected}{got}{self.locate(path)}"))

    def mapping(self, path: str, value: Any, what: str) -> Mapping | None:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return value
        hint = " (write desc.to_dict() for a QuantDescriptor)" if isinstance(value, QuantDescriptor) else ""
        self.error(path, f"expected a mapping of {what}{hint}", value)
        return None

    def keys(self, path: str, mapping: Mapping, allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key not in allowed:
                self.error(join_path(path, key), f"unknown key{did_you_mean(key, allowed)}; "
                                                 f"expected one of: {', '.join(allowed)}")

    def fields(self, path: str, value: Any, base: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a mapping of descriptor fields, alone and merged over ``base`` (the defaults)."""
        mapping = self.mapping(path, value, "descriptor fields")
        out: dict[str, Any] = {}
        ok = mapping is not None
        for key, raw in (mapping or {}).items():
            if key not in FIELD_NAMES:
                ok = False
                self.error(join_path(path, key), f"unknown descriptor field{did_you_mean(key, FIELD_NAMES)}; "
                                                 f"expected one of: {', '.join(FIELD_NAMES)}")
                continue
            if key == "num_bits" and type(raw) is int and raw < MIN_CONFIG_BITS:
                ok = False
                self.error(join_path(path, key), f"expected an int >= {MIN_CONFIG_BITS} or (4, 3) for FP8 E4M3 "
                           "(a 0-bit grid, or a signed 1-bit one, rounds every value to 0)", raw)
                continue
            try:
                out[key] = validate_field(key, raw)
            except QuantDescriptorError as exc:
                ok = False
                self.error(join_path(path, key), exc.reason, exc.value)
        if ok and out:  # cross-field rules (learn_amax with axis, unsigned FP8), alone and over the defaults
            for merged, note in ((out, ""), ({**base, **out}, " (merged over the defaults)")):
                try:
                    QuantDescriptor.from_dict(merged)
                except QuantDescriptorError as exc:
                    where = join_path(path, exc.field) if exc.field in out else path
                    self.error(where, exc.reason + note, exc.value)
                    break
        return out

    def rule(self, path: str, value: Any, allowed: tuple[str, ...], defaults: Rule) -> Rule | None:
        mapping = self.mapping(path, value, f"settings ({', '.join(allowed)})")
        if mapping is None:
            return None
        self.keys(path, mapping, allowed)
        quantize = mapping.get("quantize")
        if quantize is not None and not isinstance(quantize, bool):
            self.error(join_path(path, "quantize"), "expected true or false", quantize)
            quantize = None
        match = None
        if "match" in allowed:
            match = mapping.get("match")
            if match is None:
                self.error(path, "missing the required key 'match' (a glob or 're:' regex over module names)")
            else:
                try:
                    compile_pattern(match)
                except PatternError as exc:
                    self.error(join_path(path, "match"), exc.reason, match)
        fields = {role: self.fields(join_path(path, role), mapping.get(role), getattr(defaults, role))
                  for role in ROLES}
        return Rule(path, quantize, fields["input"], fields["weight"], match)

    def entries(self, section: str, value: Any, known: Callable[[], Iterable[str]], what: str,
                defaults: Rule) -> dict[str, Rule]:
        mapping = self.mapping(section, value, f"registered {what} names to settings")
        out: dict[str, Rule] = {}
        if not mapping:
            return out
        names = sorted(known())
        for key, entry in mapping.items():
            path = join_path(section, key)
            if key not in names:
                hint = did_you_mean(key, names) or f"; known: {', '.join(names) or '(none registered)'}"
                self.error(path, f"unknown {what} name{hint}")
                continue
            rule = self.rule(path, entry, _ENTRY_KEYS, defaults)
            if rule is not None:
                out[key] = rule
        return out

    def patterns(self, section: str, value: Any, names: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            self.error(section, "expected a list of glob or 're:' regex patterns", value)
            return ()
        for index, pattern in enumerate(value):
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                self.error(item_name(names, section, index), exc.reason, pattern)
        return tuple(value)


def parse(data: Any, ck: Checker, known_modules: Iterable[str] | None, known_functions: Iterable[str] | None,
          names: Mapping[str, Sequence[str]] | None = None) -> tuple[Any, ...] | None:
    """Validate config data into (defaults, modules, functions, layers, disable); errors go to ``ck``.

    ``names``: the names of list items inherited from a base config (see ``item_name``).
    """
    if data is None:
        ck.error("", f"the config is empty; expected a mapping that starts with `version: {VERSION}`")
        return None
    if not isinstance(data, Mapping):
        ck.error("", f"expected a mapping with the keys {', '.join(TOP_KEYS)}", data)
        return None
    version = data.get("version", MISSING)
    if version is MISSING:
        ck.error("version", f"missing; put `version: {VERSION}` at the top of the config")
    elif type(version) is not int or version != VERSION:  # another format: the rest would only be noise
        ck.error("version", f"expected {VERSION} (the only config format version)", version)
        return None
    ck.keys("", data, TOP_KEYS)

    defaults = Rule("defaults")
    mapping = ck.mapping("defaults", data.get("defaults"), "'input' and 'weight' descriptor fields")
    if mapping is not None:
        ck.keys("defaults", mapping, ROLES)
        defaults = Rule("defaults", input=ck.fields("defaults.input", mapping.get("input"), {}),
                         weight=ck.fields("defaults.weight", mapping.get("weight"), {}))

    def modules() -> Iterable[str]:
        if known_modules is not None:
            return known_modules
        from quantrewrite.registry import module_names
        return module_names()

    def functions() -> Iterable[str]:
        if known_functions is not None:
            return known_functions
        from quantrewrite.registry import registered_functions
        return registered_functions()

    module_rules = ck.entries("modules", data.get("modules"), modules, "module", defaults)
    function_rules = ck.entries("functions", data.get("functions"), functions, "op", defaults)
    layers: list[Rule] = []
    raw_layers = data.get("layers")
    if isinstance(raw_layers, (list, tuple)):
        for index, item in enumerate(raw_layers):
            rule = ck.rule(item_name(names, "layers", index), item, _RULE_KEYS, defaults)
            if rule is not None:
                layers.append(rule)
    elif raw_layers is not None:
        ck.error("layers", "expected a list of rules (`- match: PATTERN`, then quantize/input/weight)",
                 raw_layers)
    disable = ck.patterns("disable", data.get("disable"), names)
    return defaults, module_rules, function_rules, tuple(layers), disable


def yaml_lines(node: yaml.Node | None, path: str, out: dict[str, int], dupes: list[tuple[str, int]],
               stack: tuple[int, ...] = ()) -> dict[str, int]:
    """Map each YAML path under ``node`` to its 1-based line; append duplicate keys' (path, line) to dupes."""
    if node is None or id(node) in stack:
        return out
    out.setdefault(path, node.start_mark.line + 1)
    stack = (*stack, id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            sub = join_path(path, key)
            if key in seen and isinstance(key_node, yaml.ScalarNode):
                dupes.append((sub, key_node.start_mark.line + 1))
            seen.add(key)
            out.setdefault(sub, key_node.start_mark.line + 1)
            yaml_lines(value_node, sub, out, dupes, stack)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yaml_lines(item, f"{path}[{index}]", out, dupes, stack)
    return out
