"""Row slices of a call or a batch (``quantrewrite.calib.rows``): when rows can be cut, and the cut itself."""

from __future__ import annotations

import pytest
import torch

from quantrewrite.calib.rows import batch_rows, rows_match, shared_rows, take_batch_rows, take_rows


def test_tensor_arguments_sharing_their_leading_size_give_rows():
    x, mask = torch.randn(8, 3), torch.ones(8, 5)
    assert shared_rows((x, None, 2, "mean"), {"mask": mask}, torch.zeros(8, 4)) == 8
    assert shared_rows((x,), {}, (torch.zeros(8, 4), torch.zeros(8, 2, 2), torch.zeros(3, dtype=torch.long))) == 8


@pytest.mark.parametrize("args, kwargs, output", [
    ((torch.randn(8, 3), torch.randn(7, 3)), {}, torch.zeros(8, 4)),  # two leading sizes
    ((torch.randn(8, 3),), {"scale": torch.tensor(2.0)}, torch.zeros(8, 4)),  # a 0-d tensor
    ((torch.randn(8, 3), (torch.zeros(1, 8, 3), torch.zeros(1, 8, 3))), {}, torch.zeros(8, 4)),  # hidden states
    ((torch.randn(8, 3),), {}, torch.zeros(4, 8)),  # the output leads with another size
    ((torch.randn(3),), {}, torch.zeros(5)),  # a Linear on one vector
    ((torch.randn(8),), {}, torch.zeros(8)),  # 1-d: no rows, whatever the sizes
    ((None,), {}, torch.zeros(8)),  # no tensor argument
    ((torch.randn(0, 3),), {}, torch.zeros(0, 4)),  # no row
], ids=["sizes-differ", "0-d", "tuple-argument", "output-differs", "vector", "1-d", "no-tensor", "empty"])
def test_calls_whose_rows_cannot_be_cut(args, kwargs, output):
    assert shared_rows(args, kwargs, output) is None


def test_take_rows_cuts_every_tensor_and_passes_the_rest():
    x, mask = torch.arange(24.0).reshape(8, 3), torch.arange(8.0)
    args, kwargs = take_rows((x, None, 4), {"mask": mask, "mode": "a"}, 2, 5)
    assert torch.equal(args[0], x[2:5]) and args[1:] == (None, 4)
    assert torch.equal(kwargs["mask"], mask[2:5]) and kwargs["mode"] == "a"


def test_batches_of_every_fed_kind_are_cut_alike():
    x, y = torch.randn(6, 2), torch.randn(6)
    assert batch_rows(x) == 6 and torch.equal(take_batch_rows(x, 2), x[:2])
    for batch in ((x, y), [x, y]):
        assert batch_rows(batch) == 6
        cut = take_batch_rows(batch, 2)
        assert type(cut) is type(batch) and torch.equal(cut[0], x[:2]) and torch.equal(cut[1], y[:2])
    cut = take_batch_rows({"input_ids": x, "flag": True}, 3)
    assert torch.equal(cut["input_ids"], x[:3]) and cut["flag"] is True
    assert batch_rows((x, torch.randn(5))) is None
    assert batch_rows({"a": x, "b": [1, 2]}) is None
    assert batch_rows("text") is None


def test_rows_match_accepts_rounding_and_rejects_interacting_rows():
    whole = torch.randn(8, 4)
    assert rows_match(whole[2:5] * (1 + 1e-6), whole, 2, 5)
    assert not rows_match(whole[2:5] + 0.1, whole, 2, 5)
    assert not rows_match(whole[2:4], whole, 2, 5)  # another shape
    assert not rows_match((whole[2:5], whole[2:5]), whole, 2, 5)  # another number of leaves
    attention = torch.nn.MultiheadAttention(4, 1).eval()  # sequence first: the leading dim is not a batch
    x = torch.randn(6, 2, 4)
    with torch.no_grad():
        full, cut = attention(x, x, x)[0], attention(x[:3], x[:3], x[:3])[0]
    assert shared_rows((x, x, x), {}, full) == 6 and not rows_match(cut, full, 0, 3)
