"""The public verbs: quantize_model, plan, list_quantizers, enable/disable_quantizers, summary."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from quantrewrite.config import QuantConfig, QuantConfigError, load_config
from quantrewrite.nn.modules.parametrized import hook_weight_norm_names
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer, name_quantizers
from quantrewrite.patterns import compile_pattern, pattern_matches
from quantrewrite.plan import Plan
from quantrewrite.rewrite.apply import apply_plan
from quantrewrite.rewrite.planner import RewritePlan, build_plan
from quantrewrite.rewrite.probe import ProbeError, probe
from quantrewrite.rewrite.tracer import trace_scopes

__all__ = ["QuantConfig", "QuantConfigError", "RewriteError", "disable_quantizers", "enable_quantizers",
           "list_quantizers", "plan", "quantize_model", "summary"]

logger = logging.getLogger(__name__)




class RewriteError(RuntimeError):
    """The model could not be rewritten (with strict=True: a scope did not trace)."""


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a rewrite builds, and restore its state after.

    A rewrite allocates hundreds of thousands of small objects (the model copy, FX nodes, new modules); the
    collections they trigger scan the whole heap and took a third of quantize_model's time on a 128-block
    transformer, growing faster than the model. Nothing here creates garbage cycles worth collecting early.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _prepare(model: nn.Module, config: QuantConfig, concrete_args: dict[str, Any] | None,
             leaf_modules: Iterable, strict: bool, example_inputs: Any = None) -> RewritePlan:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    trace = trace_scopes(model, concrete_args=concrete_args, leaf_modules=leaf_modules)
    if trace.failed and strict:
        lines = "\n".join(f"  {name or '<root>'}: {error}" for name, error in trace.failed.items())
        raise RewriteError(f"strict=True and {len(trace.failed)} scope(s) did not trace:\n{lines}")
    for name, error in trace.failed.items():
        logger.info("scope %s did not trace, falling back to its children: %s", name or "<root>", error)
    probed = None
    if trace.failed and example_inputs is not None:
        try:
            probed = probe(model, list(trace.failed), example_inputs)
        except ProbeError as error:
            raise RewriteError(f"{error}\n(example_inputs must be what the model's forward takes: a tensor, a "
                               "tuple of positional arguments or a dict of keyword arguments)") from error
    return build_plan(model, config, trace, strict=strict, example_inputs=example_inputs, probe=probed)


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, except that a weight the ``torch.nn.utils.weight_norm`` hook computed with
    autograd (a non-leaf tensor, which deepcopy refuses) is copied detached: the hook recomputes it from
    ``weight_g``/``weight_v`` before every forward anyway. The model itself is not touched."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name in hook_weight_norm_names(module):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.Tensor) and not tensor.is_leaf:
                memo[id(tensor)] = tensor.detach().clone()
    return copy.deepcopy(model, memo)


def plan(model: nn.Module, cfg: Any = None, *, example_inputs: Any = None,
         concrete_args: dict[str, Any] | None = None, leaf_modules: Iterable[type | str] = (),
         strict: bool = False) -> Plan:
    """Dry run: what ``quantize_model`` would do to every module and functional op site. Changes nothing
    (with ``example_inputs`` the model runs once or twice in eval mode under no_grad: to find the op sites of
    untraced scopes, and for placement rules; its modes are restored).

    ``example_inputs`` (a tensor, a tuple of positional arguments or a dict of keyword arguments): see
    ``quantize_model``.

    Example:
        >>> print(plan(model, "int8_default"))   # a table: name, kind, type/op, action, details
    """
    config = load_config(cfg)
    with _collector_paused():
        return _prepare(model, config, concrete_args, leaf_modules, strict, example_inputs).plan


def quantize_model(model: nn.Module, cfg: Any = None, *, example_inputs: Any = None, inplace: bool = False,
                   concrete_args: dict[str, Any] | None = None, leaf_modules: Iterable[type | str] = (),
                   strict: bool = False) -> nn.Module:
    """Return the fake-quantized twin of ``model``.

    Registered modules are swapped for their Quant classes, and registered functional ops get quantizers
    on their tensor arguments, as the config resolves them. When the whole model does not trace with FX,
    each child scope is traced separately (modules are swapped everywhere; functional ops are quantized in
    the graph wherever a scope traced) and the plan lists the untraced scopes; with ``strict=True`` that, and
    a config pattern that matches nothing, is an error instead. The functional ops of an untraced scope are
    quantized at run time when ``example_inputs`` are given: one probe run (eval mode, no_grad) finds them,
    by owner module and call order, and their quantizers are created on the owner with the usual names
    (``encoder.layer.0.attention.self.matmul_input_quantizer``). Without example inputs they stay float and
    the plan says so. A model quantized again for a state_dict must be given the same kind of example input.

    Args:
        model: the float model.
        cfg: a preset name ("int8_default", "int8_max", "w4a8"), a YAML path, a dict or a QuantConfig;
            None means "int8_default".
        example_inputs: what the forward takes: a tensor, a tuple of positional arguments, or a dict of
            keyword arguments (``{"input_ids": ids}``). Run once (eval, no grad) to find the op sites of
            untraced scopes (not needed when everything traces), and once so that a config's placement rules
            see tensor shapes (GEMV and small matmuls, attention sequence length; without it those shape rules
            leave matmuls quantized).
        inplace: change ``model`` itself and return it (only a model that is itself a registered layer, like
            a bare ``nn.Linear``, is returned as a new Quant module). With False (the default) ``model`` is
            never modified, also when the call raises.
        concrete_args: FX concrete_args: ``{"mask": None}`` for the top-level forward's parameter ``mask``,
            ``{"encoder.block.mask": None}`` for the parameter ``mask`` of the module ``encoder.block``, used
            when that module is traced on its own (its parent did not trace). The plan's advice uses this form.
        leaf_modules: module types or qualified names FX should not trace into.
        strict: raise on untraceable scopes and on config patterns that match nothing.

    Returns:
        The quantized model, carrying its plan as ``quant_plan``. It keeps the model's class, methods and
        attributes at every level; a module whose functional ops got quantizers runs a forward generated
        from its FX graph, installed on that instance (``print(qmodel.forward.code)`` shows it).

    Example:
        >>> qmodel = quantize_model(model, "int8_default")
        >>> print(qmodel.quant_plan)
        >>> qbert = quantize_model(bert, example_inputs={"input_ids": ids})  # attention matmuls too
    """
    config = load_config(cfg)  # validated before anything is copied or touched
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    with _collector_paused():
        work = model if inplace else _copy_model(model)
        rp = _prepare(work, config, concrete_args, leaf_modules, strict, example_inputs)
        result = apply_plan(work, rp)
    name_quantizers(result)  # messages about a quantizer (or its calibrator) start with its name
    result.quant_plan = rp.plan
    return result


def list_quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    """Every TensorQuantizer in ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def _select(model: nn.Module, patterns: tuple[str, ...], verb: str) -> dict[str, TensorQuantizer]:
    if not patterns:
        raise ValueError(f"{verb}_quantizers needs at least one pattern (use '*' for all)")
    for pattern in patterns:
        compile_pattern(pattern)
    quantizers = list_quantizers(model)
    chosen = {}
    for pattern in patterns:
        hits = {n: q for n, q in quantizers.items() if pattern_matches(pattern, n)}
        if not hits:
            warnings.warn(f"{verb}_quantizers: pattern {pattern!r} matched no quantizer", UserWarning, stacklevel=3)
        chosen.update(hits)
    return chosen


