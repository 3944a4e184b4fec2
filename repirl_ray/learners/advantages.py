"""Advantages of a batch of rollouts: numpy in, numpy out, around algo.rloo_advantages.

Called by PolicyLearner.update on every rank: the PRM's token rewards reach the policy learner
through the object store, not the driver, and whitening needs the whole batch.
"""

from __future__ import annotations

import numpy as np
import torch

from repirl_ray import algo
from repirl_ray.batch import Rollouts
from repirl_ray.config import AdvantageConfig


def batch_advantages(
    batch: Rollouts, token_rewards: np.ndarray | None, cfg: AdvantageConfig, samples_per_prompt: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Two-channel RLOO advantages A [B, T] (ALGORITHM.md section 3) and their statistics.

    advantage/outcome_abs_mean and advantage/process_abs_mean are the token-means of
    |c_o A^o| and |c_p A^p|: each channel as it enters the mix, before whitening, so their ratio
    is the share of the policy's signal that comes from the PRM."""
    groups = batch.prompt_index.reshape(-1, samples_per_prompt)
    if not (groups == groups[:, :1]).all():
        raise ValueError("batch_advantages: rows are not grouped K per prompt; RLOO needs each prompt's K samples together")
    mask = torch.from_numpy(batch.response_mask)
    rewards = None if token_rewards is None else torch.from_numpy(np.asarray(token_rewards, np.float32))
    outcome = torch.from_numpy(batch.outcome)
    # Steps of the min-form credit: the task's step segmentation where it has one (-1 = none).
    step_ids = torch.from_numpy(batch.step_ids.astype(np.int64))
    advantages = algo.rloo_advantages(
        outcome,
        rewards,
        mask,
        samples_per_prompt,
        c_outcome=cfg.c_outcome,
        c_process=cfg.c_process,
        whiten=cfg.whiten,
        # The format reward of prm_only / test-time training: 0 when well formed, -1 otherwise.
        format_rewards=torch.from_numpy(batch.format_ok - 1.0),
        c_format=cfg.c_format,
        process_credit=cfg.process_credit,
        step_ids=step_ids,
        baseline=cfg.baseline,
        process_norm=cfg.process_norm,
    )
    stats = {"advantage/abs_mean": float(algo.masked_mean(advantages.abs(), mask))}
    if cfg.c_outcome != 0:
        a_outcome = algo.sequence_channel_advantages(outcome, mask, samples_per_prompt, cfg.baseline)
        stats["advantage/outcome_abs_mean"] = abs(cfg.c_outcome) * float(algo.masked_mean(a_outcome.abs(), mask))
    if rewards is not None:
        if cfg.c_process != 0:
            a_process = algo.process_advantages(rewards, mask, samples_per_prompt, cfg.process_credit, step_ids,
                                                cfg.baseline, cfg.process_norm)
            stats["advantage/process_abs_mean"] = abs(cfg.c_process) * float(algo.masked_mean(a_process.abs(), mask))
        rbar = algo.mean_token_reward(rewards, mask)
        correct = batch.outcome > 0.5
        if correct.any():
            stats["advantage/rbar_correct"] = float(rbar[correct].mean())
        if (~correct).any():
            stats["advantage/rbar_wrong"] = float(rbar[~correct].mean())
    return advantages.numpy(), stats


def oracle_rewards(batch: Rollouts) -> np.ndarray:
    """The oracle process reward of every row [B, T] from its step labels (`prm.kind: oracle`,
    algo.oracle_token_rewards): +1 at the end of each correct step, -1 at the end of the first
    wrong step and of each later one."""
    return algo.oracle_token_rewards(
        torch.from_numpy(batch.step_ids.astype(np.int64)), torch.from_numpy(batch.first_wrong.astype(np.int64)),
        torch.from_numpy(batch.response_mask),
    ).numpy()
