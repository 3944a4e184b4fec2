"""The rollout workers as Ray actors (the RolloutGroup), and what every role's actors share:
their environment and the check for custom resources no node offers. The learner groups are in
learner_group.py.

The plain classes (RolloutWorker, PolicyLearner, PRMLearner) carry no Ray decorator: `ray.remote`
is applied where they are created, so the same classes run in-process in tests. Every actor gets
an explicit fractional num_cpus: on a small machine an actor asking for a whole CPU when none is
free waits forever, silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import RayActorError

from repirl_ray.config import RolloutConfig, parse_cores
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


def actor_env(extra: dict[str, str] | None = None) -> dict:
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


def core_lists(num_workers: int, spec: str = "") -> list[str]:
    """CPU cores of each rollout worker's vLLM threads (from `spec`, else all of this machine's):
    disjoint while there are enough cores."""
    if spec:
        cores = parse_cores(spec)
    else:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if num_workers >= len(cores):
        return [str(cores[i % len(cores)]) for i in range(num_workers)]
    per = len(cores) // num_workers
    return [",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(num_workers)]


@dataclass
class Sampled:
    """One batch sampled across the rollout workers: ObjectRefs of each worker's rollout shard and
    demo shard (they go to the learners unopened), and the small per-shard summaries the driver
    reads (outcomes per row, the policy version that sampled them)."""

    rollouts: list
    demos: list
    summaries: list[dict]

    def field(self, name: str) -> np.ndarray:
        return np.concatenate([s[name] for s in self.summaries])

    @property
    def version(self) -> int:
        return int(self.summaries[0]["policy_version"])


@dataclass
class _Pending:
    """A batch submitted to the workers and not yet collected."""

    problems: list
    kwargs: dict
    version: int  # the weights the workers hold when they reach this batch
    shards: list[tuple[int, int]]
    refs: dict[int, tuple]  # shard -> (rollouts, demos, summary) refs
    demo_problems: list | None = None  # whose demos fill each slot (None: the slot's own problem)


class RolloutGroup:
    """The rollout workers: shards prompts across them, pushes weights to all of them, and
    replaces a worker that dies (its shard is generated again with the same seeds and the same
    weights version, so no sample changes).

    `submit` hands a batch to the workers and returns at once; `collect` waits for it. The serial
    loop calls both back to back (`generate`); the pipelined loop collects a batch, submits the
    next one and updates the learners while the workers sample it. A worker runs its calls in
    order, so a weight push made while it samples takes effect from its next batch on."""

    def __init__(self, cfg: RolloutConfig, model_path: str, task_name: str, *, on_event=None, wait: bool = True,
                 **worker_kwargs):
        self.cfg = cfg
        self.model_path = model_path
        self.task_name = task_name
        self.worker_kwargs = worker_kwargs
        self.on_event = on_event or (lambda kind, info: log.warning("%s: %s", kind, info))
        # Pushed weights by version, for replacements: the newest, and the one an in-flight batch
        # was submitted with. None = the model folder's own weights.
        self.weights: dict[int, object] = {0: None}
        self.version = 0
        self.replacements = 0
        self._loading: list = []  # weight pushes not waited for (pipelined loop)
        warn_missing_resources("rollout", cfg.resources)
        self.workers = [self._start(i) for i in range(cfg.num_workers)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        ray.get([w.ping.remote() for w in self.workers])

    def _start(self, index: int):
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if self.cfg.num_gpus == 0:
            env["VLLM_CPU_OMP_THREADS_BIND"] = core_lists(self.cfg.num_workers, self.cfg.cores)[index] if self.cfg.bind_cores else "nobind"
        actor = ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.num_cpus,
            num_gpus=self.cfg.num_gpus,
            resources=dict(self.cfg.resources) or None,
            runtime_env=actor_env(env),
        )
        return actor.remote(self.cfg, self.model_path, self.task_name, **self.worker_kwargs)

    def _replace(self, index: int, reason: str, version: int) -> None:
        """A new worker in place of a dead one, holding the weights of `version`."""
        self.replacements += 1
        self.on_event("rollout_worker_replaced", {"worker": index, "reason": reason})
        try:
            ray.kill(self.workers[index])
        except Exception:
            pass
        self.workers[index] = self._start(index)
        ray.get(self.workers[index].ping.remote())
        if self.weights.get(version) is not None:
            ray.get(self.workers[index].load_weights.remote(self.weights[version], version))

    def shards(self, n: int) -> list[tuple[int, int]]:
        bounds = np.linspace(0, n, len(self.workers) + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _submit_shard(self, pending: _Pending, j: int) -> None:
        a, b = pending.shards[j]
        demo_problems = pending.demo_problems[a:b] if pending.demo_problems is not None else None
        pending.refs[j] = tuple(self.workers[j].generate.options(num_returns=3).remote(
            pending.problems[a:b], list(range(a, b)), **pending.kwargs, demo_problems=demo_problems
        ))

    def submit(self, problems: list[Problem], *, n: int, temperature: float, seed: int, with_demos: bool,
               demo_problems: list[Problem] | None = None) -> _Pending:
        """Hand n samples per problem to the workers; returns at once. Prompt slot i of this batch
        is prompt_index i in the rollouts. demo_problems: whose demos fill slot i (None = its own
        problem's; irl.demo_pairing)."""
        pending = _Pending(problems, dict(n=n, temperature=temperature, seed=seed, with_demos=with_demos),
                           self.version, self.shards(len(problems)), {}, demo_problems)
        for j, (a, b) in enumerate(pending.shards):
            if a < b:
                self._submit_shard(pending, j)
        return pending

    def collect(self, pending: _Pending, max_attempts: int = 3) -> Sampled:
        """Wait for a submitted batch. A worker that died is replaced with the weights the batch
        was submitted with, its shard generated again, and then it gets the newest weights."""
        self._finish_loads()
        results: dict[int, tuple] = {}
        attempts = {j: 1 for j in pending.refs}
        todo = sorted(pending.refs)
        while todo:
            retry = []
            for j in todo:
                refs = pending.refs[j]
                try:
                    results[j] = (refs[0], refs[1], ray.get(refs[2]))
                except RayActorError as err:
                    if attempts[j] >= max_attempts:
                        raise
                    attempts[j] += 1
                    self._replace(j, f"died while generating shard {pending.shards[j]}: {type(err).__name__}", pending.version)
                    self._submit_shard(pending, j)
                    if self.version != pending.version and self.weights.get(self.version) is not None:
                        self.workers[j].load_weights.remote(self.weights[self.version], self.version)
                    retry.append(j)
            todo = retry
        done = [results[j] for j in sorted(results)]
        return Sampled([r[0] for r in done], [r[1] for r in done], [r[2] for r in done])

    def generate(self, problems: list[Problem], *, n: int, temperature: float, seed: int, with_demos: bool) -> Sampled:
        """Sample n responses per problem across the workers and wait for them."""
        return self.collect(self.submit(problems, n=n, temperature=temperature, seed=seed, with_demos=with_demos))

    def load_weights(self, weights_ref, version: int, *, wait: bool = True) -> None:
        """Push new weights to every worker (one object in the store, the same ref for all). With
        wait=False the push queues behind the batch a worker is sampling (pipelined loop)."""
        self.weights = {v: w for v, w in self.weights.items() if v >= self.version or v == 0}
        self.weights[version] = weights_ref
        self.version = version
        refs = [w.load_weights.remote(weights_ref, version) for w in self.workers]
        if not wait:
            self._loading = list(enumerate(refs))
            return
        for i, ref in enumerate(refs):
            try:
                ray.get(ref)
            except RayActorError as err:
                self._replace(i, f"died while loading weights: {type(err).__name__}", version)

    def reset(self, model_path: str, dtype: str) -> None:
        """Start again from the weights of `model_path` (an HF folder of the engines' architecture)
        as version 0: another run on the same engines (benchmarks/claims.py reuses them across
        runs). Samples do not depend on what an engine sampled before: seeds are per request, and
        loading weights resets the prefix cache."""
        from safetensors.torch import load_file

        from repirl_ray.models.policy import DTYPES
        from repirl_ray.models.weights import weight_buckets

        weights = os.path.join(model_path, "model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{weights} not found: reusing rollout engines needs a single-file HF checkpoint")
        self._finish_loads()
        ref = ray.put(weight_buckets(load_file(weights), DTYPES[dtype]))
        self.model_path = model_path  # a replacement worker starts from it
        self.weights = {0: ref}
        self.version = 0
        for i, load in enumerate([w.load_weights.remote(ref, 0) for w in self.workers]):
            try:
                ray.get(load)
            except RayActorError as err:
                self._replace(i, f"died while loading weights: {type(err).__name__}", 0)

    def _finish_loads(self) -> None:
        """Pushes made without waiting: read their results (a worker that died while loading is
        found again by the batch it was to sample next, and replaced there)."""
        loading, self._loading = self._loading, []
        for _, ref in loading:
            try:
                ray.get(ref)
            except RayActorError:
                pass

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass
