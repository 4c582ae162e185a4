"""What every real-model module returns: the model, disjoint calibration and test data, and its metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def feed(model: nn.Module, batch: Any) -> Any:
    """Run one batch: a tensor, a tuple (positional arguments) or a dict (keyword arguments)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(*batch)


@dataclass
class Case:
    """One benchmark model.

    Attributes:
        name: the row label.
        model: the fp32 model in eval mode.
        calib: calibration batches (disjoint from ``test``).
        test: evaluation batches.
        metrics: ``metrics(outputs, fp32_outputs) -> {name: value}``; ``outputs`` are what ``run`` returns for
            the model under test, ``fp32_outputs`` the same for the fp32 model. The first key is the primary
            metric.
        higher_is_better: whether a larger primary metric is better.
        forward: ``forward(model, batch)`` for calibration and evaluation.
        postprocess: turns the per-batch raw outputs into what ``metrics`` reads (default: the list itself).
        note: what the data and the metric are, for the printed table.
    """

    name: str
    model: nn.Module
    calib: list[Any]
    test: list[Any]
    metrics: Callable[[Any, Any], dict[str, float]]
    higher_is_better: bool = True
    forward: Callable[[nn.Module, Any], Any] = feed
    postprocess: Callable[[list[Any]], Any] | None = None
    note: str = ""

    def run(self, model: nn.Module) -> Any:
        """The model's outputs on the test data (no grad), after ``postprocess``."""
        with torch.no_grad():
            outputs = [self.forward(model, batch) for batch in self.test]
        return self.postprocess(outputs) if self.postprocess else outputs


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − test)²); inf when equal."""
    noise = (reference.double() - test.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    if noise == 0:
        return float("inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()
