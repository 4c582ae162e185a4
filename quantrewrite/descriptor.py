"""QuantDescriptor: the validated, immutable description of one quantizer.

A descriptor says how a tensor is quantized (bits, range, per-tensor or per-channel, how amax is found).
It is a value object: equal descriptors compare equal and hash alike, and every field round-trips through
``to_dict``/``from_dict`` and ``to_yaml``/``from_yaml``.

Example:
    >>> desc = QuantDescriptor(num_bits=8, axis=0)
    >>> desc.axis
    (0,)
    >>> QuantDescriptor.from_yaml(desc.to_yaml()) == desc
    True
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

__all__ = [
    "CALIB_METHODS",
    "QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL",
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW",
    "QUANT_DESC_8BIT_PER_TENSOR",
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR",
    "AxisTuple",
    "QuantDescriptor",
    "QuantDescriptorError",
    "ScaledQuantDescriptor",
]

CALIB_METHODS = ("max", "histogram")
FP8_E4M3 = (4, 3)


class QuantDescriptorError(ValueError, TypeError):
    """A descriptor field has a bad value, or an unknown field was given.

    Attributes:
        field: the field name (or the unknown key).
        value: the offending value.
        reason: what was expected, without the field name.
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason}, got {value!r}")


def did_you_mean(name: str, choices: Any) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_num_bits(value: Any) -> int | tuple[int, int]:
    if _is_int(value):
        if value < 0:
            raise QuantDescriptorError("num_bits", value, "expected an int >= 0 or (4, 3) for FP8 E4M3")
        return value
    if isinstance(value, (list, tuple)) and tuple(value) == FP8_E4M3:
        return FP8_E4M3
    raise QuantDescriptorError("num_bits", value, "expected an int >= 0 or (4, 3) for FP8 E4M3")


