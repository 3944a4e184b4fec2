"""Thread budgets of the roles on CPU: how many torch/OpenMP threads each rollout worker, policy
rank, PRM rank and supervised rank runs, and whether its idle OpenMP threads spin or sleep.

Why (docs/speed.md, measured on 2 cores): OpenMP threads spin for a while after each parallel
region before they sleep. Where processes that run at the same time have more threads than
their cores, the spinning threads take the cores from the working ones: the pipelined loop's PRM
update ran 12x slower beside the sampling of the next batch. Where a role has its cores to
itself, spinning is what makes its many short parallel regions fast (passive waiting made the
serial iteration 1.27x slower). So each role gets the cores it runs on, divided among the
processes that run on them at the same time, and passive waiting only where those processes
together hold more threads than cores.

Which roles run at the same time: the rollout workers sample together, a learner group's ranks
update together; in the serial loop the phases take turns (sampling, PRM update, rescoring,
policy update), in the pipelined loop (pipeline.off_policy_steps > 0) the rollout workers sample
the next batch beside each learner phase. Two roles share cores unless both name disjoint
`cores`; a role without `cores` runs on all of the node's.

A role's num_threads given as a number is kept as given; "auto" is resolved here. An
OMP_WAIT_POLICY in the environment of the run is the user's, and is left to every role.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from repirl_ray.config import TrainConfig, has_prm_learner, parse_cores

PASSIVE = "PASSIVE"


@dataclass(frozen=True)
class RoleThreads:
    """One role's budget: threads of each of its processes, and OpenMP's wait policy there
    ("" = OpenMP's default: spin a while, then sleep)."""

    num_threads: int
    wait_policy: str = ""
    given: bool = False  # num_threads as the user gave it (not "auto")

    def env(self) -> dict[str, str]:
        """The environment of the role's actors: torch reads OMP_NUM_THREADS when it starts (vLLM-CPU
        replaces torch.set_num_threads in its worker with a no-op, so the environment is what
        reaches a rollout worker)."""
        env = {"OMP_NUM_THREADS": str(self.num_threads)}
        if self.wait_policy:
            env["OMP_WAIT_POLICY"] = self.wait_policy
        return env

    def describe(self) -> str:
        return f"{self.num_threads}" + ("" if self.given else " (auto)") + (" passive" if self.wait_policy else "")


def _cores(spec: str, node_cores: int, key: str) -> frozenset[int]:
    return frozenset(parse_cores(spec, key)) if spec else frozenset(range(node_cores))


def thread_budgets(cfg: TrainConfig, node_cores: int, *, pipelined: bool, environ: dict | None = None) -> dict[str, RoleThreads]:
    """The budget of each role of this run: {"rollout", "policy", ["prm"], "sft"} -> RoleThreads.

    node_cores: the CPUs of the node the roles share (Ray's count for it); pipelined: whether the
    rollout workers sample beside the learners (the pipelined loop). Each process of a role
    gets max(1, cores of the role // processes on those cores at the same time); e.g. on 2 cores
    with 2 rollout workers and 1 rank per learner: serial 1 thread per worker, 2 per learner;
    pipelined 1 each (2 workers + 1 learner rank on 2 cores), waiting passively (3 threads on 2
    cores)."""
    environ = os.environ if environ is None else environ
    roles = {"rollout": (cfg.rollout, cfg.rollout.num_workers), "policy": (cfg.policy, cfg.policy.num_workers)}
    if has_prm_learner(cfg):
        roles["prm"] = (cfg.prm, cfg.prm.num_workers)
    cores = {r: _cores(sec.cores, node_cores, f"{r}.cores") for r, (sec, _) in roles.items()}
    given = {r: sec.num_threads for r, (sec, _) in roles.items() if sec.num_threads != "auto"}

    def together(role: str) -> list[str]:
        """The roles whose processes run on this role's cores at the same time as it does."""
        if not pipelined:
            return [role]
        others = [r for r in roles if r != "rollout"] if role == "rollout" else ["rollout"]
        return [role] + [r for r in others if cores[r] & cores[role]]

    def share(role: str) -> int:
        # The learners take turns, so beside the rollout the larger learner group counts.
        overlapping = together(role)
        learners = [roles[r][1] for r in overlapping if r != "rollout"]
        processes = ("rollout" in overlapping) * roles["rollout"][1] + max(learners, default=0)
        return max(1, len(cores[role]) // processes)

    threads = {r: given.get(r, share(r)) for r in roles}
    out = {}
    for role in roles:
        overlapping = together(role)
        learners = [roles[r][1] * threads[r] for r in overlapping if r != "rollout"]
        busy = ("rollout" in overlapping) * roles["rollout"][1] * threads["rollout"] + max(learners, default=0)
        span = len(frozenset().union(*(cores[r] for r in overlapping)))
        if "OMP_WAIT_POLICY" in environ:
            wait = ""  # the user's, inherited by every actor
        else:
            wait = PASSIVE if len(overlapping) > 1 and busy > span else ""
        out[role] = RoleThreads(threads[role], wait, role in given)
    # The supervised stage runs alone, before the loop, on the policy learner's ranks.
    sft = cfg.sft.num_threads
    out["sft"] = RoleThreads(sft, "", True) if sft != "auto" else RoleThreads(max(1, node_cores // cfg.policy.num_workers))
    return out


def describe_budgets(budgets: dict[str, RoleThreads], node_cores: int, pipelined: bool) -> str:
    """The start-up line: threads per process of each role."""
    parts = ", ".join(f"{role} {b.describe()}" for role, b in budgets.items())
    return f"threads per process ({node_cores} cores, {'pipelined' if pipelined else 'serial'} loop): {parts}"
