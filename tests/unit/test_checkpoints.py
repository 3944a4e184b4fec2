"""Checkpoints as the loop writes them (checkpoints.py), with the learner groups in-process: what
save_checkpoint writes passes the check a resume makes and loads back; the newest keep_last stay;
a save that fails part-way publishes nothing and leaves `latest` where it was."""

import json

import numpy as np
import pytest

from repirl_ray.actors.learner_group import PolicyLearnerGroup, PRMLearnerGroup
from repirl_ray.checkpoints import check_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint, trainer_state
from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig, load_config
from repirl_ray.data import PromptStream
from repirl_ray.tasks.base import Problem
from tests.helpers import K, make_rollouts


def test_saved_checkpoints_pass_the_resume_check_and_load_back(tiny_dir, tmp_path):
    policy = PolicyLearnerGroup(PolicyConfig(lr=1e-2, num_threads=1), tiny_dir, local=True,
                                advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K, seed=0)
    prm = PRMLearnerGroup(PRMConfig(kind="implicit", num_threads=1), IRLConfig(), tiny_dir, local=True, seed=0)
    cfg = load_config(None, [])  # one rank each, a PRM learner: what check_checkpoint expects
    stream = PromptStream([Problem(id=str(i), prompt=f"{i}+1:", answer=str(i + 1)) for i in range(5)], 2, seed=0)
    stream.next_batch()
    logs = []

    def save(iteration, **kw):
        state = lambda: trainer_state(cfg, iteration=iteration, streams=(stream, None), history={"base": {"a": 1}},  # noqa: E731
                                      wall_s=2.5, policy_version=iteration, pending=False)
        return save_checkpoint(tmp_path, iteration, state, policy=policy, prm=prm, rollout=None, pending=None,
                               keep_last=2, log_fn=logs.append, **kw)

    first = save(1)
    policy.update(np.array([0, 1]), None, [make_rollouts(seed=3)])  # the weights move between checkpoints
    save(2)
    newest = save(3)
    assert latest_checkpoint(tmp_path) == newest and newest.name == "iter_000003"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000002", "iter_000003", "latest"]
    assert not first.exists() and logs[-1] == f"checkpoint: {newest}"
    state = check_checkpoint(newest, cfg)
    assert state["iteration"] == 3 and state["data"] == stream.state() and state["ranks"] == {"policy": 1, "prm": 1}
    assert state["pending"] is False and state["history"] == {"base": {"a": 1}}

    saved = policy.parameters()
    fresh = PolicyLearnerGroup(PolicyConfig(lr=1e-2, num_threads=1), tiny_dir, local=True,
                               advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K, seed=0)
    assert load_checkpoint(newest, state, policy=fresh, prm=prm, rollout=None) is None  # no batch sampled ahead
    for name, value in fresh.parameters().items():
        np.testing.assert_array_equal(value, saved[name])

    # A save that fails after the learners wrote their part (here: a pending batch and no rollout
    # group to write it) publishes nothing: no iter_000004, no temporary folder, `latest` unchanged.
    with pytest.raises(AttributeError):
        save_checkpoint(tmp_path, 4, lambda: {}, policy=policy, prm=prm, rollout=None, pending=object(), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000002", "iter_000003", "latest"]
    assert json.loads((newest / "trainer_state.json").read_text())["iteration"] == 3
    assert latest_checkpoint(tmp_path) == newest
