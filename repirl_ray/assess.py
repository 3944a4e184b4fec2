"""Using a trained checkpoint: `repirl eval` (policy accuracy, PRM quality) and `repirl bon`
(best-of-N by the PRM's selectors against majority vote, a random pick and the oracle;
ALGORITHM.md section 7).

A checkpoint folder is runs/<run>/checkpoints/iter_NNNNNN; the run's config.yaml says which
task, world and settings it was trained with. Both commands start their own actors: rollout
workers on the checkpoint's policy and a PRM learner on its PRM (used for scoring only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from repirl_ray import algo, evaluation
from repirl_ray.actors.learner_group import PRMLearnerGroup
from repirl_ray.actors.rollout_group import RolloutGroup
from repirl_ray.batch import load_rollouts
from repirl_ray.config import ConfigError, load_config
from repirl_ray.run_setup import (init_ray, node_cores, read_data_split, resolve_paths, resolve_rollout_workers, stop_ray,
                                  task_kwargs)
from repirl_ray.threads import thread_budgets
from repirl_ray.learners.prm import null_metrics, null_step_quality, step_quality
from repirl_ray.models.prm import read_prm_meta
from repirl_ray.utils import atomic_write_json


class CheckpointSession:
    """The policy and PRM of one checkpoint, served by Ray actors."""

    def __init__(self, checkpoint: str, overrides=(), split: str = "eval", log=print):
        self.ckpt = Path(checkpoint)
        if not (self.ckpt / "policy" / "config.json").is_file():
            raise FileNotFoundError(
                f"--checkpoint {checkpoint}: no policy/ in HF format there; give a folder like runs/<run>/checkpoints/iter_000100"
            )
        self.run_dir = self.ckpt.parent.parent
        config = self.run_dir / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.yaml in its run folder {self.run_dir}")
        self.cfg = cfg = load_config(str(config), overrides)
        paths = resolve_paths(cfg, log)
        eval_path = {"eval": paths.eval, "hard": paths.hard_eval}.get(split)
        if not eval_path:
            raise ConfigError(f"--split {split}: this run has no such evaluation split (eval, hard)")
        self.split = split
        # Read as the run read it (its data.format and field mapping).
        self.problems = read_data_split(cfg, "eval" if split == "eval" else "hard_eval", eval_path)[0][: cfg.eval.num_prompts]
        self.started_ray = init_ray(cfg, log)
        cores = node_cores(cfg, joined=not self.started_ray)
        self.cfg = cfg = resolve_rollout_workers(cfg, cores, log)  # a run folder's config.yaml has it resolved already
        # Sampling and scoring take turns here.
        threads = thread_budgets(cfg, cores, overlapped=False)
        self.rollout = RolloutGroup(
            cfg.rollout, str(self.ckpt / "policy"), cfg.data.task, threads=threads["rollout"], seed=cfg.seed,
            chat_template=cfg.data.chat_template,
            max_prompt_tokens=cfg.data.max_prompt_tokens, task_kwargs=task_kwargs(cfg), dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        self.prm = None
        meta = read_prm_meta(str(self.ckpt / "prm")) if (self.ckpt / "prm").is_dir() else None
        if meta is not None:
            # The checkpoint's own kind; scoring needs one rank (a checkpoint holds whole weights).
            prm_cfg = dataclasses.replace(cfg.prm, kind=meta["kind"], head=meta.get("head", "linear"), num_workers=1)
            self.prm = PRMLearnerGroup(prm_cfg, cfg.irl, str(self.ckpt / "prm"), threads=threads.get("prm", threads["policy"]),
                                       dtype=cfg.model.dtype,
                                       compute_dtype=cfg.model.compute_dtype, trust_remote_code=cfg.model.trust_remote_code)

    def sample(self, n: int, temperature: float, seed: int = 20_011):
        sampled = self.rollout.generate(self.problems, n=n, temperature=temperature, seed=seed, with_demos=False)
        return sampled.rollouts, sampled.summaries

    def score(self, refs) -> tuple[np.ndarray, dict]:
        return self.prm.score_fetched(None, refs)

    def close(self) -> None:
        self.rollout.shutdown()
        if self.prm is not None:
            self.prm.shutdown()
        stop_ray(self.started_ray, joined=False)


def evaluate_checkpoint(checkpoint: str, *, samples: int = 8, split: str = "eval", overrides=(), log=print) -> dict:
    """Greedy pass@1, sampled pass@k (k = 1, 2, 4, ... <= samples) at the training temperature,
    and, with a PRM and step labels, the step AUROC and first-error localisation on the sampled
    responses and on the run's fixed set (the base policy's samples)."""
    session = CheckpointSession(checkpoint, overrides, split, log)
    try:
        cfg = session.cfg
        out = {"checkpoint": str(session.ckpt), "split": split, "prompts": len(session.problems), "samples_per_prompt": samples}
        _, greedy = session.sample(1, 0.0)
        out["greedy_pass@1"] = float(np.concatenate([s["outcome"] for s in greedy]).mean())
        refs, summaries = session.sample(samples, cfg.rollout.temperature)
        correct = np.concatenate([s["outcome"] for s in summaries]).reshape(len(session.problems), samples)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples]
        for k, value in evaluation.mean_pass_at_k(correct, ks).items():
            out[f"pass@{k}"] = value
        if session.prm is not None:
            _, stats = session.score(refs)
            for key in algo.STEP_QUALITY_KEYS:
                if f"prm/{key}" in stats:
                    out[f"prm_{key}"] = stats[f"prm/{key}"]
            fixed = session.run_dir / f"prm_eval_{'eval' if split == 'eval' else 'eval_hard'}.npz"
            if fixed.is_file():
                batch = load_rollouts(fixed)
                rewards, _ = session.score([session.rollout.put(batch)])
                for key, value in {**step_quality(rewards, batch), **null_metrics(null_step_quality(batch, seed=cfg.seed))}.items():
                    out[f"prm_{key}_fixed_set"] = value
        atomic_write_json(session.ckpt / f"eval_{split}.json", out)
        return out
    finally:
        session.close()


def best_of_n_checkpoint(checkpoint: str, *, n_max: int = 32, split: str = "eval", out_dir: str | None = None,
                         overrides=(), log=print) -> dict:
    """Best-of-N by the PRM (its mean token reward, its worst step, the PRM-weighted vote of the
    released code), against majority vote over final answers, a random pick and the oracle, for
    N = 1, 2, 4, ..., n_max; writes bon.json, bon.md and bon.png."""
    session = CheckpointSession(checkpoint, overrides, split, log)
    try:
        if session.prm is None:
            raise ConfigError(f"--checkpoint {checkpoint}: it holds no PRM (a run with prm.kind=none); best-of-N needs one")
        cfg = session.cfg
        refs, summaries = session.sample(n_max, cfg.rollout.temperature)
        rewards, _ = session.score(refs)
        batch = session.rollout.gather(refs)
        mask = torch.from_numpy(batch.response_mask)
        rewards_t = torch.tensor(rewards, dtype=torch.float32)  # a copy: arrays from the object store are read-only
        mean_reward = algo.mean_token_reward(rewards_t, mask).numpy()
        # The worst step: the min-form return at the first token (steps from the task's labels;
        # without them every token is a step).
        worst_step = algo.min_form_returns(rewards_t, mask, torch.from_numpy(batch.step_ids.astype(np.int64)))[:, 0].numpy()
        p = len(session.problems)
        # The shards come back in prompt order, n_max rows per prompt.
        order = np.lexsort((batch.sample_index, batch.prompt_index))
        scores = mean_reward[order].reshape(p, n_max)
        min_step = worst_step[order].reshape(p, n_max)
        correct = batch.outcome[order].reshape(p, n_max)
        answers_flat = [a for s in summaries for a in s["answers"]]
        answers = [[answers_flat[i] for i in order[j * n_max:(j + 1) * n_max]] for j in range(p)]
        ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= n_max]
        curves = evaluation.best_of_n_curves(scores, correct, answers, ns=ns, seed=cfg.seed, min_step_scores=min_step)
        out = Path(out_dir) if out_dir else session.ckpt
        out.mkdir(parents=True, exist_ok=True)
        table = evaluation.format_bon_table(curves)
        title = f"best-of-N on {p} held-out prompts ({session.run_dir.name}, {session.ckpt.name})"
        evaluation.plot_bon(curves, out / "bon.png", title)
        atomic_write_json(out / "bon.json", {k: v for k, v in curves.items()})
        (out / "bon.md").write_text(table + "\n")
        return {"curves": curves, "table": table, "png": str(out / "bon.png")}
    finally:
        session.close()


def format_eval(result: dict) -> str:
    rows = [f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}" for k, v in result.items()]
    return "\n".join(rows)

