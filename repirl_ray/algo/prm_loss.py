"""The PRM objective: maximum-likelihood IRL with a self-normalised importance estimate of log Z,
ALGORITHM.md section 2 (paper, Algorithm 1).

    P = expert demos + rollouts with a correct outcome (pseudo-experts)
    N = rollouts with a wrong outcome
    log w_j = R_phi(tau_j) - log pi_theta(tau_j)        tau_j in N, no gradient through w
    w_hat   = softmax_j(log w_j)
    L_prm   = sum_j w_hat_j rbar_phi(tau_j) - mean_{i in P} rbar_phi(tau_i)

Points the paper leaves open or departs from, each switchable (`irl.*`, decided in
ALGORITHM.md section 2): `weight_reward` (`sum`, the paper, or `mean`: weights from rbar
instead of R), `normalise_over` (`prompt`, the default: one softmax per prompt, since the
partition function belongs to a prompt; or `batch`: one softmax over all the batch's
negatives), and the `reward_l2` penalty (not in the paper). `loss_form: released` is the
authors' released code (ALGORITHM.md section 2): at its micro-batch of one row the softmax is
over one negative, so every weight is 1, and each row's loss is divided by the M rows of the
step: coef = +1/M on N and -1/M on P (unbalanced when |P| != |N|).

Micro-batching: once the weights are fixed, L_prm is *linear* in the per-sample rbar_phi:
L_prm = sum_i coef_i rbar_phi(tau_i), coef = w_hat on N and -1/|P| on P. The weights need the
whole batch (a softmax over it), so a learner computes `coef` once with a no-grad forward over
the batch (`repirl_prm_coefficients`), then runs gradient passes over micro-batches with
`repirl_prm_loss(rbar[b], coef[b])`; the summed gradients equal the full-batch gradient.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from repirl_ray.algo.stats import loss_denominator, masked_sum

_WEIGHT_REWARDS = ("sum", "mean")
_NORMALISE_OVER = ("prompt", "batch")
_LOSS_FORMS = ("paper", "released")


def split_positive_negative(
    outcomes: torch.Tensor, is_demo: torch.Tensor, pseudo_expert: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(is_pos, is_neg): [B] bool each, disjoint, covering every row.

    outcomes: [B] in {0, 1} (a demo's value is ignored); is_demo: [B] bool. Demos are always in
    P. A correct rollout is in P when pseudo_expert (the paper) and in N otherwise (the paper's
    ablation, Table 6: every rollout a negative). A wrong rollout is in N.
    """
    is_demo = is_demo.bool()
    rollout_outcomes = outcomes.detach()[~is_demo]
    if not bool(((rollout_outcomes == 0) | (rollout_outcomes == 1)).all()):
        bad = torch.nonzero(~is_demo & (outcomes != 0) & (outcomes != 1)).flatten().tolist()
        raise ValueError(
            f"split_positive_negative: rollout outcomes must be 0 or 1; rows {bad[:10]} are not "
            "(check the verifier's output)"
        )
    correct = ~is_demo & (outcomes == 1)
    is_pos = is_demo | (correct & pseudo_expert)
    return is_pos, ~is_pos


def importance_log_weights(
    trajectory_reward: torch.Tensor,
    mean_reward: torch.Tensor,
    sampling_logprob_sum: torch.Tensor,
    weight_reward: str,
) -> torch.Tensor:
    """log w = R_phi(tau) - log pi_theta(tau) ("sum", the paper), or
    rbar_phi(tau) - log pi_theta(tau) ("mean", length-normalised). Detached: no gradient flows
    through the weights.

    trajectory_reward, mean_reward, sampling_logprob_sum: [B] -> [B]. log pi_theta(tau) is the
    sum of the sampling log-probs recorded at rollout time (the proposal that made the sample).
    """
    if weight_reward == "sum":
        reward = trajectory_reward
    elif weight_reward == "mean":
        reward = mean_reward
    else:
        raise ValueError(
            f"irl.weight_reward must be one of {_WEIGHT_REWARDS}, got {weight_reward!r}"
        )
    return (reward - sampling_logprob_sum).detach()


