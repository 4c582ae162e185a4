"""Method "auto": per histogram quantizer, the candidate range that least disturbs the layer consuming it.

Candidates. For each enabled quantizer with a histogram calibrator, ``candidate_ranges`` proposes a few amax
values (max, percentiles, mse, entropy; guarded against clipping much of the data); candidates within
``SAME_RANGE`` (0.1%) of one already kept count as that one. A quantizer left with one candidate takes it.

Scoring. The model runs the first calibration batches again with every histogram quantizer off (float
activations). When a module that owns such quantizers returns, its output is the reference; the module is
run again on the same inputs once per candidate, with only that quantizer on at that amax, and the output's
error is summed over the scored batches in two views (``quantrewrite.calib.output_error``): *absolute*
(squared error) and *relative* (each feature vector's squared error over its own energy: one token of a
Linear's output, one position of a conv's). Each view names a winner per quantizer (least error; ties: the
first candidate in order). Where the two views disagree, both assignments run the scored batches end to end
and the one whose model outputs are closer (squared error) to the outputs with activations in float is kept
(ties: relative). Why two views, measured (README, "How `auto` decides"): on all-MiniLM-L6-v2 the absolute
view keeps amax ~24 on the FFN down-projections, for a few outlier tokens that the next LayerNorm divides by
their own huge norm, where the 99.99th percentile is ~4; the relative view keeps the percentile and gains
0.009 minimum cosine. On a regression MLP fed heavy-tailed samples, whose large outputs dominate the output
error, the absolute view is right.

Budget. An owner stops scoring once its scored outputs hold ``SCORE_ELEMENTS`` values, and the batches stop
once the owners reached hold on average ``SCORE_COVERAGE`` of that budget (so a small head, which sees few
values per batch, does not keep the whole model running). Small data sets are scored entirely. A call that
holds more values than the owner still needs is cut to its first rows, as many as needed, where its rows can
be cut (``quantrewrite.calib.rows``: every tensor argument and output leads with the same size, and the owner's
float output on the cut arguments is the whole output's rows; else the call is scored whole): the owner runs
once more in float on the cut, then once per candidate on it. The end-to-end check runs the scored batches;
where the scoring cut the calls of a single batch fed by ``feed_batch`` (the default feed), it runs that share
of the batch's rows, with their own float outputs.

Quantizers owned by the model's root (running the root would run the whole model per candidate; unless the
root is a single quantized layer), or never reached during scoring, are scored on their histogram instead
(``histogram_error``, both views). Under torch.distributed every sum is added across ranks before a choice,
so every rank keeps the same amax; the members of a shared-range group add their errors, so they keep one
amax. Ranks run their own batches (each stops on its own budget).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from quantrewrite.calib.candidates import SAME_RANGE, candidate_ranges, histogram_error
from quantrewrite.calib.distributed import is_distributed
from quantrewrite.calib.histogram import HistogramCalibrator
from quantrewrite.calib.output_error import VIEWS, Reference, feature_dim, floating_leaves, squared_error
from quantrewrite.calib.rows import batch_rows, rows_match, shared_rows, take_batch_rows, take_rows
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.output_metrics import feed_batch

__all__ = ["SCORE_COVERAGE", "SCORE_ELEMENTS", "VIEWS", "histogram_only", "search_ranges"]

logger = logging.getLogger(__name__)

SCORE_ELEMENTS = 2 ** 20  # an owner stops scoring once its scored outputs hold this many values
SCORE_COVERAGE = 0.9  # batches stop once the owners hold on average this share of SCORE_ELEMENTS
REFERENCE_BYTES = 2 ** 28  # float model outputs kept for the end-to-end check (beyond: the relative view)


class _Scorer:
    """Forward hooks that score the candidates of each owner module's quantizers on its float output."""

    def __init__(self, owners: dict[str, list[str]], quantizers: dict[str, TensorQuantizer],
                 candidates: dict[str, dict[str, float]], budget: int):
        self.owners = owners
        self.quantizers = quantizers
        self.candidates = candidates
        self.budget = budget
        # errors[view][name][candidate index]
        self.errors = {view: {name: [0.0] * len(candidates[name]) for name in candidates} for view in VIEWS}
        self.whole: set[str] = set()  # owners whose calls cannot be cut into rows
        self.scored = dict.fromkeys(owners, 0)  # output values scored per owner
        self.reached: set[str] = set()
        self.share_used = 0.0  # the largest share of a call's rows a cut call scored (0: no call was cut)
        self.busy = False

    def hook(self, owner_name: str) -> Callable:
        def forward_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.busy or self.scored[owner_name] >= self.budget:  # a call made by this scorer; done
                return
            self.busy = True
            try:
                self._score(module, owner_name, args, kwargs, output)
            finally:
                self.busy = False

        return forward_hook

    def _score(self, module: nn.Module, owner_name: str, args: tuple, kwargs: dict, output: Any) -> None:
        rows = None if owner_name in self.whole else shared_rows(args, kwargs, output)
        if rows is None or not self._score_rows(module, owner_name, args, kwargs, output, rows):
            self._score_part(module, owner_name, args, kwargs, output)

    def _score_rows(self, module: nn.Module, owner_name: str, args: tuple, kwargs: dict, output: Any,
                    rows: int) -> bool:
        """Score the call on its first rows, as many as the budget still needs (``quantrewrite.calib.rows``).
        False, with nothing scored, where the cut is not the whole call's output cut alike (the owner is then
        scored on whole calls)."""
        per_row = sum(leaf.numel() for leaf in floating_leaves(output)) / rows
        stop = min(rows, max(1, math.ceil((self.budget - self.scored[owner_name]) / per_row)))
        if stop == rows:
            self._score_part(module, owner_name, args, kwargs, output)
            return True
        part_args, part_kwargs = take_rows(args, kwargs, 0, stop)
        reference = _cut_reference(module, part_args, part_kwargs, output, 0, stop)
        if reference is None:
            self.whole.add(owner_name)
            return False
        self._score_part(module, owner_name, part_args, part_kwargs, reference)
        self.share_used = max(self.share_used, stop / rows)
        return True

    def _score_part(self, module: nn.Module, owner_name: str, args: tuple, kwargs: dict, output: Any) -> None:
        reference = Reference(output, feature_dim(module, output))
        for name in self.owners[owner_name]:
            quantizer = self.quantizers[name]
            self.reached.add(name)
            for index, amax in enumerate(self.candidates[name].values()):
                quantizer.amax = torch.tensor(amax, dtype=torch.float32)
                quantizer.enable_quant()
                try:
                    errors = reference.errors(module.forward(*args, **kwargs))
                finally:
                    quantizer.disable_quant()
                for view, error in zip(VIEWS, errors):
                    self.errors[view][name][index] += error
        self.scored[owner_name] += reference.numel

    def covered(self) -> bool:
        """Whether the owners reached so far hold on average SCORE_COVERAGE of their budget."""
        reached = [owner for owner, names in self.owners.items() if self.reached.intersection(names)]
        held = sum(min(self.scored[owner], self.budget) for owner in reached)
        return bool(reached) and held >= SCORE_COVERAGE * self.budget * len(reached)


