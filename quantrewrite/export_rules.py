"""What stops a quantizer from becoming a standard ONNX QuantizeLinear/DequantizeLinear pair: the one place
these rules are written.

``export_onnx`` applies them to every quantizer its example forward reaches, ``quantize_for_export`` to the
quantizer being traced, and ``quantrewrite quantize --onnx`` to the quantized model before calibrating
(``before_calibration=True``: only the rules about the quantizer's settings; not "uncalibrated", which
calibration is about to fix), so that a config the exporter would refuse is refused before any batch runs.
That check covers every enabled quantizer, while ``export_onnx`` refuses only those its example forward
reaches (it notes the others): a quantizer on a branch the example never takes is refused earlier.

Example:
    >>> problems = export_problems(quantize_model(model, "w4a8"), opset=17, before_calibration=True)
    >>> print(problems_message(problems))  # one line per quantizer and reason
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from quantrewrite.export_fp8 import FP8_MIN_OPSET
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["emits", "export_problems", "problems_message", "quantizer_problems"]


def emits(quantizer: TensorQuantizer) -> bool:
    """Whether the quantizer becomes a Q/DQ pair in an export (enabled, with quantization on)."""
    return quantizer.is_enabled and quantizer.is_quant_enabled


def quantizer_problems(quantizer: TensorQuantizer, *, opset: int | None = None,
                       before_calibration: bool = False) -> list[str]:
    """Why this (enabled, quantizing) quantizer cannot become a standard int8/uint8 (or FP8) Q/DQ pair.

    Args:
        quantizer: the quantizer.
        opset: the opset the file will have; None skips the rules that depend on it (FP8 needs >= 19).
        before_calibration: the quantizer is about to be calibrated: only the rules about its settings apply
            (not "amax is None" nor "calibration is still on", which calibration changes).

    Returns:
        One sentence per problem, each saying what to change; empty when it exports.
    """
    problems = []
    desc = quantizer.quant_desc
    if desc.is_fp8:  # float8e4m3fn Q/DQ (export_fp8.py)
        if opset is not None and opset < FP8_MIN_OPSET:
            problems.append(f"num_bits=(4, 3): FP8 Q/DQ (float8e4m3fn) needs opset >= {FP8_MIN_OPSET}, got {opset}: "
                            f"pass opset={FP8_MIN_OPSET}")
    elif desc.num_bits != 8:
        problems.append(f"num_bits={desc.num_bits}: ONNX Q/DQ up to opset 20 is 8-bit only: disable it or use "
                        "num_bits: 8")
    if desc.narrow_range and not desc.unsigned and not desc.is_fp8:
        problems.append("narrow_range=True: torch's exporters accept only the full range (-128, 127): set "
                        "narrow_range: false")
    if not desc.fake_quant:
        problems.append("fake_quant=False (integer outputs) has no Q/DQ form: use a fake-quant descriptor")
    if desc.axis is not None and len(desc.axis) > 1:
        problems.append(f"axis={desc.axis}: ONNX per-axis scales follow one axis only")
    if before_calibration:  # calibration is about to set amax and turn itself off
        return problems
    clip_amax = quantizer.is_clip_enabled and hasattr(quantizer, "clip")
    if quantizer.amax is None and not clip_amax:
        problems.append("amax is None (uncalibrated, or a dynamic range): calibrate first or disable it")
    if quantizer.is_calib_enabled:
        problems.append("calibration is still on: finish calibration (load_calib_amax) first")
    return problems


def export_problems(model: nn.Module, *, opset: int | None = None,
                    before_calibration: bool = False) -> dict[str, list[str]]:
    """Every enabled quantizer of ``model`` that cannot be exported, with the reasons; empty when all can.

    Args:
        model: a quantized model.
        opset: as in ``quantizer_problems``.
        before_calibration: as in ``quantizer_problems``: check a model that is about to be calibrated.
    """
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and emits(module):
            problems = quantizer_problems(module, opset=opset, before_calibration=before_calibration)
            if problems:
                found[name or "<root>"] = problems
    return found


def problems_message(problems: Mapping[str, list[str]]) -> str:
    """A header line, then one line per quantizer and problem: ``  name: problem``."""
    lines = [f"cannot export {len(problems)} quantizer(s) as ONNX QuantizeLinear/DequantizeLinear:"]
    lines += [f"  {name}: {reason}" for name, reasons in problems.items() for reason in reasons]
    return "\n".join(lines)
