"""Recipes: one human-readable YAML file that records a quantized model completely.

A recipe holds the config the model was quantized with, every quantizer's resolved descriptor, whether it
is enabled, its calibrated amax, its shared-range group (and the groups, by name), the quantrewrite and torch
versions, and, after ``fallback``, what it left float and why (``fallback:``, kept as ``quant_fallback`` on the
loaded model). ``load_recipe`` rebuilds the same quantized model from a fresh float model.

Example:
    >>> save_recipe(qmodel, "resnet_int8.yaml")
    >>> qmodel2 = load_recipe(float_model, "resnet_int8.yaml")
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from quantrewrite.api import list_quantizers, quantize_model
from quantrewrite.descriptor import QuantDescriptor

__all__ = ["RECIPE_FORMAT", "RecipeError", "load_recipe", "save_recipe"]

RECIPE_FORMAT = 1


class RecipeError(ValueError):
    """A recipe is malformed or does not match the model it is applied to."""


def _version() -> str:
    from quantrewrite import __version__

    return __version__


def _amax_data(amax: torch.Tensor | None) -> dict[str, Any] | None:
    if amax is None:
        return None
    values = amax.detach().float().cpu()
    return {"shape": list(values.shape), "values": values.reshape(-1).tolist()}


def save_recipe(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the recipe of a model returned by ``quantize_model`` (and usually calibrated) to ``path``.

    The file is written atomically (a temporary file renamed into place), with the permissions an ordinary
    write would give it: those of the file it replaces, else 0666 less the umask.
    """
    plan = getattr(model, "quant_plan", None)
    if plan is None:
        raise RecipeError("the model carries no quant_plan: save_recipe needs a model returned by quantize_model")
    quantizers = {}
    for name, quantizer in list_quantizers(model).items():
        quantizers[name] = {
            "enabled": quantizer.is_enabled,
            "descriptor": quantizer.quant_desc.to_dict(),
            "amax": _amax_data(quantizer.amax),
        }
        if quantizer.share_group is not None:
            quantizers[name]["group"] = quantizer.share_group
    recipe = {
        "format": RECIPE_FORMAT,
        "versions": {"quantrewrite": _version(), "torch": str(torch.__version__)},
        "config_source": plan.config_source,
        "config_chain": list(plan.config_chain),
        "config": plan.config,
        "untraced_scopes": dict(plan.untraced),
        "groups": {name: list(members) for name, members in plan.groups.items()},
        "quantizers": quantizers,
    }
    if getattr(model, "quant_fallback", None) is not None:
        recipe["fallback"] = model.quant_fallback
    path = Path(path)
    text = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=120)
    _write_atomically(path, text)
    return path


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it into place.

    The temporary file is created with mode 0666, so the kernel applies the umask as for any new file
    (``tempfile`` would force 0600); a replaced file keeps its mode.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    missing = [key for key in ("format", "config", "quantizers") if key not in data]
    if missing:
        raise RecipeError(f"{path}: missing keys {missing}; is this a quantrewrite recipe?")
    if data["format"] != RECIPE_FORMAT:
        raise RecipeError(f"{path}: recipe format {data['format']!r} is not supported (expected {RECIPE_FORMAT})")
    if not isinstance(data["quantizers"], dict):
        raise RecipeError(f"{path}: quantizers: expected a mapping of quantizer name to its record")
    return data


def _amax_tensor(record: dict[str, Any] | None, where: str) -> torch.Tensor | None:
    if record is None:
        return None
    try:
        return torch.tensor(record["values"], dtype=torch.float32).reshape(record["shape"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise RecipeError(f"{where}.amax: expected {{shape: [...], values: [...]}}, got {record!r} ({error})") from None


def load_recipe(model: nn.Module, path: str | os.PathLike[str], *, inplace: bool = False,
                example_inputs: Any = None) -> nn.Module:
    """Quantize a fresh float ``model`` as the recipe says and set every quantizer's amax and state.

    ``example_inputs`` is passed to ``quantize_model``: give the same as when the recipe's model was made when
    its config has placement rules that read shapes (``placement: tensorrt`` with matmuls).
    A model whose untraced scopes got run-time op quantizers needs ``example_inputs`` of the same kind here
    too, so the probe run finds the same op sites.

    Raises:
        RecipeError: the file is not a recipe, or its quantizers do not match the model's (the message names
            the missing, extra and differing quantizers). ``model`` is not modified when this raises (unless
            ``inplace=True``).
    """
    data = _read(path)
    qmodel = quantize_model(model, data["config"], inplace=inplace, example_inputs=example_inputs)
    quantizers = list_quantizers(qmodel)
    recorded = data["quantizers"]
    problems = []
    missing = [name for name in recorded if name not in quantizers]
    extra = [name for name in quantizers if name not in recorded]
    if missing:
        hint = (" (the model has untraced scopes: pass example_inputs= so the probe run finds their op sites)"
                if example_inputs is None and data.get("untraced_scopes") else "")
        problems.append(f"in the recipe but not in the model: {', '.join(missing)}{hint}")
    if extra:
        problems.append(f"in the model but not in the recipe: {', '.join(extra)}")
    updates = []
    for name, record in recorded.items():
        if name not in quantizers:
            continue
        where = f"{path}: quantizers.{name}"
        try:
            descriptor = QuantDescriptor.from_dict(record.get("descriptor", {}))
        except ValueError as error:
            raise RecipeError(f"{where}.descriptor: {error}") from None
        if descriptor != quantizers[name].quant_desc:
            problems.append(f"{name}: descriptor differs (recipe {descriptor}, model {quantizers[name].quant_desc})")
            continue
        updates.append((quantizers[name], bool(record.get("enabled", True)), _amax_tensor(record.get("amax"), where)))
    if problems:
        raise RecipeError(f"recipe {path} does not match the model:\n  " + "\n  ".join(problems))
    for quantizer, enabled, amax in updates:
        if amax is not None:
            quantizer.amax = amax
        if enabled:
            quantizer.enable()
        else:
            quantizer.disable()
    if data.get("fallback") is not None:
        qmodel.quant_fallback = data["fallback"]
    return qmodel
