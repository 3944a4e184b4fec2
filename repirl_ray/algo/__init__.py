"""The algorithm's math as pure functions over torch tensors (ALGORITHM.md sections 2-4, 6, 7).

Nothing here knows about Ray, models or configs; each function is unit-tested against numbers
worked out by hand in tests/unit/test_algo_*.py.
"""

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
from repirl_ray.algo.filtering import filter_prompts
from repirl_ray.algo.metrics import (
    NULL_SCORERS,
    STEP_QUALITY_KEYS,
    auroc,
    best_of_n,
    first_error_localisation,
    majority_vote,
    null_step_scores,
    prefix_min,
    prm_weighted_vote,
    step_auroc_inputs,
    step_auroc_split,
    step_quality_metrics,
    step_scores,
)
from repirl_ray.algo.policy_loss import (
    entropy_from_log_probs,
    entropy_from_logits,
    policy_loss,
    ppo_clip_loss,
    truncated_importance_weights,
)
from repirl_ray.algo.prime import implicit_token_rewards, prime_bce_loss
from repirl_ray.algo.prm_loss import (
    PRMCoefficients,
    effective_sample_size,
    importance_log_weights,
    normalised_weights,
    repirl_prm_coefficients,
    repirl_prm_loss,
    reward_l2_penalty,
    split_positive_negative,
    within_prompt_ess,
)
from repirl_ray.algo.stats import loss_denominator, masked_mean, masked_sum, masked_whiten

__all__ = [
    "NULL_SCORERS",
    "STEP_QUALITY_KEYS",
    "PRMCoefficients",
    "auroc",
    "batch_max_normalise",
    "best_of_n",
    "effective_sample_size",
    "entropy_from_log_probs",
    "entropy_from_logits",
    "filter_prompts",
    "first_error_localisation",
    "implicit_token_rewards",
    "importance_log_weights",
    "loss_denominator",
    "majority_vote",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "mean_token_reward",
    "min_form_returns",
    "normalised_weights",
    "policy_loss",
    "ppo_clip_loss",
    "prefix_min",
    "prime_bce_loss",
    "process_advantages",
    "repirl_prm_coefficients",
    "repirl_prm_loss",
    "reverse_cumsum",
    "reward_l2_penalty",
    "rloo_advantages",
    "rloo_process_rewards",
    "rloo_sequence_advantages",
    "split_positive_negative",
    "step_auroc_inputs",
    "step_scores",
    "step_segments",
    "truncated_importance_weights",
    "within_prompt_ess",
]
