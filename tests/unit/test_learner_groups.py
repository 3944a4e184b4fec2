"""Learner groups in-process (local=True, no Ray actors), as the driver uses them: an IRL step,
rescoring, a policy update on the PRM's token rewards and a weight export, in the driver's order;
the group gives the same results as the plain learners it wraps."""

import os

import numpy as np

from repirl_ray.actors.learner_group import PolicyLearnerGroup, PRMLearnerGroup
from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner
from tests.helpers import K, make_rollouts


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


def test_one_bundle_builder_and_one_sum_for_every_role():
    from repirl_ray.actors.common import actor_bundle, sum_bundles
    from repirl_ray.config import RolloutConfig, load_config
    from repirl_ray.run_setup import role_demands

    # CPU, then the custom resources, then GPU only when asked for; every value a float.
    assert actor_bundle(PolicyConfig(num_cpus=0.5, resources={"learner": 1})) == {"CPU": 0.5, "learner": 1.0}
    gpu = actor_bundle(RolloutConfig(num_cpus=2, num_gpus=1))
    assert gpu == {"CPU": 2.0, "GPU": 1.0} and list(gpu) == ["CPU", "GPU"]
    assert sum_bundles([{"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.25, "learner": 2.0}, {"CPU": 1.0}]) == \
        {"CPU": 1.75, "GPU": 1.0, "learner": 2.0}
    assert sum_bundles([]) == {}
    # What run_setup checks against the cluster is these bundles, one per actor: 2 rollout
    # workers x 0.5 CPU, 2 policy ranks x (0.25 CPU + 1 GPU), 1 PRM rank x 0.5 CPU.
    cfg = load_config(None, ["rollout.num_workers=2", "policy.num_workers=2", "policy.num_cpus=0.25", "policy.num_gpus=1"])
    demands = role_demands(cfg)
    assert demands == {"rollout": [{"CPU": 0.5}] * 2, "policy": [{"CPU": 0.25, "GPU": 1.0}] * 2, "prm": [{"CPU": 0.5}]}
    assert sum_bundles(b for bs in demands.values() for b in bs) == {"CPU": 2.0, "GPU": 2.0}


def test_the_policy_pushes_its_weights_into_a_local_rollout_group(tiny_dir):
    from repirl_ray.actors.rollout_group import RolloutGroup
    from repirl_ray.config import RolloutConfig
    from tests.unit.test_rollout_group import A, Engine
    from transformers import AutoTokenizer

    pcfg, rcfg, irl, _ = _configs()
    engine = Engine(AutoTokenizer.from_pretrained(tiny_dir))
    rollout = RolloutGroup(RolloutConfig(), tiny_dir, "arithmetic", local=True, engine=engine)
    policy = PolicyLearnerGroup(pcfg, tiny_dir, local=True, advantage=AdvantageConfig(c_process=0.0),
                                samples_per_prompt=K, seed=0)
    policy.update(np.array([0, 1]), None, [make_rollouts(seed=3)])
    assert policy.push_weights(rollout) == 1 == rollout.version
    assert len(engine.loaded) == 1 and len(engine.loaded[0]) > 0  # the weight buckets, in the engine
    assert rollout.generate([A], n=2, temperature=1.0, seed=0, with_demos=False).version == 1
    # before_load (the pipelined loop's next batch) runs with the new weights in the store and the
    # workers still on the old ones.
    policy.update(np.array([0, 1]), None, [make_rollouts(seed=5)])
    seen = []
    assert policy.push_weights(rollout, before_load=lambda: seen.append((len(engine.loaded), rollout.version))) == 2
    assert seen == [(1, 1)] and len(engine.loaded) == 2 and rollout.version == 2
    # score_fetched: the token rewards read into this process, the same as score's.
    prm = PRMLearnerGroup(rcfg, irl, tiny_dir, local=True, seed=0)
    rollouts = make_rollouts(seed=4)
    fetched, _ = prm.score_fetched(None, [rollouts])
    np.testing.assert_array_equal(fetched, prm.score(None, [rollouts])[0])
