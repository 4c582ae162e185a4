"""Coverage on 17 architectures: what quantrewrite and NVIDIA ModelOpt actually quantize, side by side.

Run: python benchmarks/bench_coverage.py [--models bert,gpt2,...] [--threads 1]
(needs the ``hf`` and ``onnx`` extras; ModelOpt from the ``bench`` extra, its column says so when missing).

The models (``benchmarks/coverage_models.py``): Hugging Face BERT, RoBERTa, DistilBERT, GPT-2, LLaMA, T5, ViT,
Swin, ConvNeXt, Whisper, Wav2Vec2, CLIP from small configs with random init (fixed seed, nothing downloaded);
torch's nn.Transformer and nn.TransformerEncoder; an LSTM and a GRU tagger; a U-Net. Each runs in its own
process (a failure, even a crash, is that model's row, never the end of the run), on the same inputs:
calibration batches from seeds 1 and 2, the test batch from seed 3 (disjoint).

* quantrewrite: ``quantize_model(model, "int8_default", example_inputs=<first calibration batch>)``,
  ``calibrate`` on the two batches, ``export_onnx(qmodel, (), path, kwargs=<test batch>)`` with verification.
* ModelOpt: ``mtq.quantize(copy, mtq.INT8_DEFAULT_CFG, forward_loop)`` on the same batches; its export is
  ``torch.onnx.export`` (TorchScript, opset 17, a positional wrapper: it takes no keyword inputs) checked the
  same way (onnx.checker, onnxruntime within 4 steps of max|output|/127; no flip-spread term, which needs
  quantrewrite's quantizers).

Columns (``coverage_measure.py`` defines each once, for both tools):

* weights: weight layers quantized / total. The total comes from the float model alone: every nn.Linear,
  Conv/ConvTranspose 1-3d, Hugging Face Conv1D, nn.LSTM/GRU/RNN and their cells, and nn.MultiheadAttention
  (its input projection; its out_proj is a Linear of its own). A layer counts as quantized when its weight
  quantizer(s) are enabled and calibrated and the layer's own forward ran in the test forward (a fused fast
  path that bypasses it does not count).
* attention: innermost attention modules (class name with "Attention") with a quantized matmul/bmm/sdpa,
  i.e. an enabled, calibrated quantizer held by the module itself (not by one of its weight layers) that the
  test forward called / all such modules.
* op quantizers: quantizers on functional ops (held by a module that is not a leaf of the float model, nor a
  weight layer): enabled, calibrated and called / placed.
* untraced: scopes FX could not trace (quantrewrite; ModelOpt does not trace).
* SQNR: output vs fp32 on the test batch, over every floating-point output tensor, in dB.
* export: verified yes/no, and the reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from coverage_models import BUILDERS

TOOLS = ("quantrewrite", "ModelOpt")
COLUMNS = ("weights", "attention", "op quantizers", "untraced", "SQNR dB", "export")
CELL_WIDTH = 70


def _short(text: str, width: int = CELL_WIDTH) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def run_one(name: str, threads: int, timeout: float) -> dict:
    """Measure one model in a child process; a crash or a timeout becomes the row's text."""
    command = [sys.executable, str(Path(__file__).resolve().parent / "coverage_measure.py"), name,
               "--threads", str(threads)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def print_table(rows: dict[str, dict]) -> None:
    print("| model | tool | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for name, row in rows.items():
        for tool in TOOLS:
            cells = row.get(tool) or {}
            if "error" in row:
                values = [_short(row["error"])] + [""] * (len(COLUMNS) - 1)
            elif "error" in cells:
                values = [_short(cells["error"])] + [""] * (len(COLUMNS) - 1)
            else:
                values = [_short(cells.get(column, "n/a")) for column in COLUMNS]
            print(f"| {name} | {tool} | " + " | ".join(values) + " |")
    print()
    for name, row in rows.items():
        for tool in TOOLS:
            missing = (row.get(tool) or {}).get("unquantized") or []
            if missing:
                print(f"- {name}, {tool}: weight layers not quantized: {_short(', '.join(missing), 400)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(BUILDERS),
                        help=f"comma-separated, from: {','.join(BUILDERS)} (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process (default 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model (default 900)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    rows = {}
    for name in names:
        rows[name] = run_one(name, args.threads, args.timeout)
        print(f"measured {name}", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
