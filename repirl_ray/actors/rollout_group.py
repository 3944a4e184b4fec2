"""The rollout workers as one group, beside the learner groups (learner_group.py) and shaped like
them: actors created here with `ray.remote(RolloutWorker)` and the role's bundle (common.py), the
same readiness handshake (`wait_ready`, `pids`), and a local mode (`local=True`) that holds one
plain RolloutWorker in this process and calls it directly, so a unit test runs the group with a
fake engine and no Ray.

The group shards prompts across the workers, pushes weights to all of them, replaces a worker
that dies (its shard is generated again with the same seeds and the same weights version, so no
sample changes), and writes and reads a sampled batch as files (the pipelined loop's batch
sampled ahead, kept in a checkpoint).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError

from repirl_ray.actors.common import actor_bundle, actor_env, kill_all, log, idle_priority, pin_threads, wait_all, warn_missing_resources
from repirl_ray.batch import Rollouts, load_rollouts, save_rollouts
from repirl_ray.config import RolloutConfig, parse_cores
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.threads import RoleThreads
from repirl_ray.tasks.base import Problem
from repirl_ray.utils import atomic_write_json

# Per-row fields of a rollout worker's summary, with their dtypes.
ARRAY_FIELDS = {"outcome": np.float32, "format_ok": np.float32, "prompt_index": np.int64, "response_len": np.int32}


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
    demo shard (they go to the learners unopened; local mode: the shards themselves), and the
    small per-shard summaries the driver reads (outcomes per row, the policy version that sampled
    them)."""

    rollouts: list
    demos: list
    summaries: list[dict]

    def field(self, name: str) -> np.ndarray:
        return np.concatenate([s[name] for s in self.summaries])

    @property
    def version(self) -> int:
        return int(self.summaries[0]["policy_version"])

    def worker_times(self) -> dict[str, float]:
        """Where the rollout's time went, from the slowest worker: seconds in its engine, and in
        all (prompts, engine, verification, batching); timing/rollout minus these is Ray's part."""
        return {"rollout/engine_s": max(s["sample_s"] for s in self.summaries),
                "rollout/worker_s": max(s["total_s"] for s in self.summaries)}


@dataclass
class _Pending:
    """A batch submitted to the workers and not yet collected."""

    problems: list
    kwargs: dict
    version: int  # the weights the workers hold when they reach this batch
    shards: list[tuple[int, int]]
    refs: dict[int, tuple]  # shard -> (rollouts, demos, summary) refs (local mode: values)
    demo_problems: list | None = None  # whose demos fill each slot (None: the slot's own problem)


