"""TensorQuantizer: the module that calibrates, clips and (fake-)quantizes one tensor.

Forward order: disabled? return the input unchanged -> calibrating? feed the calibrator -> clip stage
(learn_amax) -> quantize (when quantization is on) -> return.

Example:
    >>> quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, amax=2.0))
    >>> quantizer(torch.tensor([0.01, 1.0, 3.0]))
    tensor([0.0157, 1.0000, 2.0000])
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules.clip import Clip
from quantrewrite.tensor_quant import fake_e4m3_quant, fake_tensor_quant, quant_bounds, tensor_quant

__all__ = ["CalibrationError", "TensorQuantizer"]

logger = logging.getLogger(__name__)


class CalibrationError(RuntimeError):
    """A calibrator cannot produce an amax (it saw no data, or was asked for the wrong method)."""


def _make_calibrator(desc: QuantDescriptor):
    from quantrewrite import calib

    if desc.calib_method == "histogram":
        return calib.HistogramCalibrator(desc.num_bits, desc.axis, desc.unsigned)
    return calib.MaxCalibrator(desc.num_bits if not desc.is_fp8 else 8, desc.axis, desc.unsigned)


def reduce_amax(inputs: torch.Tensor, axis: tuple[int, ...] | None) -> torch.Tensor:
    """max |x| over every dim not in ``axis``, keeping dims (so the result broadcasts against x)."""
    x = inputs.detach()
    if axis is None:
        return x.abs().max().float()
    keep = {d % x.dim() for d in axis}
    reduce = [d for d in range(x.dim()) if d not in keep]
    return x.abs().amax(dim=reduce, keepdim=True).float() if reduce else x.abs().float()


class TensorQuantizer(nn.Module):
    """Quantize one tensor as its QuantDescriptor says, with calibration and optional learned clipping.

    Args:
        quant_desc: the descriptor (default: 8-bit per-tensor, max calibration).
        disabled: pass inputs through untouched.
        if_quant: quantize in forward.
        if_clip: run the clip stage (learn_amax) before quantizing.
        if_calib: feed inputs to the calibrator in forward.
    """

    def __init__(self, quant_desc: QuantDescriptor = QuantDescriptor(), disabled: bool = False,
                 if_quant: bool = True, if_clip: bool = False, if_calib: bool = False):
        super().__init__()
        if not isinstance(quant_desc, QuantDescriptor):
            raise TypeError(f"quant_desc must be a QuantDescriptor, got {type(quant_desc).__name__}")
        self._descriptor = quant_desc
        self._disabled = disabled
        self._if_quant = if_quant
        self._if_clip = False
        self._if_calib = if_calib
        self._scale: torch.Tensor | None = None
        if quant_desc.amax is not None:
            self.register_buffer("_amax", torch.tensor(quant_desc.amax, dtype=torch.float32))
        if quant_desc.learn_amax:
            init = quant_desc.amax if quant_desc.amax is not None else 1.0
            self.clip = Clip(-init, init, learn_min=True, learn_max=True)
        self._if_clip = if_clip
        self._calibrator = _make_calibrator(quant_desc)

    # ---------------------------------------------------------------------------- descriptor properties
    @property
    def quant_desc(self) -> QuantDescriptor:
        """The descriptor this quantizer was built from."""
        return self._descriptor

    @property
    def num_bits(self):
        return self._descriptor.num_bits

    @property
    def unsigned(self) -> bool:
        return self._descriptor.unsigned

    @property
    def narrow_range(self) -> bool:
        return self._descriptor.narrow_range

    @property
    def axis(self) -> tuple[int, ...] | None:
        return self._descriptor.axis

    @property
    def fake_quant(self) -> bool:
        return self._descriptor.fake_quant

    @property
    def scale_amax(self) -> float | None:
        return self._descriptor.scale_amax

    @property
    def learn_amax(self) -> bool:
        return self._descriptor.learn_amax

    @property
    def calibrator(self):
        return self._calibrator

    @property
    def scale(self) -> torch.Tensor | None:
        """The scale of the last real (fake_quant=False) quantization."""
        return self._scale

    @property
    def maxbound(self) -> float:
        return 448.0 if self._descriptor.is_fp8 else quant_bounds(self.num_bits, self.unsigned)[1]

    @property
    def is_enabled(self) -> bool:
        return not self._disabled

    @property
    def is_quant_enabled(self) -> bool:
        return self._if_quant

    @property
    def is_calib_enabled(self) -> bool:
        return self._if_calib

    @property
    def is_clip_enabled(self) -> bool:
        return self._if_clip

    # ------------------------------------------------------------------------------------------- amax
    @property
    def amax(self) -> torch.Tensor | None:
        """The static range, or None when the range is dynamic (computed per batch)."""
        return getattr(self, "_amax", None)

    @amax.setter
    def amax(self, value: Any) -> None:
        if value is None:
            raise ValueError("amax cannot be set to None; use reset_amax() to make the range dynamic")
        value = torch.as_tensor(value).detach().float()
        if torch.any(value < 0) or not torch.all(torch.isfinite(value)):
            raise ValueError(f"amax must be finite and >= 0, got {value}")
        current = self.amax
        if current is None:
            self.register_buffer("_amax", value.clone())
        elif current.shape != value.shape:
            raise RuntimeError(f"changing shape not allowed: amax has shape {list(current.shape)}, "
                               f"the new value {list(value.shape)}")
        else:
            current.copy_(value)

    def reset_amax(self) -> None:
        """Forget the static range (back to dynamic) and the calibrator's statistics."""
        if hasattr(self, "_amax"):
            del self._amax
        if self._calibrator is not None:
            self._calibrator.reset()

    @property
    def step_size(self) -> torch.Tensor | None:
        """amax / max_bound: the distance between two grid points; None when amax is dynamic."""
        return None if self.amax is None else self.amax / self.maxbound

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "_amax"
        if key in state_dict and self.amax is None:
            # A checkpoint calibrated elsewhere: create the buffer where the tensor is (CPU included).
            self.register_buffer("_amax", torch.empty_like(state_dict[key], dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ----------------------------------------------------------------------------------------- switches
    def enable(self) -> None:
        self._disabled = False

    def disable(self) -> None:
        self._disabled = True

    def enable_quant(self) -> None:
        self._if_quant = True

    def disable_quant(self) -> None:
        self._if_quant = False

    def enable_calib(self) -> None:
        if self._calibrator is None:
            raise CalibrationError("this quantizer has no calibrator")
        self._if_calib = True

    def disable_calib(self) -> None:
        self._if_calib = False

    def enable_clip(self) -> None:
        if not hasattr(self, "clip"):
            raise ValueError("the clip stage exists only for learn_amax quantizers")
        self._if_clip = True

    def disable_clip(self) -> None:
        self._if_clip = False

    def init_learn_amax(self) -> None:
        """Start the learned clip bounds at [-amax, amax] of the calibrated range and enable the clip stage."""
        if not self.learn_amax:
            raise ValueError("init_learn_amax() needs a descriptor with learn_amax=True")
        if self.amax is None:
            raise CalibrationError("init_learn_amax() needs a calibrated amax; calibrate first")
        amax = self.amax.max().to(self.clip.clip_value_max.device)
        with torch.no_grad():
            self.clip.clip_value_min.copy_(-amax)
            self.clip.clip_value_max.copy_(amax)
        self.enable_clip()

    # ------------------------------------------------------------------------------------- calibration
    def load_calib_amax(self, method: str | None = None, *, strict: bool = True, **kwargs: Any):
        """Set amax from the calibrator's statistics.

        Max calibrators take no method; histogram calibrators need "entropy", "percentile" or "mse"
        (keyword arguments go to ``compute_amax``, e.g. ``percentile=99.9``).

        Returns the new amax, or None when the calibrator saw no data and ``strict`` is False (amax is then
        left unchanged). With ``strict`` a calibrator that saw no data raises CalibrationError.
        """
        from quantrewrite import calib

        if self._calibrator is None:
            raise CalibrationError("this quantizer has no calibrator")
        if isinstance(self._calibrator, calib.MaxCalibrator):
            if method not in (None, "max"):
                raise ValueError(f"method {method!r} given, but this quantizer uses a MaxCalibrator, which "
                                 "takes no method")
            amax = self._calibrator.compute_amax()
        else:
            if method is None:
                raise ValueError("a histogram calibrator needs a method: 'entropy', 'percentile' or 'mse'")
            amax = self._calibrator.compute_amax(method, **kwargs)
        if amax is None:
            message = ("calibrator saw no data: no batch reached this quantizer while calibration was on "
                       "(an unused branch?); its amax is unchanged")
            if strict:
                raise CalibrationError(message)
            logger.warning(message)
            return None
        device = self.amax.device if self.amax is not None else amax.device
        self.amax = amax.to(device)
        return self.amax

    # ------------------------------------------------------------------------------------------ forward
    def _current_amax(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._if_clip and hasattr(self, "clip"):
            amax = torch.maximum(-self.clip.clip_value_min, self.clip.clip_value_max).detach()
        elif self.amax is not None:
            amax = self.amax
        else:
            amax = reduce_amax(inputs, self.axis)
        if self.scale_amax is not None:
            amax = amax * self.scale_amax
        return amax.to(inputs.device)

    def _quant_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # torch's own flag: emit QuantizeLinear/DequantizeLinear (export.py)
            from quantrewrite.export import quantize_for_export

            return quantize_for_export(self, inputs)
        amax = self._current_amax(inputs)
        desc = self._descriptor
        if desc.is_fp8:
            return fake_e4m3_quant(inputs, amax)
        if desc.fake_quant:
            return fake_tensor_quant(inputs, amax, desc.num_bits, desc.unsigned, desc.narrow_range)
        outputs, self._scale = tensor_quant(inputs, amax, desc.num_bits, desc.unsigned, desc.narrow_range)
        return outputs

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._disabled:
            return inputs
        outputs = inputs
        if self._if_calib:
            self._calibrator.collect(inputs)
        if self._if_clip:
            outputs = self.clip(outputs)
        if self._if_quant:
            outputs = self._quant_forward(outputs)
        return outputs

    # ----------------------------------------------------------------------------------------- printing
    def _amax_text(self) -> str:
        amax = self.amax
        if amax is None:
            return "dynamic"
        if amax.numel() == 1:
            return f"{amax.item():.4f}"
        return f"[{amax.min().item():.4f}, {amax.max().item():.4f}]({amax.numel()})"

    def extra_repr(self) -> str:
        if self._disabled:
            return "disabled"
        desc = self._descriptor
        parts = ["fp8e4m3" if desc.is_fp8 else f"{desc.num_bits}bit", "fake" if desc.fake_quant else "real"]
        if desc.axis is None:
            parts.append("per-tensor")
        else:
            parts.append(f"axis={desc.axis[0] if len(desc.axis) == 1 else desc.axis}")
        if desc.unsigned:
            parts.append("unsigned")
        if desc.narrow_range:
            parts.append("narrow")
        parts.append(f"amax={self._amax_text()}")
        if desc.scale_amax is not None:
            parts.append(f"*{desc.scale_amax}")
        if desc.learn_amax:
            parts.append("learned")
        if self._calibrator is not None:
            parts.append(f"calibrator={type(self._calibrator).__name__}")
        parts.extend(flag for flag, on in (("quant", self._if_quant), ("clip", self._if_clip),
                                           ("calib", self._if_calib)) if on)
        return " ".join(parts)
