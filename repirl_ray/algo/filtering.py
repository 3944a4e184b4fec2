"""Prompt filtering by K-sample accuracy (PRIME's filter, used by the paper): ALGORITHM.md
section 3.

A prompt whose K samples are all right or all wrong gives zero outcome advantage; the band
[low, high] keeps the prompts that still carry outcome signal. Rows are grouped by prompt
contiguously, `samples_per_prompt` rows per prompt.
"""

import torch

from repirl_ray.algo.advantages import _check_groups

# Accuracies are k / K; a band edge written as a decimal (0.2 with K = 5) must count as inside.
_EDGE_TOLERANCE = 1e-9


def filter_prompts(
    outcomes: torch.Tensor, samples_per_prompt: int, low: float, high: float
) -> torch.Tensor:
    """keep[g] = low <= mean_k o_{g,k} <= high (inclusive at both ends).

    outcomes: [B] in {0, 1} -> keep: [P] bool, P = B / samples_per_prompt.
    """
    num_prompts = _check_groups(outcomes.shape[0], samples_per_prompt)
    # float64 so that k / K is the correctly rounded decimal the config writes.
    accuracy = outcomes.detach().to(torch.float64).view(num_prompts, samples_per_prompt).mean(dim=1)
    return (accuracy >= low - _EDGE_TOLERANCE) & (accuracy <= high + _EDGE_TOLERANCE)