class RolloutGroup:
    """The rollout workers; see the module docstring.

    `submit` hands a batch to the workers and returns at once; `collect` waits for it. The serial
    loop calls both back to back (`generate`); the pipelined loop collects a batch, submits the
    next one and updates the learners while the workers sample it. A worker runs its calls in
    order, so a weight push made while it samples takes effect from its next batch on. In local
    mode `submit` samples before it returns."""

    def __init__(self, cfg: RolloutConfig, model_path: str, task_name: str, *, on_event=None, wait: bool = True,
                 local: bool = False, threads: RoleThreads | None = None, **worker_kwargs):
        """threads: each worker's thread budget (threads.py; run set-up resolves it). None: the
        section's num_threads as given, and Ray's default (one thread) for auto."""
        self.cfg = cfg
        self.model_path = model_path
        self.task_name = task_name
        self.local = local
        if threads is None and cfg.num_threads != "auto":
            threads = RoleThreads(cfg.num_threads, given=True)
        self.threads = threads
        self.worker_kwargs = worker_kwargs
        self.on_event = on_event or (lambda kind, info: log.warning("%s: %s", kind, info))
        # Pushed weights by version, for replacements: the newest, and the one an in-flight batch
        # was submitted with. None = the model folder's own weights.
        self.weights: dict[int, object] = {0: None}
        self.version = 0
        self._in_flight: dict[int, int] = {}  # id(pending) -> its version: submitted, not yet collected
        self.replacements = 0
        self._loading: list = []  # weight pushes not waited for (pipelined loop)
        if local:
            self.workers = [RolloutWorker(cfg, model_path, task_name, **worker_kwargs)]
        else:
            warn_missing_resources("rollout", cfg.resources)
            self.workers = [self._start(i) for i in range(cfg.num_workers)]
        if wait:
            self.wait_ready()

    # ------------------------------------------------------------------------------------------
    # The workers: started, called, waited for, replaced
    def _start(self, index: int):
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **(self.threads.env() if self.threads else {})}
        if self.cfg.num_gpus == 0:
            env["VLLM_CPU_OMP_THREADS_BIND"] = core_lists(self.cfg.num_workers, self.cfg.cores)[index] if self.cfg.bind_cores else "nobind"
        bundle = actor_bundle(self.cfg)
        actor = ray.remote(RolloutWorker).options(
            num_cpus=bundle.pop("CPU"),
            num_gpus=bundle.pop("GPU", 0),
            resources=bundle or None,
            runtime_env=actor_env(env),
        )
        worker = actor.remote(self.cfg, self.model_path, self.task_name, **self.worker_kwargs)
        if self.cfg.num_gpus == 0 and self.cfg.bind_cores and self.cfg.cores:
            # The in-process vLLM-CPU engine ignores VLLM_CPU_OMP_THREADS_BIND (only its
            # multiprocessing executor reads it): bind the worker here, as the learners are.
            cores = parse_cores(core_lists(self.cfg.num_workers, self.cfg.cores)[index])
            worker.__ray_call__.remote(lambda _, c=cores: pin_threads(c))
        if self.threads and self.threads.idle:
            worker.__ray_call__.remote(lambda _: idle_priority())
        return worker

    def _call(self, worker, method: str, *args, num_returns: int = 1, **kwargs):
        """worker.method(...): a Ray call that returns its ObjectRef(s) at once, or in local mode
        the call itself."""
        if self.local:
            return getattr(worker, method)(*args, **kwargs)
        fn = getattr(worker, method)
        return (fn.options(num_returns=num_returns) if num_returns != 1 else fn).remote(*args, **kwargs)

    def _get(self, refs):
        return refs if self.local else ray.get(refs)

    def pids(self) -> list[int]:
        """Process id of every worker (tests kill workers by it); also waits until all are up."""
        if self.local:
            return [os.getpid()]
        return wait_all([w.ping.remote() for w in self.workers])

    def wait_ready(self) -> None:
        """Wait until every worker has started (its engine loaded); a worker that failed to start
        raises here, without waiting for the others."""
        self.pids()

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

    # ------------------------------------------------------------------------------------------
    # Sampling
    def shards(self, n: int) -> list[tuple[int, int]]:
        bounds = np.linspace(0, n, len(self.workers) + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _submit_shard(self, pending: _Pending, j: int) -> None:
        a, b = pending.shards[j]
        demo_problems = pending.demo_problems[a:b] if pending.demo_problems is not None else None
        pending.refs[j] = tuple(self._call(self.workers[j], "generate", pending.problems[a:b], list(range(a, b)),
                                           **pending.kwargs, demo_problems=demo_problems, num_returns=3))

    def submit(self, problems: list[Problem], *, n: int, temperature: float, seed: int, with_demos: bool,
               demo_problems: list[Problem] | None = None) -> _Pending:
        """Hand n samples per problem to the workers; returns at once. Prompt slot i of this batch
        is prompt_index i in the rollouts. demo_problems: whose demos fill slot i (None = its own
        problem's; irl.demo_pairing)."""
        pending = _Pending(problems, dict(n=n, temperature=temperature, seed=seed, with_demos=with_demos),
                           self.version, self.shards(len(problems)), {}, demo_problems)
        self._in_flight[id(pending)] = pending.version
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
                    results[j] = (refs[0], refs[1], self._get(refs[2]))
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
        self._in_flight.pop(id(pending), None)
        self._release_weights()
        done = [results[j] for j in sorted(results)]
        return Sampled([r[0] for r in done], [r[1] for r in done], [r[2] for r in done])

    def generate(self, problems: list[Problem], *, n: int, temperature: float, seed: int, with_demos: bool) -> Sampled:
        """Sample n responses per problem across the workers and wait for them."""
        return self.collect(self.submit(problems, n=n, temperature=temperature, seed=seed, with_demos=with_demos))

    # ------------------------------------------------------------------------------------------
    # Weights
    def load_weights(self, weights_ref, version: int, *, wait: bool = True) -> None:
        """Push new weights to every worker (one object in the store, the same ref for all). With
        wait=False the push queues behind the batch a worker is sampling (pipelined loop)."""
        self._release_weights()  # the version the workers hold stays until they hold this one
        self.weights[version] = weights_ref
        self.version = version
        refs = [self._call(w, "load_weights", weights_ref, version) for w in self.workers]
        if not wait:
            self._loading = list(enumerate(refs))
            return
        for i, ref in enumerate(refs):
            try:
                self._get(ref)
            except RayActorError as err:
                self._replace(i, f"died while loading weights: {type(err).__name__}", version)
        self._release_weights()

    def _release_weights(self) -> None:
        """Forget pushed weights that no worker holds and no batch in flight was submitted with,
        so that the store keeps no more copies of the policy than a push needs: the workers'
        weights while the next push arrives (and, pipelined, the in-flight batch's). Keeping the
        one before as well held three copies during a push: at 123M they passed Ray's spilling
        threshold in a 1 GiB store, and Ray wrote them to disk at 100-400 MiB/s in every run."""
        keep = {0, self.version, *self._in_flight.values()}
        self.weights = {v: w for v, w in self.weights.items() if v in keep}

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
        ref = self.put(weight_buckets(load_file(weights), DTYPES[dtype]))
        self.model_path = model_path  # a replacement worker starts from it
        self.weights = {0: ref}
        self.version = 0
        for i, load in enumerate([self._call(w, "load_weights", ref, 0) for w in self.workers]):
            try:
                self._get(load)
            except RayActorError as err:
                self._replace(i, f"died while loading weights: {type(err).__name__}", 0)

    def _finish_loads(self) -> None:
        """Pushes made without waiting: read their results (a worker that died while loading is
        found again by the batch it was to sample next, and replaced there)."""
        loading, self._loading = self._loading, []
        for _, ref in loading:
            try:
                self._get(ref)
            except RayActorError:
                pass

    # ------------------------------------------------------------------------------------------
    # Batches in the object store and in files
    def put(self, batch):
        """A batch into the object store once, for several calls (local mode: the batch itself)."""
        return batch if self.local else ray.put(batch)

    def gather(self, parts: list) -> Rollouts:
        """The rollouts of the workers' shards (ObjectRefs, or values in local mode), merged here."""
        return Rollouts.gather(None, self._get(list(parts)))[0]

    def save_sampled(self, batch: Sampled, out_dir: Path) -> None:
        """A sampled batch as files: its rollout and demo shards merged, and its summary."""
        out_dir.mkdir(parents=True, exist_ok=True)
        rollouts, demos = Rollouts.gather(None, self._get(batch.rollouts) + self._get(batch.demos))
        save_rollouts(rollouts, out_dir / "rollouts.npz")
        if demos is not None:
            save_rollouts(demos, out_dir / "demos.npz")
        summary = {k: (np.concatenate([s[k] for s in batch.summaries]).tolist() if k in ARRAY_FIELDS else
                       [a for s in batch.summaries for a in s[k]] if k == "answers" else batch.summaries[0][k])
                   for k in batch.summaries[0]}
        atomic_write_json(out_dir / "summary.json", summary)

    def load_sampled(self, in_dir: Path) -> Sampled:
        """A batch written by save_sampled, its shards in the object store again (one of each)."""
        summary = json.loads((in_dir / "summary.json").read_text())
        for k, dtype in ARRAY_FIELDS.items():
            summary[k] = np.asarray(summary[k], dtype)
        demos = [self.put(load_rollouts(in_dir / "demos.npz"))] if (in_dir / "demos.npz").is_file() else [None]
        return Sampled([self.put(load_rollouts(in_dir / "rollouts.npz"))], demos, [summary])

    def shutdown(self) -> None:
        if self.local:
            return
        kill_all(self.workers)
