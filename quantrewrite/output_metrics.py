"""Compare a quantized model's outputs with its float twin: output rows, metrics, and a pass-counting runner.

Every model output (a tensor, a tuple/list, a dict or a Hugging Face ``ModelOutput``) is reduced to *rows*:
each tensor it holds is flattened per sample (dim 0 is the batch) and the tensors are concatenated, giving a
``(samples, features)`` float64 matrix per batch. When the tensors do not share a batch dimension (a scalar
loss, for example) the whole batch is one row.

The metrics (higher is better):

* ``"sqnr"``: 10 log10(sum f^2 / sum (f - q)^2) in dB over every element of every batch (inf when equal);
* ``"cosine"``: the mean over samples of the cosine similarity between a sample's float and quantized rows;
* ``"min_cosine"``: the minimum of the same over samples (the worst sample);
* a callable ``metric(float_out, quant_out) -> float``: it gets the rows of all batches concatenated, two
  ``(samples, features)`` tensors (for a model returning logits ``(N, C)`` that is the logits themselves).

Example:
    >>> metric = resolve_metric("cosine")
    >>> metric.evaluate([torch.ones(2, 3)], [torch.ones(2, 3)])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["METRICS", "Metric", "OutputRunner", "output_rows", "resolve_metric"]

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


def _leaves(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):  # dicts and Hugging Face ModelOutput
        return [t for value in output.values() for t in _leaves(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _leaves(value)]
    return []  # None, numbers, strings: nothing to compare


def output_rows(output: Any) -> torch.Tensor:
    """The tensors of one batch's ``output`` as a float64 ``(samples, features)`` matrix on the CPU.

    Raises:
        ValueError: the output holds no tensor.
    """
    leaves = [t.detach() for t in _leaves(output)]
    if not leaves:
        raise ValueError(f"the model's output holds no tensor (got {type(output).__name__}); pass "
                         "forward=lambda model, batch: ... returning the tensor to compare")
    batch = leaves[0].shape[0] if leaves[0].dim() > 0 else None
    if batch is not None and all(t.dim() > 0 and t.shape[0] == batch for t in leaves):
        return torch.cat([t.reshape(batch, -1).to("cpu", torch.float64) for t in leaves], dim=1)
    return torch.cat([t.reshape(-1).to("cpu", torch.float64) for t in leaves]).unsqueeze(0)


def _sqnr(reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> float:
    signal = sum(float(f.pow(2).sum()) for f in reference)
    noise = sum(float((f - q).pow(2).sum()) for f, q in zip(reference, output))
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _row_cosines(reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> torch.Tensor:
    values = []
    for f, q in zip(reference, output):
        dot = (f * q).sum(1)
        norms = f.norm(dim=1) * q.norm(dim=1)
        cosine = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
        both_zero = (f.norm(dim=1) == 0) & (q.norm(dim=1) == 0)
        values.append(torch.where(both_zero, torch.ones_like(cosine), cosine))
    return torch.cat(values)


def _cosine(reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> float:
    return float(_row_cosines(reference, output).mean())


def _min_cosine(reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> float:
    return float(_row_cosines(reference, output).min())


def _concatenated(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    widths = sorted({r.shape[1] for r in rows})
    if len(widths) > 1:
        raise ValueError(f"a metric callable needs outputs of one size per sample, got {widths[0]} and "
                         f"{widths[-1]} features in different batches; pass forward= returning a fixed-size "
                         "tensor per sample (e.g. pooled embeddings), or use metric='sqnr' or 'cosine'")
    return torch.cat(list(rows))


@dataclass(frozen=True)
class Metric:
    """A named output metric (higher is better); ``unit`` is printed after its values ("dB" or "")."""

    name: str
    unit: str
    function: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], float]

    def evaluate(self, reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> float:
        """The metric of ``output`` rows against ``reference`` rows (one matrix per batch each)."""
        return float(self.function(reference, output))

    def format(self, value: float) -> str:
        if self.unit == "dB":
            return f"{value:.2f} dB" if math.isfinite(value) else f"{value} dB"
        return f"{value:.6f}" if math.isfinite(value) else str(value)


METRICS = {
    "sqnr": Metric("sqnr", "dB", _sqnr),
    "cosine": Metric("cosine", "", _cosine),
    "min_cosine": Metric("min_cosine", "", _min_cosine),
}


def resolve_metric(metric: str | MetricFn | Metric | None) -> Metric:
    """A Metric from a name in METRICS, a callable ``(float_out, quant_out) -> float``, or None ("sqnr")."""
    if metric is None:
        return METRICS["sqnr"]
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {sorted(METRICS)} or a callable, got {metric!r}")
        return METRICS[metric]
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)

        def on_all_rows(reference: Sequence[torch.Tensor], output: Sequence[torch.Tensor]) -> float:
            return float(metric(_concatenated(reference), _concatenated(output)))

        return Metric(name, "", on_all_rows)
    raise TypeError(f"metric: expected a name, a callable or None, got {type(metric).__name__}")


def feed_batch(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one batch: a tensor, a tuple/list (positional arguments) or a dict (keywords)."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(f"a batch must be a tensor, a tuple/list or a dict; got {type(batch).__name__}. "
                    "Pass forward=lambda model, batch: ... to feed other batch types")


class OutputRunner:
    """Runs the same batches through a model many times, as rows, and counts the forward passes.

    The batches are materialised once (``data`` may be a generator). Each ``rows(model)`` runs every batch
    in eval mode under ``torch.no_grad()``; ``passes`` counts the batches run so far.
    """

    def __init__(self, data: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None,
                 num_batches: int | None = None):
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches: expected an int >= 1 or None, got {num_batches!r}")
        self.batches = []
        for batch in data:
            if num_batches is not None and len(self.batches) >= num_batches:
                break
            self.batches.append(batch)
        if not self.batches:
            raise ValueError("data yielded no batch")
        self.forward = forward or feed_batch
        self.passes = 0

    def rows(self, model: nn.Module) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for batch in self.batches:
                out.append(output_rows(self.forward(model, batch)))
                self.passes += 1
        return out
