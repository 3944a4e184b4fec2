"""PolicyLearner: the policy pi_theta and its optimizer, as a plain class (no Ray).

One update = ALGORITHM.md sections 3-4: two-channel RLOO advantages from the outcomes and the
PRM's token rewards, then the PPO clipped surrogate with the entropy bonus, token-mean over each
mini-batch; micro-batches accumulate gradients so that the result does not depend on their size.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from repirl_ray import algo
from repirl_ray.batch import Rollouts
from repirl_ray.config import AdvantageConfig, PolicyConfig
from repirl_ray.learners.advantages import batch_advantages
from repirl_ray.learners.common import MetricSum, chunks, load_learner_state, make_optimizer, save_learner_state
from repirl_ray.models.policy import load_causal_lm
from repirl_ray.models.sequence import model_inputs, response_logprobs
from repirl_ray.models.weights import BUCKET_BYTES, weight_buckets


class PolicyLearner:
    def __init__(
        self,
        cfg: PolicyConfig,
        model_path: str,
        *,
        advantage: AdvantageConfig | None = None,
        group_size: int = 4,
        dtype: str = "float32",
        temperature: float = 1.0,
        seed: int = 0,
        ref_path: str = "",
        trust_remote_code: bool = False,
    ):
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.advantage = advantage or AdvantageConfig()
        self.group_size = group_size
        self.temperature = temperature
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model = load_causal_lm(model_path, dtype, trust_remote_code).to(self.device)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.train()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.ref = None
        if cfg.kl_coef > 0:
            self.ref = load_causal_lm(ref_path or model_path, dtype, trust_remote_code, key="model.policy_path")
            self.ref.to(self.device).eval().requires_grad_(False)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
        self.rng = np.random.default_rng(seed)
        self.version = 0  # number of updates applied; the rollout workers sample with this version

    def update(self, keep_prompts, token_rewards: np.ndarray | None, *parts: Rollouts) -> dict[str, float]:
        """Advantages, then one PPO pass over the kept prompts' rollouts.

        parts: the rollout workers' shards (demo shards are ignored); token_rewards: the updated
        PRM's rewards of the same rows [B, T] (PRMLearner.score with the same keep_prompts), or
        None without a PRM. pi_old = the sampling log-probs recorded by vLLM."""
        batch, _ = Rollouts.gather(keep_prompts, parts)
        advantages, adv_stats = batch_advantages(batch, token_rewards, self.advantage, self.group_size)
        metrics = self.ppo_update(batch, advantages)
        metrics.update(adv_stats)
        return metrics

    def ppo_update(self, batch: Rollouts, advantages: np.ndarray) -> dict[str, float]:
        """One PPO pass over the batch with the given advantages [B, T]."""
        cfg = self.cfg
        t0 = time.perf_counter()
        stats = MetricSum()
        losses = []
        advantages_t = torch.from_numpy(np.asarray(advantages, np.float32))
        old_logprobs_t = torch.from_numpy(batch.sampling_logprobs)
        for _ in range(cfg.epochs):
            order = self.rng.permutation(len(batch))
            for mini in chunks(order, cfg.mini_batch_size):
                # Token-mean over the whole mini-batch: each micro-batch divides by the same count.
                num_tokens = float(batch.response_mask[mini].sum())
                if num_tokens == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                mini_loss = 0.0
                mini_stats: dict[str, float] = {}
                for micro in chunks(mini, cfg.micro_batch_size):
                    inputs = model_inputs(batch, micro, self.device)
                    logprobs, entropy = response_logprobs(self.model, inputs, self.temperature, with_entropy=True)
                    ref_logprobs = None
                    if self.ref is not None:
                        with torch.no_grad():
                            ref_logprobs, _ = response_logprobs(self.ref, inputs, self.temperature)
                    t = inputs.response_len
                    loss, micro_stats = algo.policy_loss(
                        logprobs,
                        old_logprobs_t[micro, :t].to(self.device),
                        advantages_t[micro, :t].to(self.device),
                        entropy,
                        inputs.response_mask,
                        clip_eps=cfg.clip_eps,
                        entropy_coef=cfg.entropy_coef,
                        kl_coef=cfg.kl_coef,
                        ref_logprobs=ref_logprobs,
                        num_tokens=num_tokens,
                    )
                    loss.backward()
                    mini_loss += float(loss.detach())
                    # The stats share the mini-batch's denominator: their sum is its token-mean.
                    for k, v in micro_stats.items():
                        mini_stats[k] = mini_stats.get(k, 0.0) + float(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                losses.append(mini_loss)
                stats.add({**mini_stats, "grad_norm": grad_norm}, 1.0)
        self.version += 1
        metrics = stats.means("policy/")
        metrics["policy/loss"] = float(np.mean(losses)) if losses else float("nan")
        metrics["policy/version"] = self.version
        metrics["timing/policy_compute"] = time.perf_counter() - t0
        return metrics

    @torch.no_grad()
    def logprobs(self, batch: Rollouts) -> np.ndarray:
        """log pi_theta of each response token [B, T] under the current weights (for checks)."""
        out = np.zeros_like(batch.sampling_logprobs)
        for micro in chunks(np.arange(len(batch)), self.cfg.micro_batch_size):
            inputs = model_inputs(batch, micro, self.device)
            logp, _ = response_logprobs(self.model, inputs, self.temperature)
            out[micro, : inputs.response_len] = (logp * inputs.response_mask).cpu().numpy()
        return out

    def weights(self, bucket_bytes: int = BUCKET_BYTES) -> tuple[list, int]:
        """The current weights as buckets of numpy arrays in HF names and the engine's dtype
        (models/weights.py), for the rollout workers, and their version. Called with
        num_returns=2: the driver reads the small version (which also tells it the learner is
        alive), the buckets go to the workers as one ObjectRef, read there without a copy."""
        return weight_buckets(self.model.state_dict(), self.model.dtype, bucket_bytes), self.version

    def parameters_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.named_parameters()}

    def save(self, out_dir: str) -> None:
        """HF folder (weights + tokenizer, loadable by vLLM and transformers) + learner state."""
        os.makedirs(out_dir, exist_ok=True)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        save_learner_state(out_dir, self.optimizer, self.rng, self.version)

    def load(self, in_dir: str) -> None:
        from safetensors.torch import load_file

        state = load_file(os.path.join(in_dir, "model.safetensors"))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        # A tied lm_head is not stored separately; anything else missing is a wrong checkpoint.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"policy checkpoint {in_dir} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.version = load_learner_state(in_dir, self.optimizer, self.rng)

    def ping(self) -> int:
        """Liveness check; the process id (tests kill actors by it)."""
        return os.getpid()
