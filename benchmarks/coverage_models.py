"""The 17 architectures of ``bench_coverage.py``: small configs, random init with a fixed seed, nothing downloaded.

Each builder returns a ``CoverageCase``: the float model in eval mode, a function seed -> keyword inputs (the
form a calibration batch and ``export_onnx(..., kwargs=...)`` take), and whether it is a Hugging Face model
(whose attention matmuls the benchmark expects to be quantized). Hugging Face models need the ``hf`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Inputs = Callable[[int], dict[str, torch.Tensor]]
SEQ = 7
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclass
class CoverageCase:
    name: str
    model: nn.Module
    inputs: Inputs
    hf: bool


def _ids(seed: int, length: int = SEQ) -> torch.Tensor:
    return torch.randint(3, 99, (2, length), generator=torch.Generator().manual_seed(seed))


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text(seed: int) -> dict[str, torch.Tensor]:
    ids = _ids(seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _pixels(size: int) -> Inputs:
    return lambda seed: {"pixel_values": _randn(seed, 2, 3, size, size)}


def _hf(name: str, model: nn.Module, inputs: Inputs) -> CoverageCase:
    return CoverageCase(name, model.eval(), inputs, hf=True)


def bert() -> CoverageCase:
    import transformers as t

    return _hf("bert", t.BertModel(t.BertConfig(vocab_size=99, **SMALL)), _text)


def roberta() -> CoverageCase:
    import transformers as t

    config = t.RobertaConfig(vocab_size=99, max_position_embeddings=32, **SMALL, **TOKENS)
    return _hf("roberta", t.RobertaModel(config), _text)


def distilbert() -> CoverageCase:
    import transformers as t

    config = t.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
    return _hf("distilbert", t.DistilBertModel(config), _text)


def gpt2() -> CoverageCase:
    import transformers as t

    config = t.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=32, **TOKENS)
    return _hf("gpt2", t.GPT2Model(config), lambda seed: {"input_ids": _ids(seed), "use_cache": False})


def llama() -> CoverageCase:
    import transformers as t

    config = t.LlamaConfig(vocab_size=99, num_key_value_heads=2, max_position_embeddings=64, **SMALL, **TOKENS)
    return _hf("llama", t.LlamaModel(config), lambda seed: {"input_ids": _ids(seed), "use_cache": False})


def t5() -> CoverageCase:
    import transformers as t

    config = t.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                        decoder_start_token_id=0, **TOKENS)
    return _hf("t5", t.T5Model(config), lambda seed: {"input_ids": _ids(seed), "decoder_input_ids": _ids(seed + 50, 5),
                                                      "use_cache": False})


def vit() -> CoverageCase:
    import transformers as t

    return _hf("vit", t.ViTModel(t.ViTConfig(image_size=16, patch_size=4, num_channels=3, **SMALL)), _pixels(16))


def swin() -> CoverageCase:
    import transformers as t

    config = t.SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1],
                          num_heads=[2, 4], window_size=4)
    return _hf("swin", t.SwinModel(config), _pixels(32))


def convnext() -> CoverageCase:
    import transformers as t

    config = t.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=4,
                              image_size=32)
    return _hf("convnext", t.ConvNextModel(config), _pixels(32))


def whisper() -> CoverageCase:
    import transformers as t

    config = t.WhisperConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                             decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=8,
                             max_source_positions=16, max_target_positions=16, decoder_start_token_id=1, **TOKENS)
    return _hf("whisper", t.WhisperModel(config), lambda seed: {
        "input_features": _randn(seed, 2, 8, 32), "decoder_input_ids": _ids(seed + 50, 5), "use_cache": False})


def wav2vec2() -> CoverageCase:
    import transformers as t

    config = t.Wav2Vec2Config(vocab_size=32, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **SMALL)
    return _hf("wav2vec2", t.Wav2Vec2Model(config), lambda seed: {"input_values": _randn(seed, 2, 400)})


def clip() -> CoverageCase:
    import transformers as t

    text = {"vocab_size": 99, "max_position_embeddings": 16, **SMALL, **TOKENS}
    vision = {"image_size": 16, "patch_size": 4, **SMALL}
    config = t.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return _hf("clip", t.CLIPModel(config), lambda seed: {**_text(seed), **_pixels(16)(seed)})


def transformer() -> CoverageCase:
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=37,
                           dropout=0.0, batch_first=True)
    return CoverageCase("nn.Transformer", model.eval(),
                        lambda seed: {"src": _randn(seed, 2, SEQ, 32), "tgt": _randn(seed + 50, 2, 5, 32)}, hf=False)


def transformer_encoder() -> CoverageCase:
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=37, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    return CoverageCase("nn.TransformerEncoder", model.eval(), lambda seed: {"src": _randn(seed, 2, SEQ, 32)},
                        hf=False)


class RecurrentTagger(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM or GRU -> Linear head."""

    def __init__(self, cell: type[nn.RNNBase]):
        super().__init__()
        self.embed = nn.Embedding(99, 16)
        self.rnn = cell(16, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 10)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(input_ids))[0])


def lstm() -> CoverageCase:
    return CoverageCase("lstm", RecurrentTagger(nn.LSTM).eval(), lambda seed: {"input_ids": _ids(seed)}, hf=False)


def gru() -> CoverageCase:
    return CoverageCase("gru", RecurrentTagger(nn.GRU).eval(), lambda seed: {"input_ids": _ids(seed)}, hf=False)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Two-level U-Net: conv blocks, max-pool down, transposed-conv up, skip connections by concatenation."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.down1, self.down2 = _block(3, channels), _block(channels, 2 * channels)
        self.pool = nn.MaxPool2d(2)
        self.bottom = _block(2 * channels, 4 * channels)
        self.up2 = nn.ConvTranspose2d(4 * channels, 2 * channels, 2, stride=2)
        self.dec2 = _block(4 * channels, 2 * channels)
        self.up1 = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.dec1 = _block(2 * channels, channels)
        self.out = nn.Conv2d(channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.out(u1)


def unet() -> CoverageCase:
    return CoverageCase("unet", UNet().eval(), lambda seed: {"x": _randn(seed, 2, 3, 32, 32)}, hf=False)


BUILDERS: dict[str, Callable[[], CoverageCase]] = {
    "bert": bert, "roberta": roberta, "distilbert": distilbert, "gpt2": gpt2, "llama": llama, "t5": t5,
    "vit": vit, "swin": swin, "convnext": convnext, "whisper": whisper, "wav2vec2": wav2vec2, "clip": clip,
    "transformer": transformer, "transformer_encoder": transformer_encoder, "lstm": lstm, "gru": gru,
    "unet": unet,
}


def build(name: str, seed: int = 0) -> CoverageCase:
    """The case called ``name`` (a key of BUILDERS), its weights drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return BUILDERS[name]()
