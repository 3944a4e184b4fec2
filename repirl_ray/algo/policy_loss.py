"""The policy loss: PPO clipped surrogate + entropy bonus (+ optional KL), ALGORITHM.md section 4.

Departure from the paper: its Eq. 6 writes the entropy term with the wrong sign
("+beta E[log pi]"); here it is a bonus, L = L_pg - c_ent * H, as ALGORITHM.md decides.

Token tensors are [B, T] with a `mask` [B, T]. Every mean is a token-mean over the mini-batch:
pass `num_tokens` = the mini-batch's masked-token count when the mini-batch is split into
micro-batches, so that summing the micro-batch losses (gradient accumulation) gives exactly the
mini-batch loss. Stats use the same denominator, so they sum the same way.

With `policy.old_logprobs: recompute`, pi_old is the learner's own log-probs and each token's
PPO term carries the truncated importance weight of the sampler-learner mismatch
(`truncated_importance_weights`; ALGORITHM.md section 4).
"""

import math
from typing import Dict, Optional, Tuple

import torch

from repirl_ray.algo.stats import loss_denominator, masked_sum


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(pi(.|s_t)) = -sum_a p(a) log p(a): logits [B, T, V] -> [B, T].

    Via log_softmax, so large logits do not overflow. Actions with probability 0 (logit -inf)
    contribute 0, not 0 * -inf = NaN, and give no NaN gradient.
    """
    return entropy_from_log_probs(torch.log_softmax(logits, dim=-1))


def entropy_from_log_probs(logp: torch.Tensor) -> torch.Tensor:
    """entropy_from_logits for a caller that holds log_softmax(logits) already [B, T, V] -> [B, T]
    (models/sequence.py needs it for the token log-probs too; one log_softmax over V, not two)."""
    p = logp.exp()
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    return -(p * safe_logp).sum(dim=-1)


def truncated_importance_weights(
    learner_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Truncated importance sampling (TIS) of the sampler-learner mismatch (section 4).

        w_t = min(exp(log pi_old(a_t|s_t) - log pi_sampler(a_t|s_t)), cap)

    learner_logprobs: [B, T] log pi_old, the learner's own no-grad log-probs under the weights
    that sampled the batch; sampler_logprobs: [B, T] the log-probs the sampler (vLLM) recorded;
    mask: [B, T]. The sampler and the learner run the same weights with different kernels (and
    often a lower precision), so their log-probs differ; PPO's ratio is taken against pi_old
    and w_t corrects for the tokens having been drawn from pi_sampler. Truncated from above
    (verl / TRL, cap 2) so one token the sampler under-weighted cannot dominate the batch.
    cap = 0 turns the correction off (w = 1). Computed as exp(min(diff, log cap)): no overflow.
    Returns (w [B, T], detached, 1 outside the mask; stats) with `logprob_mismatch` = token-mean
    |log pi_old - log pi_sampler| and `tis_capped_frac` = share of tokens whose weight is the cap.
    """
    diff = (learner_logprobs - sampler_logprobs).detach()
    denominator = loss_denominator(mask.bool().sum(), None, diff)
    if cap > 0:
        capped = diff >= math.log(cap)
        weights = torch.exp(torch.clamp(diff, max=math.log(cap)))
    else:
        capped = torch.zeros_like(diff, dtype=torch.bool)
        weights = torch.ones_like(diff)
    weights = torch.where(mask.bool(), weights, torch.ones_like(weights))
    stats = {
        "logprob_mismatch": masked_sum(diff.abs(), mask) / denominator,
        "tis_capped_frac": masked_sum(capped.to(diff.dtype), mask) / denominator,
    }
    return weights, stats


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    num_tokens: Optional[float] = None,
    is_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L_pg = -token-mean w_t min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)  (section 4).

    logprobs: [B, T] under pi_theta (with grad); old_logprobs: [B, T] log-probs of pi_old (the
    sampler's, or the learner's own recomputed ones); advantages: [B, T]; mask: [B, T];
    is_weights: [B, T] truncated importance weights w_t (`truncated_importance_weights`, no
    gradient), None = 1. Returns (scalar loss, stats) with detached stats `clipfrac` (share of
    tokens with |ratio - 1| > eps) and `approx_kl` (token-mean of (ratio - 1) - log ratio, the
    k3 estimator of KL(pi_old || pi_theta)).
    """
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    surrogate = ratio * advantages
    clipped_surrogate = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    objective = torch.min(surrogate, clipped_surrogate)
    if is_weights is not None:
        objective = is_weights.detach().to(objective.dtype) * objective
    denominator = loss_denominator(mask.bool().sum(), num_tokens, logprobs)
    loss = -masked_sum(objective, mask) / denominator
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_eps).to(logprobs.dtype)
        stats = {
            "clipfrac": masked_sum(clipped, mask) / denominator,
            "approx_kl": masked_sum((ratio - 1.0) - log_ratio, mask) / denominator,
        }
    return loss, stats


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    entropy_coef: float,
    kl_coef: float = 0.0,
    ref_logprobs: Optional[torch.Tensor] = None,
    num_tokens: Optional[float] = None,
    is_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L = L_pg - c_ent * token-mean H (+ kl_coef * token-mean k3 KL to pi_ref)  (section 4).

    logprobs, old_logprobs, advantages, entropy, mask: [B, T]; ref_logprobs: [B, T], required
    when kl_coef > 0; is_weights: [B, T] truncated importance weights of L_pg (see
    `ppo_clip_loss`); the entropy and KL terms are not reweighted. The KL term uses k3 = rho - 1 - log rho with rho = pi_ref / pi_theta, an
    unbiased, non-negative estimator of KL(pi_theta || pi_ref) from samples of the policy.
    Returns (scalar loss, stats): pg_loss, entropy, clipfrac, approx_kl, and kl when used.
    """
    pg_loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps, num_tokens, is_weights)
    denominator = loss_denominator(mask.bool().sum(), num_tokens, logprobs)
    mean_entropy = masked_sum(entropy, mask) / denominator
    # Entropy bonus: subtracted, so minimising L raises entropy (ALGORITHM.md section 4).
    loss = pg_loss - entropy_coef * mean_entropy
    stats["pg_loss"] = pg_loss.detach()
    stats["entropy"] = mean_entropy.detach()
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError(
                f"policy_loss: kl_coef = {kl_coef} needs ref_logprobs (log-probs of the frozen "
                "reference policy); pass them or set the KL coefficient to 0"
            )
        log_rho = ref_logprobs.detach() - logprobs
        kl = masked_sum(torch.exp(log_rho) - log_rho - 1.0, mask) / denominator
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats
