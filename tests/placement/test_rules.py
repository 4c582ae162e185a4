"""Each placement rule (quantrewrite/placement/rules.py) on a small model: what it places, skips or shares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantrewrite as qr
from quantrewrite.config import QuantConfigError, load_config
from quantrewrite.placement import RULES

TESTED: set[str] = set()


def _plan(model, x=None, cfg="tensorrt"):
    return qr.plan(model.eval(), cfg, example_inputs=x)


def _placement(plan, name):
    return plan[name].placement


def _tested(rule_id):
    TESTED.add(rule_id)
    return rule_id


class Block(nn.Module):
    """conv-bn-relu, conv-bn, + identity shortcut (optional downsample conv-bn), relu."""

    def __init__(self, c, downsample=False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.down = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) if downsample else None

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = self.down(x) if self.down is not None else x
        return self.relu(out + shortcut)


def test_weighted_inputs_quantize_conv_and_linear_inputs_and_weights_never_outputs():
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4 * 4, 32))
    plan = _plan(model)
    for name in ("0", "2"):
        assert plan[name].quantized
        assert set(_placement(plan, name).values()) == {("placed", _tested("weighted_inputs"))}
        assert all(q.endswith(("_input_quantizer", "_weight_quantizer")) for q in plan[name].quantizers)
    assert plan.quantizer_names() == ["0._input_quantizer", "0._weight_quantizer", "2._input_quantizer",
                                      "2._weight_quantizer"]


def test_residual_shortcut_quantizes_only_the_identity_input():
    plan = _plan(Block(16))
    assert _placement(plan, "add") == {"add_input_quantizer": ("skipped", _tested("residual_shortcut")),
                                       "add_input1_quantizer": ("placed", "residual_shortcut")}
    assert plan["add"].quantizers == ("add_input1_quantizer",)


def test_residual_shortcut_with_a_downsample_branch_picks_the_shorter_path():
    class Swapped(Block):  # the shortcut comes first: the rule goes by path length, not position
        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(self.down(x) + out)

    plan = _plan(Swapped(16, downsample=True))
    assert plan["add"].quantizers == ("add_input_quantizer",)
    assert _placement(plan, "add")["add_input1_quantizer"] == ("skipped", "residual_shortcut")


def test_residual_shortcut_counts_a_silu_as_part_of_the_fused_branch():
    class SiluBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return x + y * torch.sigmoid(y)

    plan = _plan(SiluBlock())
    assert plan["add"].quantizers == ("add_input_quantizer",)  # x, the shortcut


def test_add_not_residual_stays_float():
    class Mask(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(32, 32)

        def forward(self, x, mask):
            return self.fc(x) + mask

    plan = _plan(Mask())
    assert not plan["add"].quantized
    assert plan["add"].reason.startswith(f"tensorrt rule {_tested('add_not_residual')}")


class Concat(nn.Module):
    """x feeds a conv and a concat; the concat feeds a conv (a U-Net skip)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 1)
        self.fuse = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        return self.fuse(torch.cat([self.up(self.down(x)), x], 1))


def test_concat_shared_has_no_concat_quantizer_and_shares_inputs_with_the_consumer():
    plan = _plan(Concat())
    assert not plan["cat"].quantized
    assert plan["cat"].reason.startswith(f"tensorrt rule {_tested('concat_shared')}")
    assert plan.groups == {"concat_shared:cat": ["down._input_quantizer", "fuse._input_quantizer"]}


def test_concat_group_members_get_one_amax():
    torch.manual_seed(0)
    qmodel = qr.quantize_model(Concat().eval(), "tensorrt")
    qr.calibrate(qmodel, [torch.randn(2, 16, 8, 8) * (i + 1) for i in range(2)], progress=False)
    assert torch.equal(qmodel.down._input_quantizer.amax, qmodel.fuse._input_quantizer.amax)


class QKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v


