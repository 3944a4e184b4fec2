"""Ray wrappers of the plain classes, created with the resources their config section asks for.

The classes (PolicyLearner, PRMLearner, RolloutWorker) carry no Ray decorator: `ray.remote` is
applied here, where they are created, so the same classes run in-process in tests. Every actor
gets an explicit fractional num_cpus: on a small machine an actor asking for a whole CPU when none
is free waits forever, silently.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import ray
from ray.exceptions import RayActorError

from repirl_ray.config import IRLConfig, PolicyConfig, PRMConfig, RolloutConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.tasks.base import Problem

log = logging.getLogger("repirl")

# Quiet libraries in every actor: the driver prints one line per iteration.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
}


def _env(extra: dict[str, str] | None = None) -> dict:
    env = dict(QUIET_ENV)
    for key in ("HF_HUB_OFFLINE", "HF_HOME", "REPIRL_CACHE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return {"env_vars": env}


def warn_missing_resources(role: str, resources: dict) -> None:
    """An actor that asks for a custom resource no node offers waits silently; say so."""
    if not resources:
        return
    available = ray.cluster_resources()
    missing = [k for k in resources if k not in available]
    if missing:
        log.warning(
            "%s asks for resources %s that no node of this cluster offers yet: it will wait until an "
            "autoscaler adds such a node (remove %s.resources.* on a cluster without them)", role, missing, role
        )


def create_policy_learner(cfg: PolicyConfig, model_path: str, **kwargs):
    warn_missing_resources("policy", cfg.resources)
    actor = ray.remote(PolicyLearner).options(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        resources=dict(cfg.resources) or None,
        runtime_env=_env({"OMP_NUM_THREADS": str(cfg.num_threads)}),
    )
    return actor.remote(cfg, model_path, **kwargs)


def create_prm_learner(cfg: PRMConfig, irl: IRLConfig, model_path: str, **kwargs):
    warn_missing_resources("prm", cfg.resources)
    actor = ray.remote(PRMLearner).options(
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        resources=dict(cfg.resources) or None,
        runtime_env=_env({"OMP_NUM_THREADS": str(cfg.num_threads)}),
    )
    return actor.remote(cfg, irl, model_path, **kwargs)


def _core_lists(num_workers: int) -> list[str]:
    """CPU cores of each rollout worker's vLLM threads: disjoint while there are enough cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if num_workers >= len(cores):
        return [str(cores[i % len(cores)]) for i in range(num_workers)]
    per = len(cores) // num_workers
    return [",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(num_workers)]


class RolloutGroup:
    """The rollout workers: shards prompts across them, pushes weights to all of them, and
    replaces a worker that dies (its shard is generated again with the same seeds)."""

    def __init__(self, cfg: RolloutConfig, model_path: str, task_name: str, *, on_event=None, **worker_kwargs):
        self.cfg = cfg
        self.model_path = model_path
        self.task_name = task_name
        self.worker_kwargs = worker_kwargs
        self.on_event = on_event or (lambda kind, info: log.warning("%s: %s", kind, info))
        self.weights_ref = None  # the last pushed weights, for replacements
        self.version = 0
        self.replacements = 0
        warn_missing_resources("rollout", cfg.resources)
        self.workers = [self._start(i) for i in range(cfg.num_workers)]
        ray.get([w.ping.remote() for w in self.workers])

    def _start(self, index: int):
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if self.cfg.num_gpus == 0:
            env["VLLM_CPU_OMP_THREADS_BIND"] = _core_lists(self.cfg.num_workers)[index] if self.cfg.bind_cores else "nobind"
        actor = ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.num_cpus,
            num_gpus=self.cfg.num_gpus,
            resources=dict(self.cfg.resources) or None,
            runtime_env=_env(env),
        )
        return actor.remote(self.cfg, self.model_path, self.task_name, **self.worker_kwargs)

    def _replace(self, index: int, reason: str) -> None:
        self.replacements += 1
        self.on_event("rollout_worker_replaced", {"worker": index, "reason": reason})
        try:
            ray.kill(self.workers[index])
        except Exception:
            pass
        self.workers[index] = self._start(index)
        ray.get(self.workers[index].ping.remote())
        if self.weights_ref is not None:
            ray.get(self.workers[index].load_weights.remote(self.weights_ref, self.version))

    def shards(self, n: int) -> list[tuple[int, int]]:
        bounds = np.linspace(0, n, len(self.workers) + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def generate(
        self,
        problems: list[Problem],
        *,
        n: int,
        temperature: float,
        seed: int,
        with_demos: bool,
        max_attempts: int = 3,
    ) -> tuple[list, list, list[dict]]:
        """Sample n responses per problem across the workers. Prompt slot i of this batch is
        prompt_index i in the rollouts. Returns (rollout refs, demo refs, summaries)."""
        shards = [s for s in self.shards(len(problems))]
        results: list = [None] * len(shards)
        pending = list(range(len(shards)))
        attempts = 0
        while pending:
            attempts += 1
            submitted = {}
            for j in pending:
                a, b = shards[j]
                if a == b:
                    results[j] = (None, None, None)
                    continue
                refs = self.workers[j].generate.options(num_returns=3).remote(
                    problems[a:b], list(range(a, b)), n=n, temperature=temperature, seed=seed, with_demos=with_demos
                )
                submitted[j] = refs
            pending = []
            for j, refs in submitted.items():
                try:
                    summary = ray.get(refs[2])
                    results[j] = (refs[0], refs[1], summary)
                except RayActorError as err:
                    if attempts >= max_attempts:
                        raise
                    self._replace(j, f"died while generating shard {shards[j]}: {type(err).__name__}")
                    pending.append(j)
        rollouts = [r[0] for r in results if r[2] is not None]
        demos = [r[1] for r in results if r[2] is not None]
        summaries = [r[2] for r in results if r[2] is not None]
        return rollouts, demos, summaries

    def load_weights(self, weights_ref, version: int) -> None:
        self.weights_ref = weights_ref
        self.version = version
        refs = [w.load_weights.remote(weights_ref, version) for w in self.workers]
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except RayActorError as err:
                self._replace(i, f"died while loading weights: {type(err).__name__}")

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass


def wait_ready(*actors, timeout_s: float = 600) -> None:
    t0 = time.time()
    ray.get([a.ping.remote() for a in actors], timeout=timeout_s)
    log.info("actors ready in %.1f s", time.time() - t0)
