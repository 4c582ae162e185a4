"""Max calibrator: the running max of |x|, per tensor or per channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantrewrite.calib.calibrator import _Calibrator, normalize_axis

__all__ = ["AmaxShapeChangedError", "MaxCalibrator"]


class AmaxShapeChangedError(ValueError, RuntimeError):
    """A batch gives a per-channel amax of another shape (a RuntimeError in pytorch-quantization)."""


def _abs_max(x: torch.Tensor, kept: tuple[int, ...] | None, subject: str) -> torch.Tensor:
    """max |x| in float32: a 0-d tensor for ``kept`` None, else reduced over the other dims, keepdim.
    ``subject`` names the calibrator in errors."""
    if kept is None:
        if x.numel() == 0:
            raise ValueError(f"{subject}.collect: got an empty tensor")
        lo, hi = torch.aminmax(x)
        return torch.maximum(hi, -lo).float()
    reduce = tuple(d for d in range(x.dim()) if d not in kept)
    if not reduce:  # every dim keeps its own amax
        return x.abs().float()
    if any(x.shape[d] == 0 for d in reduce):
        raise ValueError(f"{subject}.collect: got an empty tensor of shape {list(x.shape)}")
    # max |x| = max(max x, -min x): two reductions, no |x| temporary. Exact in the input dtype.
    return torch.maximum(x.amax(dim=reduce, keepdim=True), -x.amin(dim=reduce, keepdim=True)).float()


class MaxCalibrator(_Calibrator):
    """Running max of |x| over every dim not in ``axis``.

    Args:
        num_bits: bits of the quantizer the amax is for.
        axis: None for per-tensor, or the dim(s) that keep their own amax (negative allowed). The amax
            keeps the reduced dims with size 1 (e.g. [C, 1, 1, 1] for axis 0 of a conv weight) so it
            broadcasts against the input.
        unsigned: whether the quantizer is unsigned.
        track_amax: keep every batch's amax in ``amaxs``.
        owner: the name of the quantizer it serves (see ``_Calibrator``).

    State lives on the device of the last input; fp16/bf16 inputs give a float32 amax.

    Example:
        >>> calib = MaxCalibrator(axis=0)
        >>> calib.collect(torch.tensor([[1.0, -3.0], [0.5, 0.25]]))
        >>> calib.compute_amax().tolist()
        [[3.0], [0.5]]
    """

    def __init__(self, num_bits: int = 8, axis: int | Sequence[int] | None = None, unsigned: bool = False,
                 track_amax: bool = False, *, owner: str | None = None):
        super().__init__(num_bits, axis, unsigned, owner=owner)
        self._track_amax = bool(track_amax)
        self._amax: torch.Tensor | None = None
        self._amaxs: list[torch.Tensor] = []

    @property
    def track_amax(self) -> bool:
        """Whether every batch's amax is kept."""
        return self._track_amax

    @property
    def amaxs(self) -> list[torch.Tensor]:
        """Per-batch amaxes (CPU float32), in order; empty unless ``track_amax``."""
        return list(self._amaxs)

    @property
    def _calib_amax(self) -> torch.Tensor | None:
        """pytorch-quantization's name of the running amax (read-only)."""
        return self._amax

    def _collect(self, x: torch.Tensor) -> None:
        kept = None if self._axis_dims is None else normalize_axis(self._axis_dims, x.dim())
        local = _abs_max(x, kept, self.subject)
        if self._amax is None:
            self._amax = local
        else:
            if local.shape != self._amax.shape:
                raise AmaxShapeChangedError(
                    f"{self.subject}(axis={self._axis}): the per-channel amax shape changed from "
                    f"{list(self._amax.shape)} to {list(local.shape)} (input shape {list(x.shape)}); every batch "
                    "must have the same size along the axis")
            self._amax = torch.maximum(self._amax.to(local.device), local)
        if self._track_amax:
            self._amaxs.append(local.cpu())

    def _reset(self) -> None:
        self._amax = None
        self._amaxs = []

    def compute_amax(self) -> torch.Tensor | None:
        """The running amax (float32, a copy), or None when no batch was collected."""
        return None if self._amax is None else self._amax.clone()

    def _repr_fields(self) -> dict[str, object]:
        if self._amax is None:
            amax = None
        elif self._amax.numel() == 1:
            amax = f"{self._amax.item():.6g}"
        else:
            amax = f"[{self._amax.min().item():.6g}, {self._amax.max().item():.6g}]{list(self._amax.shape)}"
        return {"track_amax": self._track_amax, "amax": amax}
