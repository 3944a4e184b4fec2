"""Helpers shared by the integration tests: a run folder's records and events, a background
killer, and the check that a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

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
