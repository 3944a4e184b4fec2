"""The driver: the interleaved dual loop of rePIRL (ALGORITHM.md section 5), one iteration at a
time, each phase numbered and timed.

The driver holds the prompt stream, the actors and the run folder. Trajectories, token rewards,
advantages and weights move between actors as ObjectRefs; the driver itself only reads small
summaries (outcomes per row, metrics).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

from repirl_ray import algo
from repirl_ray.actors.roles import (
    RolloutGroup,
    create_policy_learner,
    create_prm_learner,
)
from repirl_ray.batch import Rollouts, load_rollouts, save_rollouts
from repirl_ray.config import ConfigError, TrainConfig, load_config, needs_demos, save_config
from repirl_ray.data import PromptStream, limit_demos
from repirl_ray.evaluation import plot_run_curves
from repirl_ray.models.policy import check_model_path
from repirl_ray.metrics import MemoryMonitor, MetricsLogger, format_progress
from repirl_ray.tasks.base import load_problems
from repirl_ray.utils import atomic_write_json, atomic_write_text, publish_dir

log = logging.getLogger("repirl")

CHECKPOINTS = "checkpoints"
LATEST = "latest"


class LearnerFailure(RuntimeError):
    pass


@dataclasses.dataclass
class Paths:
    """Where the models and data of a run come from, after the built-in world's defaults."""

    policy: str
    prm: str
    ref: str
    train: str
    eval: str
    hard_eval: str


def resolve_paths(cfg: TrainConfig, log_fn=print) -> Paths:
    """Empty paths mean the built-in world's (built on first use). The config itself is not
    changed: the run folder records these beside it in paths.json."""
    needs_world = not cfg.model.policy_path or not cfg.data.train_path or not cfg.data.eval_path
    world = None
    if needs_world:
        if cfg.data.task != "arithmetic":
            raise ConfigError(
                f"config key 'data.task' is {cfg.data.task!r}: give model.policy_path, data.train_path and "
                "data.eval_path (the built-in world only provides the arithmetic task)"
            )
        from repirl_ray.world import ensure_world

        world = ensure_world(cfg.world, log=log_fn)
    policy = cfg.model.policy_path or str(world.base_policy)
    prm = cfg.model.prm_path or policy
    return Paths(
        policy=policy,
        prm=prm,
        ref=cfg.model.ref_path or policy,
        train=cfg.data.train_path or str(world.split(cfg.data.world_split)),
        eval=cfg.data.eval_path or str(world.eval),
        hard_eval=cfg.data.hard_eval_path or (str(world.hard_eval) if world else ""),
    )


def check_given_paths(cfg: TrainConfig) -> None:
    """Paths the user gave are checked before anything starts (Ray, the world, actors), so a
    typo costs a second, not a minute: missing model folders and data files, and bad rows."""
    for key in ("model.policy_path", "model.prm_path", "model.ref_path"):
        section, name = key.split(".")
        path = getattr(getattr(cfg, section), name)
        if path and not (key == "model.prm_path" and cfg.prm.kind == "none"):
            check_model_path(path, key)
    for key, require_demos in (("data.train_path", needs_demos(cfg)), ("data.eval_path", False), ("data.hard_eval_path", False)):
        path = getattr(cfg.data, key.split(".")[1])
        if path:
            load_problems(path, require_demos=require_demos, split_name=key)


def task_kwargs(cfg: TrainConfig) -> dict:
    """The task's own settings: the arithmetic verifier needs the world's modulus."""
    if cfg.data.task == "arithmetic":
        from repirl_ray.tasks.arithmetic import ArithmeticSpec

        w = cfg.world
        return {"spec": ArithmeticSpec(w.min_ops, w.max_ops, w.max_start, w.max_operand, w.modulus)}
    return {}


