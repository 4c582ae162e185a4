"""``quantrewrite.nn.functional``: the pytorch-quantization import path of ``clip``.

``clip(inputs, clip_value_min, clip_value_max)`` clamps with bounds that broadcast against the input and
gives the bounds a gradient (PACT): the gradient of a bound is the sum of the output gradient where the
input lies at or beyond it. Learnable bounds must be scalars.

Example:
    >>> from quantrewrite.nn import functional as QF
    >>> QF.clip(torch.tensor([-2.0, 0.5, 3.0]), torch.tensor(-1.0), torch.tensor(1.0)).tolist()
    [-1.0, 0.5, 1.0]
"""

from __future__ import annotations

from quantrewrite.nn.modules.clip import ClipFunction, clip

__all__ = ["ClipFunction", "clip"]
