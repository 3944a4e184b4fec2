"""Learner groups: the policy learner and the PRM learner as N ranks each (DESIGN.md section 5).

A group is what the driver talks to: `update`, `score`, `weights`, `save`, `load`, as it talks to
the RolloutGroup (rollout_group.py, the same shape: bundles from common.py, `wait_ready`/`pids`,
a local mode). With Ray, the group creates one placement group of N bundles (STRICT_PACK on
one node by default, SPREAD by `<role>.placement`), one actor per bundle, and hands every rank
the address of rank 0 so the learners join one torch.distributed group (gloo on CPU, nccl on
GPU) and shard their model with FSDP2. Every learner method is collective: the group calls it on
every rank with the same arguments and reads rank 0's answer (arrays live on rank 0).

With `local=True` the group holds one learner in this process and calls it directly, as RLlib's
local learner does: unit tests run the driver's calls without actors.

A rank that dies leaves the others blocked in a collective: the group waits on all ranks at once,
and on the first failure kills the whole group and raises LearnerDied.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from repirl_ray.actors.common import actor_bundle, actor_env, kill_all, pin_threads, wait_all, warn_missing_resources
from repirl_ray.config import IRLConfig, PolicyConfig, PRMConfig, parse_cores
from repirl_ray.threads import RoleThreads
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner


class LearnerDied(RuntimeError):
    def __init__(self, role: str, cause: BaseException):
        super().__init__(f"a rank of the {role} learner died ({type(cause).__name__})")
        self.role = role


def _rank0_address(loopback: bool) -> tuple[str, int]:
    """An address and a free port on rank 0's node for torch.distributed's rendezvous: loopback
    when every rank is on this node (a packed group), else the node's IP."""
    host = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return host, port


def _resolve(parts):
    """A local learner is handed what the rollout workers returned: ObjectRefs are fetched."""
    return [ray.get(p) if isinstance(p, ray.ObjectRef) else p for p in parts]


class LearnerGroup:
    """N ranks of one learner class; see the module docstring."""

    def __init__(self, role: str, cls, cfg, args: tuple, kwargs: dict, *, local: bool = False,
                 threads: RoleThreads | None = None, ready_timeout_s: float = 600.0):
        """threads: each rank's thread budget (threads.py; run set-up resolves it). None: the
        section's num_threads as given, and Ray's default (one thread) for auto."""
        self.role = role
        self.cfg = cfg
        self.local = local
        self.pg = None
        self.world_size = 1 if local else cfg.num_workers
        if local:
            self.ranks = [cls(*args, **kwargs)]
            return
        warn_missing_resources(role, cfg.resources)
        bundle = actor_bundle(cfg)
        strategy = "STRICT_PACK" if cfg.placement == "pack" else "SPREAD"
        parent = ray.util.get_current_placement_group()
        if parent is not None:
            # Inside a placement group already (a `repirl sweep` trial reserves one bundle per actor
            # of its run): the ranks go into its bundles; a group of their own could never be placed.
            if self.world_size > 1 and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
                raise RuntimeError(
                    f"{role}.num_workers={self.world_size} inside a placement group (a sweep trial) on a cluster of "
                    f"several nodes: the ranks' rendezvous address cannot be known; run the learner on 1 rank there"
                )
            self.strategies = [PlacementGroupSchedulingStrategy(parent) for _ in range(self.world_size)]
            loopback = True
        else:
            self.pg = placement_group([dict(bundle) for _ in range(self.world_size)], strategy=strategy,
                                      name=f"repirl-{role}-{os.getpid()}-{time.time_ns()}")
            try:
                ray.get(self.pg.ready(), timeout=ready_timeout_s)
            except GetTimeoutError:
                remove_placement_group(self.pg)
                raise RuntimeError(
                    f"the {role} learner's {self.world_size} ranks ({bundle} each, {strategy}) could not be placed in "
                    f"{ready_timeout_s:.0f} s; check {role}.num_workers / num_cpus / num_gpus / resources against the cluster"
                ) from None
            self.strategies = [PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r)
                               for r in range(self.world_size)]
            loopback = strategy == "STRICT_PACK"
        dist_url = ""
        if threads is None and cfg.num_threads != "auto":
            threads = RoleThreads(cfg.num_threads, given=True)
        env = threads.env() if threads else {}
        if self.world_size > 1:
            ip, port = ray.get(ray.remote(_rank0_address).options(num_cpus=0, scheduling_strategy=self.strategies[0]).remote(loopback))
            dist_url = f"tcp://{ip}:{port}"
            if loopback and not cfg.num_gpus:
                env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pairs over loopback too, not the node's interface
        actor_cls = ray.remote(cls)
        self.ranks = [
            actor_cls.options(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                resources=dict(cfg.resources) or None,
                scheduling_strategy=self.strategies[r],
                runtime_env=actor_env(env),
            ).remote(*args, **kwargs, rank=r, world_size=self.world_size, dist_url=dist_url)
            for r in range(self.world_size)
        ]
        if cfg.cores:
            # Pinned like separate devices would be (e.g. samplers on one core, learners on another).
            cores = parse_cores(cfg.cores, f"{role}.cores")
            for a in self.ranks:
                a.__ray_call__.remote(lambda self, c=cores: pin_threads(c))

    # ------------------------------------------------------------------------------------------
    def _wait(self, refs: list) -> list:
        """ray.get of every rank's result, failing fast: a dead rank would leave the others blocked
        in a collective, so the first error kills the group."""
        try:
            return wait_all(refs)
        except RayActorError as err:
            self.shutdown()
            raise LearnerDied(self.role, err) from err

    def call(self, method: str, *args) -> object:
        """Run a collective method on every rank; rank 0's result."""
        if self.local:
            return getattr(self.ranks[0], method)(*_resolve(args))
        return self._wait([getattr(a, method).remote(*args) for a in self.ranks])[0]

    def call_two(self, method: str, *args) -> tuple:
        """A collective method with two results (a bulk one, left in the object store, and a small
        one read here): (rank 0's bulk ObjectRef, rank 0's small value)."""
        if self.local:
            return getattr(self.ranks[0], method)(*_resolve(args))
        pairs = [getattr(a, method).options(num_returns=2).remote(*args) for a in self.ranks]
        small = self._wait([p[1] for p in pairs])
        return pairs[0][0], small[0]

    # ------------------------------------------------------------------------------------------
    def save(self, out_dir: str) -> None:
        self.call("save", out_dir)

    def load(self, in_dir: str) -> None:
        self.call("load", in_dir)

    def parameters(self) -> dict:
        """Every trainable parameter as numpy (whole, from rank 0): for checks and tests."""
        return self.call("parameters_numpy")

    def pids(self) -> list[int]:
        """Process id of every rank (tests kill ranks by it); also waits until all are up."""
        if self.local:
            return [os.getpid()]
        return self._wait([a.ping.remote() for a in self.ranks])

    def wait_ready(self) -> None:
        """Wait until every rank has started (its model loaded); a rank that failed to start
        stops the group here. Without it, the group's first call waits."""
        self.pids()

    def shutdown(self) -> None:
        if self.local:
            return
        kill_all(self.ranks)
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None


