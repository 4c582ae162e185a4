"""Functional ops inside untraced scopes: what run-time quantization gives on HF models and user control flow.

Run: python benchmarks/bench_untraced.py   (needs the `hf` and `onnx` extras)

For BERT, ViT, GPT-2, LLaMA and Whisper from small random-init configs (sdpa attention, transformers'
default; LLaMA also with eager attention) and a user model with data-dependent control flow, all measured in
this one run: the untraced scopes, the functional-op quantizers created at run time (with the op sites they
serve), the output SQNR against float after int8_max calibration on two batches (evaluated on a third), whether
the output equals float exactly with every quantizer disabled, ONNX export verification (TorchScript
exporter; LLaMA with sdpa needs the dynamo exporter: the TorchScript one has no sdpa with enable_gqa), and the
eval-mode forward time of the quantized model relative to the same model quantized without example inputs
(no run-time interception), measured side by side.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from quantrewrite import calibrate, disable_quantizers, quantize_model
from quantrewrite.export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "rewrite"))
from test_hf_runtime import Positional, build
from test_runtime_ops import Router


def _sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).double().pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise))


class _Kw(nn.Module):
    """The user model behind the same keyword interface as the HF builders."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return _Out(self.model(x))


class _Out:
    def __init__(self, tensor: torch.Tensor):
        self.last_hidden_state = tensor


def _router() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    return Router().eval(), lambda seed: {"x": torch.randn(4, 3, 4, generator=torch.Generator().manual_seed(seed))}


def _time(model: nn.Module, inputs: dict, rounds: int = 20) -> float:
    with torch.no_grad():
        model(**inputs)
        start = time.perf_counter()
        for _ in range(rounds):
            model(**inputs)
    return time.perf_counter() - start


def run(label: str, model: nn.Module, inputs, exporter: str, tmp: Path) -> str:
    user = isinstance(model, Router)
    qmodel = quantize_model(model, "int8_max", example_inputs=inputs(1))
    plain = quantize_model(model, "int8_max")
    runtime = [e for e in qmodel.quant_plan.functions() if e.runtime and e.quantized]
    quantizers = [q for e in runtime for q in e.quantizers]
    calibrate(qmodel, [inputs(1), inputs(2)], progress=False)
    calibrate(plain, [inputs(1), inputs(2)], progress=False)
    wrap = _Kw if user else (lambda m: m)
    with torch.no_grad():
        reference = wrap(model)(**inputs(3)).last_hidden_state
        out = wrap(qmodel)(**inputs(3)).last_hidden_state
        out_plain = wrap(plain)(**inputs(3)).last_hidden_state
    ratio = min(_time(wrap(qmodel), inputs(3)) for _ in range(3)) / min(_time(wrap(plain), inputs(3)) for _ in range(3))
    example = inputs(3)
    target = qmodel if user else Positional(qmodel, list(example)).eval()
    try:
        report = export_onnx(target, tuple(example.values()), tmp / f"{label}.onnx", exporter=exporter,
                             opset=17 if exporter == "torchscript" else 18)
        exported = f"yes ({report.qdq_pairs} Q/DQ, {exporter})"
    except Exception as error:  # noqa: BLE001 - the table reports any failure
        exported = f"no: {type(error).__name__}: {str(error).splitlines()[0][:60]}"
    disable_quantizers(qmodel, "*")
    with torch.no_grad():
        exact = torch.equal(wrap(qmodel)(**inputs(3)).last_hidden_state, reference)
    ops = sorted({e.target for e in runtime})
    return (f"| {label} | {len(qmodel.quant_plan.untraced)} | {len(quantizers)} ({len(runtime)} sites: "
            f"{', '.join(ops)}) | {_sqnr(reference, out):.1f} | {_sqnr(reference, out_plain):.1f} | {exact} | "
            f"{exported} | {ratio:.2f} |")


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cases = [("BERT", *build("bert"), "torchscript"), ("ViT", *build("vit"), "torchscript"),
             ("GPT-2", *build("gpt2"), "torchscript"), ("LLaMA (sdpa)", *build("llama"), "dynamo"),
             ("LLaMA (eager)", *build("llama", "eager"), "torchscript"), ("Whisper", *build("whisper"), "torchscript"),
             ("user control flow (Router)", *_router(), "torchscript")]
    print("| model | untraced scopes | run-time op quantizers | SQNR dB | SQNR dB without them | disabled == float "
          "| export verified | forward time vs without |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, inputs, exporter in cases:
            print(run(label, model, inputs, exporter, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
