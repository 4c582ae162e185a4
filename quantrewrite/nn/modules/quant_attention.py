"""QuantMultiheadAttention: nn.MultiheadAttention with quantized inputs, in-projection and out-projection.

``nn.MultiheadAttention`` never calls ``out_proj``'s forward: it hands the out-projection weight to
``F.multi_head_attention_forward``. So swapping ``out_proj`` alone would change nothing. This module instead
quantizes the inputs (one input quantizer, applied once to each distinct tensor so self-attention stays
self-attention) and the packed in-projection weight (per row), runs the attention with an identity
out-projection, and applies ``out_proj`` as a QuantLinear, whose input and weight quantizers then work.

Only the packed in-projection (kdim == vdim == embed_dim) is supported; ``unsupported(module)`` says why
otherwise, and the rewrite leaves such a module float with that reason in its plan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantrewrite.descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from quantrewrite.nn.modules.quant_linear import QuantLinear
from quantrewrite.nn.modules.quant_mixins import QuantMixin, pop_quant_desc_in_kwargs
from quantrewrite.registry import register_quant_module

__all__ = ["QuantMultiheadAttention"]


@register_quant_module(nn.MultiheadAttention)
class QuantMultiheadAttention(nn.MultiheadAttention, QuantMixin):
    """Multi-head attention with an input quantizer, a per-row in-projection weight quantizer and a
    quantized out-projection (``out_proj`` is a QuantLinear)."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    quantizer_paths = ("_input_quantizer", "_weight_quantizer", "out_proj._input_quantizer",
                       "out_proj._weight_quantizer")

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None, **kwargs):
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
                         batch_first, device, dtype)
        quant_desc_input, quant_desc_weight = pop_quant_desc_in_kwargs(self.__class__, **kwargs)
        self.init_quantizer(quant_desc_input, quant_desc_weight)

    @staticmethod
    def unsupported(module: nn.MultiheadAttention) -> str | None:
        """Why ``module`` cannot be quantized by this class, or None."""
        if not module._qkv_same_embed_dim:
            return "separate q/k/v projection weights (kdim or vdim != embed_dim) are not supported"
        return None

    def init_quantizer(self, quant_desc_input: QuantDescriptor, quant_desc_weight: QuantDescriptor) -> None:
        reason = self.unsupported(self)
        if reason is not None:
            raise ValueError(f"QuantMultiheadAttention: {reason}")
        super().init_quantizer(quant_desc_input, quant_desc_weight)
        if not isinstance(self.out_proj, QuantLinear):
            self.out_proj = QuantLinear.from_float(self.out_proj, quant_desc_input, quant_desc_weight)

    def _identity(self, like: torch.Tensor) -> torch.Tensor:
        cached = getattr(self, "_identity_cache", None)
        if cached is None or cached.device != like.device or cached.dtype != like.dtype:
            cached = torch.eye(self.embed_dim, device=like.device, dtype=like.dtype)
            self._identity_cache = cached
        return cached

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        quantized = {}

        def quantize(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in quantized:
                quantized[id(t)] = self._input_quantizer(t)
            return quantized[id(t)]

        query, key, value = quantize(query), quantize(key), quantize(value)
        batched = query.dim() == 3
        if self.batch_first and batched:
            # Transpose each distinct tensor once, so "query is key" survives (the packed projection path).
            moved = {}
            query, key, value = (moved.setdefault(id(t), t.transpose(1, 0)) for t in (query, key, value))
        attn_output, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self._weight_quantizer(self.in_proj_weight),
            self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self._identity(query), None, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask, average_attn_weights=average_attn_weights,
            is_causal=is_causal)
        attn_output = self.out_proj(attn_output)
        if self.batch_first and batched:
            attn_output = attn_output.transpose(1, 0)
        return attn_output, weights
