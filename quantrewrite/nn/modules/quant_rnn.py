"""Quantized recurrent layers: QuantLSTM, QuantGRU, QuantLSTMCell, QuantGRUCell.

Each subclasses its torch class (parameters, settings and state_dict keys unchanged) and adds quantizers as
pytorch-quantization's QuantLSTM does: the layers hold ``_input_quantizers`` and ``_weight_quantizers``, one
per layer and direction (index ``layer * num_directions + direction``), the cells ``_input_quantizer`` and
``_weight_quantizer``. The input quantizer (8-bit per tensor) quantizes a step's input together with the
previous hidden state; the weight quantizer (8-bit per row, axis 0) quantizes ``cat([w_ih, w_hh], 1)``. The
cell state and biases stay float. See ``quant_rnn_functional`` for the recurrence.

When every quantizer passes its input through (disabled, or neither quantizing nor calibrating), the forward
is torch's own float one: the output equals ``nn.LSTM``/``nn.GRU`` exactly. ``proj_size`` (LSTM projections)
is not supported. ``nn.LSTM`` -> ``QuantLSTM`` etc. are in the registry, so ``quantize_model`` swaps them.

Example:
    >>> lstm = QuantLSTM(16, 32, num_layers=2, batch_first=True)
    >>> output, (h, c) = lstm(torch.randn(4, 10, 16))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from quantrewrite.descriptor import QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW, QUANT_DESC_8BIT_PER_TENSOR, QuantDescriptor
from quantrewrite.nn.modules import quant_rnn_functional as rnn_f
from quantrewrite.nn.modules.quant_mixins import QuantMixin, _checked_descriptor, _shell_from_float
from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer
from quantrewrite.registry import register_quant_module

__all__ = ["GRU", "LSTM", "GRUCell", "LSTMCell", "QuantGRU", "QuantGRUCell", "QuantLSTM", "QuantLSTMCell"]


def _pop_descriptors(cls: type, kwargs: dict[str, Any]) -> tuple[QuantDescriptor, QuantDescriptor]:
    input_desc = kwargs.pop("quant_desc_input", None) or cls.default_quant_desc_input
    weight_desc = kwargs.pop("quant_desc_weight", None) or cls.default_quant_desc_weight
    return (_checked_descriptor(input_desc, "quant_desc_input"),
            _checked_descriptor(weight_desc, "quant_desc_weight"))


class _QuantRNNBase(QuantMixin):
    """Shared by QuantLSTM and QuantGRU: quantizer lists, the layered recurrence, from_float."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    _cell: Any
    _float_cls: type[nn.RNNBase]

    def _init_rnn(self, args: tuple, kwargs: dict[str, Any]) -> None:
        input_desc, weight_desc = _pop_descriptors(type(self), kwargs)
        self._float_cls.__init__(self, *args, **kwargs)
        self._check_supported()
        self._make_quantizers(input_desc, weight_desc)

    def _check_supported(self) -> None:
        if getattr(self, "proj_size", 0):
            raise ValueError(f"{type(self).__name__}: proj_size={self.proj_size} (LSTM projections) is not "
                             "supported; keep this layer float (exclude it in the config)")

    def _make_quantizers(self, input_desc: QuantDescriptor, weight_desc: QuantDescriptor) -> None:
        count = self.num_layers * (2 if self.bidirectional else 1)
        self._input_quantizers = nn.ModuleList(TensorQuantizer(input_desc) for _ in range(count))
        self._weight_quantizers = nn.ModuleList(TensorQuantizer(weight_desc) for _ in range(count))

    @classmethod
    def from_float(cls, module: nn.Module, quant_desc_input: QuantDescriptor | None = None,
                   quant_desc_weight: QuantDescriptor | None = None) -> nn.Module:
        """Wrap an existing nn.LSTM / nn.GRU, sharing its parameters."""
        quant = _shell_from_float(cls, module)
        for key in ("_flat_weights", "_flat_weights_names", "_all_weights"):  # lists RNNBase edits in place
            if key in quant.__dict__:
                quant.__dict__[key] = [list(v) if isinstance(v, list) else v for v in quant.__dict__[key]]
        quant._check_supported()
        quant._make_quantizers(_checked_descriptor(quant_desc_input or cls.default_quant_desc_input,
                                                   "quant_desc_input"),
                               _checked_descriptor(quant_desc_weight or cls.default_quant_desc_weight,
                                                   "quant_desc_weight"))
        device = next(iter(module.parameters()), torch.empty(0)).device
        return quant.to(device)

    @property
    def input_quantizers(self) -> nn.ModuleList:
        return self._input_quantizers

    @property
    def weight_quantizers(self) -> nn.ModuleList:
        return self._weight_quantizers

    def _all_pass_through(self) -> bool:
        quantizers = list(self._input_quantizers) + list(self._weight_quantizers)
        return all(rnn_f.passes_through(q) for q in quantizers)

    def _layer_weights(self, layer: int, direction: int) -> tuple[torch.Tensor, ...]:
        suffix = "_reverse" if direction else ""
        names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
        weights = [getattr(self, n) for n in names]
        if self.bias:
            weights += [getattr(self, f"bias_ih_l{layer}{suffix}"), getattr(self, f"bias_hh_l{layer}{suffix}")]
        else:
            weights += [None, None]
        return tuple(weights)

    def forward(self, input: torch.Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
        if self._all_pass_through():
            return self._float_cls.forward(self, input, hx)
        packed = isinstance(input, PackedSequence)
        is_lstm = self._cell is rnn_f.lstm_cell
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            sizes = [int(b) for b in batch_sizes]
            batch, unbatched = sizes[0], False
        else:
            unbatched = input.dim() == 2
            data = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            sorted_indices = unsorted_indices = None
            batch, sizes = data.shape[1], [data.shape[1]] * data.shape[0]
        directions = 2 if self.bidirectional else 1
        if hx is None:
            zeros = data.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            states = (zeros, zeros) if is_lstm else (zeros,)
        else:
            states = tuple(hx) if is_lstm else (hx,)
            if unbatched:
                states = tuple(s.unsqueeze(1) for s in states)
            if sorted_indices is not None:
                states = tuple(s.index_select(1, sorted_indices) for s in states)
        layer_input = data
        finals: list[tuple[torch.Tensor, ...]] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out, final = self._run(layer_input, packed, sizes, layer, direction,
                                       tuple(s[index] for s in states))
                outputs.append(out)
                finals.append(final)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, True)
        hidden = tuple(torch.stack([f[k] for f in finals], 0) for k in range(len(states)))
        if unsorted_indices is not None:
            hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden)
        if packed:
            output = PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices)
        elif unbatched:
            output, hidden = layer_input.squeeze(1), tuple(h.squeeze(1) for h in hidden)
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (hidden if is_lstm else hidden[0])

    def _run(self, data: torch.Tensor, packed: bool, sizes: list[int], layer: int, direction: int,
             state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        index = layer * (2 if self.bidirectional else 1) + direction
        input_quantizer = self._input_quantizers[index]
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(layer, direction)
        w_ih, w_hh = rnn_f.quantized_weights(w_ih, w_hh, self._weight_quantizers[index])
        projected = rnn_f.passes_through(input_quantizer)
        source = torch.nn.functional.linear(data, w_ih, b_ih) if projected else data
        steps = list(source.split(sizes, 0)) if packed else list(source.unbind(0))
        outputs, final = rnn_f.run_direction(self._cell, steps, state, (w_ih, w_hh, b_ih, b_hh),
                                             None if projected else input_quantizer, projected, bool(direction),
                                             packed)
        return (torch.cat(outputs, 0) if packed else torch.stack(outputs, 0)), final


@register_quant_module(nn.LSTM)
class QuantLSTM(_QuantRNNBase, nn.LSTM):
    """nn.LSTM with per-layer, per-direction input and weight quantizers (see the module docstring)."""

    _cell = staticmethod(rnn_f.lstm_cell)
    _float_cls = nn.LSTM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_rnn(args, kwargs)


@register_quant_module(nn.GRU)
class QuantGRU(_QuantRNNBase, nn.GRU):
    """nn.GRU with per-layer, per-direction input and weight quantizers (see the module docstring)."""

    _cell = staticmethod(rnn_f.gru_cell)
    _float_cls = nn.GRU

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_rnn(args, kwargs)


class _QuantCellBase(QuantMixin):
    """Shared by QuantLSTMCell and QuantGRUCell: one input and one weight quantizer."""

    default_quant_desc_input = QUANT_DESC_8BIT_PER_TENSOR
    default_quant_desc_weight = QUANT_DESC_8BIT_LINEAR_WEIGHT_PER_ROW
    _float_cls: type[nn.RNNCellBase]
    _cell: Any

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None,
                 **kwargs: Any) -> None:
        input_desc, weight_desc = _pop_descriptors(type(self), kwargs)
        if kwargs:
            raise TypeError(f"Unused keys: {sorted(kwargs)}; {type(self).__name__} accepts quant_desc_input and "
                            "quant_desc_weight")
        self._float_cls.__init__(self, input_size, hidden_size, bias, device, dtype)
        self.init_quantizer(input_desc, weight_desc)

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        is_lstm = self._cell is rnn_f.lstm_cell
        if rnn_f.passes_through(self._input_quantizer) and rnn_f.passes_through(self._weight_quantizer):
            return self._float_cls.forward(self, input, hx)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros) if is_lstm else (zeros,)
        else:
            state = tuple(hx) if is_lstm else (hx,)
            state = tuple(s.unsqueeze(0) for s in state) if unbatched else state
        w_ih, w_hh = rnn_f.quantized_weights(self.weight_ih, self.weight_hh, self._weight_quantizer)
        out = self._cell(x, state, w_ih, w_hh, self.bias_ih, self.bias_hh, self._input_quantizer)
        if unbatched:
            out = tuple(o.squeeze(0) for o in out)
        return out if is_lstm else out[0]


@register_quant_module(nn.LSTMCell)
class QuantLSTMCell(_QuantCellBase, nn.LSTMCell):
    """nn.LSTMCell with one input quantizer (on [x, h]) and one weight quantizer (on [w_ih, w_hh])."""

    _cell = staticmethod(rnn_f.lstm_cell)
    _float_cls = nn.LSTMCell


@register_quant_module(nn.GRUCell)
class QuantGRUCell(_QuantCellBase, nn.GRUCell):
    """nn.GRUCell with one input quantizer (on [x, h]) and one weight quantizer (on [w_ih, w_hh])."""

    _cell = staticmethod(rnn_f.gru_cell)
    _float_cls = nn.GRUCell


# pytorch-quantization's short names.
LSTM = QuantLSTM
LSTMCell = QuantLSTMCell
GRU = QuantGRU
GRUCell = QuantGRUCell
