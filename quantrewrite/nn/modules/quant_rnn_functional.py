"""The recurrences behind QuantLSTM/QuantGRU and their cells, in plain torch ops with quantizers.

Each gate matmul of a step sees quantized operands, as in pytorch-quantization: ONE input quantizer takes the
step's input and the previous hidden state together (``cat([x_t, h], 1)``: they share a range, as they feed
one fused GEMM at inference) and ONE weight quantizer takes ``cat([w_ih, w_hh], 1)`` (quantized once per
forward). When the input quantizer passes its input through unchanged, the input projection of the whole
sequence is one matmul, as torch does on CPU.

The gate arithmetic follows ATen's CPU cells operation by operation (the same order of additions and
in-place activations), so with pass-through quantizers the results match ``nn.LSTM``/``nn.GRU`` closely; the
Quant modules call torch's own float implementation in that case, which is exact by construction.

Sequences: a padded tensor [T, B, F] (every row has T steps) or the data of a PackedSequence (rows sorted by
length, ``batch_sizes[t]`` rows active at step t). A row that ends keeps its last state as its final state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from quantrewrite.nn.modules.tensor_quantizer import TensorQuantizer

__all__ = ["gru_cell", "lstm_cell", "passes_through", "quantized_weights", "run_direction"]

State = tuple[torch.Tensor, ...]


def passes_through(quantizer: TensorQuantizer) -> bool:
    """True when calling the quantizer returns its input unchanged and records nothing."""
    if quantizer.pre_quant_scale is not None:
        return False
    if not quantizer.is_enabled:
        return True
    return not (quantizer.is_quant_enabled or quantizer.is_calib_enabled or quantizer.is_clip_enabled)


def quantized_weights(w_ih: torch.Tensor, w_hh: torch.Tensor,
                      quantizer: TensorQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_ih, w_hh) through one quantizer call on their concatenation along dim 1."""
    if passes_through(quantizer):
        return w_ih, w_hh
    fused = quantizer(torch.cat([w_ih, w_hh], 1))
    return fused[:, : w_ih.shape[1]], fused[:, w_ih.shape[1]:]


def _quantized_step_inputs(x: torch.Tensor, h: torch.Tensor,
                           quantizer: TensorQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    fused = quantizer(torch.cat([x, h], 1))
    return fused[:, : x.shape[1]], fused[:, x.shape[1]:]


def lstm_cell(x: torch.Tensor, state: State, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
              b_hh: torch.Tensor | None, input_quantizer: TensorQuantizer | None,
              x_projected: bool = False) -> State:
    """One LSTM step. ``x`` is the raw input, or ``x @ w_ih.T + b_ih`` when ``x_projected``."""
    h, c = state
    if input_quantizer is not None and not x_projected:
        x, h = _quantized_step_inputs(x, h, input_quantizer)
    gates = F.linear(h, w_hh, b_hh).add_(x if x_projected else F.linear(x, w_ih, b_ih))
    ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
    ingate = ingate.sigmoid()
    forgetgate = forgetgate.sigmoid()
    cellgate = cellgate.tanh()
    outgate = outgate.sigmoid()
    c_next = (forgetgate * c).add_(ingate * cellgate)
    h_next = outgate * c_next.tanh()
    return h_next, c_next


def gru_cell(x: torch.Tensor, state: State, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
             b_hh: torch.Tensor | None, input_quantizer: TensorQuantizer | None, x_projected: bool = False) -> State:
    """One GRU step (reset gate applied to the hidden projection, as torch does)."""
    (h,) = state
    h_in = h
    if input_quantizer is not None and not x_projected:
        x, h_in = _quantized_step_inputs(x, h, input_quantizer)
    i_r, i_z, i_n = (x if x_projected else F.linear(x, w_ih, b_ih)).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h_in, w_hh, b_hh).chunk(3, 1)
    reset = (h_r + i_r).sigmoid()
    update = (h_z + i_z).sigmoid()
    new = i_n.add(h_n * reset).tanh()
    return ((h - new).mul_(update).add_(new),)


Cell = Callable[..., State]


def run_direction(cell: Cell, steps: list[torch.Tensor], state: State, weights: tuple, input_quantizer,
                  x_projected: bool, reverse: bool, packed: bool = False) -> tuple[list[torch.Tensor], State]:
    """Run ``cell`` over the steps (each [rows_t, F]; with ``packed``, rows never grow in time, else every step
    has every row); returns the hidden output of every step (in time order) and the final state of every row.
    Padded sequences read no sizes (an ONNX trace of them carries no shape-dependent branch)."""
    outputs: list[torch.Tensor | None] = [None] * len(steps)
    if not packed:
        order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
        for t in order:
            state = cell(steps[t], state, *weights, input_quantizer, x_projected)
            outputs[t] = state[0]
        return outputs, state
    if not reverse:
        finished: list[State] = []
        for t, x in enumerate(steps):
            rows = x.shape[0]
            if rows < state[0].shape[0]:
                finished.append(tuple(s[rows:] for s in state))
                state = tuple(s[:rows] for s in state)
            state = cell(x, state, *weights, input_quantizer, x_projected)
            outputs[t] = state[0]
        for piece in reversed(finished):
            state = tuple(torch.cat([s, p], 0) for s, p in zip(state, piece))
        return outputs, state
    initial = state
    state = tuple(s[: steps[-1].shape[0]] for s in initial)
    for t in range(len(steps) - 1, -1, -1):
        x = steps[t]
        rows, have = x.shape[0], state[0].shape[0]
        if rows > have:
            state = tuple(torch.cat([s, s0[have:rows]], 0) for s, s0 in zip(state, initial))
        state = cell(x, state, *weights, input_quantizer, x_projected)
        outputs[t] = state[0]
    return outputs, state