class AxisTuple(tuple):
    """The kept dims as a tuple that also compares equal to a bare int when it holds one dim.

    pytorch-quantization kept ``axis`` as given (``axis=0`` stayed the int 0), and migrated code compares it
    with ints (``quantizer.axis == 0``); here it is always a tuple, and such comparisons still hold.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if _is_int(other):
            return len(self) == 1 and self[0] == other
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def __reduce__(self):
        return (AxisTuple, (tuple(self),))


def _check_axis(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if _is_int(value):
        return AxisTuple((value,))
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        if len(set(value)) != len(value):
            raise QuantDescriptorError("axis", value, "expected distinct dims")
        return AxisTuple(value)
    raise QuantDescriptorError("axis", value, "expected None, an int or a non-empty list of ints")


def _check_amax(value: Any) -> float | tuple | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):  # numpy array or torch tensor
        value = value.tolist()
    if _is_number(value):
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise QuantDescriptorError("amax", value, "expected a finite number >= 0")
        return value
    if isinstance(value, (list, tuple)) and value:
        return tuple(_check_amax(v) for v in value)
    raise QuantDescriptorError("amax", value, "expected None, a number >= 0 or a (nested) list of them")


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise QuantDescriptorError(field, value, "expected true or false")
    return value


def _check_scale_amax(value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise QuantDescriptorError("scale_amax", value, "expected None or a finite number > 0")
    return float(value)


def _check_calib_method(value: Any) -> str:
    if value not in CALIB_METHODS:
        hint = did_you_mean(value, CALIB_METHODS) if isinstance(value, str) else ""
        raise QuantDescriptorError("calib_method", value, f"expected one of {list(CALIB_METHODS)}{hint}")
    return value


def _check_name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise QuantDescriptorError("name", value, "expected None or a string")
    return value


# The one table of fields: name -> (default, validator). Order is the order of to_dict().
_FIELDS: dict[str, tuple[Any, Any]] = {
    "num_bits": (8, _check_num_bits),
    "name": (None, _check_name),
    "fake_quant": (True, lambda v: _check_bool("fake_quant", v)),
    "axis": (None, _check_axis),
    "amax": (None, _check_amax),
    "learn_amax": (False, lambda v: _check_bool("learn_amax", v)),
    "scale_amax": (None, _check_scale_amax),
    "calib_method": ("max", _check_calib_method),
    "unsigned": (False, lambda v: _check_bool("unsigned", v)),
    "narrow_range": (False, lambda v: _check_bool("narrow_range", v)),
}
FIELD_NAMES: tuple[str, ...] = tuple(_FIELDS)


def validate_field(name: str, value: Any) -> Any:
    """Validate and normalise one descriptor field; raise QuantDescriptorError naming it."""
    if name not in _FIELDS:
        raise QuantDescriptorError(name, name, f"unknown descriptor field{did_you_mean(name, FIELD_NAMES)}; "
                                               f"known fields: {', '.join(FIELD_NAMES)}")
    return _FIELDS[name][1](value)


def _amax_as_list(amax: float | tuple | None) -> Any:
    if isinstance(amax, tuple):
        return [_amax_as_list(v) for v in amax]
    return amax


class QuantDescriptor:
    """How one tensor is quantized. Immutable, comparable and hashable.

    Args:
        num_bits: bits of the integer grid (int >= 0), or (4, 3) for FP8 E4M3. Default 8.
        name: optional label, only shown in str().
        fake_quant: True returns dequantized floats; False returns integers and a scale.
        axis: None for per-tensor; an int or tuple of the dims that KEEP their own amax (read back as a tuple
            that also equals the int when it holds one dim).
        amax: a fixed range (number or nested list); None means calibrated or dynamic. Read back as a float32
            numpy array, as in pytorch-quantization (the exact values given are kept for equality and YAML).
        learn_amax: learn two scalar clip bounds (PACT style); incompatible with axis.
        scale_amax: multiplier applied to amax at every forward.
        calib_method: "max" or "histogram".
        unsigned: quantize to [0, 2^b - 1].
        narrow_range: signed range [-(2^(b-1) - 1), 2^(b-1) - 1] instead of [-2^(b-1), 2^(b-1) - 1].

    Raises:
        QuantDescriptorError: for an unknown field or a bad value; the message names the field and value.
    """

    # One slot per field (plain attribute reads: quantizers read them on every forward) plus the dict view.
    __slots__ = ("_values", *FIELD_NAMES)

    def __init__(self, num_bits: int | tuple[int, int] = 8, name: str | None = None, **kwargs: Any):
        values = {"num_bits": num_bits, "name": name}
        for key, value in kwargs.items():
            if key not in _FIELDS or key in values:
                raise QuantDescriptorError(key, value, f"unknown descriptor field"
                                                       f"{did_you_mean(key, FIELD_NAMES)}")
            values[key] = value
        resolved = {}
        for field, (default, check) in _FIELDS.items():
            resolved[field] = check(values.get(field, default))
        if resolved["learn_amax"] and resolved["axis"] is not None:
            raise QuantDescriptorError("learn_amax", True, f"cannot be combined with axis={resolved['axis']}; "
                                                           "learned clipping is per-tensor only")
        if resolved["calib_method"] == "histogram" and resolved["axis"] is not None:
            raise QuantDescriptorError("calib_method", "histogram", f"is per-tensor only, but axis="
                                                                    f"{list(resolved['axis'])}; use 'max' for "
                                                                    "per-channel quantizers")
        if resolved["num_bits"] == FP8_E4M3 and resolved["unsigned"]:
            raise QuantDescriptorError("unsigned", True, "FP8 E4M3 (num_bits (4, 3)) is always signed")
        self._set_values(resolved)

    def _set_values(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        if values["amax"] is not None:  # pytorch-quantization's type: a read-only float32 numpy array
            amax = np.array(values["amax"], dtype=np.float32)
            amax.setflags(write=False)
            object.__setattr__(self, "amax", amax)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"QuantDescriptor is immutable; use desc.replace({key}=...) for a changed copy")

    def __getattr__(self, key: str) -> Any:  # only reached for names that are not fields
        raise AttributeError(f"QuantDescriptor has no attribute {key!r}{did_you_mean(key, FIELD_NAMES)}")

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._values)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._set_values(dict(state))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantDescriptor) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        changed = [f"{k}={v!r}" for k, v in self._values.items() if v != _FIELDS[k][0]]
        return f"QuantDescriptor({', '.join(changed)})"

    def __str__(self) -> str:
        parts = [f"{self.name}: " if self.name else ""]
        parts.append("fp8 e4m3" if self.is_fp8 else f"{self.num_bits}bit")
        parts.append(" fake" if self.fake_quant else " real")
        parts.append(" per-tensor" if self.axis is None else f" axis={list(self.axis)}")
        if self.unsigned:
            parts.append(" unsigned")
        if self.narrow_range:
            parts.append(" narrow")
        if self._values["amax"] is not None:
            parts.append(f" amax={_amax_as_list(self._values['amax'])}")
        if self.learn_amax:
            parts.append(" learn_amax")
        if self.scale_amax is not None:
            parts.append(f" scale_amax={self.scale_amax}")
        parts.append(f" calib={self.calib_method}")
        return "".join(parts)

    @property
    def is_fp8(self) -> bool:
        return self.num_bits == FP8_E4M3

    def replace(self, **changes: Any) -> QuantDescriptor:
        """Return a copy with some fields changed (validated like the constructor)."""
        values = self.to_dict()
        values.update(changes)
        return QuantDescriptor.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain Python values (lists for tuples), in a stable order."""
        out = {}
        for key, value in self._values.items():
            if key == "amax":
                value = _amax_as_list(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def dict(self) -> dict[str, Any]:
        """pytorch-quantization's serialisation: num_bits, name and the fields that differ from their defaults
        (``QuantDescriptor(**desc.dict()) == desc``). ``to_dict()`` lists every field."""
        full = self.to_dict()
        return {key: value for key, value in full.items()
                if key in ("num_bits", "name") or self._values[key] != _FIELDS[key][0]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> QuantDescriptor:
        """Build from a mapping of fields; unknown keys are errors."""
        if not isinstance(values, Mapping):
            raise QuantDescriptorError("<descriptor>", values, "expected a mapping of descriptor fields")
        values = dict(values)
        num_bits = values.pop("num_bits", 8)
        name = values.pop("name", None)
        return cls(num_bits, name, **values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> QuantDescriptor:
        """Build from YAML text (loaded with yaml.safe_load)."""
        values = yaml.safe_load(text)
        return cls.from_dict(values if values is not None else {})


# pytorch-quantization's name for the same class.
ScaledQuantDescriptor = QuantDescriptor

QUANT_DESC_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8)
QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR = QuantDescriptor(num_bits=8, unsigned=True)
QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW = QuantDescriptor(num_bits=8, axis=0)
# Deconvolution weights are [Cin, Cout/groups, k...]; TensorRT wants one scale per INPUT channel: axis 0.
QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL = QuantDescriptor(num_bits=8, axis=0)
