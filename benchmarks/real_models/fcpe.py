"""torchfcpe's bundled pitch estimator (FCPE), fed harmonic tones whose f0 is known.

Data: 1-second harmonic tones (five partials, decaying amplitudes, a little noise) at log-uniform f0 in
80-800 Hz, at the model's sample rate; calibration and test tones come from different seeds. The mel
spectrogram is computed in float outside the quantized part (``infer_model.model``, the network). Metric:
mean absolute error in cents against the true f0 over frames away from the edges (primary, lower is
better).
"""

from __future__ import annotations

import math

import torch

from benchmarks.real_models import stubs
from benchmarks.real_models.case import Case

BATCH = 4
F0_RANGE = (80.0, 800.0)


def build():
    """(the network to quantize, the bundled inference wrapper that owns the mel extractor)."""
    stubs.install()
    from torchfcpe import spawn_bundled_infer_model

    wrapper = spawn_bundled_infer_model(device="cpu").eval()
    return wrapper.model.eval(), wrapper


def tones(count: int, seed: int, sr: int, seconds: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(waves [count, samples, 1], f0 [count]) of harmonic tones with known f0."""
    generator = torch.Generator().manual_seed(seed)
    low, high = math.log(F0_RANGE[0]), math.log(F0_RANGE[1])
    f0 = torch.exp(low + (high - low) * torch.rand(count, generator=generator))
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    waves = torch.zeros(count, t.numel(), dtype=torch.float64)
    for k in range(1, 6):
        phase = 2 * math.pi * torch.rand(count, 1, generator=generator, dtype=torch.float64)
        partial = torch.sin(2 * math.pi * k * f0[:, None].double() * t[None] + phase) / k
        waves += torch.where(k * f0[:, None] < sr / 2, partial, torch.zeros_like(partial))
    waves = 0.3 * waves / waves.abs().amax(dim=1, keepdim=True)
    waves += 0.003 * torch.randn(waves.shape, generator=generator, dtype=torch.float64)
    return waves.float().unsqueeze(-1), f0


def load(calib_tones: int = 16, test_tones: int = 16) -> Case:
    model, wrapper = build()
    sr = wrapper.get_model_sr()
    with torch.no_grad():
        def mels(waves: torch.Tensor) -> list[torch.Tensor]:
            return [wrapper.wav2mel(w, sr) for w in waves.split(BATCH)]

        calib_waves, _ = tones(calib_tones, seed=0, sr=sr)
        test_waves, test_f0 = tones(test_tones, seed=1, sr=sr)
        calib, test = mels(calib_waves), mels(test_waves)

    def forward(m: torch.nn.Module, mel: torch.Tensor) -> torch.Tensor:
        return m.infer(mel, decoder="local_argmax", threshold=0.006)

    def metrics(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
        f0 = torch.cat(outputs).squeeze(-1)[:, 5:-5].double()  # [tones, frames]
        truth = test_f0[:, None].double()
        cents = 1200 * torch.log2(f0.clamp(min=1.0) / truth).abs()
        agree = (torch.cat(outputs) - torch.cat(reference)).abs().squeeze(-1)[:, 5:-5]
        return {"mean cents error": cents.mean().item(),
                "frames > 50 cents %": 100 * (cents > 50).double().mean().item(),
                "frames = fp32 %": 100 * (agree < 1e-3).double().mean().item()}

    return Case("torchfcpe", model, calib, test, metrics, higher_is_better=False, forward=forward,
                note=f"{calib_tones} calib / {test_tones} test harmonic tones, f0 80-800 Hz; cents vs true f0")
