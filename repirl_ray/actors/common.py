"""What the rollout group and the learner groups share: the bundle of resources one actor of a
role asks for (one builder, read by the groups, run_setup's feasibility check and sweep trials),
the environment of every actor, the warning for custom resources no node offers, and the
fail-fast wait for all of a group's actors.

Every actor gets an explicit fractional num_cpus: on a small machine an actor asking for a whole
CPU when none is free waits forever, silently.
"""

from __future__ import annotations

import logging
import os

import ray

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


# glibc gives a freed block of 32 MB or more back to the kernel at once (its mmap threshold), and
# the next allocation of that size takes a page fault for every 4 KiB of it. The actors allocate
# such blocks again and again: a rollout worker its packed lm_head at every weight push (50 MB at
# 125M parameters, 113 MB for SmolLM2-135M's vocabulary), a learner its activations and gradients
# at every step. These tunables, read by glibc when a process starts, keep a freed block below
# 256 MB in the process for the next allocation (docs/speed.md). Larger blocks (a real model's
# logits) still go back at free, and the top of the heap is trimmed past 256 MB: what an actor
# keeps beyond its live memory stays bounded.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def malloc_env() -> dict[str, str]:
    """glibc's malloc tunables for every actor: MALLOC_ENV, under any MALLOC_* of the user's own
    environment; with REPIRL_MALLOC_KEEP=0, glibc's defaults (and the user's MALLOC_* only)."""
    keep = os.environ.get("REPIRL_MALLOC_KEEP", "1")
    if keep not in ("0", "1"):
        raise ValueError(f"REPIRL_MALLOC_KEEP={keep!r}: use 1 (the default: actors keep freed memory for reuse) "
                         "or 0 (glibc's defaults)")
    own = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return {**(MALLOC_ENV if keep == "1" else {}), **own}


def actor_env(extra: dict[str, str] | None = None) -> dict:
    env = {**QUIET_ENV, **malloc_env()}
    for key in ("HF_HUB_OFFLINE", "HF_HOME", "REPIRL_CACHE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return {"env_vars": env}


def _each_thread(apply) -> None:
    """apply(tid) to every thread of this process; a thread that ended meanwhile is skipped."""
    for tid in os.listdir("/proc/self/task"):
        try:
            apply(int(tid))
        except OSError:
            pass


def pin_threads(cores: list[int]) -> None:
    """Bind every thread of this process (torch's and OpenMP's pools exist already; threads
    started later inherit it) to `cores`. Run in an actor through `__ray_call__`."""
    _each_thread(lambda tid: os.sched_setaffinity(tid, cores))


def idle_priority() -> None:
    """Run every thread of this process at idle priority (Linux SCHED_IDLE; each thread has its
    own policy, and threads started later inherit it): it gets a core only when no normal thread
    wants it, and gives it up as soon as one wakes. Run in an actor through `__ray_call__`."""
    if not hasattr(os, "SCHED_IDLE"):  # not Linux (macOS): the lowest nice value, for the process
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        return
    _each_thread(lambda tid: os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0)))


def actor_bundle(section) -> dict[str, float]:
    """The resources one actor of a role asks for, as a placement-group bundle: CPU, the role's
    custom resources, and GPU when it asks for any. section: the role's config (rollout, policy,
    prm: num_cpus, num_gpus, resources)."""
    out = {"CPU": float(section.num_cpus), **{k: float(v) for k, v in section.resources.items()}}
    if section.num_gpus:
        out["GPU"] = float(section.num_gpus)
    return out


def sum_bundles(bundles) -> dict[str, float]:
    """Resources of several bundles (or nodes) together, key by key, in the order they come."""
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


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


def wait_all(refs: list) -> list:
    """ray.get of every actor's result, failing fast: the first error is raised as soon as it
    comes back, not after the slowest actor has answered (a dead rank would leave the others of a
    collective blocked)."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(refs)


def kill_all(actors) -> None:
    """Stop a group's actors; one that is already dead must not keep the others alive."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:
            pass
