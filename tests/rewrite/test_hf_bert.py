"""A small random-init HF BERT (the optional `hf` extra): quantize_model must not raise, every nn.Linear
becomes a QuantLinear, and the output stays close to float."""

from __future__ import annotations

import pytest
import torch
from rewrite_toys import sqnr_db
from torch import nn

from quantrewrite import disable_quantizers, list_quantizers, quantize_model
from quantrewrite.nn import modules as qnn

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37)
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cfg", [None, {"version": 1, "functions": {"add": {"quantize": True}}}],
                         ids=["int8_default", "residual-adds-too"])
def test_bert_quantizes_every_linear_and_stays_close(bert, input_ids, cfg):
    qmodel = quantize_model(bert, cfg)
    linears = [name for name, m in bert.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 6 + 1  # q, k, v, attention output, intermediate, output per layer; pooler
    for name in linears:
        assert type(qmodel.get_submodule(name)) is qnn.QuantLinear, name
        assert torch.equal(qmodel.get_submodule(name).weight, bert.get_submodule(name).weight)
    untraced = qmodel.quant_plan.untraced
    assert "" in untraced  # HF's forward does not trace with plain FX: the fallback did the work

    with torch.no_grad():
        reference = bert(input_ids).last_hidden_state
        out = qmodel(input_ids).last_hidden_state
    sqnr = sqnr_db(reference, out)
    print(f"BERT last_hidden_state SQNR ({cfg and 'adds' or 'int8_default'}): {sqnr:.1f} dB")
    assert not torch.equal(out, reference)
    assert sqnr > 15

    assert disable_quantizers(qmodel, "*") == list(list_quantizers(qmodel))
    with torch.no_grad():
        assert torch.equal(qmodel(input_ids).last_hidden_state, reference)


def test_bert_layers_in_a_module_list_get_their_functional_ops_quantized(bert):
    qmodel = quantize_model(bert, {"version": 1, "functions": {"add": {"quantize": True}}})
    quantizers = list_quantizers(qmodel)
    for layer in ("encoder.layer.0", "encoder.layer.1"):
        for owner in ("attention.output", "output"):  # the residual adds before each LayerNorm
            assert f"{layer}.{owner}.add_input_quantizer" in quantizers
            assert f"{layer}.{owner}.add_input1_quantizer" in quantizers
