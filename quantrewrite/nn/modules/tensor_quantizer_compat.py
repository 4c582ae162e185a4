"""What pytorch-quantization code reads from a TensorQuantizer beyond the public API.

``TensorQuantizer`` keeps every setting in its QuantDescriptor; migrated code that reads the original's private
attributes (``_num_bits``, ``_axis``, ``_unsigned``, ...) gets read-only views of the descriptor here (write
through the public setters, e.g. ``quantizer.num_bits = 4``). ``_get_amax(inputs)`` returns the amax the next
forward would use, and ``pre_quant_scale`` is the per-channel multiplier applied before quantization
(SmoothQuant-style), stored as the ``_pre_quant_scale`` buffer as in the original's checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["AmaxShapeError", "PytorchQuantizationViews", "adopted_axis"]


class AmaxShapeError(TypeError, RuntimeError):
    """A new amax (or pre_quant_scale) has another shape than the buffer it would overwrite.

    A TypeError as in early pytorch-quantization and a RuntimeError as in its later versions: both catch it.
    """


def adopted_axis(amax_shape: tuple[int, ...], axis: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The single per-channel dim of a full-rank checkpoint amax (e.g. 1 for [1, C, 1, 1]) when it differs from
    ``axis``; None when the shape agrees with ``axis`` or says nothing clear (per-tensor, several dims)."""
    varying = [d for d, size in enumerate(amax_shape) if size != 1]
    if len(varying) != 1 or axis is None or len(axis) != 1:
        return None
    ndim = len(amax_shape)
    return (varying[0],) if axis[0] % ndim != varying[0] else None


class PytorchQuantizationViews:
    """Read-only views with pytorch-quantization's private names, and ``pre_quant_scale``."""

    _enable_onnx_export = False  # set by quantrewrite.enable_onnx_export(); export needs no switch

    @property
    def _num_bits(self) -> Any:
        return self.quant_desc.num_bits

    @property
    def _axis(self) -> Any:
        return self.quant_desc.axis  # an AxisTuple: equal to the int too when it holds one dim

    @property
    def _unsigned(self) -> bool:
        return self.quant_desc.unsigned

    @property
    def _narrow_range(self) -> bool:
        return self.quant_desc.narrow_range

    @property
    def _fake_quant(self) -> bool:
        return self.quant_desc.fake_quant

    @property
    def _scale_amax(self) -> float | None:
        return self.quant_desc.scale_amax

    @property
    def _learn_amax(self) -> bool:
        return self.quant_desc.learn_amax

    def _get_amax(self, inputs: torch.Tensor) -> torch.Tensor:
        """The amax (float32, scale_amax applied) the next forward would quantize ``inputs`` with."""
        if self.is_clip_enabled and hasattr(self, "clip"):
            amax = torch.maximum(-self.clip.clip_value_min, self.clip.clip_value_max).detach()
        elif self.amax is not None:
            amax = self.amax.detach()
        else:
            from quantrewrite.nn.modules.tensor_quantizer import reduce_amax

            amax = reduce_amax(inputs, self.quant_desc.axis)
        if self.quant_desc.scale_amax is not None:
            amax = amax * self.quant_desc.scale_amax
        return amax.float()

    @property
    def pre_quant_scale(self) -> torch.Tensor | None:
        """Multiplier applied to the input before anything else (calibration included); None when unset.

        Applied even when the quantizer is disabled, as in pytorch-quantization: it belongs to the model's math
        (the matching weights were divided by it). Exported as a Mul in front of the Q/DQ pair.
        """
        return self._buffers.get("_pre_quant_scale")

    @pre_quant_scale.setter
    def pre_quant_scale(self, value: Any) -> None:
        if value is None:
            raise ValueError("pre_quant_scale cannot be set to None; delete the _pre_quant_scale buffer instead")
        value = torch.as_tensor(value).detach().float()
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"pre_quant_scale must be finite, got {value}")
        current = self.pre_quant_scale
        if current is None:
            self.register_buffer("_pre_quant_scale", value.clone())
        elif current.shape != value.shape:
            raise AmaxShapeError(f"changing shape not allowed: pre_quant_scale has shape {list(current.shape)}, "
                                 f"the new value {list(value.shape)}")
        else:
            with torch.no_grad():
                current.copy_(value)
