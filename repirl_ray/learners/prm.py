"""PRMLearner: the process reward model r_phi and its optimizer, as a plain class (no Ray).

The IRL step (ALGORITHM.md section 2). Per mini-batch of prompts:
  1. a no-grad pass gives R_phi and rbar_phi of every trajectory (expert demos, rollouts);
  2. the self-normalised importance weights of the negatives and the -1/|P| of the positives
     become fixed per-sample coefficients (no gradient flows through w);
  3. gradient passes over micro-batches minimise sum_i coef_i * rbar_phi(tau_i) (+ reward L2).
L_prm is linear in rbar once the weights are fixed, so the micro-batch split is exact.
`prm.loss: prime` instead fits the implicit PRM to outcomes with cross-entropy (section 6).

One learner is one rank of a learner group (learners/distributed.py): with world_size > 1, or a
compute dtype other than float32, the trainable model is sharded with FSDP2 and every public
method is collective. Step 1 is then sharded by rows and all-gathered, so every rank computes
the same coefficients; step 3 runs on each rank's share of the rows. Arrays come back whole on
rank 0 and None on the other ranks; metrics come back identical on every rank.
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
from repirl_ray.models.policy import export_state, save_hf_model
from repirl_ray.models.prm import ImplicitPRM, load_prm
from repirl_ray.models.sequence import model_inputs


# Rows per forward: on one CPU thread a micro-batch of 64 rows ran faster than one of 320 at the
# same padding (benchmarks/results/prm_fused), and rows sorted by length pad less in small ones.
PIECE_ROWS = 64


class PRMLearner:
    def __init__(
        self,
        cfg: PRMConfig,
        irl: IRLConfig,
        model_path: str,
        *,
        ref_path: str = "",
        dtype: str = "float32",
        compute_dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_url: str = "",
    ):
        """dtype: of saved HF folders (model.dtype); the trainable weights and AdamW moments are
        float32 masters, forward/backward run in compute_dtype, pi_ref is held in compute_dtype."""
        if cfg.num_threads != "auto":
            torch.set_num_threads(cfg.num_threads)  # auto: the group's OMP_NUM_THREADS (threads.py) set torch's count
        torch.manual_seed(seed)
        self.cfg = cfg
        self.irl = irl
        self.dtype = dtype
        self.device = learner_device(cfg.num_gpus)
        self.ranks = start_ranks(rank, world_size, dist_url, compute_dtype, self.device)
        self.prm = load_prm(cfg.kind, model_path, ref_path, cfg.beta, "float32", trust_remote_code, ref_dtype=compute_dtype,
                            head=cfg.head)
        self.trainable = prepare_trainable(
            self.prm.trainable,
            gradient_checkpointing=cfg.gradient_checkpointing, compute_dtype=compute_dtype, ranks=self.ranks, device=self.device,
        )
        if isinstance(self.prm, ImplicitPRM):
            self.prm.ref.to(self.device)  # frozen pi_ref: whole on every rank, in compute_dtype
        self.prm.train()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.optimizer = make_optimizer(self.prm.parameters(), cfg.lr, cfg.weight_decay, cfg.betas)
        self.rng = np.random.default_rng(seed + 1)  # the same on every rank
        self.version = 0
        # Forward/backward in micro-batches of at most PIECE_ROWS rows of similar length:
        # prm.micro_batch_size is the rows whose activations may be held at once (the fused IRL
        # step holds a whole mini-batch's); on FSDP ranks, one micro-batch per forward-backward.
        self.piece_rows = min(PIECE_ROWS, cfg.micro_batch_size)
        self.fused_piece_rows = cfg.micro_batch_size if self.ranks.sharded else self.piece_rows

    # ----------------------------------------------------------------------------------------
    # The IRL step
    def update(self, keep_prompts, *parts: Rollouts) -> dict[str, float]:
        """One IRL step on the kept prompts. Collective. parts: the rollout workers' shards,
        rollouts and expert demos (is_demo rows) alike."""
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
        metrics.update(self.ranks.reduce_floats({"timing/prm_compute": time.perf_counter() - t0}, self.device, op="max"))
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
            # 1. Rewards of every trajectory under the current phi, for the weights: each rank
            #    scores its share, all-gathered, so every rank computes the same coefficients.
            #    Where this rank's rows fit one micro-batch, that forward is the gradient pass's
            #    own (the graphs kept until the coefficients are known): one forward of phi per
            #    trajectory instead of two, in the memory a micro-batch already has.
            fused = None
            if self.ranks.largest_share(len(mini)) <= cfg.micro_batch_size:
                fused = self._forward_pieces(mini, self.fused_piece_rows)
                parts = [(rows, r.detach()) for rows, weight, _, r in fused if weight]
                token_rewards = gather_row_parts(self.ranks, parts, len(mini), mini.response_mask.shape[1], self.device)
            else:
                token_rewards = self._token_rewards(mini)
            mask = torch.from_numpy(mini.response_mask)
            traj_reward = algo.masked_sum(token_rewards, mask, dim=1)
            mean_reward = algo.mean_token_reward(token_rewards, mask)
            # 2. Fixed coefficients: softmax importance weights of N, -1/|P| for P.
            coefs = algo.repirl_prm_coefficients(
                torch.from_numpy(mini.outcome),
                torch.from_numpy(mini.is_demo),
                traj_reward,
                mean_reward,
                algo.masked_sum(torch.from_numpy(mini.sampling_logprobs), mask, dim=1),
                torch.from_numpy(mini.prompt_index),
                pseudo_expert=irl.pseudo_expert,
                weight_reward=irl.weight_reward,
                normalise_over=irl.normalise_over,
                loss_form=irl.loss_form,
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
            # 3. Gradient passes over this rank's rows with the coefficients held fixed.
            num_tokens = float(mini.response_mask.sum())
            self.optimizer.zero_grad(set_to_none=True)
            mini_loss = 0.0
            for micro, weight, inputs, r in fused or self._forward_pieces(mini, self.piece_rows, lazy=True):
                rbar = algo.mean_token_reward(r, inputs.response_mask)
                loss = algo.repirl_prm_loss(rbar, coefs.coef[micro].to(self.device))
                if irl.reward_l2 > 0:
                    loss = loss + algo.reward_l2_penalty(r, inputs.response_mask, irl.reward_l2, num_tokens=num_tokens)
                # weight 0: a padding micro-batch that only keeps FSDP's collectives in step.
                (loss * weight).backward()
                mini_loss += weight * float(loss.detach())
            mini_loss = self.ranks.reduce_floats({"loss": mini_loss}, self.device)["loss"]
            grad_norm = clip_grad_norm(list(self.prm.parameters()), cfg.grad_clip)
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
        sums: dict[str, float] = {}
        for micro, weight in self.ranks.micro_batches(order, self.piece_rows, row_lengths(rollouts)):
            inputs = model_inputs(rollouts, micro, self.device)
            logp_phi, logp_ref = self.prm.log_probs(inputs)
            loss, micro_stats = algo.prime_bce_loss(
                logp_phi, logp_ref, inputs.response_mask, outcome[micro].to(self.device), self.prm.beta,
                num_samples=len(rollouts),
            )
            (loss * weight).backward()
            # The stats share the batch's denominator: their sum over micro-batches and ranks is the batch mean.
            for k, v in {"loss": loss, **micro_stats}.items():
                sums[k] = sums.get(k, 0.0) + weight * float(v.detach())
        sums = self.ranks.reduce_floats(sums, self.device)
        grad_norm = clip_grad_norm(list(self.prm.parameters()), cfg.grad_clip)
        self.optimizer.step()
        metrics = {f"prm/{k}": v for k, v in sums.items()}
        metrics["prm/grad_norm"] = grad_norm
        return metrics

    def _forward_pieces(self, batch: Rollouts, size: int, lazy: bool = False):
        """(rows, weight, model inputs, r_phi [n, t] with its graph) of this rank's rows, in
        micro-batches of at most `size` rows of similar length (each cut to its own longest row).
        A list, every graph held; lazy: a generator, one micro-batch at a time."""
        pieces = (
            (micro, weight, inputs, self.prm.token_rewards(inputs))
            for micro, weight in self.ranks.micro_batches(np.arange(len(batch)), size, row_lengths(batch))
            for inputs in (model_inputs(batch, micro, self.device),)
        )
        return pieces if lazy else list(pieces)

    # ----------------------------------------------------------------------------------------
    # Scoring
    @torch.no_grad()
    def _token_rewards(self, batch: Rollouts) -> torch.Tensor:
        """Collective. r_phi of every response token [B, T] on CPU, whole on every rank: each
        rank scores its share of the rows."""
        parts = [(rows, r) for rows, weight, _, r in self._forward_pieces(batch, self.piece_rows, lazy=True) if weight]
        return gather_row_parts(self.ranks, parts, len(batch), batch.response_mask.shape[1], self.device)

    def score(self, keep_prompts, *parts: Rollouts) -> tuple[np.ndarray | None, dict[str, float]]:
        """Token rewards of the kept prompts' rollouts (demo shards ignored), in the row order
        PolicyLearner.update gathers them in. Collective."""
        batch, _ = Rollouts.gather(keep_prompts, parts)
        return self.score_batch(batch)

    def score_batch(self, batch: Rollouts) -> tuple[np.ndarray | None, dict[str, float]]:
        """Token rewards r_t of every response [B, T] under the current PRM (whole on rank 0,
        None on the other ranks), and, where the batch carries step labels, the step-level
        AUROC of those rewards (the same on every rank). Collective."""
        token_rewards = self._token_rewards(batch).numpy()
        stats = {"prm/score_mean": float((token_rewards * batch.response_mask).sum() / max(batch.response_mask.sum(), 1))}
        quality = step_quality(token_rewards, batch)
        if quality:
            stats.update({f"prm/{k}": v for k, v in quality.items()})
        return (token_rewards if self.ranks.is_main else None), stats

    # ----------------------------------------------------------------------------------------
    # Weights and checkpoints
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective. The trainable model (head model, or pi_phi) whole on rank 0 (None on the
        others): HF checkpoint names, cast to model.dtype, a tied lm_head left out."""
        state = gather_full_state(self.trainable, self.ranks)
        return None if state is None else export_state(state, self.dtype, self.trainable.config)

    def parameters_numpy(self) -> dict[str, np.ndarray] | None:
        """Collective. The trainable fp32 master parameters, whole on rank 0 (None elsewhere),
        named as in the PRM module (model.* for the head PRM, phi.* for the implicit one)."""
        state = gather_full_state(self.trainable, self.ranks)
        if state is None:
            return None
        prefix = "model." if self.prm.kind == "head" else "phi."
        return {prefix + k: state[k].numpy().copy() for k, p in self.trainable.named_parameters() if p.requires_grad}

    def save(self, out_dir: str) -> None:
        """Collective. HF folder in model.dtype + prm.json + tokenizer, and learner state
        (layout in learners/common.py)."""
        state = self.full_state_dict()
        if self.ranks.is_main:
            save_hf_model(out_dir, self.trainable, state, self.dtype)
            self.prm.save_meta(out_dir)
            self.tokenizer.save_pretrained(out_dir)
        save_learner_state(out_dir, self.ranks, self.optimizer, self.trainable, self.rng, self.version, save_master=self.dtype != "float32")
        self.ranks.barrier()

    def load(self, in_dir: str) -> None:
        """Collective. Weights, optimizer shards, RNGs and version, exactly as saved. A
        checkpoint of another world_size is a ValueError (before anything is loaded)."""
        state = read_learner_state(in_dir, self.ranks.world_size)
        load_full_state(self.trainable, os.path.join(in_dir, "model.safetensors"), self.ranks, "PRM")
        self.version = load_learner_state(in_dir, state, self.ranks, self.optimizer, self.trainable, self.rng)

    def ping(self) -> int:
        """Liveness check; the process id (tests kill actors by it)."""
        return os.getpid()


