"""Implicit PRM and PRIME's outcome cross-entropy (repirl_ray/algo/prime.py, ALGORITHM.md
sections 1 and 6), by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from repirl_ray.algo.prime import implicit_token_rewards, prime_bce_loss

F64 = torch.float64

# Row 0: logp_phi - logp_ref = (2, 4) on its 2 tokens -> sum 6; row 1: (-10) on 1 token.
# Padding (99) must be ignored.
LOGP_REF = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], dtype=F64)
DIFF = torch.tensor([[2.0, 4.0, 99.0], [-10.0, 99.0, 99.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_implicit_token_rewards_hand_values():
    # r = beta * (logp_phi - logp_ref) = 0.05 * (2, 4) and 0.05 * (-10); padding -> 0
    r = implicit_token_rewards(LOGP_REF + DIFF, LOGP_REF, beta=0.05, mask=MASK)
    assert_close(r, torch.tensor([[0.1, 0.2, 0.0], [-0.5, 0.0, 0.0]], dtype=F64))


def test_prime_bce_loss_hand_values_and_gradient():
    # beta = 0.5: logits z = 0.5 * 6 = 3 and 0.5 * (-10) = -5; outcomes (1, 1).
    # BCE(z, 1) = log(1 + e^-z): log(1 + e^-3) = 0.048587, log(1 + e^5) = 5.006715
    # mean = 2.527651; predicted prob sigmoid(3) = 0.952574, sigmoid(-5) = 0.006693
    # -> mean 0.479634; accuracy: row 0 predicted 1 (right), row 1 predicted 0 (wrong) -> 0.5
    logp_phi = (LOGP_REF + DIFF).clone().requires_grad_(True)
    outcomes = torch.tensor([1, 1])
    loss, stats = prime_bce_loss(logp_phi, LOGP_REF, MASK, outcomes, beta=0.5)
    expected = (math.log1p(math.exp(-3)) + math.log1p(math.exp(5))) / 2
    assert_close(loss, torch.tensor(expected, dtype=F64))
    assert loss.item() == pytest.approx(2.527651, abs=1e-6)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert_close(stats["prob"], torch.tensor((sig(3) + sig(-5)) / 2, dtype=F64))
    assert_close(stats["accuracy"], torch.tensor(0.5, dtype=F64))
    # dL/dlogp_phi[i, t] = beta * (sigmoid(z_i) - o_i) / B on real tokens:
    # row 0: 0.5 * (0.952574 - 1) / 2, row 1: 0.5 * (0.006693 - 1) / 2
    loss.backward()
    g0, g1 = 0.25 * (sig(3) - 1), 0.25 * (sig(-5) - 1)
    assert_close(logp_phi.grad, torch.tensor([[g0, g0, 0.0], [g1, 0.0, 0.0]], dtype=F64))


def test_prime_bce_loss_is_finite_for_extreme_logits():
    # z = beta * sum = 1 * 1000 with o = 0: BCE = 1000 (sigmoid would round to 1 and log(0) = -inf)
    logp_phi = torch.tensor([[1000.0]], dtype=torch.float32)
    loss, _ = prime_bce_loss(logp_phi, torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([0]), 1.0)
    assert_close(loss, torch.tensor(1000.0))


def test_prime_bce_loss_microbatches_sum_to_the_minibatch():
    outcomes = torch.tensor([1, 0])
    full_lp = (LOGP_REF + DIFF).clone().requires_grad_(True)
    full, _ = prime_bce_loss(full_lp, LOGP_REF, MASK, outcomes, beta=0.05)
    full.backward()
    parts_lp = (LOGP_REF + DIFF).clone().requires_grad_(True)
    total = 0.0
    for i in range(2):
        rows = slice(i, i + 1)
        part, _ = prime_bce_loss(
            parts_lp[rows], LOGP_REF[rows], MASK[rows], outcomes[rows], beta=0.05, num_samples=2
        )
        total = total + part
    total.backward()
    assert_close(total, full)
    assert_close(parts_lp.grad, full_lp.grad)
