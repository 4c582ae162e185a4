"""The four models of ``bench_placement.py``, with data and BatchNorm statistics that look like a trained net's.

* ``resnet``: a ResNet-50-style net (7x7 stem, max pooling, bottleneck blocks with 1x1 downsample shortcuts,
  global average pooling, a 100-class head);
* ``unet``: a U-Net (reflection-padded double convs, max pooling, ConvTranspose upsampling, concat skips);
* ``yolo``: a shallow YOLOv8-style backbone and its PAN neck (conv-bn-SiLU, zero-padded stride-2 convs, C2f
  blocks with split, bottleneck adds and concat, SPPF, nearest upsampling, three 1x1 detection heads);
* ``vit``: a ViT encoder (conv patch embedding, class token, position embedding, pre-norm blocks written
  with nn.Linear, matmul, softmax, LayerNorm and GELU so FX traces them).

Weights are PyTorch's default random init with a fixed seed; every BatchNorm then gets running statistics
from a pass in train mode over "training" images (so it normalizes real activations in eval) and a random
affine, and LayerNorms get a random affine. Images are random fields with a natural image's 1/f spectrum;
the training, calibration and test images are drawn from disjoint seeds.

Random-init networks pass quantization noise on with little of the attenuation a trained network has (each
conv-bn-act layer here loses about 1 dB of SQNR), so absolute SQNRs are lower than a trained model's; the
columns compare placements on the same model and data.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn

__all__ = ["MODELS", "build", "images"]


# ------------------------------------------------------------------------------------------------- ResNet
def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, mid: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(c_in, mid, 1)
        self.conv2 = _conv_bn(mid, mid, 3, stride)
        self.conv3 = _conv_bn(mid, c_out, 1, act=False)
        self.downsample = _conv_bn(c_in, c_out, 1, stride, act=False) if stride != 1 or c_in != c_out else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + shortcut)


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, c_in = [], 32
        for mid, c_out, stride in ((16, 64, 1), (32, 128, 2), (64, 256, 2)):
            blocks += [Bottleneck(c_in, mid, c_out, stride), Bottleneck(c_out, mid, c_out)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.pool(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -------------------------------------------------------------------------------------------------- U-Net
class DoubleConv(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(c_out, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UNet(nn.Module):
    def __init__(self, out_channels: int = 8, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        self.inc = DoubleConv(3, widths[0])
        self.down = nn.ModuleList(DoubleConv(a, b) for a, b in pairwise(widths))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, 2) for a, b in pairwise(widths))
        self.dec = nn.ModuleList(DoubleConv(2 * a, a) for a in widths[:-1])
        self.out = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(self.pool(skips[-1])))
        x = skips.pop()
        for up, dec in zip(reversed(self.up), reversed(self.dec)):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x)


# ------------------------------------------------------------------------------------------------- YOLO
class ConvBnSiLU(nn.Module):
    """conv-bn-SiLU; a stride-2 conv is zero-padded by a ZeroPad2d module (as in ports of TF detectors)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.pad = nn.ZeroPad2d(k // 2) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, 0 if stride > 1 else k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class YoloBottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c // 2), ConvBnSiLU(2 * c, c)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class YoloNeck(nn.Module):
    def __init__(self, outputs: int = 80):
        super().__init__()
        self.stem = nn.Sequential(ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2))
        self.p3 = nn.Sequential(ConvBnSiLU(32, 64, 3, 2), C2f(64, 64))
        self.p4 = nn.Sequential(ConvBnSiLU(64, 128, 3, 2), C2f(128, 128))
        self.p5 = nn.Sequential(ConvBnSiLU(128, 256, 3, 2), SPPF(256))
        self.upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top4 = C2f(384, 128, shortcut=False)
        self.top3 = C2f(192, 64, shortcut=False)
        self.down3 = ConvBnSiLU(64, 64, 3, 2)
        self.out4 = C2f(192, 128, shortcut=False)
        self.down4 = ConvBnSiLU(128, 128, 3, 2)
        self.out5 = C2f(384, 256, shortcut=False)
        self.heads = nn.ModuleList(nn.Conv2d(c, outputs, 1) for c in (64, 128, 256))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.top4(torch.cat([self.upsample(p5), p4], 1))
        n3 = self.top3(torch.cat([self.upsample(t4), p3], 1))
        n4 = self.out4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.out5(torch.cat([self.down4(n4), p5], 1))
        return self.heads[0](n3), self.heads[1](n4), self.heads[2](n5)


# -------------------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        out = torch.matmul(attn.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    def __init__(self, image: int = 64, patch: int = 8, dim: int = 128, depth: int = 4, heads: int = 4,
                 num_classes: int = 100):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# ------------------------------------------------------------------------------------------- data, build
MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {  # name -> (constructor, image size)
    "resnet": (ResNetLike, 64),
    "unet": (UNet, 64),
    "yolo": (YoloNeck, 128),
    "vit": (ViTEncoder, 64),
}

TRAIN_SEED, CALIB_SEED, TEST_SEED = 1, 2, 3


def images(count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` random RGB images of ``size`` x ``size`` with a natural image's 1/f amplitude spectrum (edges
    at every scale), correlated colour channels, each channel about zero mean and unit variance."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 3, size, size, generator=gen)
    freq = torch.fft.fftfreq(size)
    radius = (freq[:, None] ** 2 + freq[None, :] ** 2).sqrt().clamp(min=1.0 / size)
    x = torch.fft.ifft2(torch.fft.fft2(noise) / radius).real
    mixing = torch.tensor([[1.0, 0.6, 0.4], [0.6, 1.0, 0.6], [0.4, 0.6, 1.0]])  # colour channels correlate
    x = torch.einsum("ij,njhw->nihw", mixing, x)
    return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True) \
        + 0.3 * torch.randn(count, 3, 1, 1, generator=gen)


def build(name: str, seed: int = 0) -> tuple[nn.Module, int]:
    """The model ``name`` of ``MODELS`` in eval mode with trained-looking normalization, and its image size."""
    constructor, size = MODELS[name]
    torch.manual_seed(seed)
    model = constructor()
    gen = torch.Generator().manual_seed(seed + 100)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    for norm in norms:
        if isinstance(norm, nn.BatchNorm2d):
            norm.momentum = None  # cumulative average over the "training" pass
        with torch.no_grad():
            norm.weight.copy_(1.0 + 0.25 * torch.randn(norm.weight.shape, generator=gen))
            norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=gen))
    if any(isinstance(m, nn.BatchNorm2d) for m in norms):
        model.train()
        with torch.no_grad():
            for batch in images(64, size, TRAIN_SEED).split(16):
                model(batch)
    return model.eval(), size
