"""The implicit PRM (PRIME) and its outcome cross-entropy loss: ALGORITHM.md section 1 (`implicit`)
and section 6 (`prime` mode).

r_phi(s_t, a_t) = beta * (log pi_phi(a_t|s_t) - log pi_ref(a_t|s_t)), pi_phi a trainable copy of
the base LM and pi_ref a frozen one. In `prime` mode it is trained so that
sigmoid(sum_t r_phi) predicts the outcome o (binary cross-entropy), beta = 0.05.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from repirl_ray.algo.stats import loss_denominator, masked_sum


def implicit_token_rewards(
    logp_phi: torch.Tensor, logp_ref: torch.Tensor, beta: float, mask: torch.Tensor
) -> torch.Tensor:
    """r_t = beta * (log pi_phi(a_t|s_t) - log pi_ref(a_t|s_t)), zero outside the mask.

    logp_phi, logp_ref: [B, T] log-probs of the response tokens; mask: [B, T] -> [B, T].
    Keeps the gradient through logp_phi; pi_ref is frozen.
    """
    rewards = beta * (logp_phi - logp_ref.detach())
    return torch.where(mask.bool(), rewards, torch.zeros_like(rewards))


def prime_bce_loss(
    logp_phi: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    outcomes: torch.Tensor,
    beta: float,
    num_samples: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L = sample-mean BCE(sigmoid(beta * sum_t (log pi_phi - log pi_ref)), o)  (section 6).

    logp_phi, logp_ref, mask: [B, T]; outcomes: [B] in {0, 1}. num_samples: the mini-batch's
    sample count when called per micro-batch (default B), so that the sum is exact. The BCE is
    taken on the logit beta * sum_t(...) (binary_cross_entropy_with_logits), which stays finite
    where sigmoid would round to 0 or 1. Returns (scalar loss, stats) with detached stats
    `prob` (mean predicted probability of a correct outcome) and `accuracy` (share of samples
    where prob > 0.5 agrees with o), both over the same denominator as the loss.
    """
    logits = beta * masked_sum(logp_phi - logp_ref.detach(), mask, dim=1)
    target = outcomes.detach().to(logits.dtype)
    denominator = loss_denominator(torch.tensor(logits.shape[0]), num_samples, logits)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / denominator
    with torch.no_grad():
        predicted = (logits > 0).to(logits.dtype)
        stats = {
            "prob": torch.sigmoid(logits).sum() / denominator,
            "accuracy": (predicted == target).to(logits.dtype).sum() / denominator,
        }
    return loss, stats
