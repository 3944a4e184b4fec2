"""One-shot supervised jobs (the world's warm-up, behaviour cloning, SFT before RLOO) as Ray
Train TorchTrainer jobs (DESIGN.md section 5). The repeated RL loop uses long-lived actors
instead: a fit() costs about 20 s to start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from repirl_ray.learners.sft import SFT_METRICS, SupervisedJob, sft_job


def _train_loop(config: dict) -> None:
    import ray.train

    ray.train.report(sft_job(config["job"]))


def run_supervised_job(job: SupervisedJob, storage: Path, *, name: str, num_workers: int = 1, num_cpus: float = 1.0,
                       num_gpus: float = 0.0) -> dict:
    """Run sft_job(job) on `num_workers` Ray Train workers (DDP over them: Ray Train sets up the
    process group, gloo on CPU, nccl on GPU); returns the final metrics.

    Without a running Ray, the job gets a private one that is stopped afterwards: Ray Train's
    controller and cleaner actors outlive fit() and would otherwise hold memory and CPU through
    the training run that follows."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    own_ray = not ray.is_initialized()
    if own_ray:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # With the dashboard: Ray Train's placement-group cleaner polls the state API it serves,
        # and without it logs a warning every few seconds.
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"job": job},
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=num_gpus > 0,
                resources_per_worker={"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})},
            ),
            run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve() / "ray_train")),
        )
        trainer.fit()
        with open(Path(job.out_dir) / SFT_METRICS) as f:
            return json.load(f)
    finally:
        shutil.rmtree(Path(storage) / "ray_train", ignore_errors=True)
        if own_ray:
            ray.shutdown()
