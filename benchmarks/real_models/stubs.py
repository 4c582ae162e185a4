"""Stand-ins for torchvision/torchaudio, which some model packages import but this benchmark never calls.

torchvision does not load with the CPU torch used here; the packages below only import a few names from it
at module level. ``install()`` puts minimal modules into ``sys.modules`` unless the real package imports.
``easyocr_package()`` makes easyocr's model files importable without its ``__init__`` (which needs OpenCV).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms in plain torch: indices kept, by decreasing score."""
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2, x2[i]) - torch.maximum(x1, x1[i])).clamp(min=0)
        h = (torch.minimum(y2, y2[i]) - torch.maximum(y1, y1[i])).clamp(min=0)
        inter = w * h
        iou = inter / (areas + areas[i] - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offsets[:, None], scores, iou_threshold)


def _vgg16_bn(pretrained: bool = False, weights: object = None, **_: object) -> torch.nn.Module:
    """torchvision's VGG16-BN layout, randomly initialised (``.features`` only; callers load their weights)."""
    if pretrained or weights is not None:
        raise RuntimeError("the torchvision stub has no pretrained weights")
    layers: list[torch.nn.Module] = []
    channels = 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers += [torch.nn.Conv2d(channels, width, kernel_size=3, padding=1), torch.nn.BatchNorm2d(width),
                   torch.nn.ReLU(inplace=True)]
        channels = width
    model = torch.nn.Module()
    model.features = torch.nn.Sequential(*layers)
    return model


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)  # importlib.util.find_spec reads it
    module.__dict__.update(attrs)
    module.__stub__ = True
    return module


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure to import means: use the stub
        return False
    return True


def install() -> None:
    """Register the stubs (idempotent); a working real torchvision/torchaudio is left alone."""
    if "torchvision" not in sys.modules and not _importable("torchvision"):
        for key in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[key]
        ops = _module("torchvision.ops", nms=_nms, batched_nms=_batched_nms)
        ops.boxes = _module("torchvision.ops.boxes", nms=_nms, batched_nms=_batched_nms)
        transforms = _module("torchvision.transforms", functional=_module("torchvision.transforms.functional"))
        models = _module("torchvision.models", vgg=_module("torchvision.models.vgg"), vgg16_bn=_vgg16_bn)
        models.vgg.model_urls = {"vgg16_bn": "https://weights.invalid/vgg16_bn.pth"}  # read, never fetched
        datasets = _module("torchvision.datasets")
        root = _module("torchvision", ops=ops, transforms=transforms, models=models, datasets=datasets,
                       __version__="0.0+stub")
        sys.modules.update({"torchvision": root, "torchvision.ops": ops, "torchvision.ops.boxes": ops.boxes,
                            "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": transforms.functional,
                            "torchvision.models": models, "torchvision.models.vgg": models.vgg,
                            "torchvision.datasets": datasets})
    if "torchaudio" not in sys.modules and not _importable("torchaudio"):
        for key in [k for k in sys.modules if k.startswith("torchaudio")]:
            del sys.modules[key]
        transforms = _module("torchaudio.transforms", Resample=_Resample)
        functional = _module("torchaudio.functional", resample=_resample)
        root = _module("torchaudio", transforms=transforms, functional=functional, __version__="0.0+stub")
        sys.modules.update({"torchaudio": root, "torchaudio.transforms": transforms,
                            "torchaudio.functional": functional})


def easyocr_package() -> None:
    """Register ``easyocr`` as a bare package so ``easyocr.craft``, ``easyocr.model...`` import on their own.

    easyocr's ``__init__`` imports its Reader, which needs OpenCV and other packages this benchmark does not
    use; the network definitions need only torch (and the torchvision stub for VGG16-BN's layout).
    """
    install()
    if "easyocr" in sys.modules:
        return
    spec = importlib.util.find_spec("easyocr")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("easyocr is not installed; run benchmarks/install_real_models.sh")
    package = _module("easyocr")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__.submodule_search_locations = package.__path__
    sys.modules["easyocr"] = package


def _resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, **_: object) -> torch.Tensor:
    """Linear-interpolation resampling (the benchmark generates its audio at the model's rate)."""
    if orig_freq == new_freq:
        return waveform
    length = round(waveform.shape[-1] * new_freq / orig_freq)
    shape = waveform.shape
    flat = waveform.reshape(-1, 1, shape[-1])
    return F.interpolate(flat, size=length, mode="linear", align_corners=False).reshape(*shape[:-1], length)


class _Resample(torch.nn.Module):
    """torchaudio.transforms.Resample by linear interpolation (only built, never needed at the model's rate)."""

    def __init__(self, orig_freq: int = 16000, new_freq: int = 16000, **_: object):
        super().__init__()
        self.orig_freq, self.new_freq = orig_freq, new_freq

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return _resample(waveform, self.orig_freq, self.new_freq)
