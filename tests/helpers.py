"""Helpers shared by the tests: a hand-made batch of rollouts for the learners' unit tests; a run
folder's records and events, a background killer, and the check that a resumed run equals an
uninterrupted one for the integration tests; the page faults of a block allocated again (the
actors' malloc tunables)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from repirl_ray.batch import build_rollouts

# Samples per prompt of make_rollouts' batches.
K = 4


def make_rollouts(num_prompts=2, seed=0, is_demo=False, version=0, max_len=7, logp_range=(0.1, 2.0), k=K):
    """K rollouts per prompt with outcomes 1,0,1,0 (each prompt has P and N), random tokens and
    sampling log-probs of policy `version`; or one expert demo per prompt."""
    rng = np.random.default_rng(seed)
    prompts, responses, logps, pidx, sidx, outcome = [], [], [], [], [], []
    per = 1 if is_demo else k
    for p in range(num_prompts):
        prompt = [1] + list(rng.integers(3, 20, size=3 + p))
        for k in range(per):
            length = int(rng.integers(3, max_len))
            responses.append(list(rng.integers(3, 20, size=length - 1)) + [2])
            logps.append(list(-rng.uniform(*logp_range, size=length)))
            prompts.append(prompt)
            pidx.append(p)
            sidx.append(k)
            outcome.append(1.0 if (is_demo or k % 2 == 0) else 0.0)
    n = len(prompts)
    return build_rollouts(
        prompts, responses, None if is_demo else logps, prompt_index=pidx, sample_index=sidx, outcome=outcome,
        format_ok=[1.0] * n, is_demo=is_demo, policy_version=-1 if is_demo else version, step_ids=None,
        first_wrong=[-2] * n, pad_id=0,
    )


# What must come out the same, iteration by iteration, when a run is resumed from a checkpoint.
RESUME_KEYS = ["rollout/accuracy", "rollout/response_len", "prm/loss", "prm/ess", "policy/loss", "policy/entropy",
               "policy/approx_kl"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(run_dir: Path) -> list[dict]:
    """Every record of the run's metrics.jsonl (evaluations included)."""
    return _jsonl(Path(run_dir) / "metrics.jsonl")


def train_records(run_dir: Path) -> list[dict]:
    """The training iterations' records (an evaluation-only record has no rollout/accuracy)."""
    return [r for r in records(run_dir) if "rollout/accuracy" in r]


def events(run_dir: Path) -> list[dict]:
    return _jsonl(Path(run_dir) / "events.jsonl")


def logged(run_dir: Path, iteration: int) -> bool:
    """Whether the run has logged training iteration `iteration` (1-based) or a later one."""
    return (Path(run_dir) / "metrics.jsonl").is_file() and any(r["iteration"] >= iteration for r in train_records(run_dir))


def kill_when(ready, pid_fn, killed: list) -> threading.Thread:
    """Background killer: waits until `ready()` is true, then SIGKILLs the process pid_fn() names
    and appends its pid to `killed`."""
    def loop():
        deadline = time.time() + 300
        while time.time() < deadline:
            if ready():
                pid = pid_fn()
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def assert_same_iterations(whole: Path, split: Path, iterations: int, keys=RESUME_KEYS) -> None:
    """A run resumed midway logged the same iterations, with the same numbers, as one in one go."""
    a, b = train_records(whole), train_records(split)
    assert [r["iteration"] for r in a] == list(range(1, iterations + 1)) == [r["iteration"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (ra["iteration"], k, ra[k], rb[k])


def refaulted_fraction(mb: int = 64, times: int = 3) -> float:
    """Pages of a `mb`-MB block that fault again when the block is allocated, filled and freed
    once more, as a fraction of its pages (mean of `times`; the calling thread only): about 1
    where glibc gives such a block back to the kernel at free, 0 where the process keeps it.
    Runs in any process (an actor through `__ray_call__`); plain malloc, as torch allocates."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = mb << 20

    def once() -> None:
        block = libc.malloc(size)
        assert block, f"malloc({size}) failed"
        ctypes.memset(block, 1, size)
        libc.free(block)

    once()  # the first allocation faults in any case
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(times):
        once()
    return (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / times / (size // 4096)
