"""quantrewrite: fake quantization for PyTorch models, from float to a verified int8 deployment.

The public verbs and types. The pytorch-quantization import paths live beside them:
``from quantrewrite import nn as quant_nn``, ``from quantrewrite import calib``,
``from quantrewrite.tensor_quant import QuantDescriptor``, ``quantrewrite.quant_modules.initialize()``,
``quantrewrite.enable_onnx_export()`` (see MIGRATION.md).
"""

from quantrewrite import calib, nn, optim, quant_modules, tensor_quant, utils
from quantrewrite.api import (
    RewriteError,
    disable_quantizers,
    enable_quantizers,
    list_quantizers,
    plan,
    quantize_model,
    summary,
)
from quantrewrite.calibration import CalibrationResult, calibrate, calibration, load_calib_amax
from quantrewrite.config import QuantConfig, QuantConfigError, available_presets, load_config
from quantrewrite.descriptor import QuantDescriptor, QuantDescriptorError
from quantrewrite.export import ExportError, ExportReport, export_onnx
from quantrewrite.nn import TensorQuantizer
from quantrewrite.plan import Plan, PlanEntry
from quantrewrite.quant_modules import deactivate, enable_onnx_export, initialize
from quantrewrite.recipe import RecipeError, load_recipe, save_recipe
from quantrewrite.registry import (
    ArgSpec,
    RegistryError,
    register_quant_function,
    register_quant_module,
    unregister_quant_function,
    unregister_quant_module,
)

__version__ = "0.1.0"

__all__ = [
    "ArgSpec",
    "CalibrationResult",
    "ExportError",
    "ExportReport",
    "Plan",
    "PlanEntry",
    "QuantConfig",
    "QuantConfigError",
    "QuantDescriptor",
    "QuantDescriptorError",
    "RecipeError",
    "RegistryError",
    "RewriteError",
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
    "initialize",
    "list_quantizers",
    "load_calib_amax",
    "load_config",
    "load_recipe",
    "nn",
    "optim",
    "plan",
    "quant_modules",
    "quantize_model",
    "register_quant_function",
    "register_quant_module",
    "save_recipe",
    "summary",
    "tensor_quant",
    "unregister_quant_function",
    "unregister_quant_module",
    "utils",
]
