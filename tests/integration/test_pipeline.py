"""The pipelined loop (pipeline.off_policy_steps = 1) through real Ray actors and real vLLM: the
rollout workers sample the next batch while the learners update, each batch is at most one
policy version behind (logged), every parameter trains, a rollout worker killed during an
overlapped generation is replaced with no iteration lost or repeated, and a resumed run equals an
uninterrupted one (the batch sampled ahead is part of the checkpoint), whether the next batch is
sampled beside the updates or after them (pipeline.overlap: the same batches, only the timing
differs)."""

import json

import numpy as np
import pytest
import ray

from repirl_ray.config import load_config
from repirl_ray.driver import Trainer, train
from repirl_ray.checkpoints import latest_checkpoint
from tests.conftest import TINY_RUN, TINY_WORLD, overrides
from tests.helpers import RESUME_KEYS, assert_same_iterations, events, kill_when, train_records

pytestmark = pytest.mark.integration

# Beside the updates even on the test machine's shared cores (auto would sample after them).
PIPELINED = {"pipeline.off_policy_steps": 1, "pipeline.overlap": "always", "rollout.num_workers": 2, "eval.every": 0}


def _cfg(world_cache, **extra):
    return load_config(None, overrides(TINY_WORLD, TINY_RUN, PIPELINED, **{"world.dir": str(world_cache), **extra}))


def test_pipelined_run_with_a_worker_killed_mid_overlap(ray_session, world_cache, tmp_path):
    run_dir = tmp_path / "run"
    cfg = _cfg(world_cache, iterations=5, **{"checkpoint.every": 0})
    trainer = Trainer(cfg, run_dir, log_fn=lambda *_: None)
    killed = []
    try:
        policy_before = trainer.policy.parameters()
        prm_before = trainer.prm.parameters()
        victim_pid = ray.get(trainer.rollout.workers[0].ping.remote())
        # Worker 0's share of batches 3-5: each is submitted by iteration 2-4 (trainer.iteration
        # 1-3; no evaluation runs between) before its learners update, and collected by the next
        # iteration. The kill lands on the first of them whose shard has not come back yet, so it
        # hits an overlapped generation in flight, one policy version behind the group's.
        overlapped, in_flight = [], []
        submit = trainer.rollout.submit

        def recording_submit(*args, **kwargs):
            pending = submit(*args, **kwargs)
            if 1 <= trainer.iteration <= 3:
                overlapped.append(pending.refs[0][2])
            return pending

        def overlapped_generation_in_flight():
            for ref in overlapped:
                if not ray.wait([ref], timeout=0)[0]:
                    in_flight.append(ref)
                    return True
            return False

        trainer.rollout.submit = recording_submit
        killer = kill_when(overlapped_generation_in_flight, lambda: victim_pid, killed)
        summary = trainer.train()
        killer.join(timeout=5)
        # The shard killed never came back: the worker died inside that generation.
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(in_flight[0])
        replacement_pid = ray.get(trainer.rollout.workers[0].ping.remote())
        policy_after = trainer.policy.parameters()
        prm_after = trainer.prm.parameters()
    finally:
        trainer.shutdown()
    assert killed == [victim_pid] and replacement_pid != victim_pid
    records = train_records(run_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5] and summary["iterations"] == 5
    # Batch 1 is sampled by the base policy for update 1; every later batch is sampled while the
    # previous update runs, by the policy one version behind the one it updates.
    assert [r["rollout/staleness"] for r in records] == [0, 1, 1, 1, 1]
    assert [r["rollout/policy_version"] for r in records] == [0, 0, 1, 2, 3]
    for r in records:
        assert r["rollout/kept"] == cfg.data.prompts_per_iteration  # every prompt x K samples, none lost
    replaced = events(run_dir)
    assert [e["event"] for e in replaced] == ["rollout_worker_replaced"] and replaced[0]["worker"] == 0
    assert replaced[0]["reason"].startswith("died while generating shard (0, 4)"), replaced[0]
    unchanged = [k for k in policy_before if np.array_equal(policy_before[k], policy_after[k])]
    assert not unchanged, f"policy parameters that never changed: {unchanged}"
    unchanged = [k for k in prm_before if np.array_equal(prm_before[k], prm_after[k])]
    assert not unchanged, f"PRM parameters that never changed: {unchanged}"


def test_pipelined_resume_equals_uninterrupted_run(ray_session, world_cache, tmp_path):
    """4 pipelined iterations in one go, sampling beside the updates == 2 sampling after them, then
    a resume for 2 more: the batch sampled ahead at the checkpoint is restored, not sampled again
    with newer weights, and sampling after the updates hands the workers the same weights."""
    common = {"iterations": 4, "checkpoint.every": 2, "rollout.num_workers": 1}  # sharding: the kill test above
    whole = tmp_path / "whole"
    train(_cfg(world_cache, run_dir=str(whole), **common), log_fn=lambda *_: None)

    split = tmp_path / "split"
    after = {**common, "iterations": 2, "pipeline.overlap": "never"}
    trainer = Trainer(_cfg(world_cache, run_dir=str(split), **after), split, log_fn=lambda *_: None)
    calls = []  # the driver's training batches handed to the workers, the policy updates, the weight pushes
    submit, update, weights, load = trainer._submit, trainer.policy.update, trainer.policy.weights, trainer.rollout.load_weights
    trainer._submit = lambda index: (calls.append(f"batch {index}"), submit(index))[1]
    trainer.policy.update = lambda *a, **k: (calls.append("update"), update(*a, **k))[1]
    trainer.policy.weights = lambda *a, **k: (calls.append("weights"), weights(*a, **k))[1]
    trainer.rollout.load_weights = lambda *a, **k: (calls.append("load"), load(*a, **k))[1]
    try:
        trainer.train()
    finally:
        trainer.shutdown()
    # Each next batch is handed to the workers after the policy update, not before it, and after
    # the new weights are in the store (not beside its decoding), before the workers load them.
    assert calls == ["batch 0", "update", "weights", "batch 1", "load", "update", "weights", "batch 2", "load"]
    ckpt = latest_checkpoint(split)
    # The batch sampled ahead during iteration 2 (by the policy of version 1) is in the checkpoint.
    assert json.loads((ckpt / "trainer_state.json").read_text())["pending"]
    assert (ckpt / "pending" / "rollouts.npz").is_file()
    train(resume=str(split), overrides=["iterations=4"], log_fn=lambda *_: None)

    assert_same_iterations(whole, split, 4, RESUME_KEYS + ["rollout/staleness", "rollout/policy_version"])
