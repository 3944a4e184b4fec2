"""Policy advantages with leave-one-out (RLOO) baselines, ALGORITHM.md section 3.

Batch layout: rows are grouped by prompt contiguously, `samples_per_prompt` (K) rows per prompt, so
row g*K + k is sample k of prompt g. Token tensors are [B, T] over response tokens with a
`mask` [B, T] true on real tokens. Two channels (outcome, process), plus a format channel for
the `prm_only` and test-time-training modes (section 6); the MDP is undiscounted (gamma = 1).
Advantages are constants for the policy loss, so every function here works on detached inputs.
"""

from typing import Optional

import torch

from repirl_ray.algo.stats import masked_sum, masked_whiten


def _check_groups(batch_size: int, samples_per_prompt: int) -> int:
    """Number of prompts P = B / K; errors if the batch cannot be split into groups of K >= 2."""
    if samples_per_prompt < 2:
        raise ValueError(
            f"samples_per_prompt must be >= 2 for a leave-one-out baseline, got {samples_per_prompt}: "
            "sample at least 2 responses per prompt (rollout.samples_per_prompt)"
        )
    if batch_size % samples_per_prompt != 0:
        raise ValueError(
            f"batch size {batch_size} is not a multiple of samples_per_prompt {samples_per_prompt}: rows must be "
            "grouped by prompt, samples_per_prompt rows per prompt"
        )
    return batch_size // samples_per_prompt


