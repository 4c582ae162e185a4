"""Rendered text for the easyocr models: pages with known word boxes, and single text lines.

The words and lines come from ``sentences.py`` (calibration and test sentences share none), drawn with
Pillow's bundled font (``ImageFont.load_default(size)``, no system font needed) in dark grey on near-white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def page(words: list[str], rng: np.random.Generator, size: int = 320) -> tuple[np.ndarray, list[tuple]]:
    """A white page with ``words`` laid out in lines of random font size (16-32 px).

    Returns (uint8 RGB [size, size, 3], the drawn words' boxes (x1, y1, x2, y2)); words that do not fit are
    left out (and have no box).
    """
    image = Image.new("RGB", (size, size), (int(rng.integers(225, 256)),) * 3)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple] = []
    margin, y, queue = 12, 12, list(words)
    while queue:
        font = _font(int(rng.integers(16, 33)))
        line_height = int(font.size * 1.7)
        if y + line_height > size - margin:
            break
        x = margin + int(rng.integers(0, 20))
        while queue:
            left, top, right, bottom = draw.textbbox((x, y), queue[0], font=font)
            if right > size - margin:
                break
            draw.text((x, y), queue.pop(0), font=font, fill=(int(rng.integers(0, 90)),) * 3)
            boxes.append((left, top, right, bottom))
            x = right + int(font.size * rng.uniform(0.5, 1.2))
        y += line_height
    return np.asarray(image), boxes


def line(text: str, font_size: int, ink: int = 30) -> np.ndarray:
    """``text`` drawn on white and cropped to its box with a margin of a quarter of the font size (uint8 L)."""
    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    pad = font_size // 4
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 245)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=ink)
    return np.asarray(image)
