"""Small calibrated models shared by the sensitivity, fallback, plot and QAT tests."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from quantrewrite import calibrate, list_quantizers, quantize_model
from quantrewrite.config import QuantConfig, load_config
from quantrewrite.demo_model import digits_tensors, load_digits_cnn


def digits_config(preset: str = "int8_max", **input_fields) -> QuantConfig:
    """``preset`` with the residual add quantized (7 layers on DigitsCNN: 5 modules, add, pooling)."""
    data = load_config(preset).to_dict()
    data["functions"]["add"] = {"quantize": True}
    data["defaults"]["input"].update(input_fields)
    return QuantConfig(data, source=f"{preset} + add")


def digits_data(count: int = 32, batch: int = 16, split: str = "test") -> list[torch.Tensor]:
    images, _ = digits_tensors(split)
    return list(images[:count].split(batch))


def calibrated_digits(config: QuantConfig | str | None = None, method: str = "entropy") -> tuple[nn.Module, nn.Module]:
    """(float DigitsCNN, its quantized twin calibrated on 32 train images)."""
    model = load_digits_cnn()
    qmodel = quantize_model(model, config if config is not None else digits_config())
    calibrate(qmodel, digits_data(split="train"), method=method, progress=False)
    qmodel.eval()
    return model, qmodel


@contextlib.contextmanager
def one_thread():
    """Tiny models run faster single-threaded, far faster on a busy machine (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sqnr(reference: torch.Tensor, output: torch.Tensor) -> float:
    """The independent reference: 10 log10(sum ref^2 / sum (ref - out)^2), float64."""
    noise = float((reference.double() - output.double()).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(reference.double().pow(2).sum()) / noise)


def outputs(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in batches])


def with_only(qmodel: nn.Module, enabled: set[str]) -> dict[str, bool]:
    """Enable exactly ``enabled`` (by quantizer name); returns the previous states."""
    quantizers = list_quantizers(qmodel)
    before = {n: q.is_enabled for n, q in quantizers.items()}
    for name, quantizer in quantizers.items():
        if name in enabled:
            quantizer.enable()
        else:
            quantizer.disable()
    return before


def states(qmodel: nn.Module) -> dict[str, bool]:
    return {n: q.is_enabled for n, q in list_quantizers(qmodel).items()}


class TwoInputs(nn.Module):
    """Two linears on two different tensors: a shared-range group's members see different ranges."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x, y):
        return self.a(x) + self.b(y)
