"""The built-in world (DESIGN.md section 4), built once and cached: data splits, tokenizer, a
tiny Qwen2 model, and a base policy from a short supervised warm-up on noisy solutions.

The warm-up is a one-shot supervised job, so it runs as a Ray Train TorchTrainer job (DESIGN.md
section 5); the repeated RL loop uses long-lived actors instead. The folder is written under a
temporary name and renamed when complete, and a lock keeps two processes from building it at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from repirl_ray.config import WorldConfig
from repirl_ray.utils import atomic_write_json, default_cache_dir, publish_dir

# Fields that change how the world is built (not where or with how many threads).
_NOT_IN_KEY = ("dir", "warmup_threads")
WORLD_FORMAT = 2


@dataclass
class WorldPaths:
    root: Path
    base_policy: Path
    train: Path
    eval: Path
    hard_train: Path
    hard_eval: Path

    @classmethod
    def at(cls, root: Path) -> "WorldPaths":
        return cls(
            root, root / "base_policy", root / "train.jsonl", root / "eval.jsonl",
            root / "hard_train.jsonl", root / "hard_eval.jsonl",
        )

    def split(self, name: str) -> Path:
        return {"train": self.train, "eval": self.eval, "hard_train": self.hard_train}[name]


def world_key(cfg: WorldConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_KEY}
    fields["format"] = WORLD_FORMAT
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def world_root(cfg: WorldConfig) -> Path:
    base = Path(cfg.dir).expanduser() if cfg.dir else default_cache_dir()
    return base / f"world-{world_key(cfg)}"


def ensure_world(cfg: WorldConfig, *, use_ray_train: bool = True, log=print) -> WorldPaths:
    """The world's paths, building it first when it is not cached yet."""
    root = world_root(cfg)
    paths = WorldPaths.at(root)
    if (root / "world.json").is_file():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds it built
        if not (root / "world.json").is_file():
            build_world(cfg, root, use_ray_train=use_ray_train, log=log)
    return paths


def build_world(cfg: WorldConfig, root: Path, *, use_ray_train: bool = True, log=print) -> None:
    from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2
    from repirl_ray.tasks.arithmetic import ArithmeticSpec, make_split, make_splits, noisy_solution
    from repirl_ray.tasks.base import write_jsonl

    t0 = time.time()
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paths = WorldPaths.at(tmp)
    log(f"building the built-in world in {root} (once; cached after)")

    spec = ArithmeticSpec(cfg.min_ops, cfg.max_ops, cfg.max_start, cfg.max_operand, cfg.modulus)
    hard_spec = ArithmeticSpec(cfg.hard_min_ops, cfg.hard_max_ops, cfg.max_start, cfg.max_operand, cfg.modulus)
    splits = make_splits(cfg.seed, cfg.num_train, cfg.num_eval, cfg.num_hard_eval, spec, hard_spec)
    # Hard training problems: longer chains, none equal to a hard-eval prompt.
    hard_train = make_split(f"{cfg.seed}/hard_train", cfg.num_hard_train, hard_spec,
                            exclude={p.prompt for p in splits.hard}, prefix="hard-train-")
    write_jsonl(str(paths.train), splits.train)
    write_jsonl(str(paths.eval), splits.eval)
    write_jsonl(str(paths.hard_train), hard_train)
    write_jsonl(str(paths.hard_eval), splits.hard)
    log(f"  data: {len(splits.train)} train, {len(splits.eval)} eval, {len(hard_train)} hard-train, "
        f"{len(splits.hard)} hard-eval problems (draws excluded as already in a held-out split: {splits.excluded})")

    tokenizer = build_char_tokenizer()
    init_dir = tmp / "init_policy"
    model = build_tiny_qwen2(
        len(tokenizer), cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, seed=cfg.seed
    )
    model.save_pretrained(init_dir)
    tokenizer.save_pretrained(init_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"  model: Qwen2, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
        f"{n_params / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")

    # Warm-up data: fresh noise for every pass over the training problems.
    rng = random.Random(f"{cfg.seed}/warmup")
    passes = max(1, math.ceil(cfg.warmup_steps * cfg.warmup_batch_size / max(1, len(splits.train))))
    pairs = [
        (p.prompt, noisy_solution(rng, p, spec, cfg.step_error_prob, cfg.max_error))
        for _ in range(passes)
        for p in splits.train
    ]
    from repirl_ray.learners.sft import SupervisedJob

    job = SupervisedJob(
        init_dir=str(init_dir), out_dir=str(paths.base_policy), pairs=pairs, steps=cfg.warmup_steps,
        batch_size=cfg.warmup_batch_size, lr=cfg.warmup_lr, seed=cfg.seed, threads=cfg.warmup_threads, label="warm-up",
    )
    log(f"  warm-up: {cfg.warmup_steps} steps x {cfg.warmup_batch_size} noisy solutions "
        f"(step error {cfg.step_error_prob}), lr {cfg.warmup_lr}" + (" as a Ray Train job" if use_ray_train else ""))
    if use_ray_train:
        from repirl_ray.actors.supervised import run_supervised_job

        metrics = run_supervised_job(job, tmp, name="world-warmup")
    else:
        from repirl_ray.learners.sft import sft_job

        metrics = sft_job(job)
    shutil.rmtree(init_dir)
    atomic_write_json(
        tmp / "world.json",
        {
            "config": dataclasses.asdict(cfg),
            "key": world_key(cfg),
            "warmup": metrics,
            "num_parameters": n_params,
            "build_s": round(time.time() - t0, 1),
        },
    )
    publish_dir(tmp, root)
    log(f"  world ready in {time.time() - t0:.0f} s: {root}")
