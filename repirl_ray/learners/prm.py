"""PRMLearner: the process reward model r_phi and its optimizer, as a plain class (no Ray).

The IRL step (ALGORITHM.md section 2). Per mini-batch of prompts:
  1. a no-grad pass gives R_phi and rbar_phi of every trajectory (expert demos, rollouts);
  2. the self-normalised importance weights of the negatives and the -1/|P| of the positives
     become fixed per-sample coefficients (no gradient flows through w);
  3. gradient passes over micro-batches minimise sum_i coef_i * rbar_phi(tau_i) (+ reward L2).
L_prm is linear in rbar once the weights are fixed, so the micro-batch split is exact.
`prm.loss: prime` instead fits the implicit PRM to outcomes with cross-entropy (section 6).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from repirl_ray import algo
from repirl_ray.batch import Rollouts
from repirl_ray.config import IRLConfig, PRMConfig
from repirl_ray.learners.common import MetricSum, chunks, load_learner_state, make_optimizer, save_learner_state
from repirl_ray.models.prm import load_prm
from repirl_ray.models.sequence import model_inputs


class PRMLearner:
    def __init__(
        self,
        cfg: PRMConfig,
        irl: IRLConfig,
        model_path: str,
        *,
        ref_path: str = "",
        dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
    ):
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.irl = irl
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.prm = load_prm(cfg.kind, model_path, ref_path, cfg.beta, dtype, trust_remote_code).to(self.device)
        if cfg.gradient_checkpointing:
            trainable = self.prm.model if cfg.kind == "head" else self.prm.phi
            trainable.gradient_checkpointing_enable()
        self.prm.train()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.optimizer = make_optimizer(self.prm.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
        self.rng = np.random.default_rng(seed + 1)
        self.version = 0

    # ----------------------------------------------------------------------------------------
    # The IRL step
    def update(self, keep_prompts, *parts: Rollouts) -> dict[str, float]:
        """One IRL step on the kept prompts. parts: the rollout workers' shards, rollouts and
        expert demos (is_demo rows) alike."""
        rollouts, demos = Rollouts.gather(keep_prompts, parts)
        return self.update_batch(rollouts, demos)

    def update_batch(self, rollouts: Rollouts, demos: Rollouts | None) -> dict[str, float]:
        t0 = time.perf_counter()
        # prm.epochs passes over the batch; the weights are recomputed under the current phi in
        # each pass. The metrics are the last pass's.
        for _ in range(self.cfg.epochs):
            if self.cfg.loss == "prime":
                metrics = self._update_prime(rollouts)
            else:
                metrics = self._update_repirl(rollouts, demos)
        self.version += 1
        metrics["timing/prm_compute"] = time.perf_counter() - t0
        return metrics

    def _update_repirl(self, rollouts: Rollouts, demos: Rollouts | None) -> dict[str, float]:
        cfg, irl = self.cfg, self.irl
        batch = Rollouts.concat([rollouts, demos]) if demos is not None and len(demos) else rollouts
        prompts = np.unique(batch.prompt_index)
        self.rng.shuffle(prompts)
        per_mini = cfg.prompts_per_mini_batch or len(prompts)
        stats = MetricSum()
        counts = {"skipped": 0, "negatives_dropped": 0, "num_pos": 0, "num_neg": 0}
        for mini_prompts in chunks(prompts, per_mini):
            rows = batch.group_rows(mini_prompts)
            mini = batch.select(rows)
            # 1. Rewards of every trajectory under the current phi, for the weights.
            with torch.no_grad():
                token_rewards = self._token_rewards(mini)
            mask = torch.from_numpy(mini.response_mask)
            traj_reward = (token_rewards * mask).sum(-1)
            mean_reward = algo.mean_token_reward(token_rewards, mask)
            # 2. Fixed coefficients: softmax importance weights of N, -1/|P| for P.
            coefs = algo.repirl_prm_coefficients(
                torch.from_numpy(mini.outcome),
                torch.from_numpy(mini.is_demo),
                traj_reward,
                mean_reward,
                torch.from_numpy((mini.sampling_logprobs * mini.response_mask).sum(-1)),
                torch.from_numpy(mini.prompt_index),
                pseudo_expert=irl.pseudo_expert,
                weight_reward=irl.weight_reward,
                normalise_over=irl.normalise_over,
            )
            counts["num_pos"] += int(coefs.num_pos)
            counts["num_neg"] += int(coefs.num_neg)
            if coefs.skip:  # no positive trajectory: nothing to pull the reward up towards
                counts["skipped"] += 1
                continue
            counts["negatives_dropped"] += int(coefs.negatives_dropped)
            is_pos = coefs.coef < 0
            is_neg = coefs.coef > 0
            stats.add(
                {
                    "ess": coefs.ess, "ess_within": coefs.ess_within,
                    "reward_pos": float(mean_reward[is_pos].mean()) if is_pos.any() else float("nan"),
                    "reward_neg": float(mean_reward[is_neg].mean()) if is_neg.any() else float("nan"),
                },
                1.0,
            )
            # 3. Gradient passes over micro-batches with the coefficients held fixed.
            num_tokens = float(mini.response_mask.sum())
            self.optimizer.zero_grad(set_to_none=True)
            mini_loss = 0.0
            for micro in chunks(np.arange(len(mini)), cfg.micro_batch_size):
                inputs = model_inputs(mini, micro, self.device)
                r = self.prm.token_rewards(inputs)
                rbar = algo.mean_token_reward(r, inputs.response_mask)
                loss = algo.repirl_prm_loss(rbar, coefs.coef[micro].to(self.device))
                if irl.reward_l2 > 0:
                    loss = loss + algo.reward_l2_penalty(r, inputs.response_mask, irl.reward_l2, num_tokens=num_tokens)
                loss.backward()
                mini_loss += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(self.prm.parameters(), cfg.grad_clip)
            self.optimizer.step()
            stats.add({"loss": mini_loss, "grad_norm": grad_norm}, 1.0)
        metrics = stats.means("prm/")
        metrics.update({f"prm/{k}": float(v) for k, v in counts.items()})
        return metrics

    def _update_prime(self, rollouts: Rollouts) -> dict[str, float]:
        """PRIME: BCE(sigmoid(beta * sum_t log pi_phi/pi_ref), o) on the rollouts (ALGORITHM.md s6)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        order = self.rng.permutation(len(rollouts))
        outcome = torch.from_numpy(rollouts.outcome)
        total = 0.0
        sums: dict[str, float] = {}
        for micro in chunks(order, cfg.micro_batch_size):
            inputs = model_inputs(rollouts, micro, self.device)
            logp_phi, logp_ref = self.prm.log_probs(inputs)
            loss, micro_stats = algo.prime_bce_loss(
                logp_phi, logp_ref, inputs.response_mask, outcome[micro].to(self.device), self.prm.beta,
                num_samples=len(rollouts),
            )
            loss.backward()
            total += float(loss.detach())
            # The stats share the batch's denominator: their sum over micro-batches is the batch mean.
            for k, v in micro_stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.prm.parameters(), cfg.grad_clip)
        self.optimizer.step()
        metrics = {f"prm/{k}": v for k, v in sums.items()}
        metrics.update({"prm/loss": total, "prm/grad_norm": float(grad_norm)})
        return metrics

    # ----------------------------------------------------------------------------------------
    # Scoring
    def _token_rewards(self, batch: Rollouts) -> torch.Tensor:
        out = torch.zeros(batch.response_mask.shape)
        for micro in chunks(np.arange(len(batch)), self.cfg.micro_batch_size):
            inputs = model_inputs(batch, micro, self.device)
            out[micro] = self.prm.token_rewards(inputs).float().cpu()
        return out

    def score(self, keep_prompts, *parts: Rollouts) -> tuple[np.ndarray, dict[str, float]]:
        """Token rewards of the kept prompts' rollouts (demo shards ignored), in the row order
        PolicyLearner.update gathers them in."""
        batch, _ = Rollouts.gather(keep_prompts, parts)
        return self.score_batch(batch)

    @torch.no_grad()
    def score_batch(self, batch: Rollouts) -> tuple[np.ndarray, dict[str, float]]:
        """Token rewards r_t of every response [B, T] under the current PRM, and, where the
        batch carries step labels, the step-level AUROC of those rewards."""
        token_rewards = self._token_rewards(batch).numpy()
        stats = {"prm/score_mean": float((token_rewards * batch.response_mask).sum() / max(batch.response_mask.sum(), 1))}
        quality = step_quality(token_rewards, batch)
        if quality:
            stats.update({f"prm/{k}": v for k, v in quality.items()})
        return token_rewards, stats

    # ----------------------------------------------------------------------------------------
    def parameters_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.prm.named_parameters() if v.requires_grad}

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.prm.save(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        save_learner_state(out_dir, self.optimizer, self.rng, self.version)

    def load(self, in_dir: str) -> None:
        from safetensors.torch import load_file

        state = load_file(os.path.join(in_dir, "model.safetensors"))
        target = self.prm.model if self.prm.kind == "head" else self.prm.phi
        missing, unexpected = target.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(f"PRM checkpoint {in_dir} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.version = load_learner_state(in_dir, self.optimizer, self.rng)

    def ping(self) -> int:
        """Liveness check; the process id (tests kill actors by it)."""
        return os.getpid()


def step_quality(token_rewards: np.ndarray, batch: Rollouts) -> dict[str, float]:
    """Step AUROC and first-error localisation of token rewards summed per step (ALGORITHM.md s5).

    Label 1 = a step before the first wrong step, 0 = the first wrong step and after. Rows without
    step labels (first_wrong == -2) are left out; {} when no row has them."""
    labelled = np.flatnonzero(batch.first_wrong != -2)
    if len(labelled) == 0:
        return {}
    per_sample = [algo.step_scores(token_rewards[i], batch.step_ids[i]) for i in labelled]
    first_wrongs = [None if batch.first_wrong[i] < 0 else int(batch.first_wrong[i]) for i in labelled]
    scores, labels = algo.step_auroc_inputs(per_sample, first_wrongs)
    # A response that stops early with every present step right has first_wrong == len(steps):
    # no present step is wrong, so it has nothing to localise.
    localisable = [(s, f) for s, f in zip(per_sample, first_wrongs) if f is None or f < len(s)]
    return {
        "step_auroc": algo.auroc(scores, labels),
        "first_error_acc": algo.first_error_localisation([s for s, _ in localisable], [f for _, f in localisable]),
    }
