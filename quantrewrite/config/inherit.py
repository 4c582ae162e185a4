"""``base:``: a config that inherits a preset or another file, then overrides it.

The merge, section by section (``MERGE_RULES``; a test checks that every top-level key has one):

- ``defaults``: per role (``input`` / ``weight``), field by field; the child's fields win.
- ``modules`` / ``functions``: entry by entry; within an entry, ``quantize`` is the child's when it gives one,
  and ``input`` / ``weight`` merge field by field.
- ``layers``, ``disable`` and ``share`` (lists): the base's items first, then the child's. For ``layers``
  that is the override rule (every matching rule merges, later wins); ``disable`` patterns and ``share``
  groups add up. Nothing of the base's lists can be removed.
- ``placement``: the child's, when it names one, replaces the base's (the exemptions belong to a rule set).
- ``version``: both must say 1.

A missing or null section inherits the base's. The base's list items are named ``base.layers[0]``,
``base.base.disable[1]`` (the base's base)... in plans and errors, with their own index in their own file;
every message is located in the file that holds the value. A config without ``base`` starts from nothing
but the Quant classes' own defaults (8-bit, per-tensor inputs, per-channel weights, max calibration).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from quantrewrite.config.schema import QuantConfigError

__all__ = ["LIST_SECTIONS", "MERGE_RULES", "BaseRef", "Located", "load_base", "merge_over_base", "prefix_located"]

BASE = "base"
LIST_SECTIONS = ("layers", "disable", "share")  # lists: the base's items, then the child's
# (file, line) of each YAML path of a config as plans and errors name it; file is None for plain data
Located = dict[str, tuple[str | None, int | None]]
BaseRef = Any  # the QuantConfig a ``base:`` names (not imported here: quant_config imports this module)

_LOADING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("quantrewrite_config_bases",
                                                                            default=())


def _fields(base: Any, child: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(child, Mapping):
        return {**base, **child}
    return base if child is None else child


def _roles(base: Any, child: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(child, Mapping)):
        return base if child is None else child
    return {role: _fields(base.get(role), child.get(role)) for role in dict.fromkeys([*base, *child])}


def _entry(base: Any, child: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(child, Mapping)):
        return base if child is None else child
    out = dict(base)
    for key, value in child.items():
        out[key] = _fields(base.get(key), value) if key in ("input", "weight") else value
    return out


def _entries(base: Any, child: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(child, Mapping)):
        return base if child is None else child
    return {name: _entry(base.get(name), child.get(name)) for name in dict.fromkeys([*base, *child])}


def _concatenate(base: Any, child: Any) -> Any:
    if child is None:
        return base
    if isinstance(base, (list, tuple)) and isinstance(child, (list, tuple)):
        return [*base, *child]
    return child  # not a list: the child's value is reported as it is


def _replace(base: Any, child: Any) -> Any:
    return base if child is None else child


MERGE_RULES: dict[str, Callable[[Any, Any], Any]] = {
    "version": _replace, "defaults": _roles, "modules": _entries, "functions": _entries,
    "layers": _concatenate, "disable": _concatenate, "share": _concatenate, "placement": _replace,
}


def _resolve(ref: str, folder: str | None) -> str:
    """A preset name as it is; a path relative to ``folder`` (the including file's), else to the cwd; any other
    name as it is (``load_config`` then says it is an unknown preset, with a did-you-mean)."""
    from quantrewrite.config.presets import available_presets

    if ref in available_presets():
        return ref
    path = os.path.normpath(os.path.join(folder or "", ref))
    looks_like_a_path = ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref
    return path if looks_like_a_path or os.path.isfile(path) else ref


def _key(target: str) -> str:
    return os.path.realpath(target) if os.path.isfile(target) else target


def load_base(ref: Any, folder: str | None, known_modules: Iterable[str] | None,
              known_functions: Iterable[str] | None, named_at: str, own: str | None = None) -> BaseRef:
    """Load the QuantConfig that ``base: ref`` names.

    Args:
        ref: the value of ``base``: a preset name, or a path (relative to ``folder``).
        folder: the folder of the file that names it (None: the current directory).
        known_modules, known_functions: as for the child.
        named_at: where ``base`` is, e.g. "my.yaml:2" ("" for plain data), for the messages.
        own: the real path of the file that names it, when it is the first of a chain (a cycle may lead back
            to it).

    Raises:
        QuantConfigError: a bad value, a base that cannot be loaded or is invalid (its errors keep their own
            paths and files, each noting which file named the base), or a cycle of bases.
    """
    from quantrewrite.config.presets import available_presets, load_config

    at = f" ({named_at})" if named_at else ""
    if not isinstance(ref, str) or not ref.strip():
        expected = f"expected a preset name ({', '.join(available_presets())}) or the path of a .yaml file"
        raise QuantConfigError([(BASE, f"{expected}, got {ref!r}{at}")])
    target = _resolve(ref, folder)
    chain = _LOADING.get() or ((own,) if own else ())
    if _key(target) in chain:
        cycle = " -> ".join([*chain[chain.index(_key(target)):], _key(target)])
        raise QuantConfigError([(BASE, f"{ref!r} makes a cycle of bases: {cycle}{at}")])
    token = _LOADING.set((*chain, _key(target)))
    try:
        return load_config(target, known_modules=known_modules, known_functions=known_functions)
    except QuantConfigError as error:
        note = f"the base named at {named_at}" if named_at else f"the base {ref!r}"
        # a problem of the base as a whole (not found, not YAML) is a problem of this config's ``base`` value
        raise QuantConfigError([(path or BASE, f"{message} ({note})") for path, message in error.errors]) from None
    finally:
        _LOADING.reset(token)


def prefix_located(located: Located) -> Located:
    """A base's located paths as its child names them: list items (and the base's own bases) get ``base.``."""
    out: Located = {}
    for path, spot in located.items():
        head = path.split(".", 1)[0].split("[", 1)[0]
        if head in (*LIST_SECTIONS, BASE) and path not in LIST_SECTIONS:
            out[f"{BASE}.{path}"] = spot
        else:
            out[path] = spot
    return out


def merge_over_base(base_data: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The child's data merged over its base's (the base's ``to_dict()``, already merged), by ``MERGE_RULES``;
    a key without a rule (unknown: the child's validation reports it) is kept as the child has it."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys([*base_data, *data]):
        if key == BASE:
            continue
        rule = MERGE_RULES.get(key)
        merged[key] = rule(base_data.get(key), data.get(key)) if rule is not None else data.get(key)
    return merged
