"""Resume and failures, with real actors: a run continued from its checkpoint equals an
uninterrupted one (2-rank learner groups, 2 rollout workers, a curriculum); a rollout worker
killed mid-run is replaced and its rollouts generated again; a learner killed mid-run stops the
run with its last checkpoint intact; SIGTERM to the driver writes a checkpoint and exits cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from repirl_ray.config import load_config
from repirl_ray.driver import LearnerFailure, Trainer, train
from repirl_ray.checkpoints import latest_checkpoint
from tests.conftest import TINY_RUN, TINY_WORLD, overrides
from tests.helpers import assert_same_iterations, events, kill_when, logged, train_records

pytestmark = pytest.mark.integration


def _cfg(world_cache, **extra):
    return load_config(None, overrides(TINY_WORLD, TINY_RUN, **{"world.dir": str(world_cache), **extra}))


def test_killed_rollout_worker_is_replaced(ray_session, world_cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = _cfg(world_cache, iterations=5, **{"rollout.num_workers": 2, "checkpoint.every": 0, "eval.every": 0})
    trainer = Trainer(cfg, run_dir, log_fn=lambda *_: None)
    killed = []
    try:
        victim = trainer.rollout.workers[0]
        victim_pid = ray.get(victim.ping.remote())
        killer = kill_when(lambda: logged(run_dir, 2), lambda: victim_pid, killed)
        summary = trainer.train()
        killer.join(timeout=5)
        replacement_pid = ray.get(trainer.rollout.workers[0].ping.remote())
    finally:
        trainer.shutdown()
    assert killed == [victim_pid] and replacement_pid != victim_pid
    # No iteration lost, none twice.
    assert [r["iteration"] for r in train_records(run_dir)] == [1, 2, 3, 4, 5]
    assert summary["iterations"] == 5
    replaced = events(run_dir)
    assert [e["event"] for e in replaced] == ["rollout_worker_replaced"]
    assert replaced[0]["worker"] == 0
    # The batch after the kill still has all prompts x K samples.
    for r in train_records(run_dir):
        assert r["rollout/kept"] == cfg.data.prompts_per_iteration  # filter off: every prompt kept


def test_killed_learner_stops_the_run_with_its_checkpoint_intact(ray_session, world_cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = _cfg(world_cache, iterations=8, **{"checkpoint.every": 1, "eval.every": 0, "rollout.num_workers": 1})
    trainer = Trainer(cfg, run_dir, log_fn=lambda *_: None)
    killed = []
    try:
        pid = trainer.policy.pids()[0]
        # Kill once checkpoint 2 is complete: the learner then dies during iteration 3 or during
        # the save of checkpoint 3, and the last complete checkpoint must survive either way.
        ckpt2 = run_dir / "checkpoints" / "iter_000002" / "trainer_state.json"
        killer = kill_when(ckpt2.is_file, lambda: pid, killed)
        with pytest.raises(LearnerFailure) as err:
            trainer.train()
        killer.join(timeout=5)
    finally:
        trainer.shutdown()
    assert killed == [pid]
    assert "--resume" in str(err.value) and str(run_dir) in str(err.value)
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert 2 <= state["iteration"] < 8
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt / "policy")  # complete and loadable
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_sigterm_writes_a_checkpoint_and_exits(tiny_world, world_cache, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(TINY_WORLD, TINY_RUN, **{"world.dir": str(world_cache), "run_dir": str(run_dir), "iterations": 50,
                                             "checkpoint.every": 0, "eval.every": 0, "rollout.num_workers": 1})
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-m", "repirl_ray.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").is_file() and len(train_records(run_dir)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped at iteration" in out
    ckpt = latest_checkpoint(run_dir)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    done = len(train_records(run_dir))
    assert state["iteration"] == done and 2 <= done < 50
    assert not (run_dir / "summary.json").exists()


def test_resume_equals_uninterrupted_run(ray_session, world_cache, tmp_path):
    """4 iterations in one go == 2 iterations, then a resume for 2 more, with learner groups of 2
    ranks each (FSDP2 over gloo) and 2 rollout workers: the checkpoint holds the weights, every
    rank's optimizer shard and the RNGs. With a curriculum of 3 iterations on the easy split before
    the hard one, the checkpoint falls inside it, and both prompt streams resume where they were.
    (One test for all of it: each run here is ~15 s of actor start-up on 2 cores.)"""
    common = {"iterations": 4, "checkpoint.every": 2, "eval.every": 0, "rollout.num_workers": 2,
              "data.world_split": "hard_train", "data.curriculum_iterations": 3,
              "policy.num_workers": 2, "prm.num_workers": 2, "policy.num_threads": 1, "prm.num_threads": 1}
    whole = tmp_path / "whole"
    train(_cfg(world_cache, run_dir=str(whole), **common), log_fn=lambda *_: None)

    split = tmp_path / "split"
    train(_cfg(world_cache, run_dir=str(split), **{**common, "iterations": 2}), log_fn=lambda *_: None)
    ckpt = latest_checkpoint(split)
    assert ckpt.name == "iter_000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["ranks"] == {"policy": 2, "prm": 2}
    assert (ckpt / "policy" / "optimizer" / "rank_1.pt").is_file() and (ckpt / "prm" / "optimizer" / "rank_1.pt").is_file()
    train(resume=str(split), overrides=["iterations=4"], log_fn=lambda *_: None)

    assert_same_iterations(whole, split, 4)
    report = json.loads((whole / "data_report.json").read_text())
    assert report["curriculum"]["path"].endswith("train.jsonl") and report["train"]["path"].endswith("hard_train.jsonl")
    sa = json.loads((whole / "summary.json").read_text())
    sb = json.loads((split / "summary.json").read_text())
    for k in ("final_accuracy", "final_greedy_accuracy", "step_auroc", "base_accuracy"):
        assert sa[k] == pytest.approx(sb[k], abs=1e-6), k
