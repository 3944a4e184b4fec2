"""vLLM's sampling log-probs equal the learner's log-probs of the same tokens, before and after
new weights are pushed into the running engine (fp32, max difference <= 1e-4). The push goes
as in a run: buckets of numpy arrays through the object store, read back as read-only views,
which the engine's parameters then view (no copy). A later push that takes the copying path
gives the parameters their own memory first instead of writing into the earlier store object."""

import numpy as np
import pytest

from repirl_ray.config import AdvantageConfig, PolicyConfig, RolloutConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.data.reading import load_problems

pytestmark = pytest.mark.integration


def _param_pointers(engine_worker) -> dict[str, int]:
    """Run inside vLLM's worker: where each engine parameter's memory starts."""
    return {n: p.data_ptr() for n, p in engine_worker.model_runner.get_model().named_parameters()}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vllm_logprobs_match_learner_after_weight_push(tiny_world, ray_session, temperature):
    world_cfg, paths = tiny_world
    problems = load_problems(str(paths.train), require_demos=True)[:8]
    worker = RolloutWorker(RolloutConfig(kv_cache_gib=0.05, max_new_tokens=32), str(paths.base_policy), "arithmetic")
    learner = PolicyLearner(
        PolicyConfig(lr=5e-2, mini_batch_size=32, micro_batch_size=32, num_threads=1),
        str(paths.base_policy), temperature=temperature, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=4,
    )

    def sample(seed):
        rollouts, _, _ = worker.generate(problems, list(range(len(problems))), n=4, temperature=temperature, seed=seed)
        return rollouts

    before = sample(1)
    mask = before.response_mask > 0
    assert mask.sum() > 50
    diff = np.abs(learner.logprobs(before) - before.sampling_logprobs)[mask].max()
    assert diff <= 1e-4, f"before the push: max |vLLM - learner| = {diff}"

    # One large update so the new weights are clearly different, then the push.
    learner.update(None, None, before)
    # Buckets small enough that the tiny model (about 0.3 MB) spans several of them.
    buckets, version = learner.weights(bucket_bytes=64 * 1024)
    assert len(buckets) >= 4
    buckets = ray_session.get(ray_session.put(buckets))
    assert not buckets[0][0][1].flags.writeable  # zero-copy views of the object store
    worker.load_weights(buckets, version)
    after = sample(2)
    mask = after.response_mask > 0
    new = learner.logprobs(after)
    diff = np.abs(new - after.sampling_logprobs)[mask].max()
    assert diff <= 1e-4, f"after the push: max |vLLM - learner| = {diff}"
    assert (after.policy_version == 1).all()
    # ...and the engine really switched: its log-probs of the old samples moved with the weights.
    moved = np.abs(learner.logprobs(before) - before.sampling_logprobs)[before.response_mask > 0].max()
    assert moved > 1e-2
    # No copy on the engine's side: its parameters are the store object's memory, qkv_proj one
    # view over q, k and v sent back to back (the embedding is copied: vLLM pads the vocabulary).
    arrays = {n: a for b in buckets for n, a in b}
    (pointers,) = worker.engine.llm.collective_rpc(_param_pointers)
    assert pointers["model.layers.0.self_attn.qkv_proj.weight"] == arrays["model.layers.0.self_attn.q_proj.weight"].ctypes.data
    assert pointers["model.layers.1.mlp.gate_up_proj.weight"] == arrays["model.layers.1.mlp.gate_proj.weight"].ctypes.data
    assert pointers["model.norm.weight"] == arrays["model.norm.weight"].ctypes.data

    # A second push down the copying path (a tied lm_head sent as well: not one of the engine's
    # parameters, so load_weights maps the buckets): the first push's store object is left as it was.
    sent = {n: a.copy() for n, a in arrays.items()}
    learner.update(None, None, after)
    buckets2, version2 = learner.weights(bucket_bytes=64 * 1024)
    buckets2 = ray_session.get(ray_session.put(buckets2 + [[("lm_head.weight", buckets2[0][0][1])]]))
    assert buckets2[0][0][0] == "model.embed_tokens.weight"
    worker.load_weights(buckets2, version2)
    third = sample(3)
    mask = third.response_mask > 0
    diff = np.abs(learner.logprobs(third) - third.sampling_logprobs)[mask].max()
    assert diff <= 1e-4, f"after the copying push: max |vLLM - learner| = {diff}"
    assert all(np.array_equal(arrays[n], a) for n, a in sent.items())
    (pointers,) = worker.engine.llm.collective_rpc(_param_pointers)
    assert pointers["model.norm.weight"] not in {a.ctypes.data for b in buckets + buckets2 for _, a in b}
    # rollout.min_new_tokens: EOS held back, every response as long as allowed (the same work per row).
    worker.cfg.min_new_tokens = 32
    longest = sample(4)
    assert (longest.response_len == 32).all() and (before.response_len < 32).any()
