"""The tracer iterates chunk/split results whose piece count is in the code (``list(x.chunk(2, 1))``, YOLOv8's
C2f), so such modules trace and the placement rules see their concats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantrewrite as qr
from quantrewrite.rewrite.tracer import trace_scopes


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class C2f(nn.Module):
    """YOLOv8's C2f: a 1x1 conv, split in two, a bottleneck on the second half, concat of all three."""

    def __init__(self, split: str):
        super().__init__()
        self.split = split
        self.cv1, self.m, self.cv2 = nn.Conv2d(32, 32, 1), Bottleneck(16), nn.Conv2d(48, 32, 1)

    def forward(self, x):
        h = self.cv1(x)
        if self.split == "chunk":
            y = list(h.chunk(2, 1))
        elif self.split == "torch.chunk":
            y = list(torch.chunk(h, chunks=2, dim=1))
        elif self.split == "split":
            y = list(h.split([16, 16], 1))
        else:
            y = list(h.chunk(h.shape[1] // 16, 1))  # the count needs the shape: not traceable
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


@pytest.mark.parametrize("split", ["chunk", "torch.chunk", "split"])
def test_static_chunk_or_split_traces_and_runs_like_the_model(split):
    torch.manual_seed(0)
    model = C2f(split).eval()
    assert trace_scopes(model).failed == {}
    qmodel = qr.quantize_model(model, "tensorrt")
    assert qmodel.quant_plan["cat"].reason.startswith("tensorrt rule concat_shared")  # a traced op site
    x = torch.randn(2, 32, 8, 8)
    qr.disable_quantizers(qmodel, "*")
    torch.testing.assert_close(qmodel(x), model(x), rtol=0, atol=0)


def test_a_count_that_needs_the_shape_still_fails_to_trace():
    failed = trace_scopes(C2f("dynamic")).failed
    assert list(failed) == [""] and "cannot be iterated" in failed[""]


def test_tensorrt_shares_one_range_across_the_split_and_the_concat():
    plan = qr.plan(C2f("chunk").eval(), "tensorrt")
    assert {name: sorted(members) for name, members in plan.groups.items()} == {
        "concat_shared:cat": ["cv2._input_quantizer", "m.add_input_quantizer", "m.conv1._input_quantizer"]}
