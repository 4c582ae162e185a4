"""quant_modules.initialize()/deactivate(): torch.nn patched with the Quant twins, then restored exactly."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import quantrewrite
from quantrewrite import nn as quant_nn
from quantrewrite import quant_modules
from quantrewrite.quant_modules import DEFAULT_QUANT_MAP, QuantModuleReplacementHelper

PATCHED = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear", "LSTM",
           "LSTMCell", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
           "AdaptiveAvgPool3d"]


@pytest.fixture
def float_nn():
    """torch.nn's classes before the test; asserts the test left them as they were (and repairs them)."""
    before = {name: getattr(torch.nn, name) for name in dir(torch.nn) if isinstance(getattr(torch.nn, name), type)}
    yield before
    quant_modules.deactivate()
    changed = [name for name, cls in before.items() if getattr(torch.nn, name) is not cls]
    for name in changed:
        setattr(torch.nn, name, before[name])
    assert not changed, f"torch.nn not restored: {changed}"


def test_default_map_is_the_original_list(float_nn):
    assert [entry.mod_name for entry in DEFAULT_QUANT_MAP] == PATCHED
    assert all(entry.orig_mod is torch.nn for entry in DEFAULT_QUANT_MAP)


def test_initialize_patches_every_class_and_deactivate_restores_them(float_nn):
    quant_modules.initialize()
    for name in PATCHED:
        assert getattr(torch.nn, name) is getattr(quant_nn, "Quant" + name), name
    assert type(nn.Conv2d(3, 4, 3)) is quant_nn.QuantConv2d  # `nn` is torch.nn: looked up at call time
    assert nn.MaxPool2d is float_nn["MaxPool2d"]  # not in the original's list either
    quant_modules.deactivate()
    for name in PATCHED:
        assert getattr(torch.nn, name) is float_nn[name], name


def test_second_initialize_still_restores_floats(float_nn):
    quant_modules.initialize(float_module_list=["Linear"])
    assert torch.nn.Linear is float_nn["Linear"]
    quant_modules.initialize()  # now Linear too; the originals recorded are still the float classes
    assert torch.nn.Linear is quant_nn.QuantLinear
    quant_modules.deactivate()
    assert torch.nn.Conv2d is float_nn["Conv2d"] and torch.nn.Linear is float_nn["Linear"]
    quant_modules.deactivate()  # nothing patched: a no-op
    assert torch.nn.Conv2d is float_nn["Conv2d"]


def test_float_list_and_custom_map(float_nn):
    helper = QuantModuleReplacementHelper()
    helper.prepare_state(["Linear", "Conv2d"], [(torch.nn, "Linear", quant_nn.QuantLinear)])
    helper.apply_quant_modules()
    assert torch.nn.Linear is quant_nn.QuantLinear  # the custom entry wins over the deny list
    assert torch.nn.Conv2d is float_nn["Conv2d"]
    assert torch.nn.Conv3d is quant_nn.QuantConv3d
    assert helper.orginal_func_map is helper.original_func_map  # the original's spelling
    helper.restore_float_modules()
    assert torch.nn.Linear is float_nn["Linear"] and torch.nn.Conv3d is float_nn["Conv3d"]


def test_bad_custom_entries_and_unknown_names(float_nn):
    with pytest.raises(ValueError, match=r"custom_quant_modules\[0\].*'Lineer'"):
        quant_modules.initialize(custom_quant_modules=[(torch.nn, "Lineer", quant_nn.QuantLinear)])
    with pytest.raises(TypeError, match=r"custom_quant_modules\[0\]"):
        quant_modules.initialize(custom_quant_modules=[(torch.nn, "Linear")])
    assert torch.nn.Conv2d is float_nn["Conv2d"]  # nothing was patched by the refused calls
    with pytest.warns(UserWarning, match="MaxPool2d"):
        quant_modules.initialize(float_module_list=["MaxPool2d"])


def test_warns_about_classes_bound_before_initialize(float_nn):
    user_module = types.ModuleType("user_model_zoo")
    user_module.Conv2d = torch.nn.Conv2d  # `from torch.nn import Conv2d` at import time
    sys.modules["user_model_zoo"] = user_module
    try:
        with pytest.warns(UserWarning, match=r"user_model_zoo\.Conv2d bound a float class before initialize"):
            quant_modules.initialize()
    finally:
        del sys.modules["user_model_zoo"]
    assert user_module.Conv2d is float_nn["Conv2d"]  # we warn; we do not rewrite user modules


def test_model_built_under_initialize_quantizes(float_nn):
    quant_modules.initialize()
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    finally:
        quant_modules.deactivate()
    kinds = [type(m) for m in model]
    assert kinds[0] is quant_nn.QuantConv2d and kinds[1] is quant_nn.QuantAdaptiveAvgPool2d
    assert kinds[3] is quant_nn.QuantLinear
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2)


def test_enable_onnx_export_sets_and_restores_the_flag():
    assert quantrewrite.enable_onnx_export is quant_modules.enable_onnx_export
    assert quant_nn.TensorQuantizer._enable_onnx_export is False
    with quantrewrite.enable_onnx_export():
        assert quant_nn.TensorQuantizer()._enable_onnx_export is True
    assert quant_nn.TensorQuantizer._enable_onnx_export is False
    with pytest.raises(KeyError), quantrewrite.enable_onnx_export():
        raise KeyError("inside")
    assert quant_nn.TensorQuantizer._enable_onnx_export is False
