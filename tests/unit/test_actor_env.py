"""Every actor's environment: glibc's malloc tunables that keep freed blocks in the process (the
actors allocate the same large blocks at every weight push and learner step), and what the user's
own environment changes in them. Checked by what glibc does with them in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from repirl_ray.actors.common import MALLOC_ENV, actor_env, malloc_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MALLOC_") or key == "REPIRL_MALLOC_KEEP":
            monkeypatch.delenv(key)
    return monkeypatch


def refaulted_in_process(env: dict[str, str]) -> float:
    """tests.helpers.refaulted_fraction in a new Python process started with env (glibc reads its
    tunables when a process starts)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", "from tests.helpers import refaulted_fraction; print(refaulted_fraction())"],
                         cwd=ROOT, env={**base, **env}, capture_output=True, text=True, check=True)
    return float(out.stdout)


def test_actors_keep_freed_blocks(clean_env):
    env = actor_env({"OMP_NUM_THREADS": "1"})["env_vars"]
    assert {k: env[k] for k in MALLOC_ENV} == MALLOC_ENV and env["OMP_NUM_THREADS"] == "1"
    # A 64 MB block (over glibc's largest mmap threshold, 32 MB) allocated again: every page
    # faults again under glibc's defaults, none with the actors' tunables.
    assert refaulted_in_process({}) > 0.9
    assert refaulted_in_process(malloc_env()) < 0.05
    # Both are needed: with the mmap threshold alone, glibc trims the freed block off the heap.
    assert refaulted_in_process({"MALLOC_MMAP_THRESHOLD_": MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]}) > 0.9


def test_the_users_environment_comes_first(clean_env):
    clean_env.setenv("MALLOC_ARENA_MAX", "2")
    clean_env.setenv("MALLOC_TRIM_THRESHOLD_", "4096")
    assert malloc_env() == {"MALLOC_MMAP_THRESHOLD_": MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"],
                            "MALLOC_TRIM_THRESHOLD_": "4096", "MALLOC_ARENA_MAX": "2"}
    clean_env.setenv("REPIRL_MALLOC_KEEP", "0")  # glibc's defaults, the user's own settings kept
    assert malloc_env() == {"MALLOC_TRIM_THRESHOLD_": "4096", "MALLOC_ARENA_MAX": "2"}
    clean_env.delenv("MALLOC_ARENA_MAX")
    clean_env.delenv("MALLOC_TRIM_THRESHOLD_")
    assert malloc_env() == {} and not any(k.startswith("MALLOC_") for k in actor_env()["env_vars"])


def test_a_bad_switch_names_itself(clean_env):
    clean_env.setenv("REPIRL_MALLOC_KEEP", "yes")
    with pytest.raises(ValueError, match="REPIRL_MALLOC_KEEP='yes'.*use 1 .* or 0"):
        actor_env()