def test_same_tensor_groups_the_three_projections():
    plan = _plan(QKV(), torch.randn(2, 8, 32))
    rule_id = _tested("same_tensor")
    assert plan.groups[f"{rule_id}:q._input_quantizer"] == ["q._input_quantizer", "k._input_quantizer",
                                                              "v._input_quantizer"]


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 1, 1)))


def test_pad_conv_moves_the_conv_input_quantizer_before_the_pad():
    plan = _plan(Padded())
    assert plan["conv"].disabled == {"conv._input_quantizer": "tensorrt rule pad_conv: moved before pad"}
    assert plan["pad"].quantizers == ("pad_input_quantizer",)
    assert _placement(plan, "pad") == {"pad_input_quantizer": ("placed", _tested("pad_conv"))}
    torch.manual_seed(0)
    qmodel = qr.quantize_model(Padded().eval(), "tensorrt")
    x = torch.randn(2, 16, 8, 8)
    qr.calibrate(qmodel, [x], progress=False)
    # zero padding commutes with the quantizer: the same as quantizing the padded tensor with that amax
    quantizer = qmodel.pad_input_quantizer
    expected = qmodel.conv._conv_forward(quantizer(F.pad(x, (1, 1, 1, 1))),
                                         qmodel.conv._weight_quantizer(qmodel.conv.weight), qmodel.conv.bias)
    torch.testing.assert_close(qmodel(x), expected, rtol=0, atol=0)


def test_resize_float_input_and_max_pool_commutes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2)
            self.conv = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return self.conv(F.interpolate(self.pool(x), scale_factor=2.0))

    plan = _plan(Net())
    assert plan["pool"].reason.startswith(f"tensorrt rule {_tested('max_pool_commutes')}")
    assert plan["interpolate"].reason.startswith(f"tensorrt rule {_tested('resize_float_input')}")
    assert plan["conv"].quantized


@pytest.mark.parametrize(("classes", "quantized"), [(32, True), (10, False)])
def test_avg_pool_neighbour(classes, quantized):
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))
    plan = _plan(model)
    assert plan["1"].quantized is quantized  # the linear after it is quantized only with >= 16 outputs
    rule_id = _tested("avg_pool_neighbour")
    assert rule_id in (plan["1"].reason or "") or _placement(plan, "1") == {"1._input_quantizer": ("placed", rule_id)}


def test_layernorm_conv_input():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(16, 32, 1)
            self.norm1 = nn.LayerNorm(32)
            self.fc = nn.Linear(32, 32)
            self.norm2 = nn.LayerNorm(32)

        def forward(self, x):
            y = self.norm1(self.conv(x).flatten(2).transpose(1, 2))
            return self.norm2(self.fc(y))

    plan = _plan(Net())
    rule_id = _tested("layernorm_conv_input")
    assert _placement(plan, "norm1") == {"norm1._input_quantizer": ("placed", rule_id)}
    assert not plan["norm2"].quantized and rule_id in plan["norm2"].reason
    assert not qr.plan(Net(), "int8_default")["norm1"].quantized  # LayerNorm stays off in other presets


@pytest.mark.parametrize(("seq", "quantized"), [(16, True), (520, False)])
def test_attention_seq_len(seq, quantized):
    plan = _plan(QKV(), torch.randn(1, seq, 32))
    assert plan["matmul"].quantized is quantized
    if not quantized:
        assert plan["matmul"].reason.startswith(f"tensorrt rule {_tested('attention_seq_len')}")
    assert plan["q"].quantized  # the projections are Linear layers: the rule is for attention matmuls


def test_attention_matmuls_without_shapes_stay_quantized():
    assert _plan(QKV())["matmul"].quantized


def test_gemv_and_small_gemm():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(32, 32))
            self.small = nn.Linear(8, 32)

        def forward(self, x):
            return self.small(x) @ self.w

    plan = _plan(Net(), torch.randn(1, 8))
    assert plan["matmul"].reason.startswith(f"tensorrt rule {_tested('gemv')}")
    assert plan["small"].reason.startswith(f"tensorrt rule {_tested('small_gemm')}: K 8, N 32")
    assert _plan(Net(), torch.randn(4, 8))["matmul"].quantized