def disable_quantizers(model: nn.Module, *patterns: str) -> list[str]:
    """Disable the quantizers matching any pattern; returns the names it changed (warns per empty pattern).

    Patterns match a quantizer's qualified name or any enclosing module name: "fc" reaches both of fc's
    quantizers, "layer4" everything inside layer4, "re:..." is a fullmatch regex.
    """
    changed = []
    for name, quantizer in _select(model, patterns, "disable").items():
        if quantizer.is_enabled:
            quantizer.disable()
            changed.append(name)
    return changed


def enable_quantizers(model: nn.Module, *patterns: str) -> list[str]:
    """Enable the quantizers matching any pattern; returns the names it changed."""
    changed = []
    for name, quantizer in _select(model, patterns, "enable").items():
        if not quantizer.is_enabled:
            quantizer.enable()
            changed.append(name)
    return changed


def summary(model: nn.Module) -> str:
    """A table of every quantizer: name, state, descriptor and amax."""
    quantizers = list_quantizers(model)
    rows = [("quantizer", "state", "descriptor / amax")]
    for name, quantizer in quantizers.items():
        state = "enabled" if quantizer.is_enabled else "disabled"
        # extra_repr() of a disabled quantizer is just "disabled": show its descriptor and amax anyway
        detail = (quantizer.extra_repr() if quantizer.is_enabled
                  else f"{quantizer.quant_desc} amax={quantizer._amax_text()}")
        if quantizer.share_group is not None:
            detail += f" group={quantizer.share_group}"
        rows.append((name, state, detail))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0].ljust(width[0])}  {r[1].ljust(width[1])}  {r[2]}" for r in rows]
    lines.insert(1, f"{'-' * width[0]}  {'-' * width[1]}  {'-' * 17}")
    lines.append(f"{len(quantizers)} quantizers, {sum(q.is_enabled for q in quantizers.values())} enabled")
    return "\n".join(lines)

