"""Quantization-aware training (QAT): fine-tune the fake-quantized model, then export it as usual.

The path, in order:

1. ``qmodel = quantize_model(model, cfg)``; for learned ranges, ask for them in the config
   (``defaults: {input: {learn_amax: true}}`` or a ``layers`` rule): those quantizers get a clip stage whose
   bounds are parameters;
2. ``calibrate(qmodel, data)``, then ``init_learned_ranges(qmodel)`` starts every learned range at its
   calibrated amax (a no-op without learn_amax quantizers);
3. train ``qmodel`` like the float model (``qmodel.train()``, any optimizer, a small learning rate): the
   fake quantization passes gradients straight through inside the range and zero outside it (STE); the
   weights keep their calibrated amax unless they were asked to learn it;
4. ``qmodel.eval()`` and ``export_onnx`` / ``save_recipe`` as after post-training calibration.

``freeze_batchnorm`` keeps batch-norm statistics fixed while the rest trains (usual for short fine-tunes).
``examples/qat.py`` runs this on the demo's digits CNN.

Example:
    >>> calibrate(qmodel, batches)
    >>> init_learned_ranges(qmodel)
    >>> optimizer = torch.optim.Adam(qmodel.parameters(), lr=1e-4)
    >>> for images, labels in loader: ...   # the usual training loop
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from quantrewrite.api import list_quantizers

__all__ = ["freeze_batchnorm", "init_learned_ranges", "learned_range_parameters"]


def init_learned_ranges(qmodel: nn.Module) -> list[str]:
    """Start the learned clip range of every enabled learn_amax quantizer at its calibrated amax.

    Returns:
        The names of the quantizers initialised.

    Raises:
        quantrewrite.nn.modules.tensor_quantizer.CalibrationError: one of them has no amax (calibrate first).
    """
    names = []
    for name, quantizer in list_quantizers(qmodel).items():
        if quantizer.is_enabled and quantizer.learn_amax:
            quantizer.init_learn_amax()
            names.append(name)
    return names


def learned_range_parameters(qmodel: nn.Module) -> Iterator[nn.Parameter]:
    """The clip bounds of the learn_amax quantizers (to give them their own learning rate)."""
    for quantizer in list_quantizers(qmodel).values():
        if quantizer.learn_amax:
            yield quantizer.clip.clip_value_min
            yield quantizer.clip.clip_value_max


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Put every batch-norm layer in eval mode (running statistics fixed); call after ``model.train()``.

    Returns:
        The names of the layers frozen.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            names.append(name)
    return names
