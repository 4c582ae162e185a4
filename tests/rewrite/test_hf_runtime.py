"""Hugging Face models (the optional `hf` extra, small random-init configs): no attention scope traces with FX
under transformers 5, so the attention ops (sdpa or the eager matmuls) get their quantizers at run time."""

from __future__ import annotations

import pytest
import torch
from rewrite_toys import sqnr_db
from torch import nn

from quantrewrite import calibrate, disable_quantizers, list_quantizers, quantize_model

transformers = pytest.importorskip("transformers")


def _ids(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 99, shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def bert(seed: int) -> dict:
    ids = _ids(2, 7, seed=seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build(name: str, attn: str = "sdpa") -> tuple[nn.Module, object]:
    """A small model and a function seed -> keyword inputs."""
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
    if name == "bert":
        model, inputs = transformers.BertModel(transformers.BertConfig(vocab_size=99, **small)), bert
    elif name == "vit":
        config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, **small)
        model, inputs = transformers.ViTModel(config), lambda seed: {"pixel_values": _randn(2, 3, 16, 16, seed=seed)}
    elif name == "gpt2":
        config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                         bos_token_id=1, eos_token_id=2)
        model, inputs = transformers.GPT2Model(config), lambda seed: {"input_ids": _ids(2, 7, seed=seed)}
    elif name == "llama":
        config = transformers.LlamaConfig(vocab_size=99, num_key_value_heads=2, max_position_embeddings=64,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2, **small)
        model, inputs = transformers.LlamaModel(config), lambda seed: {"input_ids": _ids(2, 7, seed=seed)}
    else:
        config = transformers.WhisperConfig(
            vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=8,
            max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1)
        model = transformers.WhisperModel(config)
        inputs = lambda seed: {"input_features": _randn(2, 8, 32, seed=seed),
                               "decoder_input_ids": _ids(2, 5, seed=seed)}
    model.config._attn_implementation = attn
    return model.eval(), inputs


def _output(out) -> torch.Tensor:
    return out.last_hidden_state


# attention modules per model: each calls sdpa once (Whisper: 2 encoder, 2 decoder self, 2 decoder cross)
ATTENTIONS = {"bert": 2, "vit": 2, "gpt2": 2, "llama": 2, "whisper": 6}


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_attention_gets_run_time_quantizers_calibrates_and_disables_to_float(name):
    model, inputs = build(name)
    qmodel = quantize_model(model, "int8_max", example_inputs=inputs(1))
    runtime = [e for e in qmodel.quant_plan.functions() if e.runtime and e.quantized]
    assert [e.target for e in runtime] == ["sdpa"] * ATTENTIONS[name]
    quantizers = list_quantizers(qmodel)
    for entry in runtime:
        owner = entry.name.rsplit(".", 1)[0]
        assert "Attention" in type(qmodel.get_submodule(owner)).__name__
        assert entry.quantizers == tuple(f"{entry.name}_{s}_quantizer" for s in ("input", "input1", "input2"))
        assert all(q in quantizers for q in entry.quantizers)

    result = calibrate(qmodel, [inputs(1), inputs(2)], progress=False)
    assert result.no_data == []
    state = qmodel.state_dict()
    assert all(q in result.calibrated and f"{q}._amax" in state for entry in runtime for q in entry.quantizers)
    with torch.no_grad():
        reference, out = _output(model(**inputs(3))), _output(qmodel(**inputs(3)))
    assert not torch.equal(out, reference)
    assert sqnr_db(reference, out) > 25

    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        assert torch.equal(_output(qmodel(**inputs(3))), reference)
    assert torch._C._len_torch_function_stack() == 0


def test_eager_attention_matmuls_are_named_as_in_a_trace():
    model, inputs = build("bert", attn="eager")
    qmodel = quantize_model(model, "int8_max", example_inputs=inputs(1))
    sites = [e.name for e in qmodel.quant_plan.functions() if e.runtime and e.quantized]
    assert sites == [f"encoder.layer.{i}.attention.self.{op}" for i in (0, 1) for op in ("matmul", "matmul_1")]
    assert "encoder.layer.1.attention.self.matmul_1_input1_quantizer" in list_quantizers(qmodel)
    fresh = quantize_model(build("bert", attn="eager")[0], "int8_max", example_inputs=inputs(2))
    calibrate(qmodel, [inputs(1)], progress=False)
    fresh.load_state_dict(qmodel.state_dict())
    with torch.no_grad():
        assert torch.equal(_output(fresh(**inputs(3))), _output(qmodel(**inputs(3))))


class Positional(nn.Module):
    """Keyword-only HF forward behind positional inputs, for the exporter."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return _output(self.model(**dict(zip(self.keys, args))))


EXPORTS = [pytest.param("bert", "sdpa", "torchscript", id="bert"),
           pytest.param("gpt2", "sdpa", "torchscript", id="gpt2"),
           pytest.param("vit", "sdpa", "torchscript", id="vit", marks=pytest.mark.slow),
           pytest.param("whisper", "sdpa", "torchscript", id="whisper", marks=pytest.mark.slow),
           # torch's TorchScript exporter has no sdpa with enable_gqa (LLaMA's grouped kv heads)
           pytest.param("llama", "eager", "torchscript", id="llama-eager", marks=pytest.mark.slow),
           pytest.param("llama", "sdpa", "dynamo", id="llama-dynamo", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "attn", "exporter"), EXPORTS)
def test_export_carries_the_attention_quantizers(name, attn, exporter, tmp_path):
    pytest.importorskip("onnxruntime")
    from quantrewrite.export import export_onnx

    model, inputs = build(name, attn)
    qmodel = quantize_model(model, "int8_max", example_inputs=inputs(1))
    calibrate(qmodel, [inputs(1), inputs(2)], progress=False)
    runtime = [q for e in qmodel.quant_plan.functions() if e.runtime and e.quantized for q in e.quantizers]
    example = inputs(3)
    report = export_onnx(Positional(qmodel, list(example)).eval(), tuple(example.values()), tmp_path / "m.onnx",
                         exporter=exporter, opset=17 if exporter == "torchscript" else 18)
    assert report.passed
    assert {f"model.{q}" for q in runtime} <= set(report.quantizers)
