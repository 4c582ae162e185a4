"""TensorQuantizer: the module that calibrates, clips and (fake-)quantizes one tensor.

Forward order: disabled? return the input itself -> calibrating? feed the calibrator (and, with quantization
off, return the input itself) -> clip stage (learn_amax) -> quantize (when quantization is on) -> return.

A static amax is validated and turned into a scale once (a ``QuantGrid`` cached until the ``_amax`` buffer
changes: in-place writes, writes through ``.data``, ``load_state_dict``, ``.to()``; see ``_grid_cache``), so each
forward is one fused pass over the tensor. Caches are validated by content, not by version counters: a write
through ``.data`` bumps no counter.

Example:
    >>> quantizer = TensorQuantizer(QuantDescriptor(num_bits=8, amax=2.0))
    >>> quantizer(torch.tensor([0.01, 1.0, 3.0]))
    tensor([0.0157, 1.0000, 2.0000])
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from torch import nn

from quantrewrite._kernels import same_contents
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.nn.modules._grid_cache import GridCache, device_key
from quantrewrite.nn.modules.clip import Clip
from quantrewrite.nn.modules.tensor_quantizer_compat import (
    AmaxShapeError,
    PytorchQuantizationViews,
    adopted_axis,
)
from quantrewrite.tensor_quant import FP8_E4M3_MAX, QuantGrid, prepare_grid, quant_bounds, quantize_with_grid

__all__ = ["AmaxShapeError", "CalibrationError", "TensorQuantizer", "name_quantizers"]

logger = logging.getLogger(__name__)

_ONNX_FLAGS: tuple[Any, ...] | None = None


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without the two imports it runs per call (~1 us, on every forward):
    the flag objects are looked up once. Falls back to the public function if torch moves them."""
    global _ONNX_FLAGS
    if _ONNX_FLAGS is None:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            _ONNX_FLAGS = (GLOBALS, _flags)
        except ImportError:  # pragma: no cover - another torch layout
            _ONNX_FLAGS = ()
    if not _ONNX_FLAGS:
        return torch.onnx.is_in_onnx_export()  # pragma: no cover
    return bool(_ONNX_FLAGS[0].in_onnx_export or _ONNX_FLAGS[1]._is_onnx_exporting)


_SCRATCH = threading.local()


def _scratch_like(inputs: torch.Tensor) -> torch.Tensor:
    """This thread's reusable float32 tensor of ``inputs``' shape (never ``inputs`` itself)."""
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    key = tuple(inputs.shape)
    buffer = pool.get(key)
    stale = buffer is None or torch.is_inference_mode_enabled() != buffer.is_inference()
    if stale or buffer.data_ptr() == inputs.data_ptr():
        buffer = pool[key] = torch.empty(key, dtype=torch.float32)
        if len(pool) > 8:  # keep a few shapes only
            pool.pop(next(iter(pool)))
    return buffer


def _has_global_module_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


class CalibrationError(RuntimeError):
    """A calibrator cannot produce an amax (it saw no data, or was asked for the wrong method)."""


def _make_calibrator(desc: QuantDescriptor, owner: str | None):
    from quantrewrite import calib

    # Calibrators need an integer grid of >= 1 bit; FP8 calibrates as if 8-bit (amax is what matters).
    num_bits = 8 if desc.is_fp8 else max(desc.num_bits, 1)
    if desc.calib_method == "histogram":
        return calib.HistogramCalibrator(num_bits, desc.axis, desc.unsigned, owner=owner)
    return calib.MaxCalibrator(num_bits, desc.axis, desc.unsigned, owner=owner)


def reduce_amax(inputs: torch.Tensor, axis: tuple[int, ...] | None) -> torch.Tensor:
    """max |x| (float32) over every dim not in ``axis``, keeping dims so the result broadcasts against x.

    Computed as max(max x, -min x): no |x| temporary.
    """
    x = inputs.detach()
    if axis is None:
        if x.numel() == 0:
            return torch.zeros((), dtype=torch.float32, device=x.device)
        lo, hi = torch.aminmax(x)
        return torch.maximum(hi, -lo).float() + 0.0  # + 0.0: an all-zero tensor gives 0.0, not -0.0
    keep = {d % x.dim() for d in axis}
    reduce = [d for d in range(x.dim()) if d not in keep]
    if not reduce:
        return x.abs().float()
    if any(x.shape[d] == 0 for d in reduce):
        shape = [1 if d in reduce else size for d, size in enumerate(x.shape)]
        return torch.zeros(shape, dtype=torch.float32, device=x.device)
    return torch.maximum(x.amax(dim=reduce, keepdim=True), -x.amin(dim=reduce, keepdim=True)).float() + 0.0