@pytest.mark.parametrize(("conv", "first", "quantized"), [
    (nn.Conv2d(3, 8, 3), True, True),  # first layer, C_out % 8 == 0, square kernel
    (nn.Conv2d(3, 6, 3), True, False),  # neither side divisible by 8
    (nn.Conv2d(8, 8, 3), False, False),  # divisible, but not first and both sides < 16
    (nn.Conv2d(8, 16, (1, 3)), False, False),  # C_out >= 16 but C_in < 16 and the kernel is not square
    (nn.Conv2d(8, 16, 3), False, True),  # C_in % 8 == 0 and C_out >= 16
    (nn.Conv2d(8, 8, 3, groups=8), False, True),  # grouped: C_out % 8 == 0, kernel >= 3
    (nn.Conv2d(8, 8, 1, groups=8), False, False),  # grouped 1x1
])
def test_small_conv(conv, first, quantized):
    stem = [] if first else [nn.Conv2d(conv.in_channels, conv.in_channels, 1)]  # not the first layer
    stem_ok = [] if first else [nn.ReLU()]
    model = nn.Sequential(*stem, *stem_ok, conv)
    name = str(len(model) - 1)
    plan = _plan(model)
    assert plan[name].quantized is quantized, plan[name].reason
    if not quantized:
        assert plan[name].reason.startswith(f"tensorrt rule {_tested('small_conv')}")


def test_float_ops():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.InstanceNorm2d(16))
    plan = _plan(model)
    assert plan["1"].reason.startswith(f"tensorrt rule {_tested('float_ops')}: InstanceNorm2d")


def test_dla_every_input():
    plan = _plan(Block(16), cfg="dla")
    assert plan["add"].quantizers == ("add_input_quantizer", "add_input1_quantizer")
    assert set(_placement(plan, "add").values()) == {("placed", _tested("dla_every_input"))}
    concat = _plan(Concat(), cfg="dla")
    assert concat["cat"].quantizers == ("cat_input_quantizer", "cat_input1_quantizer")
    assert sorted(concat.groups["concat_shared:cat"]) == ["cat_input1_quantizer", "cat_input_quantizer",
                                                          "down._input_quantizer", "fuse._input_quantizer"]


def test_exempt_switches_a_rule_off_per_layer():
    cfg = {"version": 1, "placement": {"target": "tensorrt", "exempt": {"small_gemm": ["small"]}}}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.small, self.other = nn.Linear(8, 32), nn.Linear(8, 32)

        def forward(self, x):
            return self.small(x) + self.other(x)

    plan = qr.plan(Net(), cfg)
    assert plan["small"].quantized and not plan["other"].quantized


def test_placement_config_errors_are_located():
    with pytest.raises(QuantConfigError, match=r"placement: unknown placement rule set \(did you mean 'tensorrt'"):
        load_config({"version": 1, "placement": "tensorrtt"})
    with pytest.raises(QuantConfigError, match=r"placement.exempt.small_gem: unknown tensorrt rule \(did you mean"):
        load_config({"version": 1, "placement": {"target": "tensorrt", "exempt": {"small_gem": ["fc"]}}})
    with pytest.raises(QuantConfigError, match=r"placement.exempt.small_gemm: expected a non-empty list"):
        load_config({"version": 1, "placement": {"target": "tensorrt", "exempt": {"small_gemm": "fc"}}})


def test_a_config_can_still_turn_a_candidate_off():
    cfg = load_config("tensorrt").to_dict()
    cfg["functions"] = {"add": {"quantize": False}}
    plan = qr.plan(Block(16).eval(), cfg)
    assert not plan["add"].quantized and plan["add"].reason == "functions.add says quantize: false"


def test_every_rule_has_a_test():
    source = Path(__file__).read_text()
    assert set(re.findall(r"_tested\([\"'](\w+)[\"']\)", source)) == {rule.id for rule in RULES}
