"""Learner groups in-process (local=True, no Ray actors), as the driver uses them: an IRL step,
rescoring, a policy update on the PRM's token rewards and a weight export, in the driver's order;
the group gives the same results as the plain learners it wraps."""

import os

import numpy as np

from repirl_ray.actors.learner_group import PolicyLearnerGroup, PRMLearnerGroup
from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner
from tests.unit.test_learners import K, make_rollouts, tiny_dir  # noqa: F401 (fixture)


def _configs():
    return (PolicyConfig(lr=1e-2, mini_batch_size=8, micro_batch_size=4, num_threads=1),
            PRMConfig(kind="implicit", lr=1e-2, micro_batch_size=4, num_threads=1), IRLConfig(),
            AdvantageConfig(c_process=0.5))


def test_local_groups_run_the_drivers_calls_like_the_plain_learners(tiny_dir):
    pcfg, rcfg, irl, adv = _configs()
    rollouts, demos = make_rollouts(seed=3), make_rollouts(seed=4, is_demo=True)
    keep = np.array([0, 1])

    policy = PolicyLearnerGroup(pcfg, tiny_dir, local=True, advantage=adv, samples_per_prompt=K, seed=0)
    prm = PRMLearnerGroup(rcfg, irl, tiny_dir, local=True, seed=0)
    prm_metrics = prm.update(keep, [rollouts], [demos])
    rewards, stats = prm.score(keep, [rollouts])
    policy_metrics = policy.update(keep, rewards, [rollouts])
    weights, version = policy.weights()

    plain_policy = PolicyLearner(pcfg, tiny_dir, advantage=adv, samples_per_prompt=K, seed=0)
    plain_prm = PRMLearner(rcfg, irl, tiny_dir, seed=0)
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("timing/")}  # noqa: E731
    assert untimed(plain_prm.update(keep, rollouts, demos)) == untimed(prm_metrics)
    plain_rewards, _ = plain_prm.score(keep, rollouts)
    np.testing.assert_array_equal(rewards, plain_rewards)
    assert rewards.shape == rollouts.response_mask.shape and np.abs(rewards).sum() > 0
    assert plain_policy.update(keep, plain_rewards, rollouts)["policy/loss"] == policy_metrics["policy/loss"]
    assert version == 1 and weights is not None
    after = policy.parameters()
    for name, value in plain_policy.parameters_numpy().items():
        np.testing.assert_array_equal(after[name], value)
    # local=True: both groups are this process, no actor was started.
    assert policy.pids() == prm.pids() == [os.getpid()]
    assert "prm/step_auroc" not in stats  # no step labels here