def _as_float(x: torch.Tensor, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Outcomes arrive as bool/int {0, 1}; the math wants floats (of `like`'s dtype if given)."""
    x = x.detach()
    if like is not None:
        return x.to(like.dtype)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def rloo_sequence_advantages(values: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """A_i = v_i - mean_{j != i, same prompt} v_j  (section 3, outcome channel).

    values: [B] -> [B]. Within a group the advantages sum to 0; a group whose values are all
    equal gets 0 everywhere (no signal, which is why prompts are filtered).
    """
    num_prompts = _check_groups(values.shape[0], samples_per_prompt)
    v = _as_float(values).view(num_prompts, samples_per_prompt)
    # mean over the other K-1 samples = (group sum - own value) / (K - 1)
    baseline = (v.sum(dim=1, keepdim=True) - v) / (samples_per_prompt - 1)
    return (v - baseline).view(-1)


def mean_token_reward(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rbar_i = sum_t r_{i,t} / T_i over the response's tokens (section 1); 0 when T_i = 0.

    token_rewards: [B, T], mask: [B, T] -> [B]. Keeps the gradient (the PRM loss uses it).
    """
    num_tokens = mask.bool().sum(dim=1).clamp(min=1).to(token_rewards.dtype)
    return masked_sum(token_rewards, mask, dim=1) / num_tokens


def rloo_process_rewards(
    token_rewards: torch.Tensor, mask: torch.Tensor, samples_per_prompt: int
) -> torch.Tensor:
    """rt^i_t = r^i_t - mean_{j != i, same prompt} rbar^j  (section 3, process channel).

    token_rewards: [B, T], mask: [B, T] -> [B, T], zero outside the mask. The baseline is a
    per-sample scalar (the other samples' mean token reward) subtracted from every token.
    """
    num_prompts = _check_groups(token_rewards.shape[0], samples_per_prompt)
    r = token_rewards.detach()
    rbar = mean_token_reward(r, mask).view(num_prompts, samples_per_prompt)
    baseline = ((rbar.sum(dim=1, keepdim=True) - rbar) / (samples_per_prompt - 1)).view(-1, 1)
    rt = r - baseline
    return torch.where(mask.bool(), rt, torch.zeros_like(rt))


def reverse_cumsum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """out_t = sum_{s >= t, s masked} x_s: the undiscounted return-to-go (gamma = 1).

    x: [B, T], mask: [B, T] -> [B, T], zero outside the mask.
    """
    keep = mask.bool()
    kept = torch.where(keep, x, torch.zeros_like(x))
    # flip-cumsum-flip rather than total - cumsum: no cancellation error on long responses.
    out = kept.flip(dims=[1]).cumsum(dim=1).flip(dims=[1])
    return torch.where(keep, out, torch.zeros_like(out))


_PROCESS_CREDIT = ("sum", "min")


def step_segments(mask: torch.Tensor, step_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the step each response token belongs to, counted from 0 in each row.

    mask: [B, T]; step_ids: [B, T] the task's step index per token (-1 = in no step), or None.
    A new step starts at a row's first token, where the step id changes, and at every token
    with id -1 (e.g. EOS), which is a step of its own. Without step ids (None, or a row whose
    ids are all -1) every token is its own step. Returns [B, T] int64, 0 outside the mask.
    """
    keep = mask.bool()
    if step_ids is None:
        new_step = keep
    else:
        ids = step_ids.to(torch.int64)
        # -2 before the first column: a row's first token always starts a step.
        previous = torch.cat([torch.full_like(ids[:, :1], -2), ids[:, :-1]], dim=1)
        new_step = keep & ((ids != previous) | (ids < 0))
    segment = new_step.to(torch.int64).cumsum(dim=1) - 1
    return torch.where(keep, segment.clamp(min=0), torch.zeros_like(segment))


def min_form_returns(
    token_rewards: torch.Tensor, mask: torch.Tensor, step_ids: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """G_t = min over the steps k >= k(t) of the step reward R_k = sum of r over step k's tokens
    (PURE's min-form credit, arXiv 2504.15275; section 3). Steps from `step_segments`.

    token_rewards: [B, T], mask: [B, T], step_ids: [B, T] or None -> [B, T], zero outside the
    mask. G at a row's first token is the row's worst step reward.
    """
    keep = mask.bool()
    r = torch.where(keep, token_rewards.detach(), torch.zeros_like(token_rewards))
    segment = step_segments(mask, step_ids)
    step_reward = torch.zeros_like(r).scatter_add(1, segment, r)  # [B, T]: at most T steps
    num_steps = torch.where(keep, segment + 1, torch.zeros_like(segment)).amax(dim=1, keepdim=True)
    exists = torch.arange(r.shape[1], device=r.device)[None, :] < num_steps
    step_reward = torch.where(exists, step_reward, torch.full_like(step_reward, float("inf")))
    # The minimum over the remaining steps: a reversed running minimum along the step axis.
    remaining_min = step_reward.flip(dims=[1]).cummin(dim=1).values.flip(dims=[1])
    out = remaining_min.gather(1, segment)
    return torch.where(keep, out, torch.zeros_like(out))


def process_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    samples_per_prompt: int,
    process_credit: str = "sum",
    step_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The process channel A^p [B, T] (section 3), before its coefficient and whitening.

    "sum" (the paper's): reverse_cumsum(rloo_process_rewards(r)), step_ids unused.
    "min" (PURE): A^p_{i,t} = G^i_t - mean_{j != i, same prompt} G^j_0, G = min_form_returns;
    the baseline is the other samples' worst step reward (a per-sample constant, so it leaves
    the policy gradient unbiased); a row without tokens has G_0 = 0.
    """
    if process_credit == "sum":
        return reverse_cumsum(rloo_process_rewards(token_rewards, mask, samples_per_prompt), mask)
    if process_credit != "min":
        raise ValueError(f"advantage.process_credit must be one of {_PROCESS_CREDIT}, got {process_credit!r}")
    num_prompts = _check_groups(token_rewards.shape[0], samples_per_prompt)
    returns = min_form_returns(token_rewards, mask, step_ids)
    value = returns[:, 0].view(num_prompts, samples_per_prompt)  # G_0 (0 for an empty row)
    baseline = ((value.sum(dim=1, keepdim=True) - value) / (samples_per_prompt - 1)).view(-1, 1)
    out = returns - baseline
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def rloo_advantages(
    outcomes: torch.Tensor,
    token_rewards: Optional[torch.Tensor],
    mask: torch.Tensor,
    samples_per_prompt: int,
    c_outcome: float,
    c_process: float,
    whiten: bool,
    format_rewards: Optional[torch.Tensor] = None,
    c_format: float = 0.0,
    process_credit: str = "sum",
    step_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A_{i,t} = c_o A^o_i + c_f A^f_i + c_p A^p_{i,t}, optionally whitened (section 3).

    outcomes: [B] in {0, 1}; token_rewards: [B, T] from the *updated* PRM, or None when
    c_process == 0 (`rloo` mode); mask: [B, T]; format_rewards: [B] (0 in format, -1 not),
    needed only when c_format != 0 (`prm_only`, section 6). Returns [B, T], zero outside the
    mask, detached.

    A^o and A^f are RLOO over each prompt's group, broadcast over the sample's tokens;
    A^p = process_advantages(r, process_credit, step_ids): the paper's reverse cumulative sum
    of RLOO'd token rewards ("sum"), or PURE's min-form ("min"; step_ids: [B, T] or None, see
    `step_segments`). Whitening is over all response tokens of
    the batch (not per prompt). A channel whose coefficient is 0 is not computed.
    """
    keep = mask.bool()
    dtype = token_rewards.dtype if token_rewards is not None else _as_float(outcomes).dtype
    advantages = torch.zeros(keep.shape, dtype=dtype, device=mask.device)
    if c_outcome != 0:
        a_outcome = rloo_sequence_advantages(_as_float(outcomes), samples_per_prompt).to(dtype)
        advantages = advantages + c_outcome * a_outcome[:, None]
    if c_format != 0:
        if format_rewards is None:
            raise ValueError(
                f"rloo_advantages: c_format = {c_format} but format_rewards is None; pass the "
                "per-sample format rewards or set the format coefficient to 0"
            )
        a_format = rloo_sequence_advantages(_as_float(format_rewards), samples_per_prompt).to(dtype)
        advantages = advantages + c_format * a_format[:, None]
    if c_process != 0:
        if token_rewards is None:
            raise ValueError(
                f"rloo_advantages: c_process = {c_process} but token_rewards is None; rescore "
                "the rollouts with the PRM or set the process coefficient to 0"
            )
        a_process = process_advantages(token_rewards, mask, samples_per_prompt, process_credit, step_ids)
        advantages = advantages + c_process * a_process
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages
