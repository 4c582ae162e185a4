"""The presets in ``quantrewrite/configs/``, and ``load_config``: one entry point for every config form."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from quantrewrite.config.quant_config import QuantConfig
from quantrewrite.config.schema import QuantConfigError
from quantrewrite.descriptor import did_you_mean

__all__ = ["DEFAULT_PRESET", "available_presets", "load_config"]

DEFAULT_PRESET = "int8_default"


def available_presets() -> list[str]:
    """Names of the presets shipped in ``quantrewrite/configs/`` (found with importlib.resources).

    Example:
        >>> "int8_default" in available_presets()
        True
    """
    root = resources.files("quantrewrite").joinpath("configs")
    if not root.is_dir():
        return []
    return sorted(item.name[:-5] for item in root.iterdir() if item.name.endswith(".yaml"))


def load_config(cfg: str | os.PathLike[str] | Mapping[str, Any] | QuantConfig | None = None, *,
                known_modules: Iterable[str] | None = None,
                known_functions: Iterable[str] | None = None) -> QuantConfig:
    """Load a config from a preset name, a .yaml/.yml path, a dict, or return a QuantConfig as is.

    Args:
        cfg: None (the "int8_default" preset), a preset name (see ``available_presets``), a path, a mapping
            in the config format, or a QuantConfig.
        known_modules: names the ``modules`` section may use (None: the registry's).
        known_functions: names the ``functions`` section may use (None: the registry's).

    Raises:
        QuantConfigError: unknown preset, missing file, malformed YAML or an invalid config.
        TypeError: ``cfg`` is none of the above.

    Example:
        >>> load_config("w4a8").source
        'preset w4a8'
    """
    if cfg is None:
        cfg = DEFAULT_PRESET
    if isinstance(cfg, QuantConfig):
        return cfg
    known = {"known_modules": known_modules, "known_functions": known_functions}
    if isinstance(cfg, Mapping):
        return QuantConfig.from_dict(cfg, **known)
    if isinstance(cfg, os.PathLike):
        return QuantConfig.from_file(cfg, **known)
    if not isinstance(cfg, str):
        raise TypeError(f"load_config expects a preset name, a path, a dict or a QuantConfig, got {cfg!r}")
    presets = available_presets()
    if cfg in presets:
        resource = resources.files("quantrewrite").joinpath("configs").joinpath(f"{cfg}.yaml")
        return QuantConfig.from_yaml(resource.read_text(encoding="utf-8"), **known, filename=f"{cfg}.yaml",
                                     source=f"preset {cfg}")
    if os.path.isfile(cfg):
        return QuantConfig.from_file(cfg, **known)
    if cfg.endswith((".yaml", ".yml")) or os.sep in cfg or "/" in cfg:
        stem = os.path.basename(cfg).rsplit(".", 1)[0]
        hint = (f"; the preset is named {stem!r} (without .yaml)" if stem in presets
                else f"; presets: {', '.join(presets)}" if presets else "")
        raise QuantConfigError([("", f"config file not found: {cfg}{hint}")])
    message = (f"unknown preset {cfg!r}{did_you_mean(cfg, presets)}; presets: "
               f"{', '.join(presets) or '(none installed)'}; or give the path of a .yaml file")
    raise QuantConfigError([("", message)])
