"""The driver: the interleaved dual loop of rePIRL (ALGORITHM.md section 5), one iteration at a
time, each phase numbered and timed.

The driver holds the prompt stream, the three groups (rollout workers, policy learner, PRM
learner) and the run folder. Trajectories, token rewards, advantages and weights move between
actors as ObjectRefs; the driver itself only reads small summaries (outcomes per row, metrics).
Everything done before the loop starts (paths, checks, Ray, the run folder) is in run_setup.py.

`pipeline.off_policy_steps: 1` overlaps sampling with learning: the rollout workers sample the
next batch while the learners update on the current one, so an update's samples come from the
policy one version behind. PPO's ratio and the PRM's importance weights use the sampler's
log-probs (the behaviour policy), so both stay correct; the staleness is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray

from repirl_ray import algo
from repirl_ray.actors.learner_group import LearnerDied, PolicyLearnerGroup, PRMLearnerGroup
from repirl_ray.actors.roles import RolloutGroup, Sampled
from repirl_ray.batch import Rollouts, load_rollouts, save_rollouts
from repirl_ray.config import ConfigError, TrainConfig, has_prm_learner, load_config, save_config
from repirl_ray.data import PromptStream, limit_demos
from repirl_ray.evaluation import plot_run_curves
from repirl_ray.learners.prm import null_metrics, null_step_quality
from repirl_ray.metrics import MemoryMonitor, MetricsLogger, format_progress
from repirl_ray.tasks import Task, build_task
from repirl_ray.run_setup import (
    CHECKPOINTS,
    LATEST,
    TRAINER_STATE,
    CheckpointError,
    check_checkpoint,
    check_cluster_fits,
    check_fits,
    check_given_paths,
    init_ray,
    latest_checkpoint,
    load_run_data,
    machine_info,
    new_run_dir,
    read_given_data,
    resolve_paths,
    resume_target,
    role_demands,
    task_kwargs,
)
from repirl_ray.utils import atomic_write_json, atomic_write_text, publish_dir

log = logging.getLogger("repirl")

PENDING = "pending"  # a checkpoint's batch sampled ahead by the pipelined loop


class LearnerFailure(RuntimeError):
    pass


class PhaseTimer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - t0


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume_from: Path | None = None, log_fn=print,
                 rollout: RolloutGroup | None = None):
        """rollout: rollout workers to reuse (started by an earlier run with the same rollout
        section and task); they start again from this run's policy, and outlive it."""
        self.cfg = cfg
        self._given_rollout = rollout
        self.run_dir = Path(run_dir)
        self.log = log_fn
        self.stop_requested = False
        self.iteration = 0
        self.history: dict = {}  # base-eval numbers and the like, kept in the checkpoint
        self.learner_version = 0  # updates applied to the policy (the version the workers get next)
        self._pending: object = None  # pipelined loop: the next batch, submitted or sampled
        self._saved_at = -1
        self._wall_offset = 0.0
        self._t0 = self._t_created = time.time()
        self._prm_sets: dict = {}
        self._prm_nulls: dict = {}  # per eval split: the null scorers' step quality on its fixed set
        try:
            state = self._setup_checks(resume_from)
            self._setup_data()
            self._setup_run_folder()
            self._setup_supervised_stage()
            self._setup_ray()
            self._setup_actors()
            if resume_from is not None:
                self._restore(resume_from, state)
        except BaseException:
            self.shutdown()  # whatever started: actors, and a Ray this process started
            raise

    # ------------------------------------------------------------------------------------------
    # Set-up, in order: nothing starts before every check has passed.
    def _setup_checks(self, resume_from: Path | None) -> dict | None:
        """Paths the user gave, the checkpoint to resume from, and whether the roles fit on the
        cluster: each a one-line error before any actor (or the world's warm-up) starts."""
        cfg = self.cfg
        check_given_paths(cfg)
        if cfg.prm.kind == "oracle":
            if type(build_task(cfg.data.task, **task_kwargs(cfg))).step_labels is Task.step_labels:
                raise ConfigError(
                    f"config key 'prm.kind': oracle rewards steps from the task's step labels, and the {cfg.data.task} "
                    "task has none; use a task that labels steps (data.task=arithmetic) or a learned PRM"
                )
        self._given_data = read_given_data(cfg)  # rows and demos, before the world and Ray
        state = check_checkpoint(resume_from, cfg) if resume_from is not None else None
        self.joined_ray = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        if self.joined_ray:
            init_ray(cfg, self.log)  # joining is cheap, and the cluster's nodes are what must fit
            check_cluster_fits(cfg)
        else:
            import torch

            node = {"CPU": float(cfg.ray.num_cpus or os.cpu_count() or 1)}
            if torch.cuda.is_available():
                node["GPU"] = float(torch.cuda.device_count())
            check_fits(role_demands(cfg), [node], {"policy": cfg.policy.placement == "pack", "prm": cfg.prm.placement == "pack"})
        return state

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.paths = resolve_paths(cfg, self.log)  # builds the world first when needed
        # Prompt lengths as the workers will encode them: a too-long prompt stops the run here.
        data, self.data_reports = load_run_data(cfg, self.paths, self._given_data, self.log)
        # data.max_demos_per_problem: the demos the IRL step and the supervised stage see.
        self.train_problems, dropped = limit_demos(data["train"], cfg.data.max_demos_per_problem)
        if dropped:
            self.log(f"data.max_demos_per_problem={cfg.data.max_demos_per_problem}: left out {dropped} expert demos of the training problems")
        self.eval_problems = data["eval"][: cfg.eval.num_prompts]
        self.hard_problems = data["hard_eval"][: cfg.eval.num_prompts]
        self.stream = PromptStream(self.train_problems, cfg.data.prompts_per_iteration, seed=cfg.seed, shuffle=cfg.data.shuffle)
        # A curriculum's first stage (data.curriculum_iterations batches), its own seeded stream.
        self.curriculum_stream = None
        if cfg.data.curriculum_iterations:
            curriculum, _ = limit_demos(data["curriculum"], cfg.data.max_demos_per_problem)
            self.curriculum_stream = PromptStream(curriculum, cfg.data.prompts_per_iteration, seed=cfg.seed, shuffle=cfg.data.shuffle)

    def _setup_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")  # the resolved config, as this run uses it
        atomic_write_json(self.run_dir / "data_report.json", self.data_reports)
        self.metrics = MetricsLogger(self.run_dir)

    def _setup_supervised_stage(self) -> None:
        """Behaviour cloning on the training problems' expert demos (a Ray Train job); its result
        is the starting policy. A resumed run finds it already in the run folder."""
        cfg = self.cfg
        if cfg.sft.steps > 0:
            from repirl_ray.actors.supervised import run_supervised_job
            from repirl_ray.learners.sft import SupervisedJob
            from repirl_ray.tasks import build_task

            out = self.run_dir / "sft_policy"
            if not (out / "config.json").is_file():
                task = build_task(cfg.data.task, **task_kwargs(cfg))
                pairs = [(task.format_prompt(p), demo) for p in self.train_problems for demo in p.demos]
                tmp = self.run_dir / ".tmp-sft_policy"
                job = SupervisedJob(
                    init_dir=self.paths.policy, out_dir=str(tmp), pairs=pairs, steps=cfg.sft.steps,
                    batch_size=cfg.sft.batch_size, lr=cfg.sft.lr, seed=cfg.seed, threads=cfg.sft.num_threads,
                    chat_template=cfg.data.chat_template, dtype=cfg.model.dtype, label="sft",
                )
                self.log(f"supervised stage: {cfg.sft.steps} steps x {cfg.sft.batch_size} on {len(pairs)} expert demos (Ray Train job)")
                # On the policy learner's ranks and GPUs, when the config gives them.
                metrics = run_supervised_job(job, self.run_dir, name="sft", num_workers=cfg.policy.num_workers,
                                             num_cpus=cfg.sft.num_cpus, num_gpus=cfg.policy.num_gpus)
                publish_dir(tmp, out)
                self.history["sft"] = metrics
                self.log(f"supervised stage done: loss {metrics['loss']:.3f}, {metrics['wall_s']:.0f} s -> {out}")
            self.paths.policy = str(out)
        atomic_write_json(self.run_dir / "paths.json", dataclasses.asdict(self.paths))

    def _setup_ray(self) -> None:
        # A private Ray starts after the one-shot jobs above, which ran in a Ray of their own.
        self.started_ray = init_ray(self.cfg, self.log)
        self.memory = MemoryMonitor(whole_node=not self.started_ray)

    def _setup_actors(self) -> None:
        """The rollout workers first (the base evaluation needs them); the learners start while
        it runs, and the first call to a learner group waits for it."""
        cfg, paths = self.cfg, self.paths
        t0 = time.time()
        common = dict(dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
        learner_common = dict(common, compute_dtype=cfg.model.compute_dtype, seed=cfg.seed)
        worker_kwargs = dict(chat_template=cfg.data.chat_template, max_prompt_tokens=cfg.data.max_prompt_tokens,
                             task_kwargs=task_kwargs(cfg), **common)
        if self._given_rollout is not None:
            given = self._given_rollout
            same = {k: v for k, v in given.worker_kwargs.items() if k != "seed"} == worker_kwargs
            if given.cfg != cfg.rollout or given.task_name != cfg.data.task or not same:
                raise ValueError("rollout workers can be reused only by a run with the same rollout section, task, "
                                 "prompt encoding and dtype")
            self.rollout = self._given_rollout
            self.rollout.on_event = self._event
            self.rollout.reset(paths.policy, cfg.model.dtype)
        else:
            self.rollout = RolloutGroup(cfg.rollout, paths.policy, cfg.data.task, on_event=self._event, wait=False,
                                        seed=cfg.seed, **worker_kwargs)
        self.policy = PolicyLearnerGroup(
            cfg.policy, paths.policy, advantage=cfg.advantage, samples_per_prompt=cfg.rollout.samples_per_prompt,
            temperature=cfg.rollout.temperature, ref_path=paths.ref, oracle_process_reward=cfg.prm.kind == "oracle",
            **learner_common,
        )
        self.prm = None
        if has_prm_learner(cfg):
            self.prm = PRMLearnerGroup(cfg.prm, cfg.irl, paths.prm, ref_path=paths.ref, **learner_common)
        self.rollout.wait_ready()
        self.log(f"rollout workers ready in {time.time() - t0:.1f} s: {cfg.rollout.num_workers} x vLLM; learners "
                 f"starting: policy x {cfg.policy.num_workers}" + (f", PRM ({cfg.prm.kind}) x {cfg.prm.num_workers}" if self.prm else ""))

    def _event(self, kind: str, info: dict) -> None:
        self.log(f"event: {kind} {info}")
        self.metrics.event(self.iteration, kind, info)

    # ------------------------------------------------------------------------------------------
    # Sampling: serial, or one batch ahead (pipeline.off_policy_steps = 1)
    def _submit(self, index: int):
        """Hand the batch of iteration `index` (0-based) to the rollout workers."""
        stream = self.curriculum_stream if index < self.cfg.data.curriculum_iterations else self.stream
        problems, _ = stream.next_batch()
        demo_problems = None
        if self.cfg.irl.demo_pairing == "shuffled":
            # The released code's expert loader is not aligned with the prompts: each slot's demos
            # come from a training problem drawn at random (seeded by the iteration, so a resumed
            # run draws the same ones), with that problem's own prompt.
            rng = np.random.default_rng([self.cfg.seed, index, 1])
            pool = stream.problems
            demo_problems = [pool[i] for i in rng.choice(len(pool), size=len(problems), replace=len(pool) < len(problems))]
        return self.rollout.submit(
            problems, n=self.cfg.rollout.samples_per_prompt, temperature=self.cfg.rollout.temperature,
            seed=self.cfg.seed * 100_003 + index, with_demos=self.prm is not None, demo_problems=demo_problems,
        )

    def _next_batch(self) -> Sampled:
        """This iteration's batch. Pipelined: the one sampled during the last update, and the next
        one is handed to the workers now, before the learners start on this one."""
        pending, self._pending = self._pending, None
        if pending is None:
            pending = self._submit(self.iteration)
        batch = pending if isinstance(pending, Sampled) else self.rollout.collect(pending)
        if self.cfg.pipeline.off_policy_steps:
            # Also after the last iteration: the final checkpoint keeps it, so a run extended with
            # --resume continues exactly as one that had run longer in the first place.
            self._pending = self._submit(self.iteration + 1)
        return batch

    def _push_weights(self) -> None:
        """Policy weights to every rollout worker: one object in the store, the same ref for all.
        The version is read first, so a dead policy learner stops the run here instead of
        looking like a failure of the rollout workers that wait for its weights. Pipelined, the
        push queues behind the batch the workers are sampling."""
        weights, version = self.policy.weights()
        self.learner_version = int(version)
        self.rollout.load_weights(weights, self.learner_version, wait=not self.cfg.pipeline.off_policy_steps)

    # ------------------------------------------------------------------------------------------
    def run_iteration(self) -> dict:
        """One iteration of ALGORITHM.md section 5."""
        cfg, K = self.cfg, self.cfg.rollout.samples_per_prompt
        timer = PhaseTimer()
        t_start = time.perf_counter()

        # 1. Sample K responses per prompt with the current policy (vLLM), verified by the task.
        with timer("rollout"):
            batch = self._next_batch()
        outcome = batch.field("outcome")
        metrics = {
            "rollout/accuracy": float(outcome.mean()),
            "rollout/format_ok": float(batch.field("format_ok").mean()),
            "rollout/response_len": float(batch.field("response_len").mean()),
            "rollout/tokens": float(batch.field("response_len").sum()),  # tokens/s = this / timing/rollout
            "rollout/policy_version": float(batch.version),
            # Versions between the policy being updated and the one that sampled its batch.
            "rollout/staleness": float(self.learner_version - batch.version),
        }

        # 2. Prompt filter (PRIME): keep prompts whose K-sample accuracy lies in [low, high].
        slots = batch.field("prompt_index").reshape(-1, K)[:, 0]
        keep = slots
        if cfg.filter.enabled:
            import torch

            kept = algo.filter_prompts(torch.from_numpy(outcome), K, cfg.filter.low, cfg.filter.high)
            keep = slots[kept.numpy()]
        metrics["rollout/kept"] = float(len(keep))
        metrics["rollout/kept_frac"] = len(keep) / len(slots)
        if len(keep) == 0:
            self.log(f"iteration {self.iteration + 1}: no prompt kept by the filter; no update this iteration")
            metrics.update(timer.times)
            metrics["timing/iteration"] = time.perf_counter() - t_start
            return metrics
        # The learners gather the kept prompts' rows from the workers' shards themselves.

        # 3. IRL step: the PRM learns from P = demos + correct rollouts against N = failed ones.
        if self.prm is not None and cfg.prm.update == "before":
            with timer("prm"):
                metrics.update(self.prm.update(keep, batch.rollouts, batch.demos))

        # 4. Rescore every kept rollout with the updated PRM (token rewards stay in the object store).
        token_rewards = None
        if self.prm is not None and cfg.advantage.c_process != 0:
            with timer("score"):
                token_rewards, score_stats = self.prm.score(keep, batch.rollouts)
                metrics.update(score_stats)

        # 5. Policy update: two-channel RLOO advantages, then PPO-clip with the entropy bonus.
        with timer("policy"):
            metrics.update(self.policy.update(keep, token_rewards, batch.rollouts))

        if self.prm is not None and cfg.prm.update == "after":
            with timer("prm"):
                metrics.update(self.prm.update(keep, batch.rollouts, batch.demos))

        # 6. New policy weights to the rollout workers (object store), before their next batch.
        with timer("sync"):
            self._push_weights()

        metrics.update(timer.times)
        metrics["timing/iteration"] = time.perf_counter() - t_start
        return metrics

    # ------------------------------------------------------------------------------------------
    def evaluate(self, problems, tag: str) -> dict:
        """Held-out accuracy: sampled pass@1 at the training temperature (mean correctness of
        eval.samples_per_prompt samples), greedy accuracy beside it; and the PRM's step AUROC.

        The PRM is judged on one fixed labelled set, the base policy's samples of the held-out
        prompts (drawn at the first evaluation and kept in the run folder), so that its numbers
        compare across iterations and runs: the current policy's samples change, and they hold
        fewer and different mistakes as it improves. The AUROC on them is logged beside it
        (`*/step_auroc_onpolicy`)."""
        cfg = self.cfg
        out = {}
        t0 = time.perf_counter()
        sampled = self.rollout.generate(
            problems, n=cfg.eval.samples_per_prompt, temperature=cfg.rollout.temperature, seed=10_007 + cfg.seed, with_demos=False
        )
        out[f"{tag}/accuracy"] = float(sampled.field("outcome").mean())
        if cfg.eval.greedy:
            greedy = self.rollout.generate(problems, n=1, temperature=0.0, seed=0, with_demos=False)
            out[f"{tag}/greedy_accuracy"] = float(greedy.field("outcome").mean())
        if self.prm is not None:
            fresh = tag not in self._prm_sets and not (self.run_dir / f"prm_eval_{tag}.npz").is_file()
            fixed = self._prm_eval_set(tag, sampled.rollouts)
            # At the first evaluation the fixed set is these very samples: score them once.
            sets = (("", [fixed]),) if fresh else (("", [fixed]), ("_onpolicy", sampled.rollouts))
            for suffix, parts in sets:
                _, stats = self.prm.score(None, parts)
                for key in algo.STEP_QUALITY_KEYS:
                    if f"prm/{key}" in stats:
                        out[f"{tag}/{key}{suffix}"] = stats[f"prm/{key}"]
                        if fresh:
                            out[f"{tag}/{key}_onpolicy"] = stats[f"prm/{key}"]
            # The same numbers of scorers that read nothing of a step, on the fixed set: a PRM's
            # distance from them is what it knows (constant over the run).
            out.update({f"{tag}/{k}": v for k, v in self._prm_nulls[tag].items()})
        out[f"timing/{tag}"] = time.perf_counter() - t0
        return out

    def _prm_eval_set(self, tag: str, rollouts: list):
        """The fixed PRM evaluation set of this eval split: saved at the first evaluation (the
        base policy's samples), reloaded from the run folder on resume."""
        if tag not in self._prm_sets:
            path = self.run_dir / f"prm_eval_{tag}.npz"
            if path.is_file():
                batch = load_rollouts(path)
            else:
                batch, _ = Rollouts.gather(None, ray.get(rollouts))
                save_rollouts(batch, path)
            self._prm_sets[tag] = ray.put(batch)
            self._prm_nulls[tag] = null_metrics(null_step_quality(batch, seed=self.cfg.seed))
        return self._prm_sets[tag]

    def _evaluate_all(self) -> dict:
        out = self.evaluate(self.eval_problems, "eval")
        if self.hard_problems:
            out.update(self.evaluate(self.hard_problems, "eval_hard"))
        return out

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """policy/ and prm/ in HF format with optimizer and RNG states (one optimizer shard per
        rank), trainer_state.json, and in the pipelined loop the batch already sampled for the
        next iteration (pending/), so a resume neither loses nor repeats it. Written under a
        temporary name and renamed, then `latest` is switched atomically."""
        ckpt_root = self.run_dir / CHECKPOINTS
        name = f"iter_{self.iteration:06d}"
        tmp = ckpt_root / f".tmp-{name}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            self.policy.save(str(tmp / "policy"))
            if self.prm is not None:
                self.prm.save(str(tmp / "prm"))
            if self._pending is not None:
                if not isinstance(self._pending, Sampled):
                    self._pending = self.rollout.collect(self._pending)
                save_sampled(self._pending, tmp / PENDING)
        except BaseException:
            # A half-written checkpoint is never published; remove it so only complete ones remain.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        state = {
            "iteration": self.iteration,
            "data": self.stream.state(),
            "curriculum_data": self.curriculum_stream.state() if self.curriculum_stream else None,
            "history": self.history,
            "wall_s": self.wall_s(),
            "policy_version": self.learner_version,
            "ranks": {"policy": self.cfg.policy.num_workers, **({"prm": self.cfg.prm.num_workers} if self.prm else {})},
            "pending": self._pending is not None,
        }
        atomic_write_json(tmp / TRAINER_STATE, state)
        publish_dir(tmp, ckpt_root / name)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
        kept = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir())
        for old in kept[: max(0, len(kept) - self.cfg.checkpoint.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        self._saved_at = self.iteration
        self.log(f"checkpoint: {ckpt_root / name}")
        return ckpt_root / name

    def _restore(self, ckpt: Path, state: dict) -> None:
        """Weights, optimizer shards, RNGs, data position, policy version and (pipelined) the
        batch sampled ahead, from a checkpoint that check_checkpoint has passed."""
        self.policy.load(str(ckpt / "policy"))
        if self.prm is not None:
            self.prm.load(str(ckpt / "prm"))
        self.iteration = int(state["iteration"])
        self.stream.load_state(state["data"])
        if self.curriculum_stream is not None and state.get("curriculum_data"):
            self.curriculum_stream.load_state(state["curriculum_data"])
        self.history = state["history"]
        self._wall_offset = float(state["wall_s"])
        self._push_weights()
        if state.get("pending"):
            self._pending = load_sampled(ckpt / PENDING)
        self.metrics.truncate_after(self.iteration)
        self.log(f"resumed from {ckpt} at iteration {self.iteration}")

    # ------------------------------------------------------------------------------------------
    def wall_s(self) -> float:
        return self._wall_offset + time.time() - self._t0

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stop_requested:
            self.log(f"stop requested (signal {signum}): finishing this iteration, then checkpoint and exit")
        self.stop_requested = True

    def train(self) -> dict:
        try:
            return self._train()
        except LearnerDied as err:
            raise LearnerFailure(
                f"{err}; the run stops here. The last checkpoint in {self.run_dir / CHECKPOINTS} is intact: "
                f"continue with `repirl train --resume {self.run_dir}`"
            ) from err

    def _train(self) -> dict:
        cfg = self.cfg
        self._t0 = time.time()
        self._setup_s = self._t0 - self._t_created  # checks, data, SFT, Ray, actors: until the base evaluation
        self.memory.start()
        try:
            if "base" not in self.history:
                base = self._evaluate_all()
                self.history["base"] = base
                self.metrics.log(self.iteration, base)
                self.log(format_base(base) + f" ({base['timing/eval']:.1f} s)")
            while self.iteration < cfg.iterations and not self.stop_requested:
                metrics = self.run_iteration()
                self.iteration += 1
                if cfg.eval.every and self.iteration % cfg.eval.every == 0 and self.iteration < cfg.iterations:
                    metrics.update(self._evaluate_all())
                metrics["memory/rss_gib"] = self.memory.current_gib
                self.metrics.log(self.iteration, metrics)
                self.log(format_progress(self.iteration, cfg.iterations, metrics))
                if cfg.checkpoint.every and self.iteration % cfg.checkpoint.every == 0 and self.iteration < cfg.iterations:
                    self.save_checkpoint()
            if self.stop_requested and self.iteration < cfg.iterations:
                if self._saved_at != self.iteration:
                    self.save_checkpoint()
                self.log(f"stopped at iteration {self.iteration}; resume with `repirl train --resume {self.run_dir}`")
                return {"stopped_at": self.iteration}
            # With no RL iteration (behaviour cloning), the final policy is the one evaluated at the start.
            final = self._evaluate_all() if self.iteration > 0 else self.history["base"]
            self.metrics.log(self.iteration, final)
            self.save_checkpoint()
            summary = self.summary(final)
            atomic_write_json(self.run_dir / "summary.json", summary)
            return summary
        finally:
            # curves.png of every run (a stopped or failed one too), from metrics.jsonl.
            try:
                plot_run_curves(self.metrics.read(), self.run_dir / "curves.png", title=f"{cfg.name}: {self.run_dir.name}")
            except Exception as err:  # noqa: BLE001 - a plot must never cost the run its result or hide its error
                self.log(f"warning: curves.png not written ({type(err).__name__}: {err})")
            self.memory.stop()
            self.metrics.close()

    def summary(self, final: dict) -> dict:
        base = self.history["base"]
        hist = self.metrics.read()
        phases = {}
        for key in ("timing/rollout", "timing/prm", "timing/score", "timing/policy", "timing/sync", "timing/iteration"):
            values = [m[key] for m in hist if key in m and "rollout/accuracy" in m]
            if values:
                phases[key.split("/")[1]] = round(float(np.mean(values)), 3)
        out = {
            "name": self.cfg.name,
            "run_dir": str(self.run_dir),
            "iterations": self.iteration,
            "base_accuracy": base["eval/accuracy"],
            "final_accuracy": final["eval/accuracy"],
            "base_greedy_accuracy": base.get("eval/greedy_accuracy"),
            "final_greedy_accuracy": final.get("eval/greedy_accuracy"),
            "step_auroc": final.get("eval/step_auroc"),
            "step_auroc_prefix_min": final.get("eval/step_auroc_prefix_min"),
            "step_auroc_first_wrong": final.get("eval/step_auroc_first_wrong"),
            "step_auroc_after_first_wrong": final.get("eval/step_auroc_after_first_wrong"),
            "base_step_auroc": base.get("eval/step_auroc"),
            "first_error_acc": final.get("eval/first_error_acc"),
            "step_auroc_onpolicy": final.get("eval/step_auroc_onpolicy"),
            "wall_s": round(self.wall_s(), 1),
            "setup_s": round(getattr(self, "_setup_s", 0.0), 1),
            "peak_rss_gib": round(self.memory.peak_gib, 3),
            "peak_pss_gib": round(self.memory.peak_pss_gib, 3),
            "mean_phase_s": phases,
            "machine": machine_info(),
        }
        for key, value in final.items():
            if key.startswith("eval/") and key[len("eval/"):].startswith(NULL_SUMMARY_KEYS):
                out[key[len("eval/"):]] = value
            if key.startswith("eval_hard/"):
                out["final_hard_" + key.split("/")[1]] = value
        for key, value in base.items():
            if key.startswith("eval_hard/"):
                out["base_hard_" + key.split("/")[1]] = value
        return out

    def shutdown(self, keep_rollout: bool = False) -> None:
        """Stop the actors (and a Ray this process started). keep_rollout: leave the rollout
        workers running for another run to reuse (they were given to this one, or it was asked)."""
        keep = keep_rollout or self._given_rollout is not None
        for group in (getattr(self, "rollout", None), getattr(self, "policy", None), getattr(self, "prm", None)):
            if group is not None and not (keep and group is getattr(self, "rollout", None)):
                group.shutdown()
        if getattr(self, "started_ray", False) or (getattr(self, "joined_ray", False) and ray.is_initialized()):
            ray.shutdown()


# The null scorers' numbers a run's summary.json keeps (every one is in metrics.jsonl).
NULL_SUMMARY_KEYS = ("step_auroc_null", "step_auroc_prefix_min_null", "first_error_acc_null")


def format_base(m: dict) -> str:
    parts = [f"base policy: accuracy {m['eval/accuracy']:.3f} (sampled)"]
    if "eval/greedy_accuracy" in m:
        parts.append(f"greedy {m['eval/greedy_accuracy']:.3f}")
    if "eval/step_auroc" in m:
        parts.append(f"initial PRM step AUROC {m['eval/step_auroc']:.3f}")
    return ", ".join(parts)


def save_sampled(batch: Sampled, out_dir: Path) -> None:
    """A sampled batch as files: its rollout and demo shards merged, and its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rollouts, demos = Rollouts.gather(None, ray.get(batch.rollouts) + ray.get(batch.demos))
    save_rollouts(rollouts, out_dir / "rollouts.npz")
    if demos is not None:
        save_rollouts(demos, out_dir / "demos.npz")
    summary = {k: (np.concatenate([s[k] for s in batch.summaries]).tolist() if k in ARRAY_FIELDS else
                   [a for s in batch.summaries for a in s[k]] if k == "answers" else batch.summaries[0][k])
               for k in batch.summaries[0]}
    atomic_write_json(out_dir / "summary.json", summary)


# Per-row fields of a rollout worker's summary, with their dtypes.
ARRAY_FIELDS = {"outcome": np.float32, "format_ok": np.float32, "prompt_index": np.int64, "response_len": np.int32}


def load_sampled(in_dir: Path) -> Sampled:
    summary = json.loads((in_dir / "summary.json").read_text())
    for k, dtype in ARRAY_FIELDS.items():
        summary[k] = np.asarray(summary[k], dtype)
    demos = [ray.put(load_rollouts(in_dir / "demos.npz"))] if (in_dir / "demos.npz").is_file() else [None]
    return Sampled([ray.put(load_rollouts(in_dir / "rollouts.npz"))], demos, [summary])


def train(cfg: TrainConfig | None = None, *, resume: str | None = None, overrides=(), log_fn=print) -> dict:
    """Run a training run, or resume one (`resume`: its run folder, or one of its checkpoints),
    and return its summary."""
    resume_from = None
    if resume:
        run_dir, resume_from = resume_target(resume)
        cfg = load_config([str(run_dir / "config.yaml")], overrides)
        resume_from = resume_from or latest_checkpoint(run_dir)
        if resume_from is None:
            raise CheckpointError(f"--resume {resume}: no checkpoint in {run_dir / CHECKPOINTS} (the run stopped before its first)")
    else:
        cfg = cfg or load_config(None, overrides)
        run_dir = new_run_dir(cfg)
    log_fn(f"run folder: {run_dir}")
    trainer = None
    previous = {}
    try:
        trainer = Trainer(cfg, run_dir, resume_from=resume_from, log_fn=log_fn)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, trainer.request_stop)
        return trainer.train()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if trainer is not None:
            trainer.shutdown()
