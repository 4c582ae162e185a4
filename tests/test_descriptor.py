"""QuantDescriptor: defaults, validation, value semantics, round trips and the predefined descriptors."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from quantrewrite import descriptor as desc_mod
from quantrewrite.descriptor import QuantDescriptor, QuantDescriptorError

# NUMERICS.md "Descriptor defaults".
DEFAULTS = {
    "num_bits": 8,
    "name": None,
    "fake_quant": True,
    "axis": None,
    "amax": None,
    "learn_amax": False,
    "scale_amax": None,
    "calib_method": "max",
    "unsigned": False,
    "narrow_range": False,
}


def test_defaults_match_numerics() -> None:
    desc = QuantDescriptor()
    for field, default in DEFAULTS.items():
        assert getattr(desc, field) == default, field
    assert desc.to_dict() == DEFAULTS


def test_to_dict_lists_every_field() -> None:
    assert set(QuantDescriptor().to_dict()) == set(DEFAULTS)


# ------------------------------------------------------------------------------------------ value object
def test_immutable() -> None:
    desc = QuantDescriptor(num_bits=4)
    with pytest.raises(AttributeError, match="immutable"):
        desc.num_bits = 8  # type: ignore[misc]
    with pytest.raises(AttributeError):
        desc.new_field = 1  # type: ignore[attr-defined]
    assert desc.num_bits == 4


def test_unknown_attribute_suggests() -> None:
    with pytest.raises(AttributeError, match="num_bits"):
        QuantDescriptor().num_bit  # noqa: B018


def test_equal_and_hash() -> None:
    a = QuantDescriptor(num_bits=8, axis=0, amax=[1, 2.0])
    b = QuantDescriptor(num_bits=8, axis=(0,), amax=(1.0, 2))
    c = QuantDescriptor(num_bits=8, axis=1, amax=[1, 2.0])
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != "8bit"


def test_replace_returns_validated_copy() -> None:
    a = QuantDescriptor(num_bits=8)
    b = a.replace(num_bits=4, narrow_range=True)
    assert (a.num_bits, a.narrow_range) == (8, False)
    assert (b.num_bits, b.narrow_range) == (4, True)
    with pytest.raises(QuantDescriptorError, match="num_bits"):
        a.replace(num_bits=-1)


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda d: pickle.loads(pickle.dumps(d))],
                         ids=["copy", "deepcopy", "pickle"])
def test_copy_and_pickle(clone: Any) -> None:
    desc = QuantDescriptor(num_bits=(4, 3), axis=(0, 1), amax=[[1.0], [2.0]], name="w")
    other = clone(desc)
    assert other == desc and hash(other) == hash(desc)


# ------------------------------------------------------------------------------------------- normalising
@pytest.mark.parametrize(("kwargs", "field", "expected"), [
    ({"axis": 0}, "axis", (0,)),
    ({"axis": [0, 2]}, "axis", (0, 2)),
    ({"axis": -1}, "axis", (-1,)),
    ({"amax": 3}, "amax", 3.0),
    ({"amax": [1, 2]}, "amax", (1.0, 2.0)),
    ({"amax": [[1], [2]]}, "amax", ((1.0,), (2.0,))),
    ({"amax": np.array([1.5, 2.5], dtype=np.float32)}, "amax", (1.5, 2.5)),
    ({"amax": torch.tensor(2.0)}, "amax", 2.0),
    ({"num_bits": [4, 3]}, "num_bits", (4, 3)),
    ({"num_bits": 0}, "num_bits", 0),
    ({"scale_amax": 2}, "scale_amax", 2.0),
], ids=["int-axis", "list-axis", "neg-axis", "int-amax", "list-amax", "nested-amax", "numpy-amax",
        "tensor-amax", "fp8-list", "zero-bits", "int-scale_amax"])
def test_normalised_values(kwargs: dict[str, Any], field: str, expected: Any) -> None:
    value = getattr(QuantDescriptor(**kwargs), field)
    if field == "amax":  # read back as pytorch-quantization's float32 numpy array
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, np.asarray(expected, dtype=np.float32))
    else:
        assert value == expected


def test_fp8_flag() -> None:
    assert QuantDescriptor(num_bits=(4, 3)).is_fp8
    assert not QuantDescriptor(num_bits=8).is_fp8


# -------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(("kwargs", "field", "value_text"), [
    ({"num_bits": -1}, "num_bits", "-1"),
    ({"num_bits": True}, "num_bits", "True"),
    ({"num_bits": 8.0}, "num_bits", "8.0"),
    ({"num_bits": "eight"}, "num_bits", "'eight'"),
    ({"num_bits": (5, 2)}, "num_bits", "(5, 2)"),
    ({"calib_method": "maxx"}, "calib_method", "'maxx'"),
    ({"calib_method": "entropy"}, "calib_method", "'entropy'"),
    ({"calib_method": None}, "calib_method", "None"),
    ({"axis": 0, "learn_amax": True}, "learn_amax", "True"),
    ({"axis": 0, "calib_method": "histogram"}, "calib_method", "'histogram'"),
    ({"axis": []}, "axis", "[]"),
    ({"axis": [0, 0]}, "axis", "[0, 0]"),
    ({"axis": 1.0}, "axis", "1.0"),
    ({"axis": True}, "axis", "True"),
    ({"amax": -1.0}, "amax", "-1.0"),
    ({"amax": [1.0, -2.0]}, "amax", "-2.0"),
    ({"amax": float("nan")}, "amax", "nan"),
    ({"amax": float("inf")}, "amax", "inf"),
    ({"amax": "big"}, "amax", "'big'"),
    ({"amax": []}, "amax", "[]"),
    ({"fake_quant": 1}, "fake_quant", "1"),
    ({"unsigned": "yes"}, "unsigned", "'yes'"),
    ({"narrow_range": None}, "narrow_range", "None"),
    ({"learn_amax": 0}, "learn_amax", "0"),
    ({"scale_amax": 0}, "scale_amax", "0"),
    ({"scale_amax": -2.0}, "scale_amax", "-2.0"),
    ({"scale_amax": True}, "scale_amax", "True"),
    ({"name": 3}, "name", "3"),
    ({"num_bits": (4, 3), "unsigned": True}, "unsigned", "True"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_value_names_field_and_value(kwargs: dict[str, Any], field: str, value_text: str) -> None:
    with pytest.raises(QuantDescriptorError) as info:
        QuantDescriptor(**kwargs)
    assert info.value.field == field
    message = str(info.value)
    assert message.startswith(f"{field}:"), message
    assert value_text in message, message


def test_error_is_value_error_and_type_error() -> None:
    with pytest.raises(ValueError):
        QuantDescriptor(num_bits=-1)
    with pytest.raises(TypeError):
        QuantDescriptor(num_bits="8")


def test_calib_method_did_you_mean() -> None:
    with pytest.raises(QuantDescriptorError, match=r"did you mean 'max'\?"):
        QuantDescriptor(calib_method="maxx")
    with pytest.raises(QuantDescriptorError, match=r"did you mean 'histogram'\?"):
        QuantDescriptor(calib_method="histogramm")


@pytest.mark.parametrize(("key", "hint"), [("num_bit", "num_bits"), ("narrow", "narrow_range"),
                                           ("zzz", None)], ids=["num_bit", "narrow", "zzz"])
def test_unknown_key_raises(key: str, hint: str | None) -> None:
    with pytest.raises(QuantDescriptorError) as info:
        QuantDescriptor(**{key: 1})
    assert info.value.field == key
    if hint:
        assert f"did you mean {hint!r}" in str(info.value)
    with pytest.raises(QuantDescriptorError, match=key):
        QuantDescriptor.from_dict({key: 1})


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(QuantDescriptorError):
        QuantDescriptor.from_dict([("num_bits", 8)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- round trips
ROUND_TRIP_CASES = {
    "defaults": {},
    "int-axis": {"axis": 0, "amax": [[1.0], [2.5]]},
    "negative-axis": {"axis": -1},
    "tuple-axis": {"axis": (0, 1)},
    "list-amax": {"amax": [0.5, 1.5, 2.0]},
    "nested-amax": {"axis": 0, "amax": [[[[1.0]]], [[[2.0]]]]},
    "scalar-amax": {"amax": 2.64},
    "fp8": {"num_bits": (4, 3), "amax": 448.0},
    "narrow": {"narrow_range": True, "num_bits": 4},
    "histogram": {"calib_method": "histogram", "unsigned": True, "name": "act"},
    "learn": {"learn_amax": True, "amax": 3.0, "scale_amax": 0.5, "fake_quant": False},
    "zero-bits": {"num_bits": 0},
}


@pytest.mark.parametrize("kwargs", list(ROUND_TRIP_CASES.values()), ids=list(ROUND_TRIP_CASES))
def test_dict_round_trip(kwargs: dict[str, Any]) -> None:
    desc = QuantDescriptor(**kwargs)
    as_dict = desc.to_dict()
    assert set(as_dict) == set(DEFAULTS)  # narrow_range and calib_method included
    back = QuantDescriptor.from_dict(as_dict)
    assert back == desc
    assert back.to_dict() == as_dict
    short = desc.dict()  # pytorch-quantization's form: num_bits, name and the non-default fields
    assert short == {k: v for k, v in as_dict.items() if k in ("num_bits", "name") or v != DEFAULTS[k]}
    assert QuantDescriptor(**short) == desc


@pytest.mark.parametrize("kwargs", list(ROUND_TRIP_CASES.values()), ids=list(ROUND_TRIP_CASES))
def test_yaml_round_trip(kwargs: dict[str, Any]) -> None:
    desc = QuantDescriptor(**kwargs)
    text = desc.to_yaml()
    loaded = yaml.safe_load(text)
    assert set(loaded) == set(DEFAULTS)
    back = QuantDescriptor.from_yaml(text)
    assert back == desc
    for field in DEFAULTS:
        assert np.array_equal(getattr(back, field), getattr(desc, field)) if field == "amax" else (
            getattr(back, field) == getattr(desc, field)), field


def test_yaml_written_by_hand() -> None:
    text = "num_bits: 4\nnarrow_range: true\ncalib_method: histogram\n"
    desc = QuantDescriptor.from_yaml(text)
    assert (desc.num_bits, desc.narrow_range, desc.calib_method) == (4, True, "histogram")
    assert QuantDescriptor.from_yaml("") == QuantDescriptor()
    assert QuantDescriptor.from_yaml("axis: 1\n").axis == (1,)
    with pytest.raises(QuantDescriptorError, match="calib_method"):
        QuantDescriptor.from_yaml("calib_method: maxx\n")


def test_str_and_repr() -> None:
    desc = QuantDescriptor(num_bits=4, axis=0, narrow_range=True, name="w")
    assert str(desc).startswith("w: 4bit fake axis=[0] narrow")
    assert repr(desc) == "QuantDescriptor(num_bits=4, name='w', axis=(0,), narrow_range=True)"
    assert repr(QuantDescriptor()) == "QuantDescriptor()"


# ----------------------------------------------------------------------------------------------- presets
PRESETS = {
    "QUANT_DESC_8BIT_PER_TENSOR": {},
    "QUANT_DESC_UNSIGNED_8BIT_PER_TENSOR": {"unsigned": True},
    "QUANT_DESC_8BIT_CONV1D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
    "QUANT_DESC_8BIT_CONV2D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
    "QUANT_DESC_8BIT_CONV3D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
    "QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW": {"axis": (0,)},
    # Deconvolution weights are [Cin, Cout/g, k...]: TensorRT wants per-INPUT-channel scales, axis 0.
    "QUANT_DESC_8BIT_CONVTRANSPOSE1D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
    "QUANT_DESC_8BIT_CONVTRANSPOSE2D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
    "QUANT_DESC_8BIT_CONVTRANSPOSE3D_WEIGHT_PER_CHANNEL": {"axis": (0,)},
}


@pytest.mark.parametrize("name", list(PRESETS), ids=list(PRESETS))
def test_presets(name: str) -> None:
    from quantrewrite import tensor_quant

    preset = getattr(desc_mod, name)
    assert getattr(tensor_quant, name) is preset  # the pytorch-quantization import path
    assert preset == QuantDescriptor(**{**DEFAULTS, **PRESETS[name]})
    assert name in desc_mod.__all__


def test_pytorch_quantization_import_path() -> None:
    from quantrewrite.tensor_quant import (
        QUANT_DESC_8BIT_PER_TENSOR,
        QuantDescriptor,
        ScaledQuantDescriptor,
        fake_tensor_quant,
        tensor_quant,
    )

    assert ScaledQuantDescriptor is QuantDescriptor
    assert QUANT_DESC_8BIT_PER_TENSOR == ScaledQuantDescriptor(num_bits=8)
    assert callable(tensor_quant) and callable(fake_tensor_quant)
