"""quantrewrite quickstart: quantize a small residual CNN, calibrate it, and compare it with the float model.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import torch

import quantrewrite
from quantrewrite.models import ResidualCNN


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    noise = (reference - test).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise.clamp_min(1e-30)))


def main() -> None:
    torch.manual_seed(0)
    model = ResidualCNN(num_blocks=4, width=16).eval()
    batches = [torch.randn(8, 3, 32, 32) for _ in range(4)]

    config = {
        "version": 1,
        "defaults": {"input": {"calib_method": "histogram"}, "weight": {"axis": 0}},
        "functions": {"add": {"quantize": True}},   # quantize the residual adds too
        "disable": ["fc._input_quantizer"],
    }
    print(quantrewrite.plan(model, config))          # the dry run: what will happen, and why
    qmodel = quantrewrite.quantize_model(model, config)

    # Calibrate: collect statistics with quantization off, then load the ranges.
    quantizers = quantrewrite.list_quantizers(qmodel)
    for quantizer in quantizers.values():
        quantizer.disable_quant()
        quantizer.enable_calib()
    with torch.no_grad():
        for batch in batches:
            qmodel(batch)
    for quantizer in quantizers.values():
        method = None if quantizer.quant_desc.calib_method == "max" else "percentile"
        quantizer.load_calib_amax(method, strict=False)
        quantizer.disable_calib()
        quantizer.enable_quant()

    print()
    print(quantrewrite.summary(qmodel))
    with torch.no_grad():
        test = torch.randn(16, 3, 32, 32)
        print(f"\noutput SQNR of the int8 model vs float: {sqnr_db(model(test), qmodel(test)):.1f} dB")


if __name__ == "__main__":
    main()