def _cut_reference(module: nn.Module, args: tuple, kwargs: dict, output: Any, start: int, stop: int) -> Any:
    """The owner's float output on the cut arguments; None where it fails or is not ``output`` cut alike."""
    try:
        cut = module.forward(*args, **kwargs)
    except (RuntimeError, ValueError, IndexError):  # the leading dim was not rows (an unbatched conv's channels)
        return None
    return cut if rows_match(cut, output, start, stop) else None


def _owner_name(name: str) -> str:
    return name.rpartition(".")[0]


def _is_leaf(module: nn.Module) -> bool:
    """True when every child is a quantizer (running it per candidate costs one layer, not the whole model)."""
    return all(isinstance(child, TensorQuantizer) for child in module.children())


def _all_reduce(values: list[float]) -> list[float]:
    if not is_distributed() or not values:
        return values
    flat = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(flat)
    return flat.tolist()


def _reduce_errors(errors: dict[str, list[float]], names: list[str]) -> None:
    flat = _all_reduce([e for name in names for e in errors[name]])
    position = 0
    for name in names:
        count = len(errors[name])
        errors[name] = flat[position:position + count]
        position += count


def _pool_shared_groups(names: list[str], quantizers: dict[str, TensorQuantizer],
                        candidates: dict[str, dict[str, float]], errors: dict[str, list[float]]) -> None:
    """Members of one shared-range group (identical merged histograms, so identical candidates) add their
    errors, so they all keep the same candidate."""
    groups: dict[str, list[str]] = {}
    for name in names:
        group = getattr(quantizers[name], "share_group", None)
        if group is not None:
            groups.setdefault(group, []).append(name)
    for members in groups.values():
        first = candidates[members[0]]
        if len(members) < 2 or any(candidates[m] != first for m in members):
            continue
        total = [sum(column) for column in zip(*(errors[m] for m in members))]
        for member in members:
            errors[member] = list(total)


