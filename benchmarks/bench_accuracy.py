"""Accuracy of the demo's DigitsCNN after quantization: quantrewrite's calibration methods vs torch.ao FX.

Run: python benchmarks/bench_accuracy.py

Printed, all measured in this one run on the shipped digits (calibration: the demo's 8 batches of 64 train
images; evaluation: the 397 test images):

1. The demo's table (``quantrewrite.demo.accuracy_rows``): fp32, int8 and w4a8 with max / entropy /
   percentile / mse calibration, with a peer row for torch.ao FX graph mode (``prepare_fx`` with
   ``get_default_qconfig_mapping("x86")``, calibrated on the same batches, ``convert_to_reference_fx``: the
   reference model simulates its int8 numerics in float). SQNR is of the test logits against fp32.
2. Per-layer SQNR of the int8 entropy model, from forward hooks: each quantized layer's output against its
   float twin's, both in their own model ("end to end": errors of the layers before it included), and the
   quantized layer run on the float layer's input ("alone": its own error only).
3. The effect of the demo config's stem rule (max calibration for the raw-pixel input) per method.

Note on the peer: torch.ao's x86 default quantizes activations to quint8 with reduce_range (7 bits of range)
with a HistogramObserver, weights per-channel qint8, and folds BatchNorm into the convolutions first;
quantrewrite keeps BatchNorm (TensorRT folds it when building the engine) and quantizes activations to 8 bits.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

from quantrewrite.api import quantize_model
from quantrewrite.calibration import calibrate
from quantrewrite.config import QuantConfig
from quantrewrite.demo import (
    CALIB_BATCH_SIZE,
    CALIB_BATCHES,
    METHODS,
    DemoRow,
    accuracy_rows,
    demo_config,
    format_table,
    sqnr_db,
)
from quantrewrite.demo_model import digits_batches, digits_tensors, load_digits_cnn


def torch_ao_row(model: nn.Module, batches: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                 reference: torch.Tensor) -> DemoRow:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_to_reference_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (batches[0],))
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        seconds = time.perf_counter() - start  # the calibration loop only, as for quantrewrite's rows
        converted = convert_to_reference_fx(prepared)
        with torch.no_grad():
            logits = converted(images)
    return DemoRow("torch.ao x86", "HistogramObserver", float((logits.argmax(1) == labels).float().mean()),
                   sqnr_db(reference, logits), seconds, model=converted, logits=logits)


def per_layer_sqnr(model: nn.Module, qmodel: nn.Module, images: torch.Tensor) -> list[tuple[str, str, float, float]]:
    """(name, type, end-to-end SQNR, alone SQNR) of every quantized module, in plan order."""
    names = [e.name for e in qmodel.quant_plan.modules() if e.quantized]
    float_in, float_out, quant_out = {}, {}, {}
    handles = []
    for name in names:
        def keep_float(module, args, output, name=name):
            float_in[name], float_out[name] = args, output

        def keep_quant(module, args, output, name=name):
            quant_out[name] = output

        handles.append(model.get_submodule(name).register_forward_hook(keep_float))
        handles.append(qmodel.get_submodule(name).register_forward_hook(keep_quant))
    try:
        with torch.no_grad():
            model(images)
            qmodel(images)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    with torch.no_grad():
        for name in names:
            layer = qmodel.get_submodule(name)
            alone = layer(*float_in[name])
            rows.append((name, type(layer).__name__, sqnr_db(float_out[name], quant_out[name]),
                         sqnr_db(float_out[name], alone)))
    return rows


def stem_rule_rows(batches: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                   reference: torch.Tensor) -> list[DemoRow]:
    model = load_digits_cnn()
    rows = []
    for method in METHODS[1:]:
        data = demo_config("int8", method).to_dict()
        data["layers"] = [rule for rule in data["layers"] if rule.get("match") != "stem"]
        qmodel = quantize_model(model, QuantConfig(data, source="no stem rule"))
        result = calibrate(qmodel, batches, method=method, progress=False)
        with torch.no_grad():
            logits = qmodel(images)
        stem_amax = float(qmodel.stem._input_quantizer.amax)
        rows.append(DemoRow("int8, no stem rule", f"{method} (stem amax {stem_amax:.4g})",
                            float((logits.argmax(1) == labels).float().mean()), sqnr_db(reference, logits),
                            result.seconds))
    return rows


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give (as in the demo)
    start = time.perf_counter()
    images, labels = digits_tensors("test")
    batches = digits_batches("train", CALIB_BATCH_SIZE)[:CALIB_BATCHES]
    rows = accuracy_rows()
    fp32 = rows[0]
    rows.append(torch_ao_row(load_digits_cnn(), batches, images, labels, fp32.logits))
    print(f"DigitsCNN on the UCI digits: {len(images)} test images, calibration on {len(batches)} train batches "
          f"of {CALIB_BATCH_SIZE}; SQNR of the test logits vs fp32\n")
    print(format_table(rows))
    print("(calib s: wall time of the calibration alone, amax computation included; noisy on a busy machine)")

    entropy = next(r for r in rows if r.config == "int8" and r.method == "entropy")
    print("\nper-layer SQNR (dB) of the int8 entropy model vs its float twin (forward hooks):")
    layer_rows = per_layer_sqnr(fp32.model, entropy.model, images)
    width = max(len(name) for name, *_ in layer_rows)
    print(f"{'layer':<{width}}  {'type':<12}  {'end to end':>10}  {'alone':>6}")
    print(f"{'-' * width}  {'-' * 12}  {'-' * 10}  {'-' * 6}")
    for name, kind, end_to_end, alone in layer_rows:
        print(f"{name:<{width}}  {kind:<12}  {end_to_end:>10.1f}  {alone:>6.1f}")
    print(f"{'(logits)':<{width}}  {'':<12}  {entropy.sqnr_db:>10.1f}")

    print("\nwithout the demo config's stem rule (the raw-pixel input calibrated by the histogram method too):")
    print(format_table(stem_rule_rows(batches, images, labels, fp32.logits)))
    print(f"\nbenchmark done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
