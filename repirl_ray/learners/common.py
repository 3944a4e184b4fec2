"""What both learners share: the optimizer, mini/micro-batch splitting, and state files."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

STATE_FILE = "learner_state.pt"


def make_optimizer(params, lr: float, weight_decay: float, betas) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def save_learner_state(out_dir: str, optimizer: torch.optim.Optimizer, rng: np.random.Generator, version: int) -> None:
    """Optimizer moments, the shuffling RNG and torch's RNG: with the weights, all a resume needs."""
    state = {
        "optimizer": optimizer.state_dict(),
        "np_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "version": version,
    }
    tmp = os.path.join(out_dir, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(out_dir, STATE_FILE))


def load_learner_state(in_dir: str, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> int:
    state = torch.load(os.path.join(in_dir, STATE_FILE), weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["version"])


class MetricSum:
    """Weighted running means of per-micro-batch statistics (weights = tokens or samples)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: dict, weight: float) -> None:
        for k, v in stats.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{k}": self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}


def checkpoint_files(world_size: int) -> list[str]:
    """Files a complete role folder of a checkpoint holds (relative paths)."""
    return ["config.json", "model.safetensors", STATE_FILE]
