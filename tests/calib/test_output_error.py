"""The two error views method "auto" scores with, against small references computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantrewrite.calib.output_error import ENERGY_FLOOR, VIEWS, Reference, feature_dim, squared_error


def test_views_order():
    assert VIEWS == ("relative", "absolute")


def test_linear_rows_are_scored_relative_to_their_own_energy():
    reference = torch.tensor([[3.0, 4.0], [30.0, 40.0]])  # energies 25 and 2500 (mean 1262.5: no floor hit)
    output = reference + torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    relative, absolute = Reference(reference, dim=feature_dim(nn.Linear(2, 2), reference)).errors(output)
    assert absolute == pytest.approx(2.0)
    assert relative == pytest.approx(1 / 25 + 1 / 2500)


def test_conv_outputs_are_scored_per_position_across_channels():
    conv = nn.Conv2d(1, 2, 1)
    reference = torch.zeros(1, 2, 1, 2)
    reference[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # position 0: energy 25
    reference[0, :, 0, 1] = torch.tensor([6.0, 8.0])  # position 1: energy 100
    assert feature_dim(conv, reference) == 1
    output = reference.clone()
    output[0, 0, 0, :] += 1.0
    relative, absolute = Reference(reference, dim=feature_dim(conv, reference)).errors(output)
    assert absolute == pytest.approx(2.0)
    assert relative == pytest.approx(1 / 25 + 1 / 100)


def test_near_zero_vectors_are_floored():
    reference = torch.tensor([[10.0, 0.0], [0.0, 0.0]])  # energies 100 and 0; the floor is 1% of the mean 50
    output = reference + 1.0
    relative, _ = Reference(reference, dim=-1).errors(output)
    assert relative == pytest.approx(2 / 100 + 2 / (ENERGY_FLOOR * 50))


def test_nested_outputs_and_non_float_leaves():
    reference = {"a": torch.ones(2, 2), "ids": torch.arange(2), "b": (torch.ones(1, 2), None)}
    output = {"a": torch.ones(2, 2) * 2, "ids": torch.arange(2) + 5, "b": (torch.ones(1, 2), None)}
    relative, absolute = Reference(reference, dim=-1).errors(output)
    assert absolute == pytest.approx(4.0)
    assert relative == pytest.approx(2 * (2 / 2))
    assert squared_error(output, Reference(reference, dim=-1).leaves) == pytest.approx(4.0)


def test_outputs_of_another_shape_are_infinitely_far():
    """A detector's box list changes length with the ranges: the end-to-end check must not crash on it."""
    reference = [torch.ones(4, 5)]
    assert squared_error(torch.ones(5, 5), reference) == float("inf")
    assert squared_error((torch.ones(4, 5), torch.ones(1)), reference) == float("inf")
