"""quantrewrite: fake quantization for PyTorch models, from float to a verified int8 deployment.

The public verbs and types. The pytorch-quantization import paths live beside them:
``from quantrewrite import nn as quant_nn``, ``from quantrewrite import calib``,
``from quantrewrite.tensor_quant import QuantDescriptor``, ``quantrewrite.quant_modules.initialize()``,
``quantrewrite.enable_onnx_export()`` (see MIGRATION.md).
"""

# Nothing is imported until it is used (PEP 562): ``import quantrewrite`` and the command line's
# ``--help`` do not load torch. Each public name maps to the module that defines it; a new public name goes
# into _EXPORTS and __all__.
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("calib", "nn", "optim", "quant_modules", "tensor_quant", "utils")
_EXPORTS = {
    "ArgSpec": "quantrewrite.registry",
    "CalibrationResult": "quantrewrite.calibration",
    "ExportError": "quantrewrite.export",
    "ExportReport": "quantrewrite.export",
    "FallbackResult": "quantrewrite.mixed_precision",
    "Plan": "quantrewrite.plan",
    "PlanEntry": "quantrewrite.plan",
    "QuantConfig": "quantrewrite.config",
    "QuantConfigError": "quantrewrite.config",
    "QuantDescriptor": "quantrewrite.descriptor",
    "QuantDescriptorError": "quantrewrite.descriptor",
    "RecipeError": "quantrewrite.recipe",
    "RegistryError": "quantrewrite.registry",
    "RewriteError": "quantrewrite.api",
    "SensitivityReport": "quantrewrite.sensitivity",
    "TensorQuantizer": "quantrewrite.nn",
    "available_presets": "quantrewrite.config",
    "calibrate": "quantrewrite.calibration",
    "calibration": "quantrewrite.calibration",
    "deactivate": "quantrewrite.quant_modules",
    "disable_quantizers": "quantrewrite.api",
    "enable_onnx_export": "quantrewrite.quant_modules",
    "enable_quantizers": "quantrewrite.api",
    "export_onnx": "quantrewrite.export",
    "fallback": "quantrewrite.mixed_precision",
    "initialize": "quantrewrite.quant_modules",
    "list_quantizers": "quantrewrite.api",
    "load_calib_amax": "quantrewrite.calibration",
    "load_config": "quantrewrite.config",
    "load_recipe": "quantrewrite.recipe",
    "plan": "quantrewrite.api",
    "plot_calibration": "quantrewrite.plots",
    "quantize_model": "quantrewrite.api",
    "register_quant_function": "quantrewrite.registry",
    "register_quant_module": "quantrewrite.registry",
    "save_recipe": "quantrewrite.recipe",
    "sensitivity": "quantrewrite.sensitivity",
    "summary": "quantrewrite.api",
    "unregister_quant_function": "quantrewrite.registry",
    "unregister_quant_module": "quantrewrite.registry",
}

__all__ = [  # every name of _SUBMODULES and _EXPORTS (a test checks)
    "ArgSpec",
    "CalibrationResult",
    "ExportError",
    "ExportReport",
    "FallbackResult",
    "Plan",
    "PlanEntry",
    "QuantConfig",
    "QuantConfigError",
    "QuantDescriptor",
    "QuantDescriptorError",
    "RecipeError",
    "RegistryError",
    "RewriteError",
    "SensitivityReport",
    "TensorQuantizer",
    "__version__",
    "available_presets",
    "calib",
    "calibrate",
    "calibration",
    "deactivate",
    "disable_quantizers",
    "enable_onnx_export",
    "enable_quantizers",
    "export_onnx",
    "fallback",
    "initialize",
    "list_quantizers",
    "load_calib_amax",
    "load_config",
    "load_recipe",
    "nn",
    "optim",
    "plan",
    "plot_calibration",
    "quant_modules",
    "quantize_model",
    "register_quant_function",
    "register_quant_module",
    "save_recipe",
    "sensitivity",
    "summary",
    "tensor_quant",
    "unregister_quant_function",
    "unregister_quant_module",
    "utils",
]

def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule) on first use and keep it as a module attribute."""
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package module. Importing a submodule binds it as an attribute of the package; three submodules,
    ``plan``, ``calibration`` and ``sensitivity``, share their names with public functions, which must win (as
    they did when everything was imported eagerly, the functions last)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
