"""Small reference models: a residual CNN and a transformer stack.

They exercise what real models have and plain module walking misses: functional residual adds,
``F.adaptive_avg_pool2d`` heads, matmuls and softmax. Used by the README, the tests and the benchmarks.

Example:
    >>> model = ResidualCNN(num_blocks=2, width=16)
    >>> model(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResidualCNN", "TransformerBlock", "TransformerStack"]


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a functional residual add (with a 1x1 downsample when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResidualCNN(nn.Module):
    """Stem, ``num_blocks`` basic blocks (the channels double at the middle block unless ``widen=False``),
    an ``F.adaptive_avg_pool2d`` head and a linear classifier."""

    def __init__(self, num_blocks: int = 4, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 widen: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for index in range(num_blocks):
            doubles = widen and num_blocks > 1 and index == num_blocks // 2
            blocks.append(BasicBlock(channels, channels * 2 if doubles else channels, 2 if doubles else 1))
            channels = channels * 2 if doubles else channels
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class TransformerBlock(nn.Module):
    """Pre-norm attention (one qkv Linear, two matmuls, softmax) and an MLP, with residual adds."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(head_dim)
        out = torch.matmul(attn.softmax(dim=-1), v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + self.proj(out)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerStack(nn.Module):
    """Token embedding, ``num_blocks`` transformer blocks, a final norm and a linear head."""

    def __init__(self, num_blocks: int = 2, width: int = 64, heads: int = 4, vocab: int = 1000,
                 num_classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(tokens))
        return self.head(self.norm(x).mean(dim=1))
