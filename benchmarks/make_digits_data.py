"""Write quantrewrite/data/digits.npz, the small image data set the demo and the CLI ship with.

Source: the UCI ML hand-written digits data set ("Optical Recognition of Handwritten Digits", E. Alpaydin and
C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80), licensed CC BY 4.0, in the form scikit-learn ships
it (``sklearn.datasets.load_digits``): 1797 images of 8x8 pixels, each pixel a count 0..16, 10 classes.

The file holds:
    train_images, test_images: uint8 arrays (N, 8, 8), values 0..16
    train_labels, test_labels: uint8 arrays (N,), values 0..9
    permutation: int16 array (1797,), the seeded shuffle of load_digits' order the split was cut from
    source, licence: strings

scikit-learn is needed only here (it is not a quantrewrite dependency):
    pip install -c constraints.txt scikit-learn && python benchmarks/make_digits_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "quantrewrite" / "data" / "digits.npz"
NUM_TRAIN = 1400
SEED = 0

SOURCE = ("UCI ML hand-written digits (Alpaydin & Kaynak, 1998), https://archive.ics.uci.edu/dataset/80, "
          "via sklearn.datasets.load_digits")
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)           # (1797, 8, 8), 0..16
    labels = digits.target.astype(np.uint8)           # (1797,)
    if images.shape != (1797, 8, 8) or images.max() != 16:
        raise SystemExit(f"unexpected load_digits data: shape {images.shape}, max {images.max()}")
    permutation = np.random.default_rng(SEED).permutation(len(images)).astype(np.int16)
    train, test = permutation[:NUM_TRAIN], permutation[NUM_TRAIN:]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, train_images=images[train], train_labels=labels[train], test_images=images[test],
                        test_labels=labels[test], permutation=permutation, source=np.array(SOURCE),
                        licence=np.array(LICENCE))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB): {len(train)} train, {len(test)} test images; "
          f"test class counts {np.bincount(labels[test], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
