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
_BASELINES = ("sequence", "position")
_PROCESS_NORMS = ("none", "batch_max")


def position_rloo(returns: torch.Tensor, mask: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """A_{i,t} = G^i_t - mean of G^j_t over the other samples j of i's prompt still active at t
    (mask[j, t] true); 0 baseline where none is (`advantage.baseline: position`, the authors'
    released code). Responses are right-padded, so "active at t" = longer than t tokens.

    returns: [B, T] per-token returns G; mask: [B, T] -> [B, T], zero outside the mask.
    """
    num_prompts = _check_groups(returns.shape[0], samples_per_prompt)
    keep = mask.bool()
    g = torch.where(keep, returns.detach(), torch.zeros_like(returns)).view(num_prompts, samples_per_prompt, -1)
    active = keep.to(g.dtype).view(num_prompts, samples_per_prompt, -1)
    others_sum = g.sum(dim=1, keepdim=True) - g
    others_count = active.sum(dim=1, keepdim=True) - active
    baseline = others_sum / others_count.clamp(min=1.0)  # others_sum is 0 where the count is
    out = (g - baseline).view_as(returns)
    return torch.where(keep, out, torch.zeros_like(out))


def batch_max_normalise(token_rewards: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """r / (max over the batch's rows and tokens of |sum_{s >= t} r_s| + eps)
    (`advantage.process_norm: batch_max`, the authors' released code): the largest return-to-go
    of the batch becomes about 1 in magnitude, whatever the PRM's scale.

    token_rewards: [B, T], mask: [B, T] -> [B, T], zero outside the mask.
    """
    r = token_rewards.detach()
    scale = reverse_cumsum(r, mask).abs().max() if r.numel() else r.new_zeros(())
    out = r / (scale + eps)
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def sequence_channel_advantages(
    values: torch.Tensor, mask: torch.Tensor, samples_per_prompt: int, baseline: str = "sequence"
) -> torch.Tensor:
    """A sequence-level reward (outcome, format) as a per-token advantage [B, T] (section 3).

    "sequence": rloo_sequence_advantages(values), the same on every token of a sample.
    "position": the value is the reward of the last token, so its return is the value on every
    token, and the baseline at t is the mean over the siblings still active at t (position_rloo).
    values: [B]; mask: [B, T] -> [B, T], zero outside the mask.
    """
    v = _as_float(values)
    if baseline == "sequence":
        out = rloo_sequence_advantages(v, samples_per_prompt)[:, None].expand(mask.shape)
        return torch.where(mask.bool(), out, torch.zeros_like(out))
    if baseline != "position":
        raise ValueError(f"advantage.baseline must be one of {_BASELINES}, got {baseline!r}")
    return position_rloo(v[:, None].expand(mask.shape), mask, samples_per_prompt)


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
    baseline: str = "sequence",
    process_norm: str = "none",
) -> torch.Tensor:
    """The process channel A^p [B, T] (section 3), before its coefficient and whitening.

    process_norm "batch_max" first divides r by the batch's largest |return-to-go|
    (batch_max_normalise); "none" leaves it.
    baseline "sequence":
      "sum" (the paper's): reverse_cumsum(rloo_process_rewards(r)), step_ids unused.
      "min" (PURE): A^p_{i,t} = G^i_t - mean_{j != i, same prompt} G^j_0, G = min_form_returns;
      the baseline is the other samples' worst step reward (a per-sample constant, so it leaves
      the policy gradient unbiased); a row without tokens has G_0 = 0.
    baseline "position" (the released code): A^p = position_rloo(G), G = reverse_cumsum(r)
    ("sum") or min_form_returns(r) ("min"): the baseline at t is the siblings' return at t.
    """
    if process_credit not in _PROCESS_CREDIT:
        raise ValueError(f"advantage.process_credit must be one of {_PROCESS_CREDIT}, got {process_credit!r}")
    if baseline not in _BASELINES:
        raise ValueError(f"advantage.baseline must be one of {_BASELINES}, got {baseline!r}")
    if process_norm not in _PROCESS_NORMS:
        raise ValueError(f"advantage.process_norm must be one of {_PROCESS_NORMS}, got {process_norm!r}")
    if process_norm == "batch_max":
        token_rewards = batch_max_normalise(token_rewards, mask)
    if baseline == "position":
        if process_credit == "sum":
            returns = reverse_cumsum(token_rewards.detach(), mask)
        else:
            returns = min_form_returns(token_rewards, mask, step_ids)
        return position_rloo(returns, mask, samples_per_prompt)
    if process_credit == "sum":
        return reverse_cumsum(rloo_process_rewards(token_rewards, mask, samples_per_prompt), mask)
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
    baseline: str = "sequence",
    process_norm: str = "none",
) -> torch.Tensor:
    """A_{i,t} = c_o A^o_i + c_f A^f_i + c_p A^p_{i,t}, optionally whitened (section 3).

    outcomes: [B] in {0, 1}; token_rewards: [B, T] from the *updated* PRM, or None when
    c_process == 0 (`rloo` mode); mask: [B, T]; format_rewards: [B] (0 in format, -1 not),
    needed only when c_format != 0 (`prm_only`, section 6). Returns [B, T], zero outside the
    mask, detached.

    A^o and A^f are RLOO over each prompt's group, broadcast over the sample's tokens;
    A^p = process_advantages(r, process_credit, step_ids): the paper's reverse cumulative sum
    of RLOO'd token rewards ("sum"), or PURE's min-form ("min"; step_ids: [B, T] or None, see
    `step_segments`). baseline and process_norm: see `sequence_channel_advantages` and
    `process_advantages` ("sequence" and "none" are the paper's). Whitening is over all
    response tokens of the batch (not per prompt). A channel whose coefficient is 0 is not
    computed.
    """
    keep = mask.bool()
    dtype = token_rewards.dtype if token_rewards is not None else _as_float(outcomes).dtype
    advantages = torch.zeros(keep.shape, dtype=dtype, device=mask.device)
    if c_outcome != 0:
        a_outcome = sequence_channel_advantages(outcomes, mask, samples_per_prompt, baseline).to(dtype)
        advantages = advantages + c_outcome * a_outcome
    if c_format != 0:
        if format_rewards is None:
            raise ValueError(
                f"rloo_advantages: c_format = {c_format} but format_rewards is None; pass the "
                "per-sample format rewards or set the format coefficient to 0"
            )
        a_format = sequence_channel_advantages(format_rewards, mask, samples_per_prompt, baseline).to(dtype)
        advantages = advantages + c_format * a_format
    if c_process != 0:
        if token_rewards is None:
            raise ValueError(
                f"rloo_advantages: c_process = {c_process} but token_rewards is None; rescore "
                "the rollouts with the PRM or set the process coefficient to 0"
            )
        a_process = process_advantages(
            token_rewards, mask, samples_per_prompt, process_credit, step_ids, baseline, process_norm
        )
        advantages = advantages + c_process * a_process
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages


def oracle_token_rewards(step_ids: torch.Tensor, first_wrong: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The oracle process reward of a task with step labels (`prm.kind: oracle`, section 3):
    +1 on the last token of every correct step, -1 on the last token of the first wrong step and
    of every step after it (a step label is the correctness of the whole prefix), 0 elsewhere.

    step_ids: [B, T] the task's step index of each token (-1 = in no step, e.g. EOS); first_wrong:
    [B] index of the first wrong step, -1 when every step is correct, -2 when the row has no
    step labels (a ValueError); mask: [B, T]. A step's last token is the last token carrying its
    id. Summed per step it scores each step +-1, so its step AUROC is 1. Returns [B, T] float32.
    """
    fw = first_wrong.to(torch.int64)
    unlabelled = torch.nonzero(fw == -2).flatten().tolist()
    if unlabelled:
        raise ValueError(
            f"oracle_token_rewards: rows {unlabelled[:10]} have no step labels; prm.kind=oracle needs a task "
            "that labels steps (the arithmetic world)"
        )
    ids = step_ids.to(torch.int64)
    in_step = mask.bool() & (ids >= 0)
    position = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    safe_ids = torch.where(in_step, ids, torch.zeros_like(ids))
    last_of_step = torch.full_like(ids, -1).scatter_reduce(
        1, safe_ids, torch.where(in_step, position, torch.full_like(position, -1)), reduce="amax"
    )
    is_last = in_step & (position == last_of_step.gather(1, safe_ids))
    correct = (fw[:, None] < 0) | (ids < fw[:, None])
    sign = torch.where(correct, torch.ones_like(ids), -torch.ones_like(ids))
    return torch.where(is_last, sign, torch.zeros_like(ids)).to(torch.float32)