def step_quality(token_rewards: np.ndarray, batch: Rollouts) -> dict[str, float]:
    """algo.STEP_QUALITY_KEYS of token rewards summed per step (ALGORITHM.md s5): step AUROC (whole,
    against the first wrong steps, against the steps after them), the same of the prefix minimum,
    and first-error localisation.

    Label 1 = a step before the first wrong step, 0 = the first wrong step and after. Rows without
    step labels (first_wrong == -2) are left out; {} when no row has them."""
    labelled = np.flatnonzero(batch.first_wrong != -2)
    if len(labelled) == 0:
        return {}
    per_sample = [algo.step_scores(token_rewards[i], batch.step_ids[i]) for i in labelled]
    return algo.step_quality_metrics(per_sample, _first_wrongs(batch, labelled))


def null_step_quality(batch: Rollouts, seed: int = 0) -> dict[str, dict[str, float]]:
    """step_quality of each scorer that reads nothing of a step (algo.null_step_scores: random,
    minus the step index, minus the response length), by scorer; the distance of a PRM's numbers
    from these is what it knows. {} without step labels. Logged as `<key>_null_<scorer>`."""
    labelled = np.flatnonzero(batch.first_wrong != -2)
    if len(labelled) == 0:
        return {}
    ids = batch.step_ids[labelled]
    num_steps = [int(row.max()) + 1 if (row >= 0).any() else 0 for row in ids]
    lengths = batch.response_len[labelled].tolist()
    first_wrongs = _first_wrongs(batch, labelled)
    return {scorer: algo.step_quality_metrics(algo.null_step_scores(scorer, num_steps, lengths, seed), first_wrongs)
            for scorer in algo.NULL_SCORERS}


def null_metrics(nulls: dict[str, dict[str, float]]) -> dict[str, float]:
    """null_step_quality's numbers as metric keys: `<key>_null_<scorer>`."""
    return {f"{key}_null_{scorer}": value for scorer, quality in nulls.items() for key, value in quality.items()}


def _first_wrongs(batch: Rollouts, rows: np.ndarray) -> list[int | None]:
    return [None if batch.first_wrong[i] < 0 else int(batch.first_wrong[i]) for i in rows]