class PolicyLearnerGroup(LearnerGroup):
    def __init__(self, cfg: PolicyConfig, model_path: str, *, local: bool = False, threads: RoleThreads | None = None,
                 **kwargs):
        super().__init__("policy", PolicyLearner, cfg, (cfg, model_path), kwargs, local=local, threads=threads)

    def update(self, keep_prompts, token_rewards, rollouts: list) -> dict:
        """Two-channel RLOO advantages and one PPO pass (ALGORITHM.md sections 3-4)."""
        return self.call("update", keep_prompts, token_rewards, *rollouts)

    def weights(self) -> tuple[object, int]:
        """(the weights for the rollout workers, as one ObjectRef, or the value in-process; version)."""
        return self.call_two("weights")

    def push_weights(self, rollout, *, wait: bool = True, before_load: Callable[[], None] | None = None) -> int:
        """The policy's weights to every rollout worker (one object in the store, the same ref for
        all); returns their version. The version is read first, so a dead policy learner stops
        the run here instead of looking like a failure of the rollout workers that wait for its
        weights. wait=False (pipelined loop): the push queues behind the batch being sampled.
        before_load: called once the weights are in the store, before the workers are told to load
        them (the pipelined loop hands them the next batch there: the learner's copy into the
        store then does not run beside their decoding, which streams the weights too)."""
        weights, version = self.weights()
        if before_load is not None:
            before_load()
        rollout.load_weights(weights, int(version), wait=wait)
        return int(version)


class PRMLearnerGroup(LearnerGroup):
    def __init__(self, cfg: PRMConfig, irl: IRLConfig, model_path: str, *, local: bool = False,
                 threads: RoleThreads | None = None, **kwargs):
        super().__init__("prm", PRMLearner, cfg, (cfg, irl, model_path), kwargs, local=local, threads=threads)

    def update(self, keep_prompts, rollouts: list, demos: list) -> dict:
        """One IRL step (ALGORITHM.md section 2) on P = demos + correct rollouts against N."""
        return self.call("update", keep_prompts, *rollouts, *demos)

    def score(self, keep_prompts, rollouts: list) -> tuple[object, dict]:
        """(token rewards [B, T] of the kept rollouts, as an ObjectRef for the policy learner, or
        the array in-process; scoring statistics such as the step AUROC)."""
        return self.call_two("score", keep_prompts, *rollouts)

    def score_fetched(self, keep_prompts, rollouts: list) -> tuple[object, dict]:
        """score, with the token rewards [B, T] read into this process (`repirl eval`, `bon`)."""
        rewards, stats = self.score(keep_prompts, rollouts)
        return (rewards if self.local else ray.get(rewards)), stats