def init_ray(cfg, log_fn=print) -> bool:
    """Join a cluster (ray.address, or the RAY_ADDRESS a `ray job submit` sets), or start a
    private local Ray. Returns True when this process started Ray (and must stop it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        log_fn(f"joined the Ray cluster at {address}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
               f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs")
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus or None,
        object_store_memory=int(cfg.ray.object_store_gib * 2**30),
        include_dashboard=cfg.ray.include_dashboard,
        log_to_driver=True,
    )
    log_fn(f"started a local Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
    return True


class PhaseTimer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.times[f"timing/{phase}"] = self.times.get(f"timing/{phase}", 0.0) + time.perf_counter() - t0


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, log_fn=print):
        self.cfg = cfg
        self.run_dir = run_dir
        self.log = log_fn
        self.stop_requested = False
        self.iteration = 0
        self.history: dict = {}  # base-eval numbers and the like, kept in the checkpoint
        save_config(cfg, run_dir / "config.yaml")  # the resolved config, as this run uses it
        check_given_paths(cfg)
        self.paths = resolve_paths(cfg, log_fn)  # builds the world first when needed
        self.group_size = cfg.rollout.samples_per_prompt
        self.train_problems = load_problems(self.paths.train, require_demos=needs_demos(cfg), split_name="train")
        # >>> issue 10: data.max_demos_per_problem (the demos the IRL step and the supervised stage see)
        self.train_problems, dropped = limit_demos(self.train_problems, cfg.data.max_demos_per_problem)
        if dropped:
            log_fn(f"data.max_demos_per_problem={cfg.data.max_demos_per_problem}: left out {dropped} expert demos of the training problems")
        # <<< issue 10
        self.eval_problems = load_problems(self.paths.eval, require_demos=False, split_name="eval")[: cfg.eval.num_prompts]
        self.hard_problems = []
        if cfg.eval.hard and self.paths.hard_eval:
            self.hard_problems = load_problems(self.paths.hard_eval, require_demos=False, split_name="hard_eval")[: cfg.eval.num_prompts]
        if cfg.sft.steps > 0:
            self.paths.policy = self._supervised_stage()
        atomic_write_json(run_dir / "paths.json", dataclasses.asdict(self.paths))
        # Ray starts after the one-shot jobs above, which ran in a Ray of their own.
        self.started_ray = init_ray(cfg, log_fn)
        self.stream = PromptStream(self.train_problems, cfg.data.prompts_per_iteration, seed=cfg.seed, shuffle=cfg.data.shuffle)
        self.metrics = MetricsLogger(run_dir)
        self._prm_sets: dict = {}
        self.memory = MemoryMonitor(whole_node=not self.started_ray)
        self._create_actors()
        if resume:
            self._restore()

    def _supervised_stage(self) -> str:
        """Behaviour cloning on the training problems' expert demos (a Ray Train job); its result
        is the starting policy. A resumed run finds it already in the run folder."""
        from repirl_ray.actors.supervised import run_supervised_job
        from repirl_ray.tasks import build_task

        cfg = self.cfg
        out = self.run_dir / "sft_policy"
        if (out / "config.json").is_file():
            return str(out)
        task = build_task(cfg.data.task, **task_kwargs(cfg))
        pairs = [(task.format_prompt(p), demo) for p in self.train_problems for demo in p.demos]
        tmp = self.run_dir / ".tmp-sft_policy"
        job = {
            "init_dir": self.paths.policy, "out_dir": str(tmp), "pairs": pairs, "steps": cfg.sft.steps,
            "batch_size": cfg.sft.batch_size, "lr": cfg.sft.lr, "seed": cfg.seed, "threads": cfg.sft.num_threads,
            "chat_template": cfg.data.chat_template, "dtype": cfg.model.dtype, "label": "sft",
        }
        self.log(f"supervised stage: {cfg.sft.steps} steps x {cfg.sft.batch_size} on {len(pairs)} expert demos (Ray Train job)")
        metrics = run_supervised_job(job, self.run_dir, name="sft", num_cpus=cfg.sft.num_cpus)
        publish_dir(tmp, out)
        self.history["sft"] = metrics
        self.log(f"supervised stage done: loss {metrics.get('loss', float('nan')):.3f}, {metrics.get('wall_s', 0):.0f} s -> {out}")
        return str(out)

    # ------------------------------------------------------------------------------------------
    def _create_actors(self) -> None:
        cfg, paths = self.cfg, self.paths
        t0 = time.time()
        common = dict(dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
        self.rollout = RolloutGroup(
            cfg.rollout, paths.policy, cfg.data.task,
            on_event=self._event, seed=cfg.seed, chat_template=cfg.data.chat_template,
            max_prompt_tokens=cfg.data.max_prompt_tokens, task_kwargs=task_kwargs(cfg), **common,
        )
        self.policy = create_policy_learner(
            cfg.policy, paths.policy, advantage=cfg.advantage, group_size=self.group_size,
            temperature=cfg.rollout.temperature, seed=cfg.seed, ref_path=paths.ref, **common,
        )
        self.prm = None
        if cfg.prm.kind != "none":
            self.prm = create_prm_learner(cfg.prm, cfg.irl, paths.prm, ref_path=paths.ref, seed=cfg.seed, **common)
        self._call_learners([a.ping.remote() for a in self._learners()])
        self.log(f"actors ready in {time.time() - t0:.1f} s: {cfg.rollout.num_workers} rollout workers (vLLM), "
                 f"policy learner" + (f", PRM learner ({cfg.prm.kind})" if self.prm else ""))

    def _learners(self) -> list:
        return [a for a in (self.policy, self.prm) if a is not None]

    def _call_learners(self, refs):
        """ray.get for learner calls: a dead learner stops the run with a clear message."""
        try:
            return ray.get(refs)
        except RayActorError as err:
            raise LearnerFailure(
                f"a learner actor died ({type(err).__name__}); the run stops here. The last checkpoint in "
                f"{self.run_dir / CHECKPOINTS} is intact: continue with `repirl train --resume {self.run_dir}`"
            ) from err

    def _event(self, kind: str, info: dict) -> None:
        self.log(f"event: {kind} {info}")
        self.metrics.event(self.iteration, kind, info)

    def _push_weights(self) -> None:
        """Policy weights to every rollout worker: one object in the store, the same ref for all.
        The version is read first, so a dead policy learner stops the run here instead of
        looking like a failure of the rollout workers that wait for its weights."""
        blob, version = self.policy.weights.options(num_returns=2).remote()
        version = self._call_learners(version)
        self.rollout.load_weights(blob, int(version))

    # ------------------------------------------------------------------------------------------
    def run_iteration(self) -> dict:
        """One iteration of ALGORITHM.md section 5."""
        cfg, K = self.cfg, self.group_size
        timer = PhaseTimer()
        t_start = time.perf_counter()
        problems, _ = self.stream.next_batch()
        seed = cfg.seed * 100_003 + self.iteration

        # 1. Sample K responses per prompt with the current policy (vLLM), verified by the task.
        with timer("rollout"):
            rollouts, demos, summaries = self.rollout.generate(problems, n=K, temperature=cfg.rollout.temperature, seed=seed, with_demos=self.prm is not None)
        outcome = np.concatenate([s["outcome"] for s in summaries])
        prompt_index = np.concatenate([s["prompt_index"] for s in summaries])
        metrics = {
            "rollout/accuracy": float(outcome.mean()),
            "rollout/format_ok": float(np.concatenate([s["format_ok"] for s in summaries]).mean()),
            "rollout/response_len": float(np.concatenate([s["response_len"] for s in summaries]).mean()),
            "rollout/policy_version": float(summaries[0]["policy_version"]),
        }

        # 2. Prompt filter (PRIME): keep prompts whose K-sample accuracy lies in [low, high].
        slots = prompt_index.reshape(-1, K)[:, 0]
        keep = slots
        if cfg.filter.enabled:
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
                metrics.update(self._call_learners(self.prm.update.remote(keep, *rollouts, *demos)))

        # 4. Rescore every kept rollout with the updated PRM (token rewards stay in the object store).
        token_rewards = None
        if self.prm is not None and cfg.advantage.c_process != 0:
            with timer("score"):
                token_rewards, score_stats = self.prm.score.options(num_returns=2).remote(keep, *rollouts)
                metrics.update(self._call_learners(score_stats))

        # 5. Policy update: two-channel RLOO advantages, then PPO-clip with the entropy bonus.
        with timer("policy"):
            metrics.update(self._call_learners(self.policy.update.remote(keep, token_rewards, *rollouts)))

        if self.prm is not None and cfg.prm.update == "after":
            with timer("prm"):
                metrics.update(self._call_learners(self.prm.update.remote(keep, *rollouts, *demos)))

        # 6. New policy weights to the rollout workers (object store), before the next sampling.
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
        rollouts, _, summaries = self.rollout.generate(
            problems, n=cfg.eval.samples_per_prompt, temperature=cfg.rollout.temperature, seed=10_007 + cfg.seed, with_demos=False
        )
        out[f"{tag}/accuracy"] = float(np.concatenate([s["outcome"] for s in summaries]).mean())
        if cfg.eval.greedy:
            _, _, greedy = self.rollout.generate(problems, n=1, temperature=0.0, seed=0, with_demos=False)
            out[f"{tag}/greedy_accuracy"] = float(np.concatenate([s["outcome"] for s in greedy]).mean())
        if self.prm is not None:
            fixed = self._prm_eval_set(tag, rollouts)
            for suffix, parts in (("", [fixed]), ("_onpolicy", rollouts)):
                _, stats = self.prm.score.options(num_returns=2).remote(None, *parts)
                stats = self._call_learners(stats)
                for key in ("step_auroc", "first_error_acc"):
                    if f"prm/{key}" in stats:
                        out[f"{tag}/{key}{suffix}"] = stats[f"prm/{key}"]
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
        return self._prm_sets[tag]

    def _evaluate_all(self) -> dict:
        out = self.evaluate(self.eval_problems, "eval")
        if self.hard_problems:
            out.update(self.evaluate(self.hard_problems, "eval_hard"))
        return out

    # ------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """policy/ and prm/ in HF format with optimizer and RNG states, trainer_state.json; written
        under a temporary name and renamed, then `latest` is switched atomically."""
        ckpt_root = self.run_dir / CHECKPOINTS
        name = f"iter_{self.iteration:06d}"
        tmp = ckpt_root / f".tmp-{name}"
        tmp.mkdir(parents=True, exist_ok=True)
        refs = [self.policy.save.remote(str(tmp / "policy"))]
        if self.prm is not None:
            refs.append(self.prm.save.remote(str(tmp / "prm")))
        try:
            self._call_learners(refs)
        except BaseException:
            # A half-written checkpoint is never published; remove it so only complete ones remain.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        state = {
            "iteration": self.iteration,
            "data": self.stream.state(),
            "history": self.history,
            "wall_s": self.wall_s(),
            "policy_version": self.rollout.version,
        }
        atomic_write_json(tmp / "trainer_state.json", state)
        publish_dir(tmp, ckpt_root / name)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
        kept = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir())
        for old in kept[: max(0, len(kept) - self.cfg.checkpoint.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        self.log(f"checkpoint: {ckpt_root / name}")
        return ckpt_root / name

    def _restore(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume {self.run_dir}: no checkpoint in {self.run_dir / CHECKPOINTS}")
        state = json.loads((ckpt / "trainer_state.json").read_text())
        refs = [self.policy.load.remote(str(ckpt / "policy"))]
        if self.prm is not None:
            refs.append(self.prm.load.remote(str(ckpt / "prm")))
        self._call_learners(refs)
        self.iteration = int(state["iteration"])
        self.stream.load_state(state["data"])
        self.history = state["history"]
        self._wall_offset = float(state["wall_s"])
        self._push_weights()
        self.metrics.truncate_after(self.iteration)
        self.log(f"resumed from {ckpt} at iteration {self.iteration}")

    # ------------------------------------------------------------------------------------------
    _wall_offset = 0.0

    def wall_s(self) -> float:
        return self._wall_offset + time.time() - self._t0

    def request_stop(self, signum=None, frame=None) -> None:
        if not self.stop_requested:
            self.log(f"stop requested (signal {signum}): finishing this iteration, then checkpoint and exit")
        self.stop_requested = True

    def train(self) -> dict:
        cfg = self.cfg
        self._t0 = time.time()
        self.memory.start()
        try:
            if "base" not in self.history:
                base = self._evaluate_all()
                self.history["base"] = base
                self.metrics.log(self.iteration, base)
                self.log(format_base(base))
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
            # >>> issue 10: curves.png of every run (a stopped or failed one too), from metrics.jsonl
            try:
                plot_run_curves(self.metrics.read(), self.run_dir / "curves.png", title=f"{cfg.name}: {self.run_dir.name}")
            except Exception as err:  # noqa: BLE001 - a plot must never cost the run its result or hide its error
                self.log(f"warning: curves.png not written ({type(err).__name__}: {err})")
            # <<< issue 10
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
            "base_step_auroc": base.get("eval/step_auroc"),
            "first_error_acc": final.get("eval/first_error_acc"),
            "step_auroc_onpolicy": final.get("eval/step_auroc_onpolicy"),
            "step_auroc_set": "the base policy's samples of the eval prompts (fixed for the run)",
            "wall_s": round(self.wall_s(), 1),
            "peak_rss_gib": round(self.memory.peak_gib, 3),
            "peak_pss_gib": round(self.memory.peak_pss_gib, 3),
            "mean_phase_s": phases,
            "eval_prompts": len(self.eval_problems),
            "eval_samples_per_prompt": self.cfg.eval.samples_per_prompt,
            "machine": machine_info(),
        }
        for key, value in final.items():
            if key.startswith("eval_hard/"):
                out["final_hard_" + key.split("/")[1]] = value
        for key, value in base.items():
            if key.startswith("eval_hard/"):
                out["base_hard_" + key.split("/")[1]] = value
        return out

    def shutdown(self) -> None:
        self.rollout.shutdown()
        for a in self._learners():
            try:
                ray.kill(a)
            except Exception:
                pass
        if self.started_ray:
            ray.shutdown()


def format_base(m: dict) -> str:
    parts = [f"base policy: accuracy {m['eval/accuracy']:.3f} (sampled)"]
    if "eval/greedy_accuracy" in m:
        parts.append(f"greedy {m['eval/greedy_accuracy']:.3f}")
    if "eval/step_auroc" in m:
        parts.append(f"initial PRM step AUROC {m['eval/step_auroc']:.3f}")
    return ", ".join(parts)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return path if path.is_dir() else None


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def new_run_dir(cfg: TrainConfig) -> Path:
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        if (path / CHECKPOINTS).exists():
            raise FileExistsError(
                f"run_dir {path} already holds a run; continue it with `repirl train --resume {path}` "
                "or choose another run_dir"
            )
    else:
        path = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: TrainConfig | None = None, *, resume_dir: str | None = None, overrides=(), log_fn=print) -> dict:
    """Run (or resume) a training run and return its summary."""
    if resume_dir:
        run_dir = Path(resume_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a run folder?")
        cfg = load_config(str(run_dir / "config.yaml"), overrides)
    else:
        cfg = cfg or load_config(None, overrides)
        run_dir = new_run_dir(cfg)
    log_fn(f"run folder: {run_dir}")
    trainer = Trainer(cfg, run_dir, resume=bool(resume_dir), log_fn=log_fn)
    previous = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, trainer.request_stop)
    try:
        summary = trainer.train()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        trainer.shutdown()
    return summary
