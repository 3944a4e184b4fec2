"""Two iterations of the dual loop through real Ray actors and real vLLM, with two rollout
workers: every trainable parameter of the policy and of the PRM changes, and the run folder holds
the resolved config, the metrics (JSONL and TensorBoard), a checkpoint and the summary; every
actor keeps freed memory for reuse."""

import json

import numpy as np
import pytest
import ray

from repirl_ray.config import load_config
from repirl_ray.driver import Trainer
from repirl_ray.checkpoints import latest_checkpoint
from tests.conftest import TINY_RUN, TINY_WORLD, overrides
from tests.helpers import refaulted_fraction

pytestmark = pytest.mark.integration

EXPECTED_METRICS = {
    "rollout/accuracy", "rollout/response_len", "rollout/kept", "prm/loss", "prm/ess", "prm/reward_pos",
    "prm/reward_neg", "policy/loss", "policy/entropy", "policy/clipfrac", "policy/approx_kl",
    "timing/rollout", "timing/prm", "timing/score", "timing/policy", "timing/sync", "timing/iteration",
    "prm/step_auroc", "prm/step_auroc_prefix_min", "rollout/policy_version",
}


def test_two_iterations_change_every_parameter(ray_session, world_cache, tmp_path):
    cfg = load_config(None, overrides(TINY_WORLD, TINY_RUN, **{"world.dir": str(world_cache), "rollout.num_workers": 2}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(cfg, run_dir)
    try:
        assert len(trainer.rollout.workers) == 2
        policy_before = trainer.policy.parameters()
        prm_before = trainer.prm.parameters()
        # PSS readings: at the start, then every 30 s (None: the monitor decides), and one asked for
        # (True) before the summary, every actor still up.
        readings = []
        monitor_sample = trainer.setup.memory.sample
        trainer.setup.memory.sample = lambda with_pss=None: (readings.append(with_pss), monitor_sample(with_pss))
        summary = trainer.train()
        policy_after = trainer.policy.parameters()
        prm_after = trainer.prm.parameters()
        # Every actor keeps freed blocks for reuse (actors/common.py MALLOC_ENV, in its runtime
        # environment, read by glibc when the actor's process started): a 64 MB block allocated
        # again faults none of its pages, where glibc's defaults fault every one.
        actors = [trainer.rollout.workers[0], trainer.policy.ranks[0], trainer.prm.ranks[0]]
        refaulted = ray.get([a.__ray_call__.remote(lambda _: refaulted_fraction()) for a in actors])
    finally:
        trainer.shutdown()

    assert max(refaulted) < 0.05, refaulted
    unchanged = [k for k in policy_before if np.array_equal(policy_before[k], policy_after[k])]
    assert not unchanged, f"policy parameters that never changed: {unchanged}"
    unchanged = [k for k in prm_before if np.array_equal(prm_before[k], prm_after[k])]
    assert not unchanged, f"PRM parameters that never changed: {unchanged}"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "rollout/accuracy" in r]
    assert [r["iteration"] for r in train_records] == [1, 2]
    for r in train_records:
        assert EXPECTED_METRICS <= set(r), EXPECTED_METRICS - set(r)
    # Each batch records the policy version that sampled it: 0, then 1 after the first push.
    assert [r["rollout/policy_version"] for r in train_records] == [0, 1]
    # Where the rollout's time went (serial loop): the slowest worker's engine call lies inside
    # its whole call, which lies inside the driver's rollout phase.
    for r in train_records:
        assert 0 < r["rollout/engine_s"] <= r["rollout/worker_s"] <= r["timing/rollout"], r

    assert summary["iterations"] == 2
    # The PRM's step AUROC on the fixed held-out set, before and after: the implicit PRM starts as
    # the reference model (every token reward 0, all steps tied: exactly 0.5), and two updates at
    # lr 1e-2 untie them. The summary holds the last evaluation's numbers.
    assert summary["base_step_auroc"] == 0.5
    assert 0.0 < summary["step_auroc"] < 1.0 and summary["step_auroc"] != 0.5
    last_eval = [r for r in records if "eval/step_auroc" in r][-1]
    assert last_eval["iteration"] == 2
    assert (last_eval["eval/step_auroc"], last_eval["eval/step_auroc_prefix_min"]) == (
        summary["step_auroc"], summary["step_auroc_prefix_min"])
    for key in ("base_accuracy", "final_accuracy", "step_auroc", "wall_s", "peak_rss_gib",
                "base_greedy_accuracy", "final_greedy_accuracy"):
        assert key in summary
    assert True in readings and 0 < summary["peak_pss_gib"] <= summary["peak_rss_gib"]
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 2
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.name == "iter_000002"
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    AutoModelForCausalLM.from_pretrained(ckpt / "policy")
    AutoModelForTokenClassification.from_pretrained(ckpt / "prm")
    assert (ckpt / "policy" / "learner_state.pt").is_file() and (ckpt / "trainer_state.json").is_file()
