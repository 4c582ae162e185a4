"""Calibrators: collect statistics of tensors during calibration, then propose an amax.

``MaxCalibrator`` keeps the running max of |x| (per tensor or per channel); ``HistogramCalibrator`` keeps an
exact histogram of |x| and picks amax by entropy (KL divergence), mse or percentile.

Example:
    >>> import torch
    >>> from quantrewrite import calib
    >>> c = calib.HistogramCalibrator()
    >>> c.collect(torch.randn(1000).relu())
    >>> amax = c.compute_amax("percentile", percentile=99.9)
"""

from __future__ import annotations

from quantrewrite.calib.calibrator import _Calibrator
from quantrewrite.calib.histogram import HistogramCalibrator
from quantrewrite.calib.max import MaxCalibrator
from quantrewrite.calib.weights import calibrate_weights

__all__ = ["HistogramCalibrator", "MaxCalibrator", "_Calibrator", "calibrate_weights"]
