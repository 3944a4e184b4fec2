"""The PRM objective (repirl_ray/algo/prm_loss.py, ALGORITHM.md section 2), by hand.

The batch used throughout: 2 prompts x K = 4 rollouts, plus one demo per prompt appended at
the end (rows are not contiguous by prompt, as a learner may build them):

    row      0     1       2     3       4     5     6     7     8 (demo) 9 (demo)
    prompt   0     0       0     0       1     1     1     1     0        1
    o        1     0       0     1       0     0     0     1     (0: ignored for a demo)
    R        1   1+ln3     1   1+ln3     3     3     3     3     50       50
    log pi  -1    -1      -1    -1      -2    -2    -2    -2     NaN      NaN   (demos have none)
    rbar    0.5   1.0    -1.0   0.3     0.2   0.4   0.6   0.9   1.2      0.8

With pseudo-experts: P = {0, 3, 7, 8, 9} (|P| = 5, mean rbar = 3.7 / 5 = 0.74), N = {1, 2, 4, 5, 6}.
log w = R - log pi ("sum"): row 1: 2 + ln3, row 2: 2, rows 4-6: 5.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from repirl_ray.algo.advantages import mean_token_reward
from repirl_ray.algo.prm_loss import (
    effective_sample_size,
    importance_log_weights,
    normalised_weights,
    repirl_prm_coefficients,
    repirl_prm_loss,
    reward_l2_penalty,
    split_positive_negative,
    within_prompt_ess,
)

F64 = torch.float64
LN3 = math.log(3.0)
NAN = float("nan")


def t(values):
    return torch.tensor(values, dtype=F64)


OUTCOMES = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
IS_DEMO = torch.tensor([False] * 8 + [True, True])
PROMPT = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
R = t([1, 1 + LN3, 1, 1 + LN3, 3, 3, 3, 3, 50, 50])
LOGPI = t([-1, -1, -1, -1, -2, -2, -2, -2, NAN, NAN])
RBAR = t([0.5, 1.0, -1.0, 0.3, 0.2, 0.4, 0.6, 0.9, 1.2, 0.8])


def coefficients(**overrides):
    args = dict(
        outcomes=OUTCOMES, is_demo=IS_DEMO, trajectory_reward=R, mean_reward=RBAR,
        sampling_logprob_sum=LOGPI, prompt_index=PROMPT,
        pseudo_expert=True, weight_reward="sum", normalise_over="prompt",
    )
    args.update(overrides)
    return repirl_prm_coefficients(**args)


def test_split_positive_negative():
    is_pos, is_neg = split_positive_negative(OUTCOMES, IS_DEMO, pseudo_expert=True)
    assert torch.nonzero(is_pos).flatten().tolist() == [0, 3, 7, 8, 9]
    assert torch.nonzero(is_neg).flatten().tolist() == [1, 2, 4, 5, 6]
    # paper's ablation (Table 6): correct rollouts move to N; demos stay in P
    is_pos, is_neg = split_positive_negative(OUTCOMES, IS_DEMO, pseudo_expert=False)
    assert torch.nonzero(is_pos).flatten().tolist() == [8, 9]
    assert torch.nonzero(is_neg).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_split_rejects_non_binary_rollout_outcome():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        split_positive_negative(t([1, 0.5, 7]), torch.tensor([False, False, True]), True)


def test_importance_log_weights_sum_mean_and_no_gradient():
    r = R.clone().requires_grad_(True)
    log_w = importance_log_weights(r, RBAR, LOGPI, "sum")
    assert not log_w.requires_grad
    assert_close(log_w[:8], t([2, 2 + LN3, 2, 2 + LN3, 5, 5, 5, 5]))
    # "mean": rbar - log pi, e.g. row 1: 1.0 + 1 = 2, row 4: 0.2 + 2 = 2.2
    log_w = importance_log_weights(r, RBAR, LOGPI, "mean")
    assert_close(log_w[:8], t([1.5, 2.0, 0.0, 1.3, 2.2, 2.4, 2.6, 2.9]))
    with pytest.raises(ValueError, match="'max'"):
        importance_log_weights(R, RBAR, LOGPI, "max")


def test_hand_weights_and_loss_normalised_per_prompt():
    # prompt 0 negatives, log w (2 + ln3, 2): softmax = (3/4, 1/4); prompt 1: (5, 5, 5) -> 1/3 each.
    # Two prompts have negatives, so each prompt's weights are halved: (3/8, 1/8), 1/6 x 3.
    # coef = w_hat on N, -1/5 on P.
    c = coefficients()
    expected = t([-0.2, 3 / 8, 1 / 8, -0.2, 1 / 6, 1 / 6, 1 / 6, -0.2, -0.2, -0.2])
    assert_close(c.coef, expected)
    # L = 3/8 * 1.0 + 1/8 * (-1.0) + 1/6 * (0.2 + 0.4 + 0.6) - 0.74 = 0.45 - 0.74 = -0.29
    assert_close(repirl_prm_loss(RBAR, c.coef), torch.tensor(-0.29, dtype=F64))
    # ESS = 1 / (9/64 + 1/64 + 3/36) = 192 / 46 = 96 / 23
    assert c.ess == pytest.approx(96 / 23)
    assert (c.num_pos, c.num_neg, c.skip, c.negatives_dropped) == (5, 5, False, False)


def test_hand_weights_and_loss_normalised_over_batch():
    # one softmax over (2 + ln3, 2, 5, 5, 5): exp = e^2 * (3, 1, e^3, e^3, e^3),
    # sum = e^2 (4 + 3 e^3) with e^3 = 20.0855: weights 3/64.2566 = 0.04669, 1/64.2566 = 0.01556,
    # e^3/64.2566 = 0.31258 each.
    c = coefficients(normalise_over="batch")
    e3 = math.exp(3.0)
    z = 4 + 3 * e3
    expected = t([-0.2, 3 / z, 1 / z, -0.2, e3 / z, e3 / z, e3 / z, -0.2, -0.2, -0.2])
    assert_close(c.coef, expected)
    # L = (3 * 1.0 + 1 * (-1.0) + e^3 * (0.2 + 0.4 + 0.6)) / z - 0.74 = 26.1026 / 64.2566 - 0.74
    #   = 0.40623 - 0.74 = -0.33377
    loss = repirl_prm_loss(RBAR, c.coef)
    assert_close(loss, torch.tensor((2 + 1.2 * e3) / z - 0.74, dtype=F64))
    assert loss.item() == pytest.approx(-0.333775, abs=1e-6)
    # ESS = z^2 / (9 + 1 + 3 e^6) = 3.38356: the batch softmax concentrates on prompt 1
    assert c.ess == pytest.approx(z**2 / (10 + 3 * e3**2))
    assert c.ess == pytest.approx(3.38356, abs=1e-5)


def test_mean_weight_reward_per_prompt():
    # log w = rbar - log pi. Prompt 0 negatives: (2, 0) -> (e^2, 1) / (e^2 + 1)
    # = (0.88080, 0.11920).
    # Prompt 1: (2.2, 2.4, 2.6) -> softmax(0, 0.2, 0.4) = (0.26931, 0.32893, 0.40176). Halved.
    # L = (0.88080 - 0.11920) / 2 + (0.26931*0.2 + 0.32893*0.4 + 0.40176*0.6) / 2 - 0.74
    #   = 0.38080 + 0.21324 - 0.74 = -0.14596
    c = coefficients(weight_reward="mean")
    a = math.exp(2) / (math.exp(2) + 1)
    s = 1 + math.exp(0.2) + math.exp(0.4)
    w4, w5, w6 = 1 / s, math.exp(0.2) / s, math.exp(0.4) / s
    expected = t([-0.2, a / 2, (1 - a) / 2, -0.2, w4 / 2, w5 / 2, w6 / 2, -0.2, -0.2, -0.2])
    assert_close(c.coef, expected)
    assert repirl_prm_loss(RBAR, c.coef).item() == pytest.approx(-0.1459577, abs=1e-6)


def test_pseudo_expert_off_moves_correct_rollouts_into_n():
    # P = demos {8, 9}: coef -1/2 each. Prompt 0 negatives rows 0-3, log w (2, 2+ln3, 2, 2+ln3)
    # -> (1, 3, 1, 3) / 8; prompt 1 rows 4-7 all 5 -> 1/4 each. Halved per prompt.
    c = coefficients(pseudo_expert=False)
    expected = t([1 / 16, 3 / 16, 1 / 16, 3 / 16, 1 / 8, 1 / 8, 1 / 8, 1 / 8, -0.5, -0.5])
    assert_close(c.coef, expected)
    # L = (0.5 + 3*1.0 - 1.0 + 3*0.3) / 16 + (0.2 + 0.4 + 0.6 + 0.9) / 8 - (1.2 + 0.8) / 2
    #   = 0.2125 + 0.2625 - 1.0 = -0.525
    assert_close(repirl_prm_loss(RBAR, c.coef), torch.tensor(-0.525, dtype=F64))
    assert (c.num_pos, c.num_neg) == (2, 8)


def test_empty_n_drops_the_negative_term():
    # every rollout correct: P = all 10 rows, L = -mean rbar = -4.9 / 10
    c = coefficients(outcomes=torch.ones(10, dtype=torch.long))
    assert c.negatives_dropped and not c.skip
    assert c.num_neg == 0 and c.ess == 0.0
    assert_close(c.coef, torch.full((10,), -0.1, dtype=F64))
    assert_close(repirl_prm_loss(RBAR, c.coef), torch.tensor(-0.49, dtype=F64))


def test_empty_p_skips_the_update():
    # no demos, every rollout wrong -> P empty
    rows = slice(0, 8)
    c = coefficients(
        outcomes=torch.zeros(8), is_demo=IS_DEMO[rows], trajectory_reward=R[rows],
        mean_reward=RBAR[rows], sampling_logprob_sum=LOGPI[rows], prompt_index=PROMPT[rows],
    )
    assert c.skip and c.num_pos == 0 and c.num_neg == 8
    assert bool((c.coef == 0).all())
    # no demos and pseudo-experts off: correct rollouts are negatives too, so P is empty again
    c = coefficients(
        outcomes=OUTCOMES[rows], is_demo=IS_DEMO[rows], trajectory_reward=R[rows],
        mean_reward=RBAR[rows], sampling_logprob_sum=LOGPI[rows], prompt_index=PROMPT[rows],
        pseudo_expert=False,
    )
    assert c.skip


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_normalised_weights_stable_for_log_weights_near_1000(dtype, tol):
    # prompt 0: log w (2000 + ln3, 2000); prompt 1: (-1000, -1000, -1000); row 3 not a negative.
    log_w = torch.tensor([2000 + LN3, 2000, -1000, -1000, -1000, 5000], dtype=dtype)
    is_neg = torch.tensor([True, True, True, True, True, False])
    prompt = torch.tensor([0, 0, 1, 1, 1, 0])
    w = normalised_weights(log_w, is_neg, prompt, "prompt")
    expected = torch.tensor([3 / 8, 1 / 8, 1 / 6, 1 / 6, 1 / 6, 0], dtype=dtype)
    assert_close(w, expected, atol=tol, rtol=tol)
    # over the batch, prompt 1's weights underflow to exactly 0 and prompt 0 holds (3/4, 1/4)
    w = normalised_weights(log_w, is_neg, prompt, "batch")
    assert_close(w, torch.tensor([0.75, 0.25, 0, 0, 0, 0], dtype=dtype), atol=tol, rtol=tol)
    assert torch.isfinite(w).all()


def test_normalised_weights_reject_unknown_mode():
    with pytest.raises(ValueError, match="'episode'"):
        normalised_weights(t([0.0]), torch.tensor([True]), torch.tensor([0]), "episode")


def test_effective_sample_size():
    # uniform over n = 5 negatives -> 1 / (5 * 1/25) = 5; one-hot -> 1; no negatives -> 0.0
    is_neg = torch.tensor([True] * 5 + [False])
    assert effective_sample_size(t([0.2] * 5 + [0.0]), is_neg) == pytest.approx(5.0)
    assert effective_sample_size(t([0, 0, 1, 0, 0, 0]), is_neg) == pytest.approx(1.0)
    assert effective_sample_size(t([0.0] * 6), torch.zeros(6, dtype=torch.bool)) == 0.0
    # equal log weights: over the batch the weights are uniform and ESS = n = 5; per prompt
    # they are uniform only when every prompt has as many negatives (2 + 2 here: ESS = 4) ...
    zeros = torch.zeros(6, dtype=F64)
    w = normalised_weights(zeros, is_neg, torch.tensor([0, 0, 1, 1, 2, 2]), "batch")
    assert effective_sample_size(w, is_neg) == pytest.approx(5.0)
    four = torch.tensor([True, True, True, True, False, False])
    w = normalised_weights(zeros, four, torch.tensor([0, 0, 1, 1, 2, 2]), "prompt")
    assert effective_sample_size(w, four) == pytest.approx(4.0)
    # ... but prompts holding 2, 2 and 1 negatives get (1/6, 1/6, 1/6, 1/6, 1/3):
    # ESS = 1 / (4/36 + 1/9) = 4.5 < 5, the price of giving every prompt the same total weight
    w = normalised_weights(zeros, is_neg, torch.tensor([0, 0, 1, 1, 2, 2]), "prompt")
    assert_close(w, t([1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 3, 0]))
    assert effective_sample_size(w, is_neg) == pytest.approx(4.5)


def test_ess_within_hand_values():
    # Prompt 0's negatives have weights (3/4, 1/4): ESS_0 = 1 / (9/16 + 1/16) = 1.6 of 2 -> 0.8;
    # prompt 1's three are uniform: ESS_1 = 3 of 3 -> 1. Mean over the two prompts: 0.9.
    assert coefficients().ess_within == pytest.approx(0.9)
    # The same number whichever softmax made the loss's weights (it is within each prompt).
    assert coefficients(normalise_over="batch").ess_within == pytest.approx(0.9)
    # "mean": prompt 0 (a, 1 - a), a = e^2 / (e^2 + 1) = 0.88080: ESS = 1 / (a^2 + (1-a)^2)
    # = 1.26579 -> / 2 = 0.63290; prompt 1 softmax(0, 0.2, 0.4) = (0.26931, 0.32893, 0.40176):
    # ESS = 1 / 0.342134 = 2.92283 -> / 3 = 0.97428. Mean: 0.80359.
    a = math.exp(2) / (math.exp(2) + 1)
    s = 1 + math.exp(0.2) + math.exp(0.4)
    ess_1 = 1 / sum((x / s) ** 2 for x in (1, math.exp(0.2), math.exp(0.4)))
    expected = (1 / (a**2 + (1 - a) ** 2) / 2 + ess_1 / 3) / 2
    assert coefficients(weight_reward="mean").ess_within == pytest.approx(expected)
    assert expected == pytest.approx(0.80359, abs=1e-5)
    # no negatives: 0.0, as the batch ESS
    assert coefficients(outcomes=torch.ones(10, dtype=torch.long)).ess_within == 0.0


def test_ess_within_shows_a_collapse_the_batch_ess_hides():
    # Two prompts with 3 negatives each. Prompt 0's weights collapse onto one sample
    # (log w 50, 0, 0), prompt 1's are uniform. Per-prompt weights: (1/2, ~0, ~0), (1/6, 1/6, 1/6):
    # the batch ESS = 1 / (1/4 + 3/36) = 3.0, above the 2 prompts, and looks healthy;
    # ess_within = (1/3 + 3/3) / 2 = 2/3 shows that one prompt has a single effective sample.
    log_w = t([50, 0, 0, 0, 0, 0])
    is_neg = torch.ones(6, dtype=torch.bool)
    prompt = torch.tensor([0, 0, 0, 1, 1, 1])
    w = normalised_weights(log_w, is_neg, prompt, "prompt")
    assert effective_sample_size(w, is_neg) == pytest.approx(3.0, abs=1e-12)
    assert within_prompt_ess(log_w, is_neg, prompt) == pytest.approx(2 / 3, abs=1e-12)
    # rows need not be grouped, and non-negatives (a demo with NaN log w) are left out
    log_w = t([0, NAN, 50, 0, 0, 0, 0])
    is_neg = torch.tensor([True, False, True, True, True, True, True])
    prompt = torch.tensor([1, 0, 0, 1, 0, 0, 1])
    assert within_prompt_ess(log_w, is_neg, prompt) == pytest.approx(2 / 3, abs=1e-12)


def test_equal_weights_give_a_contrast_of_mean_rewards():
    # ALGORITHM.md section 2: with all weights equal, L = mean_N rbar - mean_P rbar.
    # N = {1, 2, 4, 5, 6}: (1 - 1 + 0.2 + 0.4 + 0.6) / 5 = 0.24; P: 0.74 -> L = -0.5
    c = coefficients(
        trajectory_reward=torch.zeros(10, dtype=F64),
        sampling_logprob_sum=torch.zeros(10, dtype=F64),
        normalise_over="batch",
    )
    assert_close(repirl_prm_loss(RBAR, c.coef), torch.tensor(-0.5, dtype=F64))
    assert c.ess == pytest.approx(5.0)


def test_self_normalised_estimate_is_exact_on_a_discrete_support():
    # Support {tau_0, tau_1, tau_2}, pi = (0.5, 0.25, 0.25). Negatives: tau_0 twice, tau_1, tau_2
    # (multiplicities proportional to pi). w_j ~ exp(R)/pi: tau_0 rows 2 e^R0 each -> 4 e^R0 in
    # total, tau_1 4 e^R1, tau_2 4 e^R2; normalised per trajectory = softmax(R)
    # = d log Z / d R(tau) with log Z = log sum_tau exp R(tau).
    reward = t([0.3, -1.2, 2.0]).requires_grad_(True)
    torch.logsumexp(reward, dim=0).backward()
    trajectory = torch.tensor([0, 0, 1, 2])
    log_pi = torch.log(t([0.5, 0.25, 0.25]))
    log_w = importance_log_weights(reward.detach()[trajectory], RBAR[:4], log_pi[trajectory], "sum")
    for mode in ("prompt", "batch"):
        one_prompt = torch.zeros(4, dtype=torch.long)
        w = normalised_weights(log_w, torch.ones(4, dtype=torch.bool), one_prompt, mode)
        per_trajectory = torch.zeros(3, dtype=F64).index_add(0, trajectory, w)
        assert_close(per_trajectory, reward.grad)
        assert_close(per_trajectory, torch.softmax(reward.detach(), dim=0))


def _linear_prm(features, phi, mask):
    """Tiny PRM: r_t = phi . x_t; returns token rewards [B, T] and rbar [B]."""
    token_rewards = features @ phi
    return token_rewards, mean_token_reward(token_rewards, mask)


def test_microbatch_gradients_equal_the_full_batch_gradient():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(10, 5, 3, generator=g, dtype=F64)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 5, 3, 4, 2])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    phi = torch.randn(3, generator=g, dtype=F64)
    with torch.no_grad():  # the learner's no-grad scoring pass over the whole batch
        token_rewards, rbar = _linear_prm(features, phi, mask)
        c = coefficients(
            trajectory_reward=(token_rewards * mask).sum(1),
            mean_reward=rbar,
            normalise_over="batch",
        )
    num_tokens = int(mask.sum())

    phi_full = phi.clone().requires_grad_(True)
    token_rewards, rbar = _linear_prm(features, phi_full, mask)
    full = repirl_prm_loss(rbar, c.coef) + reward_l2_penalty(token_rewards, mask, 0.5)
    full.backward()

    phi_micro = phi.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 3), slice(3, 10)):
        token_rewards, rbar = _linear_prm(features[rows], phi_micro, mask[rows])
        part = repirl_prm_loss(rbar, c.coef[rows])
        part = part + reward_l2_penalty(token_rewards, mask[rows], 0.5, num_tokens=num_tokens)
        part.backward()
        total = total + part.detach()
    assert_close(total, full.detach())
    assert_close(phi_micro.grad, phi_full.grad)
    assert phi_full.grad.abs().sum() > 0


def test_prm_loss_gradient_has_no_gradient_through_the_weights():
    # "mean" weights come from the very rbar the loss is differentiated in: log w = rbar - log pi,
    # prompt 0's negatives (2, 0), prompt 1's (2.2, 2.4, 2.6). With w held fixed (the module
    # docstring) dL/d rbar is w_hat on N and -1/|P| = -0.2 on P, each prompt's softmax halved:
    # (e^2, 1) / (e^2 + 1) / 2 and (1, e^0.2, e^0.4) / (1 + e^0.2 + e^0.4) / 2. A gradient through
    # the softmax would add w_hat_j (rbar_j - sum_k w_hat_k rbar_k) on each negative.
    rbar = RBAR.clone().requires_grad_(True)
    c = coefficients(mean_reward=rbar, weight_reward="mean")
    repirl_prm_loss(rbar, c.coef).backward()
    e2, z1 = math.exp(2.0), 1 + math.exp(0.2) + math.exp(0.4)
    w0 = [e2 / (e2 + 1) / 2, 1 / (e2 + 1) / 2]
    w1 = [1 / z1 / 2, math.exp(0.2) / z1 / 2, math.exp(0.4) / z1 / 2]
    assert_close(rbar.grad, t([-0.2, *w0, -0.2, *w1, -0.2, -0.2, -0.2]))


def test_reward_l2_penalty_hand_value():
    # r^2 over the real tokens: 1, 4, 9 (row 0), 16 (row 1) -> mean 30 / 4 = 7.5; x 2.0 = 15
    r = t([[1, -2, 3], [4, 100, 100]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert_close(reward_l2_penalty(r, mask, 2.0), torch.tensor(15.0, dtype=F64))
    assert_close(reward_l2_penalty(r, mask, 2.0, num_tokens=10), torch.tensor(6.0, dtype=F64))


def test_proposition_3_discriminator_gradient_at_the_policy_fixed_point():
    """ALGORITHM.md's Proposition 3, in the form that holds exactly for this estimator.

    Discriminator loss L_D = -(E_d[log D] + E_pi[log(1 - D)]), D = p / (p + pi),
    p = exp(R) / Z. With grad log p = grad R - E_p[grad R]:
        grad log D = (1 - D) grad log p,  grad log(1 - D) = -D grad log p.
    At pi = p (the policy at the energy model), D = 1/2 everywhere and
        grad L_D = -1/2 (E_d[grad R] - E_p[grad R]) + 1/2 (E_pi[grad R] - E_p[grad R])
                 = 1/2 (E_p[grad R] - E_d[grad R]) = 1/2 grad L_prm
    when L_prm's self-normalised term is exact (negatives with multiplicities ~ pi, as in the
    discrete test above). Away from pi = p the two gradients differ (checked at the end).
    """
    f = t([[1.0, 0.5], [0.0, 1.0], [0.0, -1.0]])  # features of the 3 trajectories; R = f . phi
    phi0 = t([math.log(2.0), 0.0])  # R = (ln 2, 0, 0): p = (0.5, 0.25, 0.25)
    pi = torch.softmax(f @ phi0, dim=0)
    negatives = torch.tensor([0, 0, 1, 2])  # multiplicities ~ pi
    demos = torch.tensor([2, 2, 0])  # data distribution d = (1/3, 0, 2/3)

    def grad_l_prm(pi):
        phi = phi0.clone().requires_grad_(True)
        rows = torch.cat([negatives, demos])
        reward = (f @ phi)[rows]  # T = 1, so rbar = R
        c = repirl_prm_coefficients(
            outcomes=torch.zeros(7), is_demo=torch.tensor([False] * 4 + [True] * 3),
            trajectory_reward=reward.detach(), mean_reward=reward.detach(),
            sampling_logprob_sum=torch.log(pi)[rows], prompt_index=torch.zeros(7, dtype=torch.long),
            pseudo_expert=True, weight_reward="sum", normalise_over="prompt",
        )
        repirl_prm_loss(reward, c.coef).backward()
        return phi.grad

    def grad_l_disc(pi):
        phi = phi0.clone().requires_grad_(True)
        p = torch.softmax(f @ phi, dim=0)
        d = p / (p + pi)
        data = torch.bincount(demos, minlength=3).to(F64) / len(demos)
        loss = -((data * torch.log(d)).sum() + (pi * torch.log(1 - d)).sum())
        loss.backward()
        return phi.grad

    # E_p[f] - E_d[f] = (0.5, 0.25) - (1/3, -1/2) = (1/6, 3/4): worked out by hand
    assert_close(grad_l_prm(pi), t([1 / 6, 0.75]))
    assert_close(grad_l_disc(pi), 0.5 * grad_l_prm(pi))
    # with a policy that is not the energy model, the identity does not hold
    other_pi = t([0.25, 0.5, 0.25])
    g_disc, g_prm = grad_l_disc(other_pi), grad_l_prm(other_pi)
    assert not torch.allclose(g_disc, 0.5 * g_prm, atol=1e-3)


# ---- irl.loss_form: released (the authors' code) ----


def test_released_loss_form_hand_values():
    # P = {0, 3, 7, 8, 9}, N = {1, 2, 4, 5, 6}, M = 10 rows: coef = +1/10 on N, -1/10 on P,
    # whatever the rewards and log-probs.
    c = coefficients(loss_form="released")
    assert_close(c.coef, t([-0.1, 0.1, 0.1, -0.1, 0.1, 0.1, 0.1, -0.1, -0.1, -0.1]))
    # L = (sum_N rbar - sum_P rbar) / 10 = ((1.0 - 1.0 + 0.2 + 0.4 + 0.6) - 3.7) / 10 = -0.25
    assert_close(repirl_prm_loss(RBAR, c.coef), torch.tensor(-0.25, dtype=F64))
    # Every weight is 1: the ESS is |N| = 5, each prompt's ESS_g / |N_g| is 1.
    assert c.ess == pytest.approx(5.0) and c.ess_within == pytest.approx(1.0)
    assert (c.num_pos, c.num_neg, c.skip) == (5, 5, False)
    # Unbalanced: a constant shift of every reward changes L by (|N| - |P|) / M; here 0, with
    # one more positive (row 1 correct) it is -2/10 per unit shift.
    c = coefficients(loss_form="released", outcomes=torch.tensor([1, 1, 0, 1, 0, 0, 0, 1, 0, 0]))
    assert float(c.coef.sum()) == pytest.approx(-0.2)
    # The rewards and log-probs do not enter.
    same = coefficients(loss_form="released", trajectory_reward=R * 7, sampling_logprob_sum=LOGPI - 3)
    assert_close(same.coef, coefficients(loss_form="released").coef)


def test_released_loss_is_the_paper_loss_on_micro_batches_of_one_row():
    # The released code computes the paper's loss on each micro-batch of one row and divides by
    # the M accumulated micro-batches: a softmax over a single negative is 1 (the importance
    # weights are a no-op), and a single positive's mean is its own rbar.
    released = coefficients(loss_form="released").coef
    for i in range(10):
        one = slice(i, i + 1)
        paper = coefficients(
            outcomes=OUTCOMES[one], is_demo=IS_DEMO[one], trajectory_reward=R[one], mean_reward=RBAR[one],
            sampling_logprob_sum=LOGPI[one], prompt_index=PROMPT[one],
        )
        if paper.num_neg:
            assert float(normalised_weights(LOGPI[one] * 0 + 123.0, torch.tensor([True]), PROMPT[one], "prompt")[0]) == 1.0
            expected = 1.0  # w = 1 on the one negative
        else:
            expected = -1.0  # -1/|P| with |P| = 1
            assert float(paper.coef[0]) == expected
        assert float(released[i]) == pytest.approx(expected / 10)


def test_released_loss_with_no_positive_skips_too():
    rows = slice(0, 8)
    c = coefficients(
        loss_form="released", outcomes=torch.zeros(8), is_demo=IS_DEMO[rows], trajectory_reward=R[rows],
        mean_reward=RBAR[rows], sampling_logprob_sum=LOGPI[rows], prompt_index=PROMPT[rows],
    )
    assert c.skip and bool((c.coef == 0).all())
    with pytest.raises(ValueError, match="loss_form"):
        coefficients(loss_form="nope")
