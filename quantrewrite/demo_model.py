"""The demo's model and data: ``DigitsCNN`` and the shipped 8x8 digits with their trained weights.

``quantrewrite/data/digits.npz`` holds the UCI hand-written digits (CC BY 4.0; written by
``benchmarks/make_digits_data.py``) and ``quantrewrite/data/digits_cnn.pt`` the ``DigitsCNN`` state_dict
trained on them by ``benchmarks/train_demo_model.py``.

Example:
    >>> model = load_digits_cnn()
    >>> images, labels = digits_tensors("test")
    >>> images.shape
    torch.Size([397, 1, 8, 8])
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitsCNN", "digits_batches", "digits_tensors", "load_digits_cnn"]

DATA_FILE = "digits.npz"
WEIGHTS_FILE = "digits_cnn.pt"
PIXEL_MAX = 16.0


class DigitsCNN(nn.Module):
    """A tiny residual CNN for 1x8x8 digits: stem, a residual block with a functional add, a stride-2
    conv, an ``F.adaptive_avg_pool2d`` head and a linear classifier (about 10k parameters)."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(out)) + x)            # the residual add, a functional op
        x = F.relu(self.down_bn(self.down(x)))               # 8x8 -> 4x4
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _data_path(name: str):
    return resources.files("quantrewrite").joinpath("data").joinpath(name)


def digits_tensors(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped digits of ``split`` ("train" or "test") as (float images (N, 1, 8, 8) in [0, 1], int64 labels)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    with _data_path(DATA_FILE).open("rb") as handle, np.load(handle) as data:
        images = torch.from_numpy(data[f"{split}_images"].astype(np.float32) / PIXEL_MAX).unsqueeze(1)
        labels = torch.from_numpy(data[f"{split}_labels"].astype(np.int64))
    return images, labels


def digits_batches(split: str = "train", batch_size: int = 64) -> list[torch.Tensor]:
    """The images of ``split`` cut into batches along dim 0 (labels dropped), for calibration."""
    images, _ = digits_tensors(split)
    return list(images.split(batch_size))


def load_digits_cnn() -> DigitsCNN:
    """A DigitsCNN with the shipped trained weights, in eval mode."""
    model = DigitsCNN()
    with _data_path(WEIGHTS_FILE).open("rb") as handle:
        model.load_state_dict(torch.load(handle, weights_only=True, map_location="cpu"))
    return model.eval()