class _Run:
    """The scoring pass: the batches it ran and the model outputs it saw (activations in float)."""

    def __init__(self) -> None:
        self.batches: list[Any] = []
        self.outputs: list[list[torch.Tensor]] = []
        self.bytes = 0

    def keep(self, batch: Any, output: Any) -> None:
        self.batches.append(batch)
        leaves = [t.detach() for t in floating_leaves(output)]
        size = sum(t.numel() * t.element_size() for t in leaves)
        if len(self.outputs) == len(self.batches) - 1 and self.bytes + size <= REFERENCE_BYTES:
            self.outputs.append(leaves)
            self.bytes += size


def _score_batches(model: nn.Module, scorer: _Scorer, batches: Sequence[Any],
                   feed: Callable[[nn.Module, Any], Any]) -> _Run:
    modules = dict(model.named_modules())
    handles = [modules[owner].register_forward_hook(scorer.hook(owner), with_kwargs=True)
               for owner in scorer.owners]
    run = _Run()
    try:
        with torch.no_grad():
            for batch in batches:
                run.keep(batch, feed(model, batch))
                if scorer.covered():
                    break
    finally:
        for handle in handles:
            handle.remove()
    return run


def _winners(errors: dict[str, list[float]], candidates: dict[str, dict[str, float]]) -> dict[str, str]:
    """Per quantizer, the candidate with the least error (the first on ties)."""
    picks = {}
    for name, options in candidates.items():
        column = errors[name]
        picks[name] = list(options)[min(range(len(column)), key=lambda i: (column[i], i))]
    return picks


def _set_ranges(quantizers: dict[str, TensorQuantizer], candidates: dict[str, dict[str, float]],
                picks: dict[str, str], enabled: dict[str, bool]) -> None:
    for name, winner in picks.items():
        quantizer = quantizers[name]
        device = quantizer.amax.device if quantizer.amax is not None else torch.device("cpu")
        quantizer.amax = torch.tensor(candidates[name][winner], dtype=torch.float32, device=device)
        if enabled[name]:
            quantizer.enable_quant()
        else:
            quantizer.disable_quant()


def _arbitration_run(model: nn.Module, run: _Run, scorer: _Scorer, feed: Callable[[nn.Module, Any], Any]) -> _Run:
    """What the end-to-end check runs: the scored batches; or, where the owners were scored on the first rows
    of one batch that ``feed_batch`` feeds and whose tensors share their rows, that share of the batch's rows
    (with its own float outputs: call this before any range is set)."""
    rows = batch_rows(run.batches[0]) if feed is feed_batch and len(run.batches) == 1 else None
    count = math.ceil(scorer.share_used * rows) if rows else 0
    if not count or count >= rows:
        return run
    part = take_batch_rows(run.batches[0], count)
    cut = _Run()
    with torch.no_grad():
        cut.keep(part, feed(model, part))
    return cut


def _end_to_end(model: nn.Module, run: _Run, feed: Callable[[nn.Module, Any], Any], apply: Callable[[], None]
                ) -> float:
    """Squared error of the model's outputs after ``apply()`` against the scoring pass's float outputs."""
    apply()
    with torch.no_grad():
        return sum(squared_error(feed(model, batch), reference)
                   for batch, reference in zip(run.batches, run.outputs))


