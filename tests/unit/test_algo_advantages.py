"""RLOO advantages (repirl_ray/algo/advantages.py, ALGORITHM.md section 3), by hand."""

import pytest
import torch
from torch.testing import assert_close

from repirl_ray.algo.advantages import (
    mean_token_reward,
    reverse_cumsum,
    rloo_advantages,
    rloo_process_rewards,
    rloo_sequence_advantages,
)
from repirl_ray.algo.stats import masked_mean, masked_whiten

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def test_rloo_sequence_advantages_hand_values():
    # K = 4. Prompt 0, o = (1, 0, 0, 1): row 0's others (0, 0, 1) mean 1/3 -> A = 2/3;
    # row 1's others (1, 0, 1) mean 2/3 -> A = -2/3. Prompt 1, o = (1, 1, 1, 0): rows 4-6's
    # others mean 2/3 -> A = 1/3; row 7's others mean 1 -> A = -1.
    a = rloo_sequence_advantages(t([1, 0, 0, 1, 1, 1, 1, 0]), group_size=4)
    assert_close(a, t([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0]))
    # invariant: each group's advantages sum to zero
    assert_close(a.view(2, 4).sum(dim=1), t([0.0, 0.0]))


def test_rloo_sequence_advantages_accepts_int_outcomes_and_all_equal_group_is_zero():
    a = rloo_sequence_advantages(torch.tensor([1, 1, 0, 0]), group_size=2)
    assert a.dtype.is_floating_point
    assert_close(a, torch.zeros(4))


@pytest.mark.parametrize("size, k, match", [(5, 2, "multiple of group_size"), (4, 1, ">= 2")])
def test_rloo_sequence_advantages_rejects_bad_groups(size, k, match):
    with pytest.raises(ValueError, match=match):
        rloo_sequence_advantages(torch.zeros(size), group_size=k)


# A batch of 2 prompts x K = 2, T = 3, used below. 99 marks padding that must be ignored.
#   row 0: r = (1, 2, 3), 3 tokens -> rbar = 2
#   row 1: r = (4, -, -), 1 token  -> rbar = 4
#   row 2: no tokens               -> rbar = 0
#   row 3: r = (1, -1, -), 2 tokens -> rbar = 0
REWARDS = t([[1, 2, 3], [4, 99, 99], [99, 99, 99], [1, -1, 99]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)


def test_mean_token_reward_hand_values():
    assert_close(mean_token_reward(REWARDS, MASK), t([2.0, 4.0, 0.0, 0.0]))


def test_rloo_process_rewards_hand_values():
    # row 0: r - rbar_1 = (1, 2, 3) - 4 = (-3, -2, -1); row 1: (4) - rbar_0 = 2;
    # row 2: no tokens; row 3: (1, -1) - rbar_2 = (1, -1)
    expected = t([[-3, -2, -1], [2, 0, 0], [0, 0, 0], [1, -1, 0]])
    assert_close(rloo_process_rewards(REWARDS, MASK, group_size=2), expected)


def test_reverse_cumsum_hand_values():
    # row 0: (-3-2-1, -2-1, -1) = (-6, -3, -1); row 3: (1-1, -1) = (0, -1); padding -> 0
    x = t([[-3, -2, -1], [2, 99, 99], [99, 99, 99], [1, -1, 99]])
    expected = t([[-6, -3, -1], [2, 0, 0], [0, 0, 0], [0, -1, 0]])
    assert_close(reverse_cumsum(x, MASK), expected)


def test_rloo_advantages_two_channels_hand_values():
    # A^o with K = 2, o = (1, 0, 0, 1): (1, -1, -1, 1). A^p from the two tests above:
    # row 0: (-6, -3, -1), row 1: (2), row 3: (0, -1). c_o = 1, c_p = 0.5:
    # row 0: 1 + 0.5 * (-6, -3, -1) = (-2, -0.5, 0.5); row 1: -1 + 0.5 * 2 = 0;
    # row 2: no tokens; row 3: 1 + 0.5 * (0, -1) = (1, 0.5).
    outcomes = torch.tensor([1, 0, 0, 1])
    expected = t([[-2, -0.5, 0.5], [0, 0, 0], [0, 0, 0], [1, 0.5, 0]])
    a = rloo_advantages(outcomes, REWARDS, MASK, 2, c_outcome=1.0, c_process=0.5, whiten=False)
    assert_close(a, expected)
    # whitening is over the batch's response tokens: the same numbers, whitened
    w = rloo_advantages(outcomes, REWARDS, MASK, 2, c_outcome=1.0, c_process=0.5, whiten=True)
    assert_close(w, masked_whiten(expected, MASK))
    assert abs(masked_mean(w, MASK).item()) < 1e-9
    assert abs(masked_mean(w**2, MASK).item() - 1.0) < 1e-6


def test_rloo_advantages_outcome_only_needs_no_token_rewards():
    # `rloo` mode: A = A^o broadcast over each sample's tokens, zero on padding
    a = rloo_advantages(
        torch.tensor([1, 0, 0, 1]), None, MASK, 2, c_outcome=1.0, c_process=0.0, whiten=False
    )
    expected = torch.tensor([[1, 1, 1], [-1, 0, 0], [0, 0, 0], [1, 1, 0]], dtype=a.dtype)
    assert_close(a, expected)
    with pytest.raises(ValueError, match="token_rewards is None"):
        rloo_advantages(torch.tensor([1, 0, 0, 1]), None, MASK, 2, 1.0, 0.5, False)


def test_rloo_advantages_prm_only_with_format_channel():
    # prm_only: c_o = 0 (outcomes must not matter), format rewards (0, -1, 0, 0):
    # A^f = (0 - (-1), -1 - 0, 0, 0) = (1, -1, 0, 0). c_f = 1, c_p = 1:
    # row 0: 1 + (-6, -3, -1) = (-5, -2, 0); row 1: -1 + 2 = 1; row 3: 0 + (0, -1).
    fmt = t([0, -1, 0, 0])
    kwargs = dict(c_outcome=0.0, c_process=1.0, whiten=False, format_rewards=fmt, c_format=1.0)
    a = rloo_advantages(torch.tensor([1, 0, 0, 1]), REWARDS, MASK, 2, **kwargs)
    b = rloo_advantages(torch.tensor([0, 1, 1, 0]), REWARDS, MASK, 2, **kwargs)
    expected = t([[-5, -2, 0], [1, 0, 0], [0, 0, 0], [0, -1, 0]])
    assert_close(a, expected)
    assert_close(b, expected)
    with pytest.raises(ValueError, match="format_rewards is None"):
        rloo_advantages(torch.tensor([1, 0, 0, 1]), REWARDS, MASK, 2, 0.0, 1.0, False, c_format=1.0)


def test_rloo_advantages_carry_no_gradient():
    r = REWARDS.clone().requires_grad_(True)
    a = rloo_advantages(torch.tensor([1, 0, 0, 1]), r, MASK, 2, 1.0, 0.5, whiten=True)
    assert not a.requires_grad
