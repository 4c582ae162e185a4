"""QuantConfig: a validated config, and ``resolve``, the one place the precedence is written down."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantrewrite.config.extras import Placement, parse_extras, placement_dict
from quantrewrite.config.inherit import LIST_SECTIONS, Located, load_base, merge_over_base, prefix_located
from quantrewrite.config.schema import (
    ROLES,
    VERSION,
    Checker,
    QuantConfigError,
    Rule,
    item_name,
    join_path,
    parse,
    show,
    yaml_lines,
)
from quantrewrite.descriptor import QuantDescriptor, QuantDescriptorError, did_you_mean
from quantrewrite.patterns import REGEX_PREFIX, enclosing_names, first_match, pattern_matches

__all__ = ["QuantConfig", "Resolution"]

_WILDCARDS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Resolution:
    """What ``QuantConfig.resolve`` decided for one module or op site.

    Attributes:
        quantize: whether the thing gets Quant treatment at all.
        input: the input quantizer's descriptor; None when not quantized or when it has no input quantizer.
        weight: the weight quantizer's descriptor; None when not quantized or when it has no weight.
        rules: the config paths that contributed, in the order applied ("defaults", "modules.Conv2d", ...).
        reason: why it is not quantized (None when it is).
    """

    quantize: bool
    input: QuantDescriptor | None
    weight: QuantDescriptor | None
    rules: tuple[str, ...] = ()
    reason: str | None = None


class QuantConfig:
    """A validated quantization config (see the module docstring for the format).

    Args:
        data: the config as plain data (a mapping with ``version: 1``); a relative ``base:`` path in it is
            looked up in the current directory (see ``quantrewrite.config.inherit``).
        known_modules: the names ``modules`` may use; None asks ``registry.module_names()`` (only when
            the config has a ``modules`` section).
        known_functions: the names ``functions`` may use; None asks ``registry.registered_functions()``.
        source: where the config came from, shown by ``source``.

    Raises:
        QuantConfigError: listing every problem found.

    Example:
        >>> QuantConfig({"version": 1, "disable": ["fc"]}).disabled_by("fc._input_quantizer")
        "disable[0] 'fc'"
    """

    def __init__(self, data: Mapping[str, Any], *, known_modules: Iterable[str] | None = None,
                 known_functions: Iterable[str] | None = None, source: str = "<dict>"):
        self._init(data, known_modules, known_functions, source, where=None, lines=None)

    def _init(self, data: Any, known_modules: Iterable[str] | None, known_functions: Iterable[str] | None,
              source: str, where: str | None, lines: Mapping[str, int] | None,
              dupes: Iterable[tuple[str, int]] = (), folder: str | None = None) -> None:
        located: Located = {path: (where, line) for path, line in (lines or {}).items()}
        base, names = None, {}
        if isinstance(data, Mapping) and data.get("base") is not None:
            own = os.path.realpath(where) if folder is not None and where and os.path.isfile(where) else None
            named_at = f"{where}:{(lines or {}).get('base')}" if where else ""
            base = load_base(data["base"], folder, known_modules, known_functions, named_at, own)
            names = {section: [f"base.{name}" for name in base._names[section]] for section in LIST_SECTIONS}
            data = merge_over_base(base.to_dict(), data)
            located = {**prefix_located(base._located), **located}  # the child's own lines win
        ck = Checker(located, where)
        for path, line in dupes:
            ck.error(path, f"duplicate key, again on line {line} (YAML would keep only the last one)")
        parsed = parse(data, ck, known_modules, known_functions, names)
        extras = parse_extras(data, ck, names)
        if ck.errors or parsed is None:
            raise QuantConfigError(ck.errors)
        self._defaults, self._modules, self._functions, self._layers, self._disable = parsed
        self._share, self._placement = extras
        sizes = {"layers": len(self._layers), "disable": len(self._disable), "share": len(self._share)}
        self._names = {section: [item_name(names, section, i) for i in range(size)] for section, size in sizes.items()}
        self._located = located  # for a config that names this one as its base
        self._chain: tuple[str, ...] = (*(base.chain if base is not None else ()), source)
        self._source = source if base is None else f"{source} (based on {', '.join(reversed(base.chain))})"
        self._checker = Checker(located, where)  # locates resolve-time and check_unmatched messages
        self._cache: dict[tuple[Any, ...], Resolution] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | QuantConfig, *, known_modules: Iterable[str] | None = None,
                  known_functions: Iterable[str] | None = None) -> QuantConfig:
        """Build from plain data (or re-validate another QuantConfig's ``to_dict()``)."""
        if isinstance(data, QuantConfig):
            data = data.to_dict()
        return cls(data, known_modules=known_modules, known_functions=known_functions)

    @classmethod
    def from_yaml(cls, text: str, *, known_modules: Iterable[str] | None = None,
                  known_functions: Iterable[str] | None = None, filename: str = "<string>",
                  source: str | None = None, folder: str | os.PathLike[str] | None = None) -> QuantConfig:
        """Build from YAML text (yaml.safe_load only); errors name ``filename:LINE``.

        ``folder``: where a relative ``base:`` path is looked up (``from_file``: the file's folder; default:
        the current directory).

        Example:
            >>> QuantConfig.from_yaml("version: 1\\ndisable: [fc]\\n").disable
            ('fc',)
        """
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            parts = (getattr(exc, "context", None), getattr(exc, "problem", None))
            problem = " ".join(str(p) for p in parts if p)
            at = f"{filename}:{mark.line + 1}, column {mark.column + 1}" if mark else filename
            raise QuantConfigError([("", f"invalid YAML: {problem or exc} ({at})")]) from exc
        dupes: list[tuple[str, int]] = []
        lines = yaml_lines(node, "", {}, dupes)
        config = cls.__new__(cls)
        config._init(data, known_modules, known_functions, source or filename, filename, lines, dupes,
                     None if folder is None else os.fspath(folder))
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, known_modules: Iterable[str] | None = None,
                  known_functions: Iterable[str] | None = None) -> QuantConfig:
        """Read a .yaml/.yml file.

        Example:
            >>> cfg = QuantConfig.from_file("configs/w4a8.yaml")  # doctest: +SKIP
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            message = f"cannot read config file {os.fspath(path)}: {exc.strerror or exc}"
            raise QuantConfigError([("", message)]) from exc
        return cls.from_yaml(text, known_modules=known_modules, known_functions=known_functions,
                             filename=os.fspath(path), folder=os.path.dirname(os.fspath(path)))

    @property
    def source(self) -> str:
        """Where the config came from: "preset int8_default", a file path, "<string>" or "<dict>", then its
        bases, nearest first, when it has any: "my.yaml (based on preset int8_default)"."""
        return self._source

    @property
    def chain(self) -> tuple[str, ...]:
        """The sources it was merged from, the outermost base first: ("preset int8_default", "my.yaml")."""
        return self._chain

    @property
    def disable(self) -> tuple[str, ...]:
        """The ``disable`` patterns, in order."""
        return self._disable

    @property
    def share(self) -> tuple[tuple[str, ...], ...]:
        """The ``share`` groups: each a tuple of quantizer-name patterns (see ``quantrewrite.config.extras``)."""
        return self._share

    @property
    def placement(self) -> Placement | None:
        """The ``placement`` section (rule set and per-rule exemptions), or None."""
        return self._placement

    def to_dict(self) -> dict[str, Any]:
        """The normalised config as plain data; ``QuantConfig.from_dict(cfg.to_dict()) == cfg``."""

        def plain(value: Any) -> Any:
            return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

        def rule(r: Rule) -> dict[str, Any]:
            out: dict[str, Any] = {} if r.match is None else {"match": r.match}
            if r.quantize is not None:
                out["quantize"] = r.quantize
            for role in ROLES:
                if getattr(r, role):
                    out[role] = {k: plain(v) for k, v in getattr(r, role).items()}
            return out

        out = {"version": VERSION, "defaults": rule(self._defaults),
               "modules": {k: rule(v) for k, v in self._modules.items()},
               "functions": {k: rule(v) for k, v in self._functions.items()},
               "layers": [rule(r) for r in self._layers], "disable": list(self._disable)}
        if self._share:
            out["share"] = [list(group) for group in self._share]
        if self._placement is not None:
            out["placement"] = placement_dict(self._placement)
        return out

    def to_yaml(self) -> str:
        """``to_dict()`` as YAML text that ``from_yaml`` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"QuantConfig(source={self._source!r}, modules={len(self._modules)}, functions="
                f"{len(self._functions)}, layers={len(self._layers)}, disable={len(self._disable)})")

    def resolve(self, name: str, kind: str, type_name: str, class_input: QuantDescriptor | None = None,
                class_weight: QuantDescriptor | None = None, *, default_quantize: bool = True) -> Resolution:
        """Decide whether a module or op site is quantized, and with which descriptors.

        The precedence, written once (each rule has its own test in tests/test_config.py):

        1. Descriptor fields, lowest to highest: the class default (``class_input`` / ``class_weight``),
           then ``defaults.input`` / ``defaults.weight``, then ``modules[type_name]`` (kind "module") or
           ``functions[type_name]`` (kind "function"), then every ``layers`` rule whose ``match`` matches
           ``name`` (``pattern_matches``: the name or an enclosing scope), in file order. Each source
           overrides only the fields it names; a later matching rule wins over an earlier one.
        2. ``quantize``, lowest to highest: ``default_quantize`` (True for modules, the op's
           ``FunctionSpec.enabled_by_default`` for functions), then ``modules[type_name].quantize`` /
           ``functions[type_name].quantize``, then each matching layers rule's ``quantize`` in order (so a
           later rule may turn it back on).
        3. A quantizer that does not exist (``class_input`` or ``class_weight`` is None, e.g. the weight of
           an input-only module) stays None; settings for it are ignored and do not count as contributing.
        4. When the result is not quantized, both descriptors are None and ``reason`` says why.
        5. ``disable`` plays no part here: those quantizers are created, then disabled (see ``disabled_by``).

        Args:
            name: the module's qualified name; for a function, its op site's name ("layer1.0.add") or owner
                scope name ("" = root): either way a rule naming the owner scope matches it.
            kind: "module" or "function".
            type_name: the float class name (modules) or canonical op name (functions).
            class_input: the Quant class's default input descriptor, or None when there is no input quantizer.
            class_weight: the default weight descriptor, or None when there is no weight quantizer.
            default_quantize: whether it is quantized when no config source says otherwise.

        Returns:
            A ``Resolution``; ``rules`` lists the config paths that changed anything, in order applied.

        Raises:
            QuantConfigError: the merged fields are inconsistent (learn_amax with axis, ...); the message
                names the rule that introduced the conflict.

        Example:
            >>> cfg = QuantConfig({"version": 1, "layers": [{"match": "head", "quantize": False}]})
            >>> cfg.resolve("head.fc", "module", "Linear", QuantDescriptor(), QuantDescriptor(axis=0)).reason
            'layers[0] says quantize: false'
        """
        key = (name, kind, type_name, class_input, class_weight, default_quantize)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if kind not in ("module", "function"):
            raise ValueError(f"kind must be 'module' or 'function', got {kind!r}")
        section = "modules" if kind == "module" else "functions"
        entry = (self._modules if kind == "module" else self._functions).get(type_name)
        steps = [self._defaults, *([entry] if entry else []),
                 *(r for r in self._layers if pattern_matches(r.match, name))]
        bases = {"input": class_input, "weight": class_weight}
        quantize = default_quantize
        reason = None if quantize else (f"{section}.{type_name}: off unless a config turns it on"
                                        if kind == "function" else f"{section}.{type_name}: off by default")
        contributed = []
        for step in steps:
            if step.quantize is not None:
                quantize = step.quantize
                reason = None if quantize else f"{step.path} says quantize: false"
            if step.quantize is not None or any(bases[r] is not None and getattr(step, r) for r in ROLES):
                contributed.append(step)
        rules = tuple(step.path for step in contributed)
        if quantize:
            descs = {r: None if bases[r] is None else self._merge(r, bases[r], contributed, name, type_name)
                     for r in ROLES}
            result = Resolution(True, descs["input"], descs["weight"], rules, None)
        else:
            result = Resolution(False, None, None, rules, reason)
        self._cache[key] = result
        return result

    def _merge(self, role: str, base: QuantDescriptor, steps: list[Rule], name: str,
               type_name: str) -> QuantDescriptor:
        values = base.to_dict()
        for step in steps:
            values.update(getattr(step, role))
        try:
            return QuantDescriptor.from_dict(values)
        except QuantDescriptorError as exc:
            error = exc
        values, last_valid = base.to_dict(), -1  # the class default alone is always valid
        for index, step in enumerate(steps):  # blame the step after which it never became valid again
            values.update(getattr(step, role))
            try:
                QuantDescriptor.from_dict(values)
                last_valid = index
            except QuantDescriptorError:
                pass
        culprit = steps[last_valid + 1]
        path = join_path(culprit.path, role)
        if error.field in getattr(culprit, role):
            path = join_path(path, error.field)
        message = (f"{error.reason}, got {show(error.value)}, when resolving {name!r} ({type_name}) "
                   f"from {', '.join(['the class default', *(s.path for s in steps)])}")
        raise QuantConfigError([(path, message + self._checker.locate(path))])

    def origin(self, rules: Iterable[str], role: str, field: str) -> tuple[str, str] | None:
        """Where a resolved descriptor field came from: the YAML path of the last of ``rules`` (a
        ``Resolution.rules``) that sets ``role.field``, and its " (file:LINE)" location ("" for plain data);
        None when no rule sets it (the class default).

        Example:
            >>> cfg = QuantConfig({"version": 1, "layers": [{"match": "fc", "weight": {"axis": 1}}]})
            >>> cfg.origin(("layers[0]",), "weight", "axis")
            ('layers[0].weight.axis', '')
        """
        by_path = {rule.path: rule for rule in (self._defaults, *self._modules.values(),
                                                *self._functions.values(), *self._layers)}
        for path in reversed(tuple(rules)):
            rule = by_path.get(path)
            if rule is not None and field in getattr(rule, role):
                where = join_path(join_path(path, role), field)
                return where, self._checker.locate(where)
        return None

    def disabled_by(self, quantizer_name: str) -> str | None:
        """The first ``disable`` entry matching a quantizer name, e.g. "disable[0] '*.downsample.*'", or None.

        Example:
            >>> cfg = QuantConfig({"version": 1, "disable": ["*.downsample.*"]})
            >>> cfg.disabled_by("layer1.0.downsample.0._input_quantizer")
            "disable[0] '*.downsample.*'"
        """
        index = first_match(self._disable, quantizer_name)
        return None if index is None else f"{self._names['disable'][index]} {self._disable[index]!r}"

    def check_unmatched(self, names: Iterable[str], quantizer_names: Iterable[str], *,
                        strict: bool = False) -> list[str]:
        """Report ``layers[i].match`` patterns matching none of ``names`` and ``disable[i]`` patterns matching
        none of ``quantizer_names``: a UserWarning each, or one QuantConfigError listing all when ``strict``.

        Args:
            names: module and op-site names of the model.
            quantizer_names: the qualified names of its quantizers.
            strict: raise instead of warning.

        Returns:
            The messages (empty when every pattern matched something).

        Example:
            >>> cfg = QuantConfig({"version": 1, "disable": ["fc"]})
            >>> cfg.check_unmatched(["fc"], ["fc._input_quantizer"])
            []
        """
        names, quantizer_names = list(names), list(quantizer_names)
        problems = []
        checks = [(f"{rule.path}.match", rule.match, names, "module or op site") for rule in self._layers]
        checks += [(self._names["disable"][i], pattern, quantizer_names, "quantizer")
                   for i, pattern in enumerate(self._disable)]
        checks += [(f"{self._names['share'][i]}[{j}]", pattern, quantizer_names, "quantizer")
                   for i, group in enumerate(self._share) for j, pattern in enumerate(group)]
        exempt = self._placement.exempt.items() if self._placement is not None else ()
        checks += [(f"placement.exempt.{rule}[{j}]", pattern, names, "module or op site")
                   for rule, patterns in exempt for j, pattern in enumerate(patterns)]
        for path, pattern, candidates, what in checks:
            if not any(pattern_matches(pattern, n) for n in candidates):
                hint = ""
                if not (_WILDCARDS.search(pattern) or pattern.startswith(REGEX_PREFIX)):  # a plain name
                    scopes = dict.fromkeys(s for n in candidates for s in enclosing_names(n))
                    hint = did_you_mean(pattern, scopes)
                problems.append((path, f"{pattern!r} matches no {what}{hint}{self._checker.locate(path)}"))
        if strict and problems:
            raise QuantConfigError(problems)
        messages = [f"{path}: {message}" for path, message in problems]
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
        return messages
