"""The names of the calibration methods, in a module without torch so that the command line lists them
without loading it. ``quantrewrite.calibration`` documents what each one does."""

from __future__ import annotations

__all__ = ["CALIB_METHODS", "DEFAULT_METHOD"]

CALIB_METHODS = ("auto", "max", "entropy", "percentile", "mse")
DEFAULT_METHOD = "auto"
