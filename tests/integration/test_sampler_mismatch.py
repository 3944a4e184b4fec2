"""The sampler-learner mismatch that `policy.old_logprobs=recompute` measures and corrects
(docs/ALGORITHM.md section 4): a bf16 vLLM engine against an fp32 learner disagrees on the
log-probs of the very tokens it sampled; fp32 on both sides agrees to 1e-4."""

import math

import pytest

from repirl_ray.config import AdvantageConfig, PolicyConfig, RolloutConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.data.reading import load_problems

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine_dtype", ["bfloat16", "float32"])
def test_logged_mismatch_of_a_bf16_engine_and_an_fp32_learner(tiny_world, engine_dtype):
    _, paths = tiny_world
    problems = load_problems(str(paths.train), require_demos=True)[:8]
    worker = RolloutWorker(RolloutConfig(kv_cache_gib=0.05, max_new_tokens=32), str(paths.base_policy), "arithmetic",
                           dtype=engine_dtype)
    learner = PolicyLearner(
        PolicyConfig(lr=1e-4, mini_batch_size=32, micro_batch_size=32, num_threads=1, old_logprobs="recompute"),
        str(paths.base_policy), advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=4,
    )
    rollouts, _, _ = worker.generate(problems, list(range(len(problems))), n=4, temperature=1.0, seed=3)
    assert rollouts.response_mask.sum() > 50
    metrics = learner.update(None, None, rollouts)
    mismatch = metrics["policy/logprob_mismatch"]
    if engine_dtype == "bfloat16":
        assert mismatch > 1e-4, mismatch  # bf16 rounding of every matmul shows in the log-probs (~1e-3)
    else:
        assert mismatch <= 1e-4, mismatch
    # A token is capped when log pi_old - log pi_sampler >= log(tis_cap), so by Markov's inequality
    # the capped share is at most the mean |log pi_old - log pi_sampler| / log(tis_cap).
    capped = metrics["policy/tis_capped_frac"]
    assert capped <= mismatch / math.log(learner.cfg.tis_cap), (capped, mismatch)
    if engine_dtype == "float32":
        assert capped == 0.0
