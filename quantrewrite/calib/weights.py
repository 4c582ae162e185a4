"""``calibrate_weights``: set every Quant module's weight amax straight from its weight, no data needed.

pytorch-quantization's helper, for weight ranges picked by a histogram method (per channel by default)
instead of the weight quantizer's own max calibration.

Example:
    >>> qmodel = quantrewrite.quantize_model(model, "int8_default")
    >>> calib.calibrate_weights(qmodel, method="percentile", percentile=99.99)
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quantrewrite.calib.histogram import HistogramCalibrator

__all__ = ["UnknownWeightMethodError", "calibrate_weights"]

logger = logging.getLogger(__name__)

WEIGHT_METHODS = ("max", "mse", "percentile")


class UnknownWeightMethodError(ValueError, TypeError):
    """``method`` is not one of max, mse, percentile (a TypeError in pytorch-quantization)."""


def _channel_axis(module: nn.Module) -> int:
    """The quantizer's own single axis when it is per-channel, else 0 (the output channel of conv and linear
    weights; the input channel of transposed-convolution weights, quantrewrite's convention)."""
    axis = module.weight_quantizer.axis
    return axis[0] % module.weight.dim() if axis is not None and len(axis) == 1 else 0


def _histogram_amax(values: torch.Tensor, method: str, num_bits: int, unsigned: bool, percentile: float,
                    num_bins: int) -> torch.Tensor:
    calibrator = HistogramCalibrator(num_bits, None, unsigned, num_bins=num_bins)
    calibrator.collect(values)
    kwargs = {"percentile": percentile} if method == "percentile" else {"start_bin": min(128, num_bins - 1)}
    return calibrator.compute_amax(method, **kwargs).cpu()


def calibrate_weights(model: nn.Module, method: str = "percentile", perchannel: bool = True,
                      percentile: float = 99.99, num_bins: int = 2048) -> list[str]:
    """Set the weight amax of every module that has ``weight`` and ``weight_quantizer`` from its weight.

    Args:
        model: the quantized model (changed in place).
        method: "max", "mse" or "percentile" (histogram of |w| with ``num_bins`` bins over [0, max |w|]).
            The weight quantizer's own ``calib_method`` is not consulted.
        perchannel: one amax per channel (on the quantizer's axis when it has one, else axis 0); else one per
            tensor. The quantizer's descriptor axis follows, so forward and export agree with the new amax.
        percentile: for "percentile", in [0, 100].
        num_bins: histogram bins per channel.

    Returns:
        The names of the modules calibrated.

    Raises:
        UnknownWeightMethodError: for another method (a ValueError and a TypeError).
    """
    if method not in WEIGHT_METHODS:
        raise UnknownWeightMethodError(f"calibrate_weights: unknown method {method!r}; expected one of "
                                       f"{list(WEIGHT_METHODS)}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"calibrate_weights: num_bins must be an int >= 2, got {num_bins!r}")
    done = []
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        weight = getattr(module, "weight", None)
        if quantizer is None or not isinstance(weight, torch.Tensor):
            continue
        weight = weight.detach().float().cpu()
        num_bits = 8 if quantizer.quant_desc.is_fp8 else max(int(quantizer.num_bits), 1)
        axis = _channel_axis(module) if perchannel else None
        slices = [weight] if axis is None else list(weight.unbind(axis))
        if method == "max":
            amaxes = [s.abs().max() if s.numel() else torch.tensor(0.0) for s in slices]
        else:
            amaxes = [_histogram_amax(s, method, num_bits, quantizer.unsigned, percentile, num_bins) for s in slices]
        amax = torch.stack(amaxes).float()
        if axis is None:
            amax = amax.reshape(())
        else:
            shape = [1] * weight.dim()
            shape[axis] = weight.shape[axis]
            amax = amax.reshape(shape)
        quantizer._adopt_axis(None if axis is None else (axis,))
        if quantizer.amax is not None and quantizer.amax.shape != amax.shape:
            quantizer.reset_amax()
        device = module.weight.device
        quantizer.amax = amax.to(device)
        logger.info("calibrate_weights: %s amax by %s, shape %s", name or "<root>", method, list(amax.shape))
        done.append(name)
    return done