def normalised_weights(
    log_w: torch.Tensor, is_neg: torch.Tensor, prompt_index: torch.Tensor, normalise_over: str
) -> torch.Tensor:
    """Self-normalised importance weights w_hat: [B], zero off N, summing to 1 over N.

    log_w: [B]; is_neg: [B] bool; prompt_index: [B] int64 prompt ids (rows need not be
    contiguous by prompt). "batch": one softmax over all negatives. "prompt": a softmax within
    each prompt's negatives (each prompt has its own partition function), then each prompt's
    weights times 1/G, G = number of prompts with at least one negative, so the negative term
    is the average over prompts of their weighted means. Computed with a per-group max shift
    (logsumexp), so log-weights of magnitude 1e3 are fine. Returns zeros when N is empty.
    """
    if normalise_over == "prompt":
        groups = prompt_index
    elif normalise_over == "batch":
        groups = torch.zeros_like(prompt_index)
    else:
        raise ValueError(
            f"irl.normalise_over must be one of {_NORMALISE_OVER}, got {normalise_over!r}"
        )
    is_neg = is_neg.bool()
    log_w = log_w.detach()
    _, group_of_row = torch.unique(groups, return_inverse=True)
    num_groups = int(group_of_row.max()) + 1 if group_of_row.numel() else 0
    neg_inf = torch.full_like(log_w, float("-inf"))
    # Non-negatives (demos may carry NaN log-probs) are replaced, not multiplied, by -inf.
    masked_log_w = torch.where(is_neg, log_w, neg_inf)
    group_max = torch.full((num_groups,), float("-inf"), dtype=log_w.dtype, device=log_w.device)
    group_max = group_max.scatter_reduce(0, group_of_row, masked_log_w, reduce="amax")
    # Shift by the group's max: the largest weight of each group becomes exp(0) = 1.
    shifted = torch.where(is_neg, masked_log_w - group_max[group_of_row], neg_inf)
    unnormalised = shifted.exp()
    group_sum = torch.zeros_like(group_max).scatter_add(0, group_of_row, unnormalised)
    # A group with negatives has group_sum >= 1 (its max term is exp(0)); the clamp only keeps
    # groups without negatives from computing 0 / 0, and those rows are zeroed anyway.
    weights = torch.where(
        is_neg, unnormalised / group_sum[group_of_row].clamp(min=1.0), torch.zeros_like(log_w)
    )
    groups_with_negatives = int((group_sum > 0).sum())
    return weights / max(groups_with_negatives, 1)


def effective_sample_size(weights: torch.Tensor, is_neg: torch.Tensor) -> float:
    """ESS = 1 / sum_j w_j^2 over N (weights sum to 1): n for uniform weights over n samples,
    1 when one sample holds all the weight. 0.0 when N is empty.

    weights: [B]; is_neg: [B] bool. Computed as (sum w)^2 / sum w^2 (Kish), equal to the above
    when the weights sum to 1 and scale-free otherwise.
    """
    w = weights.detach()[is_neg.bool()].to(torch.float64)
    if w.numel() == 0:
        return 0.0
    return float(w.sum() ** 2 / (w**2).sum())


def within_prompt_ess(log_w: torch.Tensor, is_neg: torch.Tensor, prompt_index: torch.Tensor) -> float:
    """Mean over prompts with negatives of ESS_g / |N_g| (section 2, `prm/ess_within`).

    ESS_g is the effective sample size of the weights *within* prompt g's negatives: 1 when
    one sample holds all of g's weight, |N_g| when they are uniform; so each term lies in
    [1/|N_g|, 1]. The batch ESS cannot show a collapse inside a prompt under per-prompt
    normalisation (it never falls below the number of prompts with negatives); this does.
    Computed from the within-prompt softmax of log_w, so it is the same number whichever
    `normalise_over` made the loss's weights (the batch softmax restricted to one prompt is that
    prompt's softmax times a constant, and ESS is scale-free). 0.0 when N is empty.

    log_w: [B]; is_neg: [B] bool; prompt_index: [B] int64.
    """
    is_neg = is_neg.bool()
    if not bool(is_neg.any()):
        return 0.0
    w = normalised_weights(log_w, is_neg, prompt_index, "prompt").to(torch.float64)
    _, group_of_row = torch.unique(prompt_index, return_inverse=True)
    num_groups = int(group_of_row.max()) + 1
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=w.device)
    w_sum = zeros.scatter_add(0, group_of_row, w)
    w_sq = zeros.scatter_add(0, group_of_row, w * w)
    count = zeros.scatter_add(0, group_of_row, is_neg.to(torch.float64))
    has_neg = count > 0
    # Kish's (sum w)^2 / sum w^2 per prompt: scale-free, so the 1/G factor of w cancels.
    ess_g = w_sum[has_neg] ** 2 / w_sq[has_neg]
    return float((ess_g / count[has_neg]).mean())


