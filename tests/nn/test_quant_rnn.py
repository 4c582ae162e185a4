"""QuantLSTM / QuantGRU / QuantLSTMCell / QuantGRUCell.

References: torch's own nn.LSTM / nn.GRU (exactly, when every quantizer passes through; within 2 float32 ulps
of the output scale for our python recurrence), and a small independent cell written here from the textbook
equations, with fake quantization of cat([x, h]) and cat([w_ih, w_hh]) as pytorch-quantization defines it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from quantrewrite import QuantDescriptor, quantize_model
from quantrewrite.nn import GRU, LSTM, QuantGRU, QuantGRUCell, QuantLSTM, QuantLSTMCell, TensorQuantizer
from quantrewrite.tensor_quant import fake_tensor_quant

LAYERS = {"lstm": (QuantLSTM, nn.LSTM), "gru": (QuantGRU, nn.GRU)}
CELLS = {"lstm": (QuantLSTMCell, nn.LSTMCell), "gru": (QuantGRUCell, nn.GRUCell)}
SHAPES = {
    "1layer": {},
    "2layers-bidir-batch_first": {"num_layers": 2, "bidirectional": True, "batch_first": True},
    "no-bias": {"bias": False},
}


def quantizers(module: nn.Module) -> list[TensorQuantizer]:
    return [m for m in module.modules() if isinstance(m, TensorQuantizer)]


def pair(kind: str, layers: bool = True, **kwargs):
    quant_cls, float_cls = (LAYERS if layers else CELLS)[kind]
    torch.manual_seed(0)
    quant = quant_cls(5, 7, **kwargs)
    ref = float_cls(5, 7, **kwargs)
    ref.load_state_dict(quant.state_dict())
    return quant, ref


def sequence(kwargs: dict) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 6, 5) if kwargs.get("batch_first") else torch.randn(6, 3, 5)


def run_python_path(module: nn.Module) -> None:
    """Quantizers that calibrate with quantization off: the values pass unchanged, but through our recurrence."""
    for quantizer in quantizers(module):
        quantizer.disable_quant()
        quantizer.enable_calib()


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_disabled_quantizers_equal_torch_exactly(kind, shape):
    quant, ref = pair(kind, **SHAPES[shape])
    for quantizer in quantizers(quant):
        quantizer.disable()
    x = sequence(SHAPES[shape])
    out, hidden = quant(x)
    ref_out, ref_hidden = ref(x)
    assert torch.equal(out, ref_out)
    for h, r in zip(hidden if kind == "lstm" else [hidden], ref_hidden if kind == "lstm" else [ref_hidden]):
        assert torch.equal(h, r)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_python_recurrence_matches_torch(kind, shape, packed):
    kwargs = SHAPES[shape]
    quant, ref = pair(kind, **kwargs)
    run_python_path(quant)
    x = sequence(kwargs)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([6, 2, 4]), batch_first=kwargs.get("batch_first", False),
                                 enforce_sorted=False)
    out, hidden = quant(x)
    ref_out, ref_hidden = ref(x)
    if packed:
        out, ref_out = out.data, ref_out.data
    torch.testing.assert_close(out, ref_out, rtol=0, atol=2e-7)
    hidden = hidden if kind == "lstm" else (hidden,)
    ref_hidden = ref_hidden if kind == "lstm" else (ref_hidden,)
    for h, r in zip(hidden, ref_hidden):
        torch.testing.assert_close(h, r, rtol=0, atol=2e-7)
    assert all(q.calibrator.num_batches > 0 for q in quantizers(quant))  # every gate's quantizers saw data


def reference_cell(kind, x, h, c, w_ih, w_hh, b_ih, b_hh, in_amax, w_amax):
    """Textbook LSTM/GRU step with fake-quantized [x, h] and [w_ih, w_hh] (8-bit, full range)."""
    xh = fake_tensor_quant(torch.cat([x, h], 1), in_amax, 8, False, False)
    xq, hq = xh[:, : x.shape[1]], xh[:, x.shape[1]:]
    w = fake_tensor_quant(torch.cat([w_ih, w_hh], 1), w_amax, 8, False, False)
    wi, wh = w[:, : w_ih.shape[1]], w[:, w_ih.shape[1]:]
    if kind == "lstm":
        g = xq @ wi.T + b_ih + hq @ wh.T + b_hh
        i, f, gg, o = g.chunk(4, 1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        return torch.sigmoid(o) * torch.tanh(c_next), c_next
    gi, gh = xq @ wi.T + b_ih, hq @ wh.T + b_hh
    r = torch.sigmoid(gi[:, :7] + gh[:, :7])
    z = torch.sigmoid(gi[:, 7:14] + gh[:, 7:14])
    n = torch.tanh(gi[:, 14:] + r * gh[:, 14:])
    return (1 - z) * n + z * h, None


@pytest.mark.parametrize("kind", CELLS)
def test_cell_quantizes_like_the_reference(kind):
    quant, _ = pair(kind, layers=False)
    quant._input_quantizer.amax = 2.5
    w_amax = torch.cat([quant.weight_ih, quant.weight_hh], 1).abs().amax(1, keepdim=True)
    quant._weight_quantizer.amax = w_amax
    torch.manual_seed(2)
    x, h, c = torch.randn(4, 5), torch.randn(4, 7), torch.randn(4, 7)
    out = quant(x, (h, c)) if kind == "lstm" else quant(x, h)
    expected = reference_cell(kind, x, h, c, quant.weight_ih, quant.weight_hh, quant.bias_ih, quant.bias_hh,
                              torch.tensor(2.5), w_amax)
    if kind == "lstm":
        torch.testing.assert_close(out[0], expected[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[1], expected[1], rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(out, expected[0], rtol=0, atol=1e-6)
    ref = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(5, 7)
    ref.load_state_dict(quant.state_dict(), strict=False)
    float_out = ref(x, (h, c))[0] if kind == "lstm" else ref(x, h)
    assert not torch.equal(out[0] if kind == "lstm" else out, float_out)  # quantization did change something


@pytest.mark.parametrize("kind", LAYERS)
def test_layer_step_is_the_cell(kind):
    """One layer over a sequence = the quantized cell applied step by step with the layer's quantizers."""
    quant, _ = pair(kind)
    quant._input_quantizers[0].amax = 3.0
    quant._weight_quantizers[0].amax = 0.5
    cell_cls = CELLS[kind][0]
    cell = cell_cls(5, 7, quant_desc_weight=QuantDescriptor(axis=0))
    cell.weight_ih, cell.weight_hh = quant.weight_ih_l0, quant.weight_hh_l0
    cell.bias_ih, cell.bias_hh = quant.bias_ih_l0, quant.bias_hh_l0
    cell._input_quantizer.amax = 3.0
    cell._weight_quantizer = TensorQuantizer(QuantDescriptor(amax=0.5))
    x = sequence({})
    out, _ = quant(x)
    state = (torch.zeros(3, 7), torch.zeros(3, 7)) if kind == "lstm" else torch.zeros(3, 7)
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        step = state[0] if kind == "lstm" else state
        torch.testing.assert_close(out[t], step, rtol=0, atol=0)


