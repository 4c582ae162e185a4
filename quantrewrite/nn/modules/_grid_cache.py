"""The quantization grid of a TensorQuantizer's static amax, with the check that tells whether it still applies.

A grid (validation, scale, host copies; ``tensor_quant.prepare_grid``) is derived from the ``_amax`` buffer's
contents, dtype, shape and device, and from the input's device. Writes through ``amax.data`` bump no version
counter, so the cache compares contents: for a CPU amax, the bytes seen through a numpy view of the buffer's
memory against a copy of them taken when the grid was built (one small ``bytes`` comparison, well under a
microsecond), after checking that the buffer still lies in that memory (same address, dtype, shape and strides:
the view holds the memory, so a replaced buffer cannot reuse the address). Elsewhere (CUDA, tensor subclasses,
dtypes numpy lacks) a copy of the tensor is compared with ``same_contents``.

Example:
    >>> amax = torch.tensor(2.0)
    >>> cache = GridCache(amax, -1, prepare_grid(amax))
    >>> cache.matches(amax, -1)
    True
    >>> _ = amax.data.fill_(3.0)  # no version bump, but new contents
    >>> cache.matches(amax, -1)
    False
"""

from __future__ import annotations

import numpy as np
import torch

from quantrewrite._kernels import same_contents
from quantrewrite.tensor_quant import QuantGrid

__all__ = ["GridCache", "device_key"]

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def device_key(inputs: torch.Tensor) -> int:
    """-1 for CPU, else the device index: the part of the input a grid depends on."""
    return -1 if inputs.is_cpu else inputs.get_device()


class GridCache:
    """A grid built from ``amax`` for inputs on ``device``; ``matches`` says whether it still applies.

    Args:
        amax: the quantizer's ``_amax`` buffer (the object itself: replacing the buffer is a miss).
        device: ``device_key`` of the inputs the grid was built for.
        grid: the grid built from amax's current contents.
    """

    __slots__ = ("_address", "_bytes", "_copy", "_dtype", "_shape", "_stride", "_view", "amax", "device", "grid")

    def __init__(self, amax: torch.Tensor, device: int, grid: QuantGrid) -> None:
        self.amax = amax
        self.device = device
        self.grid = grid
        detached = amax.detach()
        self._view: np.ndarray | None = None
        self._copy: torch.Tensor | None = None
        if type(detached) is torch.Tensor and detached.is_cpu and detached.dtype in _NUMPY_DTYPES:
            try:
                self._view = detached.numpy()  # shares (and holds) the buffer's memory
            except RuntimeError:  # e.g. a negative-bit view: numpy cannot share it
                self._view = None
        if self._view is not None:
            self._bytes = self._view.tobytes()
            self._address, self._dtype = detached.data_ptr(), detached.dtype
            self._shape, self._stride = detached.shape, detached.stride()
        else:
            self._copy = detached.clone()

    def matches(self, amax: torch.Tensor, device: int) -> bool:
        """Whether ``amax`` is the same buffer with the same contents, for inputs on the same device."""
        if amax is not self.amax or device != self.device:
            return False
        view = self._view
        if view is None:
            return same_contents(amax.detach(), self._copy)
        return (amax.data_ptr() == self._address and amax.dtype is self._dtype and amax.shape == self._shape
                and amax.stride() == self._stride and view.tobytes() == self._bytes)
