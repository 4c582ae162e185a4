"""Weight axes of a config versus the axes of a layer's real weight.

A config's ``weight: {axis: 0}`` means "one scale per output channel" for every layer: it is axis 0 of a
Linear or convolution weight. A layer that stores its weight in another layout (Hugging Face's Conv1D keeps
``[in, out]``, the transpose of Linear's ``[out, in]``) declares on its Quant class ``config_weight_axes``, a
permutation: config axis ``i`` is axis ``config_weight_axes[i]`` of its weight. The planner resolves the config
in the config's convention, then translates the result here, once, before checking it against the real weight
(``model_checks.check_weights``) and building the quantizer; the plan shows the translated descriptor.
"""

from __future__ import annotations

import numpy as np

from quantrewrite.descriptor import QuantDescriptor

__all__ = ["from_config_axes", "layout_note", "to_config_axes"]


def _permutation(quant_cls: type) -> tuple[int, ...] | None:
    return getattr(quant_cls, "config_weight_axes", None)


def _permute(desc: QuantDescriptor | None, permutation: tuple[int, ...] | None) -> QuantDescriptor | None:
    """``desc`` with axis ``a`` renamed ``permutation[a]`` (negative axes counted from the end). An axis out of
    range is kept as given, so that the weight check reports it with the config path that set it. A static amax
    with one dim per weight dim is transposed alike."""
    if desc is None or permutation is None:
        return desc
    dims = len(permutation)
    changes = {}
    if desc.axis is not None:
        changes["axis"] = [permutation[a % dims] if -dims <= a < dims else a for a in desc.axis]
    amax = desc.to_dict()["amax"]
    if amax is not None and np.ndim(amax) == dims:
        inverse = tuple(int(i) for i in np.argsort(permutation))
        changes["amax"] = np.transpose(np.asarray(amax), inverse).tolist()
    return desc.replace(**changes) if changes else desc


def from_config_axes(quant_cls: type, desc: QuantDescriptor | None) -> QuantDescriptor | None:
    """A weight descriptor resolved from a config, in the axes of ``quant_cls``'s real weight."""
    return _permute(desc, _permutation(quant_cls))


def to_config_axes(quant_cls: type, desc: QuantDescriptor | None) -> QuantDescriptor | None:
    """A descriptor in the axes of ``quant_cls``'s real weight (its class default), in the config's convention."""
    permutation = _permutation(quant_cls)
    if permutation is None:
        return desc
    return _permute(desc, tuple(int(i) for i in np.argsort(permutation)))


def layout_note(quant_cls: type, config_desc: QuantDescriptor | None, module_desc: QuantDescriptor | None) -> str:
    """What the plan says when the translation changed the weight axis ("" when it did not)."""
    if config_desc is None or module_desc is None or config_desc.axis == module_desc.axis:
        return ""
    config_axis = list(config_desc.axis or ())
    module_axis = list(module_desc.axis or ())
    return f"config weight axis {config_axis} (as for nn.Linear) = axis {module_axis} of this weight"
