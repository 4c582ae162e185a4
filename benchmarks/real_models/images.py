"""Photo crops from scikit-image's bundled images (no download): disjoint calibration and test photos."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image ships these files inside its wheel; the two lists share no photo.
CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "retina", "camera", "brick", "moon", "cell")
TEST_PHOTOS = ("chelsea", "hubble_deep_field", "immunohistochemistry", "colorwheel", "coins", "grass", "gravel",
               "horse")


def photo(name: str) -> np.ndarray:
    """The named scikit-image photo as float32 HxWx3 in [0, 1] (grey photos repeated to three channels)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else max(float(image.max()), 1.0))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def crops(names: tuple[str, ...], per_photo: int, size: int, seed: int) -> torch.Tensor:
    """``per_photo`` random square crops (side 40-100% of the short side) of each photo, resized to ``size``.

    Returns an [N, 3, size, size] float tensor in [0, 1].
    """
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        image = torch.from_numpy(photo(name)).permute(2, 0, 1)[None]
        h, w = image.shape[-2:]
        for _ in range(per_photo):
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = image[..., top:top + side, left:left + side]
            out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True))
    return torch.cat(out).clamp(0, 1)
