"""Masked reductions (repirl_ray/algo/stats.py), against hand-computed numbers."""

import math

import torch
from torch.testing import assert_close

from repirl_ray.algo.stats import loss_denominator, masked_mean, masked_sum, masked_whiten

NAN = float("nan")


def test_masked_sum_and_mean_ignore_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, NAN, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # all: 1 + 2 + 4 = 7 over 3 entries; rows: 3 / 2 and 4 / 1
    assert masked_sum(x, mask).item() == 7.0
    assert_close(masked_mean(x, mask), torch.tensor(7.0 / 3, dtype=torch.float64))
    assert_close(masked_sum(x, mask, dim=1), torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0], dtype=torch.float64))


def test_masked_mean_of_empty_row_is_zero():
    x = torch.tensor([[5.0, 5.0], [3.0, 1.0]])
    mask = torch.tensor([[False, False], [True, True]])
    assert_close(masked_mean(x, mask, dim=1), torch.tensor([0.0, 2.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten_hand_values():
    # masked entries 1, 2, 3: mean 2, population variance (1 + 0 + 1) / 3 = 2/3,
    # std sqrt(2/3) = 0.81650, so (-1, 0, 1) / 0.81650 = (-1.22474, 0, 1.22474); padding -> 0.
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, -7.0, NAN]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s = math.sqrt(1.5)
    expected = torch.tensor([[-s, 0.0, 0.0], [s, 0.0, 0.0]], dtype=torch.float64)
    assert_close(masked_whiten(x, mask, eps=0.0), expected)


def test_masked_whiten_gives_zero_mean_unit_population_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3 + 5
    mask = torch.rand(4, 7, generator=g) > 0.3
    w = masked_whiten(x, mask, eps=0.0)
    assert abs(masked_mean(w, mask).item()) < 1e-12
    assert abs(masked_mean(w**2, mask).item() - 1.0) < 1e-12
    assert bool((w[~mask] == 0).all())


def test_loss_denominator_override_and_floor():
    like = torch.zeros((), dtype=torch.float64)
    assert loss_denominator(torch.tensor(3), None, like).item() == 3.0
    assert loss_denominator(torch.tensor(3), 10, like).item() == 10.0
    # an empty micro-batch must not divide by zero
    assert loss_denominator(torch.tensor(0), None, like).item() == 1.0
