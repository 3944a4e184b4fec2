"""RLOO advantages (repirl_ray/algo/advantages.py, ALGORITHM.md section 3), by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from repirl_ray.algo.advantages import (
    batch_max_normalise,
    mean_token_reward,
    min_form_returns,
    oracle_token_rewards,
    position_rloo,
    process_advantages,
    reverse_cumsum,
    rloo_advantages,
    rloo_process_rewards,
    rloo_sequence_advantages,
    sequence_channel_advantages,
    step_segments,
)
from repirl_ray.algo.metrics import auroc, step_auroc_inputs, step_scores
from repirl_ray.algo.stats import masked_mean, masked_whiten

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def test_rloo_sequence_advantages_hand_values():
    # K = 4. Prompt 0, o = (1, 0, 0, 1): row 0's others (0, 0, 1) mean 1/3 -> A = 2/3;
    # row 1's others (1, 0, 1) mean 2/3 -> A = -2/3. Prompt 1, o = (1, 1, 1, 0): rows 4-6's
    # others mean 2/3 -> A = 1/3; row 7's others mean 1 -> A = -1.
    a = rloo_sequence_advantages(t([1, 0, 0, 1, 1, 1, 1, 0]), samples_per_prompt=4)
    assert_close(a, t([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0]))
    # invariant: each group's advantages sum to zero
    assert_close(a.view(2, 4).sum(dim=1), t([0.0, 0.0]))


def test_rloo_sequence_advantages_accepts_int_outcomes_and_all_equal_group_is_zero():
    a = rloo_sequence_advantages(torch.tensor([1, 1, 0, 0]), samples_per_prompt=2)
    assert a.dtype.is_floating_point
    assert_close(a, torch.zeros(4))


@pytest.mark.parametrize("size, k, match", [(5, 2, "multiple of samples_per_prompt"), (4, 1, ">= 2")])
def test_rloo_sequence_advantages_rejects_bad_groups(size, k, match):
    with pytest.raises(ValueError, match=match):
        rloo_sequence_advantages(torch.zeros(size), samples_per_prompt=k)


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
    assert_close(rloo_process_rewards(REWARDS, MASK, samples_per_prompt=2), expected)


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
    # Whitening is over the batch's 6 response tokens (-2, -0.5, 0.5, 0, 1, 0.5): mean -1/12,
    # centred (-23, -5, 7, 1, 13, 7) / 12, variance (529 + 25 + 49 + 1 + 169 + 49) / 144 / 6 = 137 / 144.
    w = rloo_advantages(outcomes, REWARDS, MASK, 2, c_outcome=1.0, c_process=0.5, whiten=True)
    std = math.sqrt(137 / 144)
    assert_close(w, t([[-23, -5, 7], [1, 0, 0], [0, 0, 0], [13, 7, 0]]) / 12 / std * MASK)
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


# Min-form credit (PURE), a batch of 2 prompts x K = 2, T = 4; 99 marks padding.
#   row 0: r = (1, -2, 3, 0.5), step ids (0, 0, 1, -1): steps {t0, t1} R = -1, {t2} R = 3,
#          {t3} (EOS, no step) R = 0.5 -> G = (min(-1, 3, .5), same, min(3, .5), .5)
#          = (-1, -1, 0.5, 0.5), G_0 = -1
#   row 1: r = (2, 1), step ids (0, 1): G = (1, 1), G_0 = 1
#   row 2: r = (-1, 4, -3), no step labels (all -1): every token a step, G = (-3, -3, -3)
#   row 3: no tokens: G_0 = 0
MIN_REWARDS = t([[1, -2, 3, 0.5], [2, 1, 99, 99], [-1, 4, -3, 99], [99, 99, 99, 99]])
MIN_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
STEP_IDS = torch.tensor([[0, 0, 1, -1], [0, 1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]], dtype=torch.int16)


def test_step_segments():
    assert step_segments(MIN_MASK, STEP_IDS).tolist() == [[0, 0, 1, 2], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    # without step ids every token is a step
    assert step_segments(MIN_MASK).tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]


def test_min_form_returns_hand_values():
    expected = t([[-1, -1, 0.5, 0.5], [1, 1, 0, 0], [-3, -3, -3, 0], [0, 0, 0, 0]])
    assert_close(min_form_returns(MIN_REWARDS, MIN_MASK, STEP_IDS), expected)
    # token = step for row 0 too: (min(1, -2, 3, .5), min(-2, 3, .5), min(3, .5), .5)
    expected = t([[-2, -2, 0.5, 0.5], [1, 1, 0, 0], [-3, -3, -3, 0], [0, 0, 0, 0]])
    assert_close(min_form_returns(MIN_REWARDS, MIN_MASK), expected)


def test_min_form_process_advantages_hand_values():
    # A^p = G - (the other sample's G_0): row 0 - 1, row 1 - (-1), row 2 - 0, row 3 none.
    expected = t([[-2, -2, -0.5, -0.5], [2, 2, 0, 0], [-3, -3, -3, 0], [0, 0, 0, 0]])
    a = process_advantages(MIN_REWARDS, MIN_MASK, 2, "min", STEP_IDS)
    assert_close(a, expected)
    # in the mix: c_o = 1 with o = (1, 0, 0, 1) -> A^o = (1, -1, -1, 1); c_p = 0.5:
    # row 0: 1 + 0.5 (-2, -2, -.5, -.5) = (0, 0, .75, .75); row 1: -1 + 0.5 (2, 2) = (0, 0);
    # row 2: -1 + 0.5 (-3, -3, -3) = -2.5 each; row 3: no tokens.
    mixed = rloo_advantages(
        torch.tensor([1, 0, 0, 1]), MIN_REWARDS, MIN_MASK, 2, c_outcome=1.0, c_process=0.5, whiten=False,
        process_credit="min", step_ids=STEP_IDS,
    )
    assert_close(mixed, t([[0, 0, 0.75, 0.75], [0, 0, 0, 0], [-2.5, -2.5, -2.5, 0], [0, 0, 0, 0]]))
    # "sum" is the paper's channel, unchanged by step ids: the reverse cumulative sums of the
    # RLOO'd token rewards worked out in test_reverse_cumsum_hand_values.
    assert_close(process_advantages(REWARDS, MASK, 2, "sum", torch.zeros(4, 3, dtype=torch.int16)),
                 t([[-6, -3, -1], [2, 0, 0], [0, 0, 0], [0, -1, 0]]))
    with pytest.raises(ValueError, match="'max'"):
        process_advantages(MIN_REWARDS, MIN_MASK, 2, "max")


def test_min_form_is_not_raised_by_a_high_reward_step():
    # Why PURE uses it: a later step with a large reward lifts every earlier token's sum-form
    # return, but not its min-form return, which only a worse step can move (down).
    mask = torch.ones(1, 3, dtype=torch.bool)
    base, hacked = t([[0.5, -1.0, 0.2]]), t([[0.5, -1.0, 10.0]])
    assert reverse_cumsum(hacked, mask)[0, 0] > reverse_cumsum(base, mask)[0, 0] + 9
    assert_close(min_form_returns(hacked, mask)[0, :2], min_form_returns(base, mask)[0, :2])
    assert_close(min_form_returns(base, mask), t([[-1.0, -1.0, 0.2]]))


# ---- The released recipe's advantages: advantage.baseline = position, process_norm = batch_max ----
# One prompt, K = 3, rows of 3, 2 and 1 tokens (99 = padding).
POS_REWARDS = t([[1, 1, 1], [2, 2, 99], [3, 99, 99]])
POS_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_position_baseline_process_channel_hand_values():
    # G = reverse cumsum: a (3, 2, 1), b (4, 2), c (3). Baseline at t: mean of the other rows'
    # G_t over those still active at t, 0 where none is.
    # a: t0 3 - (4 + 3) / 2 = -0.5; t1 2 - 2 = 0; t2 1 - 0 = 1
    # b: t0 4 - (3 + 3) / 2 = 1;    t1 2 - 2 = 0
    # c: t0 3 - (3 + 4) / 2 = -0.5
    expected = t([[-0.5, 0, 1], [1, 0, 0], [-0.5, 0, 0]])
    assert_close(process_advantages(POS_REWARDS, POS_MASK, 3, baseline="position"), expected)
    assert_close(position_rloo(reverse_cumsum(POS_REWARDS, POS_MASK), POS_MASK, 3), expected)
    # The 2 x 2 batch above: row 0 G (6, 5, 3) against row 1's (4) at t0 only; row 3 against an
    # empty row 2 (baseline 0 everywhere).
    assert_close(process_advantages(REWARDS, MASK, 2, baseline="position"),
                 t([[2, 5, 3], [-2, 0, 0], [0, 0, 0], [0, -1, 0]]))


def test_position_baseline_turns_a_constant_reward_into_a_length_bonus():
    ones = torch.where(POS_MASK, t([[1.0] * 3] * 3), t([[0.0] * 3] * 3))
    # Per-sequence baseline: r - mean of the others' rbar = 1 - 1 = 0 on every token.
    assert_close(process_advantages(ones, POS_MASK, 3), torch.zeros(3, 3, dtype=F64))
    # Per position: a (3, 2, 1) - ((2 + 1) / 2, 1, 0) = (1.5, 1, 1); b (2, 1) - ((3 + 1) / 2, 2)
    # = (0, -1); c 1 - (3 + 2) / 2 = -1.5: the longest sample gains.
    assert_close(process_advantages(ones, POS_MASK, 3, baseline="position"),
                 t([[1.5, 1, 1], [0, -1, 0], [-1.5, 0, 0]]))


def test_position_baseline_outcome_channel_hand_values():
    # o = (1, 0, 1) on the last token: the return is o on every token of the sample.
    # a: t0 1 - (0 + 1) / 2 = 0.5; t1 1 - 0 (b active) = 1; t2 1 - 0 (none active) = 1
    # b: t0 0 - (1 + 1) / 2 = -1;  t1 0 - 1 = -1
    # c: t0 1 - (1 + 0) / 2 = 0.5
    a = sequence_channel_advantages(t([1, 0, 1]), POS_MASK, 3, "position")
    assert_close(a, t([[0.5, 1, 1], [-1, -1, 0], [0.5, 0, 0]]))
    # "sequence": the RLOO advantage (1 - 0.5, 0 - 1, 1 - 0.5) on every token
    assert_close(sequence_channel_advantages(t([1, 0, 1]), POS_MASK, 3), t([[0.5, 0.5, 0.5], [-1, -1, 0], [0.5, 0, 0]]))
    with pytest.raises(ValueError, match="advantage.baseline"):
        sequence_channel_advantages(t([1, 0, 1]), POS_MASK, 3, "per_token")


def test_batch_max_normalise_hand_values():
    # Largest |reverse cumsum| of the 2 x 2 batch: 6 (row 0, t0).
    expected = t([[1, 2, 3], [4, 0, 0], [0, 0, 0], [1, -1, 0]]) / (6 + 1e-6)
    assert_close(batch_max_normalise(REWARDS, MASK), expected)
    # A negative return counts by its magnitude: (-8) -> -1 (to 1e-6 relative).
    out = batch_max_normalise(t([[-8.0, 99]]), torch.tensor([[1, 0]], dtype=torch.bool))
    assert_close(out, t([[-8 / (8 + 1e-6), 0]]))


def test_released_advantages_combine_both_switches():
    # c_o = 1, c_p = 0.5, o = (1, 0, 0, 1) on the 2 x 2 batch, no whitening:
    # A^o by position: row 0 (1, 1, 1) (sibling row 1, o = 0, active at t0 only), row 1 -1,
    # row 3 (1, 1) (its sibling has no tokens); A^p = the position test's numbers / (6 + 1e-6).
    a = rloo_advantages(torch.tensor([1, 0, 0, 1]), REWARDS, MASK, 2, c_outcome=1.0, c_process=0.5, whiten=False,
                        baseline="position", process_norm="batch_max")
    a_p = t([[2, 5, 3], [-2, 0, 0], [0, 0, 0], [0, -1, 0]]) / (6 + 1e-6)
    assert_close(a, t([[1, 1, 1], [-1, 0, 0], [0, 0, 0], [1, 1, 0]]) + 0.5 * a_p)
    with pytest.raises(ValueError, match="process_norm"):
        process_advantages(REWARDS, MASK, 2, process_norm="max")


# ---- prm.kind = oracle ----


def test_oracle_token_rewards_hand_values():
    ids = torch.tensor([
        [0, 0, 1, 1, 2, -1],   # every step correct: +1 at the end of each step, EOS 0
        [0, 1, 1, 2, 2, -1],   # first wrong step 1: +1, -1, -1
        [0, 0, -1, 0, 1, -1],  # a token of no characters inside step 0; stops early (first_wrong 2)
    ])
    mask = torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    r = oracle_token_rewards(ids, torch.tensor([-1, 1, 2]), mask)
    assert_close(r, torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, -1, 0, -1, 0], [0, 0, 0, 1, 1, 0]], dtype=torch.float32))
    # Summed per step, the oracle ranks every correct step above every wrong one.
    steps = [step_scores(r[i], ids[i]) for i in range(3)]
    assert steps == [[1, 1, 1], [1, -1, -1], [1, 1]]
    assert auroc(*step_auroc_inputs(steps, [None, 1, 2])) == 1.0
    with pytest.raises(ValueError, match=r"rows \[1\] have no step labels"):
        oracle_token_rewards(ids, torch.tensor([-1, -2, 2]), mask)
