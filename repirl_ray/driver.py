"""The driver: the interleaved dual loop of rePIRL (ALGORITHM.md section 5), one iteration at a
time, each phase numbered and timed, and its schedule (which batch is sampled when; when to
evaluate, checkpoint, stop). Set-up is in run_setup.py, evaluation in evaluation.py, checkpoints
in checkpoints.py; the groups in actors/ make every Ray call, none is made here.

Trajectories, rewards, advantages, weights move between actors as ObjectRefs; the driver reads summaries.

`pipeline.off_policy_steps: 1`: the rollout workers sample the next batch while the learners
update on this one (or after, with the same weights, where they share cores: pipeline.overlap),
so an update's samples come from the policy one version behind. PPO's ratio and the PRM's
importance weights use the sampler's log-probs, so both stay correct; the staleness is logged.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch

from repirl_ray import algo
from repirl_ray.actors.learner_group import LearnerDied
from repirl_ray.actors.rollout_group import Sampled
from repirl_ray.checkpoints import CHECKPOINTS, save_checkpoint, trainer_state
from repirl_ray.config import TrainConfig
from repirl_ray.evaluation import Evaluator, write_run_curves
from repirl_ray.metrics import PhaseTimer, format_base, format_progress, run_summary
from repirl_ray.run_setup import RunSetup, run_target
from repirl_ray.utils import atomic_write_json


class LearnerFailure(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume_from: Path | None = None, log_fn=print, rollout=None):
        """rollout: rollout workers of an earlier run to reuse (see RunSetup)."""
        self.run_dir, self.log = Path(run_dir), log_fn
        self.stop_requested = False
        self._t0 = self._t_created = time.time()
        self._saved_at = -1
        self.setup = setup = RunSetup(cfg, self.run_dir, resume_from=resume_from, rollout=rollout, log_fn=log_fn)
        self.cfg = cfg = setup.cfg  # run_setup.py: checks, data, run folder, SFT, Ray, actors, checkpoint; auto resolved
        self.rollout, self.policy, self.prm, self.metrics = setup.rollout, setup.policy, setup.prm, setup.metrics
        self.rollout.on_event = self._event  # a worker replaced: recorded under the loop's iteration
        self.stream, self.curriculum_stream = setup.stream, setup.curriculum_stream
        self.evaluator = Evaluator(cfg.eval, self.run_dir, self.rollout, self.prm, temperature=cfg.rollout.temperature,
                                   seed=cfg.seed, eval_problems=setup.eval_problems, hard_problems=setup.hard_problems)
        state = setup.resumed or {}
        self.iteration = int(state.get("iteration", 0))
        self.history: dict = state.get("history", setup.history)  # base-eval numbers and the like, checkpointed
        self._wall_offset = float(state.get("wall_s", 0.0))
        self._pending: object = setup.pending  # pipelined loop: the next batch, submitted or sampled
        self.learner_version = setup.policy_version  # updates applied to the policy (the workers' next version)

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
            demo_problems = stream.shuffled_demo_problems(len(problems), self.cfg.seed, index)
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
        if self.setup.overlapped:
            self._sample_ahead()
        return batch

    def _sample_ahead(self) -> None:
        """Pipelined: the next batch to the workers, ahead of this update's weights. Also after the
        last iteration: the final checkpoint keeps it, so a run extended with --resume continues
        exactly as one that had run longer in the first place."""
        if self.cfg.pipeline.off_policy_steps and self._pending is None:
            self._pending = self._submit(self.iteration + 1)

    def run_iteration(self) -> dict:
        """One iteration of ALGORITHM.md section 5."""
        cfg, K = self.cfg, self.cfg.rollout.samples_per_prompt
        timer = PhaseTimer()  # timing/<phase>, and timing/iteration from here

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
            **batch.worker_times(),
        }

        # 2. Prompt filter (PRIME): keep prompts whose K-sample accuracy lies in [low, high].
        slots = batch.field("prompt_index").reshape(-1, K)[:, 0]
        keep = slots
        if cfg.filter.enabled:
            kept = algo.filter_prompts(torch.from_numpy(outcome), K, cfg.filter.low, cfg.filter.high)
            keep = slots[kept.numpy()]
        metrics["rollout/kept"] = float(len(keep))
        metrics["rollout/kept_frac"] = len(keep) / len(slots)
        if len(keep) == 0:
            self.log(f"iteration {self.iteration + 1}: no prompt kept by the filter; no update this iteration")
            self._sample_ahead()
            return {**metrics, **timer.results()}
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

        # 6. New policy weights to the rollout workers (object store). Pipelined: the next batch goes
        # to them once the weights are in the store, and they load those after sampling it.
        with timer("sync"):
            self.learner_version = self.policy.push_weights(self.rollout, wait=not cfg.pipeline.off_policy_steps,
                                                            before_load=self._sample_ahead)

        return {**metrics, **timer.results()}

    def save_checkpoint(self) -> Path:
        """The learners, the loop's position and (pipelined) the batch sampled ahead: checkpoints.py."""
        if self._pending is not None and not isinstance(self._pending, Sampled):
            self._pending = self.rollout.collect(self._pending)
        path = save_checkpoint(self.run_dir, self.iteration, self._trainer_state, policy=self.policy, prm=self.prm, rollout=self.rollout,
                               pending=self._pending, keep_last=self.cfg.checkpoint.keep_last, log_fn=self.log)
        self._saved_at = self.iteration
        return path

    def _trainer_state(self) -> dict:
        return trainer_state(self.cfg, iteration=self.iteration, streams=(self.stream, self.curriculum_stream),
                             history=self.history, wall_s=self.wall_s(), policy_version=self.learner_version,
                             pending=self._pending is not None)

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
        cfg, memory = self.cfg, self.setup.memory
        self._t0 = time.time()
        setup_s = self._t0 - self._t_created  # checks, data, SFT, Ray, actors: until the base evaluation
        memory.start()
        try:
            if "base" not in self.history:
                base = self.history["base"] = self.evaluator.evaluate_all()
                self.metrics.log(self.iteration, base)
                self.log(format_base(base) + f" ({base['timing/eval']:.1f} s)")
            while self.iteration < cfg.iterations and not self.stop_requested:
                metrics = self.run_iteration()
                self.iteration += 1
                if cfg.eval.every and self.iteration % cfg.eval.every == 0 and self.iteration < cfg.iterations:
                    metrics.update(self.evaluator.evaluate_all())
                metrics["memory/rss_gib"] = memory.current_gib
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
            final = self.evaluator.evaluate_all() if self.iteration > 0 else self.history["base"]
            self.metrics.log(self.iteration, final)
            self.save_checkpoint()
            memory.sample(with_pss=True)  # PSS with every actor up (a short run's first came before they loaded)
            summary = run_summary(name=cfg.name, run_dir=self.run_dir, iterations=self.iteration, base=self.history["base"],
                                  final=final, records=self.metrics.read(), wall_s=self.wall_s(), setup_s=setup_s, memory=memory)
            atomic_write_json(self.run_dir / "summary.json", summary)
            return summary
        finally:
            # curves.png of every run (a stopped or failed one too), from metrics.jsonl.
            write_run_curves(self.metrics.read(), self.run_dir, f"{cfg.name}: {self.run_dir.name}", self.log)
            memory.stop()
            self.metrics.close()

    def shutdown(self, keep_rollout: bool = False) -> None:
        """Stop the actors (and a Ray this process started); keep_rollout: see RunSetup.shutdown."""
        self.setup.shutdown(keep_rollout)


def train(cfg: TrainConfig | None = None, *, resume: str | None = None, overrides=(), log_fn=print) -> dict:
    """Run a training run, or resume one (`resume`: its run folder, or one of its checkpoints),
    and return its summary."""
    cfg, run_dir, resume_from = run_target(cfg, resume, overrides)
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
