"""The GPU run configs load through the schema (unknown keys and wrong types are errors) and
carry the paper's settings (ALGORITHM.md sections 2-4 and 8). Nothing is downloaded: loading a
config touches no model."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from repirl_ray.cli import main
from repirl_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "configs/qwen2.5-3b-math.yaml": dict(
        policy_path="Qwen/Qwen2.5-3B-Instruct", task="math", c_process=0.05, chat_template=True
    ),
    "configs/qwen3-4b-code.yaml": dict(
        policy_path="Qwen/Qwen3-4B-Base", task="code", c_process=0.1, chat_template=False
    ),
}

# The paper's numbers; each one is written in the file, not inherited from a default.
PAPER = {
    "rollout.samples_per_prompt": 4,
    "rollout.temperature": 1.0,
    "policy.lr": 5e-7,
    "policy.grad_clip": 1.0,
    "policy.epochs": 1,
    "policy.mini_batch_size": 32,
    "policy.clip_eps": 0.2,
    "policy.entropy_coef": 0.001,
    "policy.kl_coef": 0.0,
    "prm.kind": "head",
    "prm.update": "before",
    "prm.loss": "repirl",
    "prm.lr": 3e-8,
    "prm.weight_decay": 0.0,
    "prm.grad_clip": 10.0,
    "irl.weight_reward": "sum",
    "irl.pseudo_expert": True,
    "irl.normalise_over": "prompt",
    "irl.reward_l2": 0.0,
    "advantage.c_outcome": 1.0,
    "filter.enabled": True,
    "filter.low": 0.2,
    "filter.high": 0.8,
    "model.dtype": "bfloat16",
}


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a config load tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("path", list(CONFIGS))
def test_gpu_config_loads_with_the_papers_settings(path, no_network):
    cfg = load_config(str(ROOT / path))
    raw = yaml.safe_load((ROOT / path).read_text())
    expected = {**PAPER, "advantage.c_process": CONFIGS[path]["c_process"]}
    for key, value in expected.items():
        assert _get(raw, key) == value, f"{path}: {key} is not written as the paper's {value}"
        assert _get(cfg, key) == value, f"{path}: {key} resolves to {_get(cfg, key)!r}"

    want = CONFIGS[path]
    assert cfg.model.policy_path == want["policy_path"]
    assert cfg.data.task == want["task"]
    assert cfg.data.chat_template is want["chat_template"]
    assert cfg.data.train_path.endswith(".jsonl") and cfg.data.eval_path.endswith(".jsonl")
    assert cfg.data.prompts_per_iteration == 256


@pytest.mark.parametrize("path", list(CONFIGS))
def test_gpu_config_places_every_role_on_gpus(path):
    cfg = load_config(str(ROOT / path))
    assert cfg.rollout.num_gpus >= 1 and cfg.policy.num_gpus >= 1 and cfg.prm.num_gpus >= 1
    assert cfg.rollout.num_workers >= 2
    assert 1024 <= cfg.rollout.max_new_tokens <= 2048
    assert cfg.rollout.max_model_len >= cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    assert 0.5 <= cfg.rollout.gpu_memory_utilization <= 0.95
    assert cfg.policy.gradient_checkpointing and cfg.prm.gradient_checkpointing
    assert cfg.ray.address == "", "the config itself runs on one machine; --address auto joins a cluster"


@pytest.mark.parametrize("path", list(CONFIGS))
def test_repirl_config_prints_the_resolved_gpu_config(path, capsys):
    assert main(["config", "--config", str(ROOT / path), "ray.address=auto"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["policy_path"] == CONFIGS[path]["policy_path"]
    assert printed["ray"]["address"] == "auto"


@pytest.mark.parametrize("path", list(CONFIGS))
def test_gpu_config_fills_one_8_gpu_machine_with_sharded_bf16_learners(path):
    from repirl_ray.run_setup import check_fits, role_demands

    cfg = load_config(str(ROOT / path))
    # bf16 compute with fp32 master weights (plain AdamW on bf16 weights loses the paper's lr 5e-7).
    assert cfg.model.compute_dtype == "bfloat16" and cfg.model.dtype == "bfloat16"
    assert cfg.policy.old_logprobs == "recompute" and cfg.policy.tis_cap > 1
    assert cfg.policy.num_workers == 2 and cfg.prm.num_workers == 2
    demands = role_demands(cfg)
    assert sum(b.get("GPU", 0) for bundles in demands.values() for b in bundles) == 8
    check_fits(demands, [{"CPU": 64.0, "GPU": 8.0}], {"policy": True, "prm": True})
    with pytest.raises(Exception, match="GPU"):
        check_fits(demands, [{"CPU": 64.0, "GPU": 4.0}], {"policy": True, "prm": True})