class TensorQuantizer(PytorchQuantizationViews, nn.Module):
    """Quantize one tensor as its QuantDescriptor says, with calibration and optional learned clipping.

    Args:
        quant_desc: the descriptor (default: 8-bit per-tensor, max calibration).
        disabled: pass inputs through untouched (the forward returns the input object itself).
        if_quant: quantize in forward.
        if_clip: run the clip stage before quantizing. Default: on for learn_amax descriptors (as in
            pytorch-quantization), which is the only kind that has a clip stage.
        if_calib: feed inputs to the calibrator in forward.

    Raises:
        TypeError: quant_desc is not a QuantDescriptor.
        ValueError: if_clip=True for a descriptor without learn_amax.
    """

    # The shared-range group this quantizer belongs to (set by the rewrite; see quantrewrite.calib.groups).
    share_group: str | None = None
    _name: str | None = None  # see ``name``

    def __init__(self, quant_desc: QuantDescriptor | None = None, disabled: bool = False,
                 if_quant: bool = True, if_clip: bool | None = None, if_calib: bool = False):
        super().__init__()
        if quant_desc is None:
            quant_desc = QuantDescriptor()
        if not isinstance(quant_desc, QuantDescriptor):
            raise TypeError(f"quant_desc must be a QuantDescriptor, got {type(quant_desc).__name__}")
        if if_clip is None:
            if_clip = quant_desc.learn_amax
        if if_clip and not quant_desc.learn_amax:
            raise ValueError("if_clip=True needs a descriptor with learn_amax=True (only those have a clip stage)")
        self._descriptor = quant_desc
        self._disabled = disabled
        self._if_quant = if_quant
        self._if_clip = if_clip
        self._if_calib = if_calib
        self._scale: torch.Tensor | None = None
        # the static amax's grid, and (weight, copy of its contents, key, grid used, quantized weight): see
        # _static_grid, _cached_weight_forward
        self._grid_cache: GridCache | None = None
        self._weight_cache: tuple[nn.Parameter, torch.Tensor, tuple, QuantGrid | None, torch.Tensor] | None = None
        if quant_desc.amax is not None:
            self.register_buffer("_amax", torch.tensor(quant_desc.amax, dtype=torch.float32))
        if quant_desc.learn_amax:
            init = float(torch.tensor(quant_desc.amax).max()) if quant_desc.amax is not None else 1.0
            self.clip = Clip(-init, init, learn_min=True, learn_max=True)
        self._calibrator = _make_calibrator(quant_desc, None)

    # ------------------------------------------------------------------------------------------- naming
    @property
    def name(self) -> str | None:
        """The quantizer's qualified name in its model (``"layer1.0.conv1._input_quantizer"``), or None.

        A module does not know where it sits in a model, so the name is given: ``quantize_model`` and
        ``calibrate`` name every quantizer of the model they get (``name_quantizers``). Warnings and errors about
        the quantizer, and about its calibrator, start with it. Not part of the state_dict.
        """
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"TensorQuantizer.name: expected a str or None, got {type(value).__name__}")
        self._name = value
        if self._calibrator is not None:
            self._calibrator.owner = value

    @property
    def label(self) -> str:
        """How messages name this quantizer: its ``name``, or its descriptor when it has none."""
        return self._name or f"TensorQuantizer({self._descriptor})"

    # ---------------------------------------------------------------------------- descriptor properties
    @property
    def quant_desc(self) -> QuantDescriptor:
        """The descriptor this quantizer follows."""
        return self._descriptor

    def _replace_descriptor(self, **changes: Any) -> None:
        self._descriptor = self._descriptor.replace(**changes)
        self._grid_cache = None
        self._weight_cache = None

    @property
    def num_bits(self) -> int | tuple[int, int]:
        return self._descriptor.num_bits

    @num_bits.setter
    def num_bits(self, value: int | tuple[int, int]) -> None:
        self._replace_descriptor(num_bits=value)

    @property
    def unsigned(self) -> bool:
        return self._descriptor.unsigned

    @unsigned.setter
    def unsigned(self, value: bool) -> None:
        self._replace_descriptor(unsigned=value)

    @property
    def narrow_range(self) -> bool:
        return self._descriptor.narrow_range

    @narrow_range.setter
    def narrow_range(self, value: bool) -> None:
        self._replace_descriptor(narrow_range=value)

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
        """The scale (max_bound / amax) of the last real (fake_quant=False) quantization, else None."""
        return self._scale

    @property
    def maxbound(self) -> float:
        return FP8_E4M3_MAX if self._descriptor.is_fp8 else quant_bounds(self.num_bits, self.unsigned)[1]

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
        return self._buffers.get("_amax")

    @amax.setter
    def amax(self, value: Any) -> None:
        """Set the static range: creates the ``_amax`` buffer, or copies into it (same shape only)."""
        if value is None:
            raise ValueError(f"{self.label}: amax cannot be set to None; use reset_amax() to make the range dynamic")
        value = torch.as_tensor(value).detach().float()
        if not bool((value >= 0).all()) or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{self.label}: amax must be finite and >= 0, got {value}")
        current = self.amax
        if current is None:
            self.register_buffer("_amax", value.clone())
        elif current.shape != value.shape:
            raise AmaxShapeError(f"changing shape not allowed: amax has shape {list(current.shape)}, the new value "
                            f"{list(value.shape)}")
        else:
            with torch.no_grad():
                current.copy_(value)

    def reset_amax(self) -> None:
        """Forget the static range (back to dynamic) and the calibrator's statistics."""
        if "_amax" in self._buffers:
            del self._amax
        self._grid_cache = None
        self._weight_cache = None
        if self._calibrator is not None:
            self._calibrator.reset()

    @property
    def step_size(self) -> torch.Tensor | None:
        """amax / max_bound: the distance between two grid points; None when amax is dynamic."""
        return None if self.amax is None else self.amax / self.maxbound

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_grid_cache"] = None  # derived data (numpy views included): rebuilt on the next forward
        state["_weight_cache"] = None
        return state

    def _adopt_axis(self, axis: tuple[int, ...] | None) -> None:
        """Make the descriptor per-channel on ``axis`` (a checkpoint's or calibrate_weights' amax layout);
        histogram calibration is per-tensor only, so such a quantizer switches to max calibration."""
        if axis == self._descriptor.axis:
            return
        changes: dict[str, Any] = {"axis": axis}
        if axis is not None and self._descriptor.calib_method == "histogram":
            changes["calib_method"] = "max"
        self._replace_descriptor(**changes)
        self._calibrator = _make_calibrator(self._descriptor, self._name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "_amax"
        if key in state_dict and isinstance(state_dict[key], torch.Tensor):
            source = state_dict[key]
            # A checkpoint calibrated elsewhere: create the buffer where the checkpoint's tensor is (CPU
            # included; pytorch-quantization forced CUDA here), then the default loader copies into it.
            # A per-channel amax along another dim (pytorch-quantization's ConvTranspose weights: [1, C, 1, 1])
            # replaces the buffer and moves the descriptor's axis there, so forward and export agree with it.
            axis = adopted_axis(tuple(source.shape), self._descriptor.axis)
            if axis is not None:
                logger.info("%s_amax: per-channel on dim %d in the checkpoint; the quantizer's axis follows",
                            prefix, axis[0])
                self._adopt_axis(axis)
            if self.amax is None or (axis is not None and self.amax.shape != source.shape):
                self.register_buffer("_amax", torch.empty(source.shape, dtype=torch.float32,
                                                          device=source.device))
        scale_key = prefix + "_pre_quant_scale"
        if scale_key in state_dict and self.pre_quant_scale is None:
            source = state_dict[scale_key]
            self.register_buffer("_pre_quant_scale", torch.empty(source.shape, dtype=torch.float32,
                                                                 device=source.device))
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
        """Run the clip stage (learn_amax quantizers only); its bounds train."""
        if not hasattr(self, "clip"):
            raise ValueError("the clip stage exists only for learn_amax quantizers")
        self.clip.clip_value_min.requires_grad_(True)
        self.clip.clip_value_max.requires_grad_(True)
        self._if_clip = True

    def disable_clip(self) -> None:
        """Skip the clip stage; its bounds are frozen until enable_clip()."""
        if hasattr(self, "clip"):
            self.clip.clip_value_min.requires_grad_(False)
            self.clip.clip_value_max.requires_grad_(False)
        self._if_clip = False

    def init_learn_amax(self) -> None:
        """Start the learned clip bounds at [-amax, amax] of the calibrated range and enable the clip stage.

        A per-channel amax starts the (scalar) bounds at its max.
        """
        if not self.learn_amax:
            raise ValueError(f"{self.label}: init_learn_amax() needs a descriptor with learn_amax=True")
        if self.amax is None:
            raise CalibrationError(f"{self.label}: init_learn_amax() needs a calibrated amax; calibrate first")
        amax = self.amax.max().to(self.clip.clip_value_max.device)
        with torch.no_grad():
            self.clip.clip_value_min.copy_(-amax)
            self.clip.clip_value_max.copy_(amax)
        self.enable_clip()

    # ------------------------------------------------------------------------------------- calibration
    def load_calib_amax(self, method: str | None = None, *, strict: bool = True, **kwargs: Any):
        """Set amax from the calibrator's statistics.

        Max calibrators take no method (and no options); histogram calibrators need "max", "entropy",
        "percentile" or "mse" (keyword arguments go to ``compute_amax``, e.g. ``percentile=99.9``).

        Returns the new amax, or None when the calibrator saw no data and ``strict`` is False (amax is then
        left unchanged and a warning logged). With ``strict`` a calibrator that saw no data raises
        CalibrationError.

        Example:
            >>> quantizer.enable_calib(); quantizer.disable_quant()
            >>> for batch in data: quantizer(batch)
            >>> quantizer.load_calib_amax()            # max calibrator
            >>> quantizer.load_calib_amax("percentile", percentile=99.99)   # histogram calibrator
        """
        from quantrewrite import calib

        if self._calibrator is None:
            raise CalibrationError(f"{self.label}: this quantizer has no calibrator")
        if isinstance(self._calibrator, calib.MaxCalibrator):
            if method not in (None, "max") or kwargs:
                given = repr(method) if method not in (None, "max") else f"options {sorted(kwargs)}"
                raise ValueError(f"{self.label}: {given} given, but this quantizer uses a MaxCalibrator, which "
                                 "takes no method or options; use calib_method='histogram' for "
                                 "entropy/percentile/mse")
            amax = self._calibrator.compute_amax()
        else:
            if method is None:
                raise ValueError(f"{self.label}: a histogram calibrator needs a method: one of "
                                 f"{list(calib.histogram.METHODS)}")
            amax = self._calibrator.compute_amax(method, **kwargs)
        if amax is None:
            message = (f"{self.label}: its {type(self._calibrator).__name__} saw no data: no batch reached this "
                       "quantizer while calibration was on (an unused branch, or a quantizer that was disabled?)")
            if strict:
                raise CalibrationError(message + "; pass strict=False to keep its amax unchanged")
            logger.warning("%s; its amax is unchanged", message)
            return None
        device = self.amax.device if self.amax is not None else amax.device
        self.amax = amax.to(device)
        return self.amax

    # ------------------------------------------------------------------------------------------ forward
    def _static_grid(self, amax: torch.Tensor, inputs: torch.Tensor) -> QuantGrid:
        """The grid of the ``_amax`` buffer, rebuilt only when the buffer object, its contents (dtype, shape
        and layout included) or the input's device changes: the hot path does no validation, division or sync.

        The contents are compared with a copy taken when the grid was built (amax is small; ``GridCache``):
        version counters miss writes through ``amax.data``.
        """
        device = device_key(inputs)
        cache = self._grid_cache
        if cache is None or not cache.matches(amax, device):
            grid = self._make_grid(amax.to(inputs.device), inputs.device)
            cache = self._grid_cache = GridCache(amax, device, grid)
        return cache.grid

    def _make_grid(self, amax: torch.Tensor, device: torch.device) -> QuantGrid:
        desc = self._descriptor
        if desc.scale_amax is not None:
            amax = amax * desc.scale_amax
        return prepare_grid(amax, desc.num_bits, desc.unsigned, desc.narrow_range, device)

    def _grid(self, inputs: torch.Tensor) -> QuantGrid:
        if self._if_clip:
            amax = torch.maximum(-self.clip.clip_value_min, self.clip.clip_value_max).detach()
            return self._make_grid(amax.to(inputs.device), inputs.device)
        amax = self._buffers.get("_amax")
        if amax is not None:
            return self._static_grid(amax, inputs)
        return self._make_grid(reduce_amax(inputs, self._descriptor.axis), inputs.device)

    def _quant_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if _in_onnx_export():  # torch's own flag: emit QuantizeLinear/DequantizeLinear (export.py)
            from quantrewrite.export import quantize_for_export

            return quantize_for_export(self, inputs)
        grid = self._grid(inputs)
        if self._descriptor.fake_quant:
            return quantize_with_grid(inputs, grid, fake=True)
        self._scale = grid.scale
        return quantize_with_grid(inputs, grid, fake=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pre_quant_scale = self._buffers.get("_pre_quant_scale")
        if pre_quant_scale is not None:  # before everything, as in pytorch-quantization (see pre_quant_scale)
            inputs = inputs * pre_quant_scale.to(inputs.dtype)
        if self._disabled:
            return inputs
        if self._if_calib:
            self._calibrator.collect(inputs)
            if not self._if_quant:
                return inputs  # a calibration pass: later layers see float activations
        if self._if_clip:
            inputs = self.clip(inputs)
        if not self._if_quant:
            return inputs
        if type(inputs) is nn.Parameter and not self.training and not torch.is_grad_enabled():
            return self._cached_weight_forward(inputs)
        return self._quant_forward(inputs)

    def transient(self, inputs: torch.Tensor) -> torch.Tensor:
        """Quantize an input whose quantized value the caller uses once and drops (a Quant module's input).

        Same result as calling the quantizer. When nothing can keep the result (no autograd, no hooks on this
        quantizer) it is written into a per-thread scratch tensor reused by the next transient call of the same
        shape, instead of fresh memory: fresh activation-sized allocations page-fault and cost more than the
        quantization itself. The caller must be done with the result before its next transient call.
        """
        if (type(inputs) is not torch.Tensor  # fake / functional tensors of torch.export and torch.compile
                or torch.is_grad_enabled() or self._disabled or self._if_calib or self._if_clip or not self._if_quant
                or "_pre_quant_scale" in self._buffers
                or not self._descriptor.fake_quant or inputs.dtype != torch.float32 or not inputs.is_cpu
                or self._forward_hooks or self._forward_pre_hooks or _has_global_module_hooks()
                or _in_onnx_export()):
            return self(inputs)
        scratch = _scratch_like(inputs)
        return quantize_with_grid(inputs, self._grid(inputs), fake=True, out=scratch)

    def _cached_weight_forward(self, weight: nn.Parameter) -> torch.Tensor:
        """Eval-mode inference reuses the quantized weight while nothing it depends on changed.

        Valid while the weight is the same Parameter with the same bytes (compared with a copy taken when the
        result was computed: one read pass, cheaper than quantizing and allocating again, and exact whatever
        wrote to the weight, ``weight.data`` included), the static grid is the same (``_static_grid`` checks the
        amax contents), and dtype, device, descriptor and inference mode are unchanged. The price is one extra
        copy of each quantized weight in memory. Training mode and grad-enabled forwards always recompute (they
        need the autograd graph).
        """
        if _in_onnx_export():  # an exporter's output (traced, fake, or of other arithmetic) is no cache entry
            return self._quant_forward(weight)
        amax = self._buffers.get("_amax")
        grid = None if amax is None else self._static_grid(amax, weight)
        key = (weight.dtype, weight.device, id(self._descriptor), torch.is_inference_mode_enabled())
        cache = self._weight_cache
        if (cache is not None and cache[0] is weight and cache[2] == key and cache[3] is grid
                and same_contents(weight.detach(), cache[1])):
            return cache[4]
        outputs = self._quant_forward(weight)
        self._weight_cache = (weight, weight.detach().clone(), key, grid, outputs)
        return outputs

    # ----------------------------------------------------------------------------------------- printing
    def _amax_text(self) -> str:
        amax = self.amax
        if amax is None:
            return "dynamic"
        # + 0.0 prints an amax of -0.0 (max(x_max, -x_min) of an all-zero channel) as 0.0000
        if amax.numel() == 1:
            return f"{amax.item() + 0.0:.4f}"
        return f"[{amax.min().item() + 0.0:.4f}, {amax.max().item() + 0.0:.4f}]({amax.numel()})"

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
        if "_pre_quant_scale" in self._buffers:
            parts.append("pre_quant_scale")
        if desc.learn_amax:
            parts.append("learned")
        if self._calibrator is not None:
            parts.append(f"calibrator={type(self._calibrator).__name__}")
        parts.extend(flag for flag, on in (("quant", self._if_quant), ("clip", self._if_clip),
                                           ("calib", self._if_calib)) if on)
        return " ".join(parts)


def name_quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    """Give every TensorQuantizer of ``model`` its qualified name (``TensorQuantizer.name``, which its messages
    and its calibrator's start with) and return them by name, in module order. A quantizer reached under two
    names keeps the first, as ``named_modules`` lists it."""
    found = {}
    for qualified, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            module.name = qualified or "<root>"
            found[qualified] = module
    return found
