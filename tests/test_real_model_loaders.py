"""The real-model benchmark's own measuring code (no model wheels needed): box IoU, CRAFT's box reading,
CTC decoding and edit distance, rendered pages and face mosaics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
pytest.importorskip("PIL")

from benchmarks.real_models import easyocr_recognizer, mtcnn, text_images


def test_iou_exact():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    assert mtcnn.iou(a, b).tolist() == [[pytest.approx(1 / 7), 1.0, 0.0]]


def test_craft_word_boxes_reads_components():
    pytest.importorskip("scipy")
    from benchmarks.real_models import craft

    scores = np.zeros((40, 60, 2), np.float32)
    scores[10:20, 5:15, 0] = 0.9  # a word
    scores[10:20, 30:40, 0] = 0.9  # a second word, linked to nothing
    scores[30:36, 5:15, 0] = 0.5  # peak below the text threshold: no box
    scores[2:4, 50:52, 0] = 0.9  # 4 pixels: too small
    boxes = craft.word_boxes(scores)
    assert boxes.shape == (2, 4)
    # bounding box of the region pixels grown by int(sqrt(100 * 10 / 100) * 2) / 2 = 3, then x2 (half-res map)
    expected = {(2 * (5 - 3), 2 * (10 - 3), 2 * (15 + 3), 2 * (20 + 3)),
                (2 * (30 - 3), 2 * (10 - 3), 2 * (40 + 3), 2 * (20 + 3))}
    assert {tuple(int(v) for v in box) for box in boxes.tolist()} == expected
    linked = scores.copy()
    linked[12:18, 15:30, 1] = 0.9  # affinity joins the two characters into one word
    assert craft.word_boxes(linked).shape == (1, 4)


def test_ctc_greedy_decoding_and_edit_distance():
    chars = easyocr_recognizer.CHARACTERS
    a, b = chars.index("a") + 1, chars.index("b") + 1
    steps = [a, a, 0, a, b, b, 0]
    logits = torch.nn.functional.one_hot(torch.tensor([steps]), len(chars) + 1).float()
    assert easyocr_recognizer.decode(logits) == ["aab"]
    assert easyocr_recognizer.edit_distance("kitten", "sitting") == 3
    assert easyocr_recognizer.edit_distance("", "abc") == 3
    assert easyocr_recognizer.edit_distance("same", "same") == 0


def test_rendered_page_boxes_are_disjoint_and_inside():
    image, boxes = text_images.page(["alpha", "beta", "gamma", "delta"] * 5, np.random.default_rng(0))
    assert image.shape == (320, 320, 3) and len(boxes) == 20
    tensor = torch.tensor(boxes, dtype=torch.float32)
    assert tensor.min() >= 0 and tensor.max() <= 320
    overlap = mtcnn.iou(tensor, tensor) - torch.eye(len(boxes))
    assert overlap.max() == 0
    for x1, y1, x2, y2 in boxes:  # every box holds ink
        assert image[y1:y2, x1:x2].min() < 100


def test_face_mosaics_place_each_face_once():
    faces, others = np.ones((10, 25, 25)), np.zeros((10, 25, 25))
    images, truth = mtcnn.mosaics(faces, others, seed=0)
    assert images.shape == (2, 256, 256, 3) and [len(t) for t in truth] == [5, 5]
    for image, boxes in zip(images, truth):
        painted = np.zeros(image.shape[:2], bool)
        for x1, y1, x2, y2 in boxes:
            assert 40 <= x2 - x1 <= 64 and image[y1:y2, x1:x2].min() == 255
            painted[y1:y2, x1:x2] = True
        assert image[~painted].max() == 0
