"""Calibration: run data through a quantized model to find every quantizer's range.

``calibrate(model, data)`` does the whole job; ``with calibration(model): ...`` plus
``load_calib_amax(model)`` is the same for hand-written loops.

Example:
    >>> result = calibrate(qmodel, loader, method="entropy")
    >>> result.calibrated[:2], result.no_data
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantrewrite import calib, range_search
from quantrewrite.calib import distributed, groups
from quantrewrite.methods import CALIB_METHODS, DEFAULT_METHOD
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer, name_quantizers
from quantrewrite.output_metrics import feed_batch

__all__ = ["AUTO_SCORE_BATCHES", "CALIB_METHODS", "DEFAULT_METHOD", "HISTOGRAM_METHODS", "CalibrationResult",
           "calibrate", "calibration", "load_calib_amax"]

logger = logging.getLogger(__name__)

# The methods ``calibrate`` accepts (CALIB_METHODS, in quantrewrite/methods.py: the one list every other place,
# the CLI's --method and the docs, derives from). Max calibrators always give the max; the method decides how
# histogram calibrators pick amax. "auto" (the default) tries max, percentiles, mse and entropy per quantizer
# and keeps the one that least disturbs the consuming layer (quantrewrite/range_search.py).
HISTOGRAM_METHODS = CALIB_METHODS  # the former name, kept for existing imports
AUTO_SCORE_BATCHES = 32  # method "auto" scores its candidates on the first (at most) 32 calibration batches


@dataclass
class CalibrationResult:
    """What a calibration did.

    Attributes:
        calibrated: names of the quantizers that got an amax.
        no_data: names of enabled quantizers whose calibrator saw no batch (their amax is unchanged).
        skipped: names of quantizers left alone (disabled, or without a calibrator).
        method: the method used for histogram calibrators.
        choices: with method "auto", the candidate each histogram quantizer kept (e.g. "percentile 99.99").
        batches: the number of batches run.
        seconds: wall time of the whole call.
    """

    calibrated: list[str] = field(default_factory=list)
    no_data: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    method: str = DEFAULT_METHOD
    choices: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def _calibratable(model: nn.Module) -> tuple[dict[str, TensorQuantizer], list[str]]:
    """The enabled quantizers with a calibrator, and the names of the others; every quantizer gets its name
    (its messages and its calibrator's name it)."""
    chosen, skipped = {}, []
    for name, module in name_quantizers(model).items():
        if module.is_enabled and module.calibrator is not None:
            chosen[name] = module
        else:
            skipped.append(name)
    return chosen, skipped


@contextlib.contextmanager
def calibration(model: nn.Module) -> Iterator[dict[str, TensorQuantizer]]:
    """Collect statistics instead of quantizing, inside the block, for every enabled quantizer.

    Each calibrator starts afresh (statistics of an earlier calibration are dropped).
    On exit calibration is turned off and quantization back on, whatever happened inside; the ranges are
    set by ``load_calib_amax(model, ...)`` afterwards. Yields the quantizers that collect.
    """
    quantizers, _ = _calibratable(model)
    previous = {name: q.is_quant_enabled for name, q in quantizers.items()}
    for quantizer in quantizers.values():
        quantizer.calibrator.reset()
        quantizer.disable_quant()
        quantizer.enable_calib()
    try:
        yield quantizers
    finally:
        for name, quantizer in quantizers.items():
            quantizer.disable_calib()
            if previous[name]:
                quantizer.enable_quant()


def _check_method(method: str) -> None:
    if method not in CALIB_METHODS:
        close = difflib.get_close_matches(str(method), CALIB_METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"method: expected one of {list(CALIB_METHODS)}, got {method!r}{hint}")


def load_calib_amax(model: nn.Module, method: str = DEFAULT_METHOD, *, percentile: float = 99.99,
                    data: Sequence[Any] | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
                    **kwargs: Any) -> CalibrationResult:
    """Set every enabled quantizer's amax from its calibrator.

    Max calibrators give the max; histogram calibrators use ``method`` (one of ``CALIB_METHODS``).
    When ``torch.distributed`` is initialised, the ranks first combine their statistics, so every rank
    ends with the same amax; then the members of each shared-range group get the group's merged statistics,
    so they end with one amax (see ``quantrewrite.calib.groups``). Quantizers whose calibrator saw no data
    keep their amax and are named in one warning.

    Method "auto" scores its candidates on ``data`` (a few batches, fed with ``forward`` as in
    ``calibrate``); without ``data`` it keeps each quantizer's candidate with the least quantization error
    on the histogram itself.
    """
    result = _load_calib_amax(model, method, percentile=percentile, data=data, forward=forward, **kwargs)
    _warn_no_data(result, stacklevel=2)
    return result


def _warn_no_data(result: CalibrationResult, stacklevel: int) -> None:
    """One warning naming the quantizers that saw no data, pointing at the caller ``stacklevel`` frames up from
    the function that calls this one (the user's line, not quantrewrite's)."""
    if result.no_data:
        warnings.warn(f"{len(result.no_data)} quantizer(s) saw no calibration data and keep their amax "
                      f"(dynamic if never set): {', '.join(result.no_data)}", UserWarning, stacklevel=stacklevel + 1)


def _load_calib_amax(model: nn.Module, method: str, *, percentile: float, data: Sequence[Any] | None,
                     forward: Callable[[nn.Module, Any], Any] | None, **kwargs: Any) -> CalibrationResult:
    """``load_calib_amax`` without its warning."""
    _check_method(method)
    quantizers, skipped = _calibratable(model)
    distributed.synchronize(list(quantizers.values()))
    groups.merge_group_statistics(quantizers)  # after the ranks agree: each rank merges the same statistics
    result = CalibrationResult(skipped=skipped, method=method)
    searched: dict[str, TensorQuantizer] = {}
    for name, quantizer in quantizers.items():
        if quantizer.calibrator.num_batches == 0:
            result.no_data.append(name)
            continue
        if method == "auto" and isinstance(quantizer.calibrator, calib.HistogramCalibrator):
            searched[name] = quantizer  # after every max calibrator has its amax
            result.calibrated.append(name)
            continue
        if isinstance(quantizer.calibrator, calib.HistogramCalibrator):
            options = dict(kwargs)
            if method == "percentile":
                options["percentile"] = percentile
            amax = quantizer.load_calib_amax(method, strict=False, **options)
        else:
            amax = quantizer.load_calib_amax(strict=False)
        (result.calibrated if amax is not None else result.no_data).append(name)
    if searched and data is not None:
        result.choices = range_search.search_ranges(model, searched, data, forward or feed_batch)
    elif searched:
        result.choices = range_search.histogram_only(searched)
    return result


def _progress(data: Iterable[Any], total: int | None, enabled: bool) -> Iterable[Any]:
    if not enabled or not sys.stderr.isatty():
        return data
    from tqdm.auto import tqdm

    return tqdm(data, total=total, desc="calibrating", unit="batch", leave=False)


def calibrate(model: nn.Module, data: Iterable[Any], *, forward: Callable[[nn.Module, Any], Any] | None = None,
              method: str = DEFAULT_METHOD, percentile: float = 99.99, num_batches: int | None = None,
              progress: bool = True) -> CalibrationResult:
    """Calibrate every enabled quantizer of ``model`` on ``data``.

    The batches run in eval mode under ``torch.no_grad()`` with quantization off; then amax is computed
    (max calibrators: the max; histogram calibrators: ``method``), quantization is back on, calibration
    off, and the model's train/eval mode restored.

    Args:
        model: a quantized model (from ``quantize_model``).
        data: an iterable of batches: tensors, tuples (positional arguments) or dicts (keyword arguments).
        forward: ``forward(model, batch)`` to feed other batch types.
        method: how histogram calibrators pick amax, one of ``CALIB_METHODS`` ("auto", "max", "entropy",
            "percentile", "mse"); default ``DEFAULT_METHOD``. "auto" runs the first ``AUTO_SCORE_BATCHES``
            batches once more to score its candidates (see ``quantrewrite.range_search``).
        percentile: the percentile for method="percentile".
        num_batches: stop after this many batches.
        progress: show a progress bar (only on a terminal).

    Returns:
        A CalibrationResult naming the quantizers calibrated, the ones that saw no data and the skipped ones.
    """
    _check_method(method)
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches: expected an int >= 1 or None, got {num_batches!r}")
    start = time.perf_counter()
    feed = forward or feed_batch
    total = num_batches if num_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    was_training = model.training
    model.eval()
    batches = 0
    kept: list[Any] = []  # the first batches, which method "auto" scores its candidates on
    try:
        with calibration(model), torch.no_grad():
            for batch in _progress(data, total, progress):
                if num_batches is not None and batches >= num_batches:
                    break
                feed(model, batch)
                batches += 1
                if method == "auto" and len(kept) < AUTO_SCORE_BATCHES:
                    kept.append(batch)
        if batches == 0:
            raise ValueError("calibrate: data yielded no batch")
        result = _load_calib_amax(model, method, percentile=percentile, data=kept or None, forward=feed)
    finally:
        model.train(was_training)
    _warn_no_data(result, stacklevel=2)
    result.batches = batches
    result.seconds = time.perf_counter() - start
    logger.info("calibrated %d quantizers on %d batches in %.2f s", len(result.calibrated), batches,
                result.seconds)
    return result
