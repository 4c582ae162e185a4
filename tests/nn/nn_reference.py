"""Small independent references shared by the Quant module tests (written from NUMERICS.md, not from the code)."""

from __future__ import annotations

import math

import torch


def ref_fake_quant(x: torch.Tensor, amax: torch.Tensor, num_bits: int = 8) -> torch.Tensor:
    """NUMERICS formula, full signed range (descriptor default narrow_range=False), computed in float32 and
    returned in x's dtype.

    The scale is a true float32 division: ``float / tensor`` in torch is ``reciprocal() * float``, 1 ulp off.
    """
    max_bound = 2.0 ** (num_bits - 1) - 1
    amax = torch.as_tensor(amax).float()
    scale = torch.full_like(amax, max_bound) / amax
    q = torch.clamp(torch.round(x.float() * scale), -max_bound - 1, max_bound)
    return (q / scale).to(x.dtype)



def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref``, in dB."""
    return 10 * math.log10(ref.pow(2).sum().item() / (ref - test).pow(2).sum().item())
