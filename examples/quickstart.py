"""quantrewrite quickstart: the path the README recommends, on a small residual CNN.

1. ``plan`` (a dry run) and ``quantize_model``: the Quant twin of the model;
2. ``calibrate``: run a few batches, set every quantizer's range;
3. compare with the float model;
4. ``export_onnx``: QuantizeLinear/DequantizeLinear pairs, checked in onnxruntime (the ``onnx`` extra;
   skipped with a note without it);
5. ``save_recipe`` / ``load_recipe``: the config and every range in a readable file, applied to a fresh model.

Run: python examples/quickstart.py [OUTPUT_DIR]   (default: a temporary folder, removed at the end)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

import quantrewrite
from quantrewrite.models import ResidualCNN


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    noise = (reference - test).pow(2).mean()
    return float(10 * torch.log10(reference.pow(2).mean() / noise.clamp_min(1e-30)))


def run(output_dir: Path) -> dict[str, float]:
    """The whole quickstart, writing its files to ``output_dir``; returns the figures it printed."""
    torch.manual_seed(0)
    model = ResidualCNN(num_blocks=4, width=16).eval()
    batches = [torch.randn(8, 3, 32, 32) for _ in range(8)]  # your calibration data
    test = torch.randn(16, 3, 32, 32)  # data the calibration never saw

    # 1. Quantize: the preset int8_default (per-channel weights, histogram-calibrated inputs).
    print(quantrewrite.plan(model, "int8_default"))  # the dry run: what will happen, and why
    qmodel = quantrewrite.quantize_model(model, "int8_default")

    # 2. Calibrate: no hand-written loop; quantizers that saw no batch are named in result.no_data.
    #    method="percentile" needs one statistics pass; the default, "auto", also tries max, mse and entropy
    #    per quantizer and keeps the one with the least error at its layer's output (slower).
    result = quantrewrite.calibrate(qmodel, batches, method="percentile")
    print(f"\ncalibrated {len(result.calibrated)} quantizers on {result.batches} batches "
          f"(method {result.method}); no data: {result.no_data or 'none'}")
    print(quantrewrite.summary(qmodel))

    # 3. Compare with the float model.
    with torch.no_grad():
        reference, quantized = model(test), qmodel(test)
    figures = {"sqnr_db": sqnr_db(reference, quantized)}
    print(f"\noutput SQNR of the int8 model vs float: {figures['sqnr_db']:.1f} dB")

    # 4. Export to ONNX and check the file in onnxruntime.
    if importlib.util.find_spec("onnxruntime") is None:
        print("\nONNX export skipped: install the onnx extra (pip install 'quantrewrite[onnx]')")
    else:
        report = quantrewrite.export_onnx(qmodel, batches[0], output_dir / "quickstart.onnx")
        print(f"\n{report}")
        figures["onnx_max_abs_diff"] = report.max_abs_diff

    # 5. Keep the recipe (config + every range, no weights); apply it to the float model again: the same
    #    quantized model, without calibration data.
    recipe = output_dir / "quickstart.recipe.yaml"
    quantrewrite.save_recipe(qmodel, recipe)
    rebuilt = quantrewrite.load_recipe(model, recipe)
    with torch.no_grad():
        figures["recipe_max_abs_diff"] = float((rebuilt(test) - quantized).abs().max())
    print(f"\nrecipe written to {recipe.name}; the model rebuilt from it differs by at most "
          f"{figures['recipe_max_abs_diff']:.3g}")
    return figures


def main(argv: list[str]) -> None:
    if argv:
        Path(argv[0]).mkdir(parents=True, exist_ok=True)
        run(Path(argv[0]))
        return
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder))


if __name__ == "__main__":
    main(sys.argv[1:])
