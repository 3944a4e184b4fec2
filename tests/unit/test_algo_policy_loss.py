"""PPO clipped surrogate, entropy bonus and KL (repirl_ray/algo/policy_loss.py, ALGORITHM.md
section 4), by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from repirl_ray.algo.policy_loss import entropy_from_logits, policy_loss, ppo_clip_loss, truncated_importance_weights

F64 = torch.float64
LN = math.log

# Four real tokens and two padding tokens (values there must not matter).
# ratio = (1.5, 0.5, 1.0, 1.1), A = (1, 1, -2, -1), eps = 0.2:
#   token 0: min(1.5 * 1, 1.2 * 1)     =  1.2   (clipped branch: no gradient)
#   token 1: min(0.5 * 1, 0.8 * 1)     =  0.5   (ratio branch)
#   token 2: min(1 * -2, 1 * -2)       = -2
#   token 3: min(1.1 * -1, 1.1 * -1)   = -1.1   (inside the clip range)
#   L_pg = -(1.2 + 0.5 - 2 - 1.1) / 4 = 0.35
#   clipfrac: |ratio - 1| > 0.2 on tokens 0 and 1 -> 2 / 4 = 0.5
#   approx_kl = mean((r - 1) - ln r) = ((0.5 - ln 1.5) + (-0.5 - ln 0.5) + 0 + (0.1 - ln 1.1)) / 4
#             = (0.0945349 + 0.1931472 + 0 + 0.0046898) / 4 = 0.0730930
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 7.0, 7.0]], dtype=F64)
LOG_RATIO = torch.tensor([[LN(1.5), LN(0.5), 0.0], [LN(1.1), 50.0, -50.0]], dtype=F64)
ADV = torch.tensor([[1.0, 1.0, -2.0], [-1.0, 1e6, -1e6]], dtype=F64)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
APPROX_KL = ((0.5 - LN(1.5)) + (-0.5 - LN(0.5)) + (0.1 - LN(1.1))) / 4


def _logprobs():
    return (OLD + LOG_RATIO).clone().requires_grad_(True)


def test_ppo_clip_loss_hand_values_and_gradient():
    logprobs = _logprobs()
    loss, stats = ppo_clip_loss(logprobs, OLD, ADV, MASK, clip_eps=0.2)
    assert_close(loss, torch.tensor(0.35, dtype=F64))
    assert_close(stats["clipfrac"], torch.tensor(0.5, dtype=F64))
    assert_close(stats["approx_kl"], torch.tensor(APPROX_KL, dtype=F64))
    assert not stats["clipfrac"].requires_grad and not stats["approx_kl"].requires_grad
    loss.backward()
    # d/dlogp of -ratio * A / 4 = -ratio * A / 4 where the ratio branch is active:
    # token 0 clipped -> 0; token 1: -0.5 / 4; token 2: 2 / 4; token 3: 1.1 / 4; padding -> 0
    expected = torch.tensor([[0.0, -0.125, 0.5], [0.275, 0.0, 0.0]], dtype=F64)
    assert_close(logprobs.grad, expected)


def test_ppo_clip_loss_microbatches_sum_to_the_minibatch():
    # gradient accumulation: rows split in two, each divided by the mini-batch's 4 tokens
    full_lp = _logprobs()
    full, _ = ppo_clip_loss(full_lp, OLD, ADV, MASK, 0.2)
    full.backward()
    parts_lp = _logprobs()
    total = 0.0
    for rows in (slice(0, 1), slice(1, 2)):
        part, _ = ppo_clip_loss(parts_lp[rows], OLD[rows], ADV[rows], MASK[rows], 0.2, num_tokens=4)
        total = total + part
    total.backward()
    assert_close(total, full)
    assert_close(parts_lp.grad, full_lp.grad)


def test_policy_loss_entropy_is_a_bonus_and_k3_kl():
    # entropy (1, 2, 3, 4) on the real tokens -> mean 2.5; c_ent = 0.01 subtracts 0.025.
    # ref - logp = ln 2 on every token -> k3 = 2 - ln 2 - 1 = 0.3068528; kl_coef 0.1 adds 0.0306853.
    logprobs = _logprobs()
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]], dtype=F64)
    ref = logprobs.detach() + LN(2.0)
    loss, stats = policy_loss(
        logprobs, OLD, ADV, entropy, MASK, clip_eps=0.2, entropy_coef=0.01,
        kl_coef=0.1, ref_logprobs=ref,
    )
    kl = 2.0 - LN(2.0) - 1.0
    assert_close(loss, torch.tensor(0.35 - 0.025 + 0.1 * kl, dtype=F64))
    assert_close(stats["pg_loss"], torch.tensor(0.35, dtype=F64))
    assert_close(stats["entropy"], torch.tensor(2.5, dtype=F64))
    assert_close(stats["kl"], torch.tensor(kl, dtype=F64))
    assert set(stats) == {"pg_loss", "entropy", "kl", "clipfrac", "approx_kl"}


def test_policy_loss_entropy_bonus_gradient_raises_entropy():
    # L = ... - c_ent * mean H: dL/dH = -c_ent / num_tokens on real tokens (a bonus, not a cost)
    entropy = torch.ones(2, 3, dtype=F64, requires_grad=True)
    loss, stats = policy_loss(_logprobs(), OLD, ADV, entropy, MASK, 0.2, entropy_coef=0.01)
    loss.backward()
    expected = torch.tensor([[-0.0025, -0.0025, -0.0025], [-0.0025, 0.0, 0.0]], dtype=F64)
    assert_close(entropy.grad, expected)
    assert "kl" not in stats


def test_policy_loss_kl_needs_ref_logprobs():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(_logprobs(), OLD, ADV, torch.zeros(2, 3), MASK, 0.2, 0.0, kl_coef=0.1)


def test_entropy_from_logits_hand_values():
    # uniform over 4 -> ln 4; logits (ln 3, 0) -> p = (3/4, 1/4),
    # H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351; (1000, 1000) -> ln 2 without overflow.
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [LN(3.0), 0.0, -math.inf, -math.inf]],
         [[1000.0, 1000.0, -math.inf, -math.inf], [5.0, -math.inf, -math.inf, -math.inf]]],
        dtype=F64, requires_grad=True,
    )
    h = entropy_from_logits(logits)
    expected = torch.tensor(
        [[LN(4.0), -(0.75 * LN(0.75) + 0.25 * LN(0.25))], [LN(2.0), 0.0]], dtype=F64
    )
    assert_close(h, expected)
    # probability-0 actions (logit -inf) give no NaN gradient
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_gradient_matches_autograd_of_the_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(ref, dim=-1)
    (-(p * p.log()).sum()).backward()
    assert_close(logits.grad, ref.grad)


# Truncated importance sampling (section 4). log pi_old - log pi_sampler on the real tokens:
# (ln 1.5, 1, -0.2, ln 3); cap 2:
#   w = (1.5, min(e, 2) = 2, e^-0.2 = 0.8187308, min(3, 2) = 2); padding -> 1
#   logprob_mismatch = (ln 1.5 + 1 + 0.2 + ln 3) / 4 = (0.4054651 + 1.2 + 1.0986123) / 4 = 0.6760194
#   tis_capped_frac = 2 / 4 = 0.5
SAMPLER_GAP = torch.tensor([[LN(1.5), 1.0, -0.2], [LN(3.0), 9.0, -9.0]], dtype=F64)
TIS_W = torch.tensor([[1.5, 2.0, math.exp(-0.2)], [2.0, 1.0, 1.0]], dtype=F64)


def test_truncated_importance_weights_hand_values():
    w, stats = truncated_importance_weights(OLD, OLD - SAMPLER_GAP, MASK, cap=2.0)
    assert_close(w, TIS_W)
    assert_close(stats["logprob_mismatch"], torch.tensor((LN(1.5) + 1.2 + LN(3.0)) / 4, dtype=F64))
    assert_close(stats["tis_capped_frac"], torch.tensor(0.5, dtype=F64))
    # cap 0 turns the correction off; the mismatch is still measured.
    w0, stats0 = truncated_importance_weights(OLD, OLD - SAMPLER_GAP, MASK, cap=0.0)
    assert_close(w0, torch.ones(2, 3, dtype=F64))
    assert_close(stats0["tis_capped_frac"], torch.tensor(0.0, dtype=F64))
    assert_close(stats0["logprob_mismatch"], stats["logprob_mismatch"])
    # A huge gap does not overflow: the weight is the cap.
    w_big, _ = truncated_importance_weights(OLD.float(), OLD.float() - 1e4, MASK, cap=2.0)
    assert torch.isfinite(w_big).all() and float(w_big[0, 0]) == 2.0


def test_ppo_clip_loss_with_truncated_importance_weights():
    # The token objectives (1.2, 0.5, -2, -1.1) of the first test, times w = (1.5, 2, 0.8187308, 2):
    #   L_pg = -(1.8 + 1.0 - 1.6374615 - 2.2) / 4 = 0.2593654
    # gradient: token 0 clipped -> 0; token 1: -0.5 * 2 / 4 = -0.25; token 2: 2 * 0.8187308 / 4 =
    # 0.4093654; token 3: 1.1 * 2 / 4 = 0.55. clipfrac and approx_kl are not reweighted.
    logprobs = _logprobs()
    loss, stats = ppo_clip_loss(logprobs, OLD, ADV, MASK, clip_eps=0.2, is_weights=TIS_W)
    assert_close(loss, torch.tensor(-(1.8 + 1.0 - 2 * math.exp(-0.2) - 2.2) / 4, dtype=F64))
    assert_close(stats["clipfrac"], torch.tensor(0.5, dtype=F64))
    assert_close(stats["approx_kl"], torch.tensor(APPROX_KL, dtype=F64))
    loss.backward()
    expected = torch.tensor([[0.0, -0.25, 2 * math.exp(-0.2) / 4], [0.55, 0.0, 0.0]], dtype=F64)
    assert_close(logprobs.grad, expected)
    # Weights of 1 are the plain loss.
    plain, _ = ppo_clip_loss(_logprobs(), OLD, ADV, MASK, clip_eps=0.2)
    ones, _ = ppo_clip_loss(_logprobs(), OLD, ADV, MASK, clip_eps=0.2, is_weights=torch.ones(2, 3, dtype=F64))
    assert_close(ones, plain)
