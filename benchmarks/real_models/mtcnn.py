"""facenet-pytorch's MTCNN face detector (P-Net, R-Net, O-Net; weights inside the wheel).

Data: scikit-image's ``lfw_subset()`` (100 face and 100 non-face 25x25 crops); faces 0-49 and non-faces
100-149 are calibration data, the others test data. Each split is pasted into 256x256 mosaics (a 4x4 grid of
non-face patches, five cells holding a face of 40-64 px at a random place), so the full detection pipeline
(image pyramid → P-Net → R-Net → O-Net, with NMS between) runs with the quantized nets; calibration runs that
pipeline on the calibration mosaics. Metrics against fp32 on the test mosaics: the mean, over fp32's boxes,
of the best IoU with a box of the model under test (primary; a box it misses counts 0), the true faces found
(IoU > 0.5 with the pasted face); and on the test crops resized for each net, the share of R-Net and O-Net
face decisions (probability > 0.7, MTCNN's thresholds) equal to fp32's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.real_models import stubs
from benchmarks.real_models.case import Case

CELL, GRID, FACES_PER_MOSAIC, BATCH = 64, 4, 5, 5
THRESHOLD = 0.7  # R-Net's and O-Net's face threshold in MTCNN's defaults (0.6, 0.7, 0.7)


def build() -> torch.nn.Module:
    """The MTCNN module (children ``pnet``, ``rnet``, ``onet``) in eval mode, returning every box."""
    stubs.install()
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu").eval()


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(patch).float()[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)[0, 0].numpy()


def mosaics(faces: np.ndarray, others: np.ndarray, seed: int) -> tuple[np.ndarray, list[list[tuple]]]:
    """(uint8 images [N, 256, 256, 3], the pasted face boxes (x1, y1, x2, y2) per image)."""
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for start in range(0, len(faces), FACES_PER_MOSAIC):
        canvas = np.zeros((CELL * GRID, CELL * GRID), np.float32)
        for cell in range(GRID * GRID):
            top, left = (cell // GRID) * CELL, (cell % GRID) * CELL
            canvas[top:top + CELL, left:left + CELL] = _resize(others[rng.integers(len(others))], CELL)
        boxes = []
        for index, cell in zip(range(start, min(start + FACES_PER_MOSAIC, len(faces))),
                               rng.choice(GRID * GRID, FACES_PER_MOSAIC, replace=False)):
            side = int(rng.integers(40, CELL + 1))
            top = (cell // GRID) * CELL + int(rng.integers(0, CELL - side + 1))
            left = (cell % GRID) * CELL + int(rng.integers(0, CELL - side + 1))
            canvas[top:top + side, left:left + side] = _resize(faces[index], side)
            boxes.append((left, top, left + side, top + side))
        images.append(np.repeat((canvas.clip(0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2))
        truth.append(boxes)
    return np.stack(images), truth


def crops(patches: np.ndarray, size: int) -> torch.Tensor:
    """Patches resized for one net and normalised as MTCNN does: (x·255 − 127.5) / 128, 3 channels."""
    tensor = F.interpolate(torch.from_numpy(patches).float()[:, None], size=(size, size), mode="bilinear",
                           antialias=True)
    return ((tensor.clamp(0, 1) * 255 - 127.5) * 0.0078125).repeat(1, 3, 1, 1)


def forward(model: torch.nn.Module, batch: tuple[str, object]):
    """("detect", images) → boxes per image; ("rnet" | "onet", crops) → face probabilities."""
    kind, data = batch
    if kind == "detect":
        boxes, _ = model.detect(data)
        return [torch.zeros(0, 4) if b is None else torch.as_tensor(np.asarray(b, np.float32)) for b in boxes]
    return getattr(model, kind)(data)[-1][:, 1]


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes [n, 4] and [m, 4] (x1, y1, x2, y2)."""
    low, high = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (a[:, 2:] - a[:, :2]).prod(-1)[:, None] + (b[:, 2:] - b[:, :2]).prod(-1)[None]
    return inter / (area - inter).clamp(min=1e-9)


def _best_iou(wanted: list[torch.Tensor], found: list[torch.Tensor]) -> torch.Tensor:
    """For each wanted box (all images), the best IoU with a found box of the same image (0 if none)."""
    scores = [iou(w, f).amax(1) if len(f) else torch.zeros(len(w)) for w, f in zip(wanted, found)]
    return torch.cat(scores) if scores else torch.zeros(0)


def load(seed: int = 0) -> Case:
    import skimage.data

    patches = skimage.data.lfw_subset()  # [200, 25, 25]: 100 faces, then 100 non-faces
    faces, others = patches[:100], patches[100:]
    calib_images, _ = mosaics(faces[:50], others[:50], seed)
    test_images, test_truth = mosaics(faces[50:], others[50:], seed + 1)
    test_crops = np.concatenate([faces[50:], others[50:]])
    calib = [("detect", calib_images[i:i + BATCH]) for i in range(0, len(calib_images), BATCH)]
    detect_batches = [("detect", test_images[i:i + BATCH]) for i in range(0, len(test_images), BATCH)]
    test = detect_batches + [("rnet", crops(test_crops, 24)), ("onet", crops(test_crops, 48))]
    truth = [torch.tensor(t, dtype=torch.float32) for t in test_truth]

    def metrics(outputs: list, reference: list) -> dict[str, float]:
        n = len(detect_batches)
        boxes = [b for batch in outputs[:n] for b in batch]
        fp32_boxes = [b for batch in reference[:n] for b in batch]
        agree = {kind: 100.0 * ((out > THRESHOLD) == (ref > THRESHOLD)).double().mean().item()
                 for kind, out, ref in zip(("R-Net", "O-Net"), outputs[n:], reference[n:])}
        return {"box IoU vs fp32": _best_iou(fp32_boxes, boxes).mean().item(),
                "true faces found %": 100.0 * (_best_iou(truth, boxes) > 0.5).double().mean().item(),
                "boxes": float(sum(len(b) for b in boxes)),
                "R-Net decisions = fp32 %": agree["R-Net"], "O-Net decisions = fp32 %": agree["O-Net"],
                "O-Net mean |Δ face prob|": (outputs[-1] - reference[-1]).abs().mean().item()}

    return Case("MTCNN", build(), calib, test, metrics, forward=forward,
                note=f"{len(calib_images)} calib / {len(test_images)} test mosaics of lfw_subset faces "
                     f"(disjoint halves), full detection; mean best IoU of fp32's boxes; "
                     f"R-/O-Net decisions on {len(test_crops)} test crops")
