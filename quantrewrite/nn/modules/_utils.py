"""The pytorch-quantization import path for the quant mixins (``from ... nn.modules import _utils``)."""

from quantrewrite.nn.modules.quant_mixins import QuantInputMixin, QuantMixin, pop_quant_desc_in_kwargs

__all__ = ["QuantInputMixin", "QuantMixin", "pop_quant_desc_in_kwargs"]