def test_state_dict_keys_as_in_pytorch_quantization():
    lstm = QuantLSTM(4, 3, num_layers=2, bidirectional=True)
    for quantizer in quantizers(lstm):
        quantizer.amax = 1.0
    keys = set(lstm.state_dict())
    assert {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_ih_l1_reverse"} <= keys
    assert {f"_input_quantizers.{i}._amax" for i in range(4)} <= keys
    assert {f"_weight_quantizers.{i}._amax" for i in range(4)} <= keys
    cell = QuantLSTMCell(4, 3)
    cell._input_quantizer.amax = 1.0
    assert {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "_input_quantizer._amax"} <= set(cell.state_dict())
    assert LSTM is QuantLSTM and GRU is QuantGRU
    assert isinstance(lstm, nn.LSTM) and isinstance(cell, nn.LSTMCell)


def test_quantize_model_swaps_recurrent_layers_and_keeps_weights():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 7, batch_first=True)
            self.gru = nn.GRU(7, 7)
            self.lstm_cell = nn.LSTMCell(7, 7)
            self.gru_cell = nn.GRUCell(7, 7)

        def forward(self, x):
            y, _ = self.lstm(x)
            y, _ = self.gru(y)
            h, _ = self.lstm_cell(y[:, -1])
            return self.gru_cell(h)

    torch.manual_seed(0)
    net = Net().eval()
    qnet = quantize_model(net, "int8_default")
    assert type(qnet.lstm) is QuantLSTM and type(qnet.gru) is QuantGRU
    assert type(qnet.lstm_cell) is QuantLSTMCell and type(qnet.gru_cell) is QuantGRUCell
    assert torch.equal(qnet.lstm.weight_ih_l0, net.lstm.weight_ih_l0)
    x = torch.randn(2, 4, 5)
    for quantizer in quantizers(qnet):
        quantizer.disable()
    torch.testing.assert_close(qnet(x), net(x), rtol=0, atol=0)


def test_proj_size_is_refused_clearly():
    with pytest.raises(ValueError, match="proj_size=2"):
        QuantLSTM(4, 3, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        QuantLSTM.from_float(nn.LSTM(4, 3, proj_size=2))


def test_from_float_shares_parameters_and_leaves_the_float_module_alone():
    float_lstm = nn.LSTM(4, 3, num_layers=2)
    quant = QuantLSTM.from_float(float_lstm)
    assert quant.weight_hh_l1 is float_lstm.weight_hh_l1
    assert len(quant._input_quantizers) == 2 and not hasattr(float_lstm, "_input_quantizers")
    quant.weight_ih_l0 = nn.Parameter(torch.zeros(12, 4))  # RNNBase rewrites its flat weight list in place
    assert float_lstm._flat_weights[0] is float_lstm.weight_ih_l0


def test_unbatched_input_and_cells_without_state():
    quant, _ref = pair("lstm")
    quant._input_quantizers[0].amax = 4.0
    x = torch.randn(6, 5)
    out, (h, _c) = quant(x)
    assert out.shape == (6, 7) and h.shape == (1, 7)
    cell = QuantGRUCell(5, 7)
    assert cell(torch.randn(5)).shape == (7,)
