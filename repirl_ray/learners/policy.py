"""PolicyLearner: the policy pi_theta and its optimizer, as a plain class (no Ray).

One update = ALGORITHM.md sections 3-4: two-channel RLOO advantages from the outcomes and the
PRM's token rewards, then the PPO clipped surrogate with the entropy bonus, token-mean over each
mini-batch; micro-batches accumulate gradients so that the result does not depend on their size.

One learner is one rank of a learner group (learners/distributed.py): with world_size > 1, or a
compute dtype other than float32, the model is sharded with FSDP2 and every public method is
collective (called on every rank with the same arguments). Arrays come back whole on rank 0 and
None on the other ranks; metrics come back identical on every rank.
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
from repirl_ray.learners.advantages import batch_advantages, oracle_rewards
from repirl_ray.learners.common import (
    MetricSum,
    chunks,
    gather_full_state,
    gather_row_parts,
    learner_device,
    load_full_state,
    load_learner_state,
    make_optimizer,
    prepare_trainable,
    read_learner_state,
    row_lengths,
    save_learner_state,
    start_ranks,
)
from repirl_ray.learners.distributed import clip_grad_norm
from repirl_ray.models.policy import DTYPES, export_state, load_causal_lm, save_hf_model
from repirl_ray.models.sequence import model_inputs, response_logprobs
from repirl_ray.models.weights import BUCKET_BYTES, flatten_parameters, weight_buckets


class PolicyLearner:
    def __init__(
        self,
        cfg: PolicyConfig,
        model_path: str,
        *,
        advantage: AdvantageConfig | None = None,
        samples_per_prompt: int = 4,
        dtype: str = "float32",
        compute_dtype: str = "float32",
        temperature: float = 1.0,
        seed: int = 0,
        ref_path: str = "",
        trust_remote_code: bool = False,
        oracle_process_reward: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_url: str = "",
    ):
        """dtype: of the weights pushed to vLLM and of saved HF folders (model.dtype); the
        master weights and AdamW moments are float32, forward/backward run in compute_dtype.
        oracle_process_reward (prm.kind=oracle): the process channel's token rewards come from
        the rows' step labels (learners/advantages.oracle_rewards), not from a PRM."""
        if cfg.num_threads != "auto":
            torch.set_num_threads(cfg.num_threads)  # auto: the group's OMP_NUM_THREADS (threads.py) set torch's count
        torch.manual_seed(seed)
        self.cfg = cfg
        self.advantage = advantage or AdvantageConfig()
        self.samples_per_prompt = samples_per_prompt
        self.oracle_process_reward = oracle_process_reward
        self.temperature = temperature
        self.dtype = dtype
        self.device = learner_device(cfg.num_gpus)
        self.ranks = start_ranks(rank, world_size, dist_url, compute_dtype, self.device)
        self.model = prepare_trainable(
            load_causal_lm(model_path, "float32", trust_remote_code),
            gradient_checkpointing=cfg.gradient_checkpointing, compute_dtype=compute_dtype, ranks=self.ranks, device=self.device,
        )
        if not self.ranks.sharded:
            # One buffer in the order the weights are sent: each push bucket is one array for Ray
            # to copy into the store (models/weights.py, Bucket).
            flatten_parameters(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.ref = None
        if cfg.kl_coef > 0:
            # Frozen: held in the compute dtype, whole on every rank.
            self.ref = load_causal_lm(ref_path or model_path, compute_dtype, trust_remote_code, key="model.policy_path")
            self.ref.to(self.device).eval().requires_grad_(False)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
        self.rng = np.random.default_rng(seed)  # the same on every rank: the same mini-batches
        self.version = 0  # number of updates applied; the rollout workers sample with this version

    def update(self, keep_prompts, token_rewards: np.ndarray | None, *parts: Rollouts) -> dict[str, float]:
        """Advantages, then one PPO pass over the kept prompts' rollouts. Collective.

        parts: the rollout workers' shards (demo shards are ignored); token_rewards: the updated
        PRM's rewards of the same rows [B, T] (PRMLearner.score with the same keep_prompts), or
        None without a PRM (with the oracle process reward, computed here). Every rank computes the whole batch's advantages (whitening is over
        the whole batch), then trains on its share of the rows."""
        batch, _ = Rollouts.gather(keep_prompts, parts)
        if self.oracle_process_reward:
            token_rewards = oracle_rewards(batch)
        advantages, adv_stats = batch_advantages(batch, token_rewards, self.advantage, self.samples_per_prompt)
        metrics = self.ppo_update(batch, advantages)
        metrics.update(adv_stats)
        return metrics

    def ppo_update(self, batch: Rollouts, advantages: np.ndarray) -> dict[str, float]:
        """One PPO pass over the batch with the given advantages [B, T]. Collective.

        pi_old (policy.old_logprobs): `sampler` = the log-probs vLLM recorded; `recompute` = this
        learner's own no-grad log-probs before the update, with the truncated importance weight
        of the sampler-learner mismatch on every token (ALGORITHM.md section 4)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        advantages_t = torch.from_numpy(np.asarray(advantages, np.float32))
        sampler_t = torch.from_numpy(batch.sampling_logprobs)
        old_t, is_weights = sampler_t, None
        if cfg.old_logprobs == "recompute":
            old_t = self._logprobs_all(batch)
            mask_t = torch.from_numpy(batch.response_mask)
            is_weights, _ = algo.truncated_importance_weights(old_t, sampler_t, mask_t, cfg.tis_cap)
            # The gap is the kernels' alone only on rows sampled by the weights this learner
            # holds; rows of an older version (pipelined loop) add the policy's lag, logged apart.
            current = torch.from_numpy(batch.policy_version == self.version)[:, None]
            for rows, suffix in ((current, ""), (~current, "_lag")):
                if bool((mask_t.bool() & rows).any()):
                    _, tis = algo.truncated_importance_weights(old_t, sampler_t, mask_t * rows, cfg.tis_cap)
                    metrics[f"policy/logprob_{'lag' if suffix else 'mismatch'}"] = float(tis["logprob_mismatch"])
                    metrics[f"policy/tis_capped_frac{suffix}"] = float(tis["tis_capped_frac"])
        # In sampler mode the mismatch is free to measure on the first mini-batch: before the
        # first optimizer step the learner holds the weights that sampled the batch (when every
        # row's policy_version is this learner's version), so its log-probs there are pi_old's.
        measure = cfg.old_logprobs == "sampler" and bool((batch.policy_version == self.version).all())
        stats = MetricSum()
        losses = []
        lengths = row_lengths(batch)  # micro-batches of rows of similar length pad little
        for _ in range(cfg.epochs):
            order = self.rng.permutation(len(batch))
            for mini in chunks(order, cfg.mini_batch_size):
                # Token-mean over the whole mini-batch, all ranks: each micro-batch divides by it.
                num_tokens = float(batch.response_mask[mini].sum())
                if num_tokens == 0:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}  # this rank's share; summed over ranks below
                for micro, weight in self.ranks.micro_batches(mini, cfg.micro_batch_size, lengths):
                    inputs = model_inputs(batch, micro, self.device)  # cut to its rows' longest
                    logprobs, entropy = response_logprobs(self.model, inputs, self.temperature, with_entropy=True)
                    ref_logprobs = None
                    if self.ref is not None:
                        with torch.no_grad():
                            ref_logprobs, _ = response_logprobs(self.ref, inputs, self.temperature)
                    t = inputs.response_len
                    loss, micro_stats = algo.policy_loss(
                        logprobs,
                        old_t[micro, :t].to(self.device),
                        advantages_t[micro, :t].to(self.device),
                        entropy,
                        inputs.response_mask,
                        clip_eps=cfg.clip_eps,
                        entropy_coef=cfg.entropy_coef,
                        kl_coef=cfg.kl_coef,
                        ref_logprobs=ref_logprobs,
                        num_tokens=num_tokens,
                        is_weights=None if is_weights is None else is_weights[micro, :t].to(self.device),
                    )
                    # weight 0: a padding micro-batch that only keeps FSDP's collectives in step.
                    (loss * weight).backward()
                    # The stats share the mini-batch's denominator: their sum is its token-mean.
                    for k, v in {"loss": loss, **micro_stats}.items():
                        sums[k] = sums.get(k, 0.0) + weight * float(v.detach())
                    if measure:
                        gap = (logprobs.detach().float() - sampler_t[micro, :t].to(self.device)).abs()
                        sums["mismatch_sum"] = sums.get("mismatch_sum", 0.0) + weight * float(algo.masked_sum(gap, inputs.response_mask))
                        sums["mismatch_tokens"] = sums.get("mismatch_tokens", 0.0) + weight * float(inputs.response_mask.sum())
                sums = self.ranks.reduce_floats(sums, self.device)
                if measure:
                    metrics["policy/logprob_mismatch"] = sums.pop("mismatch_sum") / max(sums.pop("mismatch_tokens"), 1.0)
                    measure = False
                grad_norm = clip_grad_norm(list(self.model.parameters()), cfg.grad_clip)
                self.optimizer.step()
                losses.append(sums.pop("loss"))
                stats.add({**sums, "grad_norm": grad_norm}, 1.0)
        self.version += 1
        metrics.update(stats.means("policy/"))
        metrics["policy/loss"] = float(np.mean(losses)) if losses else float("nan")
        metrics["policy/version"] = self.version
        metrics.update(self.ranks.reduce_floats({"timing/policy_compute": time.perf_counter() - t0}, self.device, op="max"))
        return metrics

    @torch.no_grad()
    def _logprobs_all(self, batch: Rollouts) -> torch.Tensor:
        """Collective. log pi_theta of each response token [B, T] (0 on padding), on CPU, whole
        on every rank: each rank computes its share of the rows."""
        parts = []
        for micro, weight in self.ranks.micro_batches(np.arange(len(batch)), self.cfg.micro_batch_size, row_lengths(batch)):
            inputs = model_inputs(batch, micro, self.device)
            logp, _ = response_logprobs(self.model, inputs, self.temperature)
            if weight:
                parts.append((micro, logp * inputs.response_mask))
        return gather_row_parts(self.ranks, parts, len(batch), batch.response_mask.shape[1], self.device)

    def logprobs(self, batch: Rollouts) -> np.ndarray | None:
        """Collective. log pi_theta of each response token [B, T] under the current weights
        (for checks): whole on rank 0, None on the other ranks."""
        out = self._logprobs_all(batch).numpy()
        return out if self.ranks.is_main else None

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective. The whole model on rank 0 (None on the others): HF checkpoint names, cast
        to model.dtype (the engine's), a tied lm_head left out."""
        state = gather_full_state(self.model, self.ranks)
        return None if state is None else export_state(state, self.dtype, self.model.config)

    def weights(self, bucket_bytes: int = BUCKET_BYTES) -> tuple[list | None, int]:
        """Collective. The current weights as buckets of numpy arrays in HF names and the engine's
        dtype (models/weights.py) for the rollout workers (rank 0; None elsewhere), and their
        version. Called with num_returns=2: the driver reads the small version (which also tells
        it the learner is alive), the buckets go to the workers as one ObjectRef, read there
        without a copy."""
        state = self.full_state_dict()
        return (None if state is None else weight_buckets(state, DTYPES[self.dtype], bucket_bytes)), self.version

    def parameters_numpy(self) -> dict[str, np.ndarray] | None:
        """Collective. The fp32 master parameters, whole on rank 0 (None elsewhere)."""
        state = gather_full_state(self.model, self.ranks)
        if state is None:
            return None
        return {k: state[k].numpy().copy() for k, _ in self.model.named_parameters()}

    def save(self, out_dir: str) -> None:
        """Collective. HF folder (weights in model.dtype + tokenizer, loadable by vLLM and
        transformers) and learner state; layout in learners/common.py."""
        state = self.full_state_dict()
        if self.ranks.is_main:
            save_hf_model(out_dir, self.model, state, self.dtype)
            self.tokenizer.save_pretrained(out_dir)
        save_learner_state(out_dir, self.ranks, self.optimizer, self.model, self.rng, self.version, save_master=self.dtype != "float32")
        self.ranks.barrier()

    def load(self, in_dir: str) -> None:
        """Collective. Weights, optimizer shards, RNGs and version, exactly as saved. A
        checkpoint of another world_size is a ValueError (before anything is loaded)."""
        state = read_learner_state(in_dir, self.ranks.world_size)
        load_full_state(self.model, os.path.join(in_dir, "model.safetensors"), self.ranks, "policy")
        self.version = load_learner_state(in_dir, state, self.ranks, self.optimizer, self.model, self.rng)

    def ping(self) -> int:
        """Liveness check; the process id (tests kill actors by it)."""
        return os.getpid()
