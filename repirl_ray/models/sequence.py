"""Turn a Rollouts batch into model inputs, and read per-response-token quantities back.

Prompts are left-padded and responses right-padded (see batch.py), so response token t sits at
column Lp + t in every row. Position ids count only real tokens, as vLLM does; without them a
left-padded prompt would be shifted and log-probs would not match the sampler's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repirl_ray.algo import entropy_from_log_probs
from repirl_ray.batch import Rollouts


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [B, Lp + T]
    attention_mask: torch.Tensor  # [B, Lp + T]
    position_ids: torch.Tensor  # [B, Lp + T]
    response_len: int  # T
    response_mask: torch.Tensor  # float [B, T]


def model_inputs(batch: Rollouts, rows: np.ndarray | None = None, device: str | torch.device = "cpu") -> ModelInputs:
    """The rows' inputs, padded only to their own longest prompt and response: the columns that
    are padding in every row are cut (a batch is padded to its longest row, and a micro-batch of
    shorter rows would spend its compute on them). So T here can be less than the batch's:
    per-token outputs [B, T] cover the first T response columns, zero beyond."""
    if rows is not None:
        batch = batch.select(rows)
    used = np.flatnonzero(batch.response_mask.any(axis=0))
    t = int(used[-1]) + 1 if len(used) else 1
    lp = max(1, int(batch.prompt_len.max(initial=0)))
    prompt_ids = torch.from_numpy(batch.prompt_ids[:, batch.prompt_ids.shape[1] - lp :].astype(np.int64))
    response_ids = torch.from_numpy(batch.response_ids[:, :t].astype(np.int64))
    cols = torch.arange(lp)
    prompt_mask = (cols[None, :] >= (lp - torch.from_numpy(batch.prompt_len.astype(np.int64)))[:, None]).long()
    response_mask = torch.from_numpy(batch.response_mask[:, :t].astype(np.float32))
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return ModelInputs(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1).to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        response_len=t,
        response_mask=response_mask.to(device),
    )


def response_logprobs(
    model: torch.nn.Module, inputs: ModelInputs, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(a_t | s_t) of every response token [B, T], and the entropy of pi(.|s_t) [B, T].

    Logits are divided by the sampling temperature: vLLM records the log-probs of the distribution
    it sampled from (logprobs_mode=processed_logprobs), and PPO's ratio needs both on one footing.
    """
    t = inputs.response_len
    # Keep only the T positions that predict response tokens (and one spare at the end).
    logits = model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        logits_to_keep=t + 1,
        use_cache=False,
    ).logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = inputs.input_ids[:, -t:]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = entropy_from_log_probs(logp_all) if with_entropy else None
    return logp, entropy
