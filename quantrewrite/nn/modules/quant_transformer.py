"""Transformer containers that always run their children: QuantTransformerEncoderLayer, QuantTransformerEncoder.

In eval mode under ``no_grad``, ``nn.TransformerEncoderLayer.forward`` hands the float weights of its
children (attention in-/out-projection, both linears, both norms) to one fused kernel and never calls their
forward: the quantizers of the swapped children would see no data, and the output would be float. And
``nn.TransformerEncoder`` turns a padded batch into a nested tensor for that kernel. Their twins subclass them,
share their parameters and children (which the rewrite plans and swaps as usual), and take the unfused path:

* ``QuantTransformerEncoderLayer.forward`` is the float class's own unfused path (masks canonicalised the
  same way, then ``_sa_block`` and ``_ff_block``), whatever the mode;
* ``QuantTransformerEncoder`` keeps ``use_nested_tensor`` False, so its layers get ordinary tensors.

``nn.TransformerDecoderLayer`` has no fused path: it needs no twin. The rewrite swaps a container only when
something inside it is quantized (``registry.register_quant_container``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantrewrite.registry import register_quant_container

__all__ = ["QuantTransformerEncoder", "QuantTransformerEncoderLayer"]


def _shell(cls: type, module: nn.Module) -> nn.Module:
    """An instance of ``cls`` sharing ``module``'s parameters, buffers, children and settings (containers copied,
    so later swaps inside the twin leave ``module`` as it was)."""
    if not isinstance(module, cls.__mro__[1]):
        raise TypeError(f"{cls.__name__}.from_float expects a {cls.__mro__[1].__name__}, got {type(module).__name__}")
    twin = cls.__new__(cls)
    twin.__dict__.update({key: value.copy() if isinstance(value, (dict, set)) else value
                          for key, value in module.__dict__.items()})
    return twin


@register_quant_container(nn.TransformerEncoderLayer)
class QuantTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """nn.TransformerEncoderLayer that never takes the fused fast path, so its (quantized) children run."""

    @classmethod
    def from_float(cls, module: nn.TransformerEncoderLayer, *_: Any) -> QuantTransformerEncoderLayer:
        return _shell(cls, module)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask", other_type=F._none_or_dtype(src_mask),
            other_name="src_mask", target_type=src.dtype)
        src_mask = F._canonical_mask(mask=src_mask, mask_name="src_mask", other_type=None, other_name="",
                                     target_type=src.dtype, check_other=False)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(x + self._ff_block(x))


@register_quant_container(nn.TransformerEncoder)
class QuantTransformerEncoder(nn.TransformerEncoder):
    """nn.TransformerEncoder that never converts its input to a nested tensor for the fused layer kernel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.use_nested_tensor = False

    @classmethod
    def from_float(cls, module: nn.TransformerEncoder, *_: Any) -> QuantTransformerEncoder:
        twin = _shell(cls, module)
        twin.use_nested_tensor = False
        return twin