def search_ranges(model: nn.Module, quantizers: dict[str, TensorQuantizer], batches: Sequence[Any],
                  feed: Callable[[nn.Module, Any], Any], *, budget: int = SCORE_ELEMENTS) -> dict[str, str]:
    """Set the amax of every histogram quantizer in ``quantizers`` by method "auto"; returns {name: winner}.

    ``quantizers`` must have collected (and, under torch.distributed, been synchronised); other quantizers
    are expected to hold their amax already. ``batches`` are run with ``feed(model, batch)`` under no_grad,
    until each owner module has scored about ``budget`` output values (see the module docstring).
    """
    candidates = {name: candidate_ranges(q.calibrator, same_range=SAME_RANGE) for name, q in quantizers.items()
                  if isinstance(q.calibrator, HistogramCalibrator) and q.calibrator.num_batches > 0}
    candidates = {name: c for name, c in candidates.items() if c}
    modules = dict(model.named_modules())
    owners: dict[str, list[str]] = {}
    for name, options in candidates.items():
        owner = _owner_name(name)
        if len(options) > 1 and owner in modules and (owner or _is_leaf(model)):
            owners.setdefault(owner, []).append(name)
    enabled = {name: quantizers[name].is_quant_enabled for name in candidates}
    for name in candidates:
        quantizers[name].disable_quant()
    scorer = _Scorer(owners, quantizers, candidates, budget)
    run = _score_batches(model, scorer, batches, feed) if owners else _Run()
    names = list(candidates)  # the same order on every rank
    reached = [name for name in names if name in scorer.reached or len(candidates[name]) == 1]
    if is_distributed():  # a quantizer reached on one rank only is scored on its histogram everywhere
        flags = [float(name in reached) for name in names]
        reached = [name for name, flag in zip(names, _all_reduce(flags)) if flag == dist.get_world_size()]
    picks = {}
    for view in VIEWS:
        errors = scorer.errors[view]
        _reduce_errors(errors, [name for name in names if name in reached])
        for name in names:
            if name not in reached:
                errors[name] = [histogram_error(quantizers[name].calibrator, amax)
                                for amax in candidates[name].values()]
        _pool_shared_groups(names, quantizers, candidates, errors)
        picks[view] = _winners(errors, candidates)
    chosen = VIEWS[0]
    if picks[VIEWS[0]] != picks[VIEWS[1]]:
        arbiter = _arbitration_run(model, run, scorer, feed)
        totals = [_end_to_end(model, arbiter, feed, lambda v=view: _set_ranges(quantizers, candidates, picks[v],
                                                                               enabled))
                  for view in VIEWS]
        count = _all_reduce([len(arbiter.outputs)])[0]
        totals = _all_reduce(totals)
        chosen = VIEWS[min(range(len(VIEWS)), key=lambda i: (totals[i], i))] if count else VIEWS[0]
        logger.debug("auto: end-to-end squared error %s on %d batches", dict(zip(VIEWS, totals)), count)
    _set_ranges(quantizers, candidates, picks[chosen], enabled)
    logger.debug("auto: %d owners scored on %d batches (largest share of a call's rows cut: %.2f); %s view kept",
                 len(owners), len(run.batches), scorer.share_used, chosen)
    return picks[chosen]


def histogram_only(quantizers: dict[str, TensorQuantizer]) -> dict[str, str]:
    """Method "auto" without data to score on: each quantizer's candidate with the least histogram error."""
    candidates = {}
    for name, quantizer in quantizers.items():
        options = candidate_ranges(quantizer.calibrator, same_range=SAME_RANGE)
        if options:
            candidates[name] = options
    errors = {name: [histogram_error(quantizers[name].calibrator, amax) for amax in options.values()]
              for name, options in candidates.items()}
    picks = _winners(errors, candidates)
    _set_ranges(quantizers, candidates, picks, {name: quantizers[name].is_quant_enabled for name in picks})
    return picks