@dataclass
class PRMCoefficients:
    """Per-sample coefficients of the PRM loss, L_prm = sum_i coef_i * rbar_phi(tau_i).

    coef: [B], w_hat on N and -1/|P| on P (all zeros when `skip`). ess: effective sample size
    of w_hat; ess_within: the mean over prompts of ESS_g / |N_g| (`within_prompt_ess`). skip: P is empty, so the update must be skipped (and logged). negatives_dropped:
    N is empty, so the loss is -mean_P rbar alone (logged).
    """

    coef: torch.Tensor
    ess: float
    ess_within: float
    num_pos: int
    num_neg: int
    skip: bool
    negatives_dropped: bool


def repirl_prm_coefficients(
    outcomes: torch.Tensor,
    is_demo: torch.Tensor,
    trajectory_reward: torch.Tensor,
    mean_reward: torch.Tensor,
    sampling_logprob_sum: torch.Tensor,
    prompt_index: torch.Tensor,
    *,
    pseudo_expert: bool,
    weight_reward: str,
    normalise_over: str,
    loss_form: str = "paper",
) -> PRMCoefficients:
    """Coefficients of L_prm for a whole batch (section 2), computed once, without gradient.

    outcomes: [B] (demos: ignored); is_demo: [B] bool; trajectory_reward R_phi, mean_reward
    rbar_phi: [B] from a no-grad PRM forward; sampling_logprob_sum: [B] log pi_theta(tau), any
    value (even NaN) on demos, which have none; prompt_index: [B] int64.
    See the module docstring for why the loss is split into coefficients and micro-batches.

    loss_form "paper": coef = w_hat on N, -1/|P| on P. "released" (`irl.loss_form`, the
    authors' code): coef = +1/M on N, -1/M on P, M = B rows; every importance weight is 1, so
    ess = |N| and ess_within = 1 (0 when N is empty), and the rewards and log-probs are unused.
    """
    if loss_form not in _LOSS_FORMS:
        raise ValueError(f"irl.loss_form must be one of {_LOSS_FORMS}, got {loss_form!r}")
    is_pos, is_neg = split_positive_negative(outcomes, is_demo, pseudo_expert)
    num_pos, num_neg = int(is_pos.sum()), int(is_neg.sum())
    if loss_form == "released":
        log_w = torch.zeros_like(mean_reward.detach())  # w = 1 on every negative
        w_hat = is_neg.to(log_w.dtype) / max(num_neg, 1)
        # At one row per micro-batch the paper's loss is +rbar on a negative (a softmax over one
        # negative is 1) and -rbar on a positive, each divided by the M accumulated rows.
        coef = (is_neg.to(log_w.dtype) - is_pos.to(log_w.dtype)) / is_pos.numel()
    else:
        log_w = importance_log_weights(trajectory_reward, mean_reward, sampling_logprob_sum, weight_reward)
        w_hat = normalised_weights(log_w, is_neg, prompt_index, normalise_over)
        coef = w_hat - is_pos.to(w_hat.dtype) / max(num_pos, 1)
    if num_pos == 0:
        # No expert term: the loss would only push every negative's reward down. Skip.
        coef = torch.zeros_like(coef)
    return PRMCoefficients(
        coef=coef.detach(),
        ess=effective_sample_size(w_hat, is_neg),
        ess_within=within_prompt_ess(log_w, is_neg, prompt_index),
        num_pos=num_pos,
        num_neg=num_neg,
        skip=num_pos == 0,
        negatives_dropped=num_neg == 0,
    )


def repirl_prm_loss(mean_reward: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """L_prm over a micro-batch: sum_i coef_i * rbar_phi(tau_i).

    mean_reward: [b] rbar_phi with grad; coef: [b], the rows' slice of
    `repirl_prm_coefficients(...).coef`. Summed over the micro-batches of a batch it is the
    batch's L_prm, and so is its gradient (the coefficients are constants).
    """
    return (coef.detach().to(mean_reward.dtype) * mean_reward).sum()


def reward_l2_penalty(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    coefficient: float,
    num_tokens: Optional[float] = None,
) -> torch.Tensor:
    """coefficient * token-mean of r_phi^2 over the batch's response tokens (`irl.reward_l2`).

    token_rewards: [B, T] with grad; mask: [B, T]. num_tokens: the whole batch's token count
    when called per micro-batch (default: this call's count), so that the sum is exact.
    Not in the paper (section 2 explains why the project adds it).
    """
    denominator = loss_denominator(mask.bool().sum(), num_tokens, token_rewards)
    return coefficient * masked_sum(token_rewards**2, mask) / denominator
