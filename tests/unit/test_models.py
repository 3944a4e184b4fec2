import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from repirl_ray.algo import entropy_from_logits, implicit_token_rewards
from repirl_ray.batch import Rollouts, build_rollouts
from repirl_ray.models.prm import HeadPRM, ImplicitPRM, load_prm
from repirl_ray.models.sequence import ModelInputs, model_inputs, response_logprobs


def _batch(prompts, responses):
    n = len(prompts)
    return build_rollouts(
        prompts, responses, None, prompt_index=list(range(n)), sample_index=[0] * n, outcome=[0.0] * n,
        format_ok=[1.0] * n, is_demo=False, policy_version=0, step_ids=None, first_wrong=[-2] * n, pad_id=0,
    )


def _unpadded_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])


def test_logprobs_do_not_depend_on_padding(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    prompts = [[1, 10, 13, 8], [1, 10, 13, 8, 15, 11, 14, 8, 19]]
    responses = [[5, 6, 7, 2], [9, 2]]
    with torch.no_grad():
        logp, entropy = response_logprobs(model, model_inputs(_batch(prompts, responses)), with_entropy=True)
    for i in range(2):
        expected = _unpadded_logprobs(model, prompts[i], responses[i])
        assert torch.allclose(logp[i, : len(responses[i])], expected, atol=1e-5)
    # The entropy of a 20-way distribution lies in (0, log 20].
    assert (entropy > 0).all() and (entropy <= np.log(20) + 1e-5).all()



def test_model_inputs_of_some_rows_are_cut_to_their_own_longest_prompt_and_response(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    prompts = [[1, 10, 13], [1, 10, 13, 8, 15, 11, 14, 8, 19], [1, 12], [1, 10, 13, 8]]
    responses = [[5, 2], [9, 6, 7, 8, 9, 6, 2], [9, 6, 2], [5, 6, 7, 2]]
    batch = _batch(prompts, responses)  # padded to 9 prompt and 7 response tokens
    whole = model_inputs(batch)
    assert whole.input_ids.shape == (4, 9 + 7) and whole.response_len == 7
    part = model_inputs(batch, np.array([2, 0]))
    # Rows 2 and 0: prompts of 2 and 3 tokens, responses of 3 and 2: 3 + 3 columns.
    assert part.input_ids.tolist() == [[0, 1, 12, 9, 6, 2], [1, 10, 13, 5, 2, 0]]
    assert part.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert part.position_ids.tolist() == [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 4]]
    assert part.response_len == 3 and part.response_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    with torch.no_grad():
        full, _ = response_logprobs(model, whole)
        cut, _ = response_logprobs(model, part)
    for i, row in enumerate([2, 0]):
        n = len(responses[row])
        assert torch.allclose(cut[i, :n], full[row, :n], atol=1e-5)


def test_temperature_scales_logits(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    inputs = model_inputs(_batch([[1, 10]], [[5, 2]]))
    with torch.no_grad():
        hot, _ = response_logprobs(model, inputs, temperature=2.0)
        logits = model(torch.tensor([[1, 10, 5, 2]])).logits[0, 1:3] / 2.0
    expected = torch.log_softmax(logits, -1)[torch.arange(2), torch.tensor([5, 2])]
    assert torch.allclose(hot[0], expected, atol=1e-5)


def test_head_prm_reads_reward_at_the_action_position(tiny_dir, tmp_path):
    prm = HeadPRM.from_pretrained(tiny_dir)
    inputs = model_inputs(_batch([[1, 10, 13]], [[5, 6, 7, 2]]))
    # A fresh head is zero: no process reward before the PRM has learned anything.
    assert torch.count_nonzero(prm.token_rewards(inputs)) == 0
    torch.manual_seed(0)
    with torch.no_grad():
        prm.model.score.weight.normal_()
    base = prm.token_rewards(inputs)
    # r_t sees a_t: changing a_2 changes r_2 but not r_0, r_1 (causal, read at a_t's position).
    changed = prm.token_rewards(model_inputs(_batch([[1, 10, 13]], [[5, 6, 9, 2]])))
    assert torch.allclose(base[0, :2], changed[0, :2], atol=1e-6)
    assert not torch.allclose(base[0, 2], changed[0, 2])
    # Saved in HF format and reloaded as the trained PRM it is (head kept, not re-zeroed).
    prm.save(str(tmp_path / "prm"))
    again = load_prm("head", str(tmp_path / "prm"), "", 0.05)
    assert torch.allclose(again.token_rewards(inputs), base, atol=1e-6)


def test_implicit_prm_is_beta_times_log_ratio(tiny_dir):
    prm = load_prm("implicit", tiny_dir, "", 0.5)
    assert isinstance(prm, ImplicitPRM)
    inputs = model_inputs(_batch([[1, 10, 13]], [[5, 6, 2]]))
    # pi_phi starts as pi_ref: zero reward everywhere.
    assert torch.allclose(prm.token_rewards(inputs), torch.zeros(1, 3), atol=1e-6)
    with torch.no_grad():
        for p in prm.phi.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logp_phi, logp_ref = prm.log_probs(inputs)
    assert torch.allclose(prm.token_rewards(inputs), 0.5 * (logp_phi - logp_ref), atol=1e-6)
    assert not any(p.requires_grad for p in prm.ref.parameters())


def test_wrong_prm_kind_for_a_trained_prm_is_an_error(tiny_dir, tmp_path):
    HeadPRM.from_pretrained(tiny_dir).save(str(tmp_path / "p"))
    with pytest.raises(ValueError, match="prm.kind"):
        load_prm("implicit", str(tmp_path / "p"), "", 0.05)


def test_mlp_tanh_head_is_the_released_head_and_reloads(tiny_dir, tmp_path):
    torch.manual_seed(0)
    prm = load_prm("head", tiny_dir, "", 0.05, head="mlp_tanh")
    layers = list(prm.model.score)
    hidden = prm.model.config.hidden_size
    shapes = [tuple(m.weight.shape) for m in layers if isinstance(m, torch.nn.Linear)]
    assert shapes == [(1024, hidden), (1024, 1024), (1, 1024)]
    assert all(m.bias is not None for m in layers if isinstance(m, torch.nn.Linear))
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Tanh"]
    inputs = model_inputs(_batch([[1, 10, 13]], [[5, 6, 7, 2]]))
    with torch.no_grad():
        base = prm.token_rewards(inputs)
    # Default (random) init: rewards from the start, bounded by the tanh.
    assert torch.count_nonzero(base) == 4 and bool((base.abs() < 1).all())
    # The caller's seed fixes the init.
    torch.manual_seed(0)
    twin = load_prm("head", tiny_dir, "", 0.05, head="mlp_tanh")
    assert torch.equal(twin.model.score[0].weight, prm.model.score[0].weight)
    # Saved and reloaded as the trained PRM it is: the same rewards, whatever the seed now.
    prm.save(str(tmp_path / "prm"))
    torch.manual_seed(1)
    again = load_prm("head", str(tmp_path / "prm"), "", 0.05, head="mlp_tanh")
    with torch.no_grad():
        assert torch.allclose(again.token_rewards(inputs), base, atol=1e-6)
    with pytest.raises(ValueError, match="prm.head=mlp_tanh"):
        load_prm("head", str(tmp_path / "prm"), "", 0.05)


class _FixedLogits(torch.nn.Module):
    """A stand-in causal LM whose logits are given [B, T + 1, V]: the model paths' own arithmetic,
    checked against the algo/ functions on values worked out by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0, use_cache=False):
        return SimpleNamespace(logits=self.logits[:, -logits_to_keep:] if logits_to_keep else self.logits)


def _inputs(targets: list[int], mask: list[float]) -> ModelInputs:
    t = len(targets)
    ids = torch.tensor([[0] + targets])
    return ModelInputs(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(t + 1)[None],
                       response_len=t, response_mask=torch.tensor([mask]))


LN = math.log


def test_response_entropy_is_algo_entropy_with_its_guard():
    # Position 0: uniform over 3 -> ln 3. Position 1: logits (ln 3, 0, -inf) -> p = (3/4, 1/4, 0),
    # H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351; the p = 0 action adds 0, not 0 * -inf = NaN.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN(3.0), 0.0, -math.inf], [0.0, 0.0, 0.0]]])
    logp, entropy = response_logprobs(_FixedLogits(logits), _inputs([0, 1], [1.0, 1.0]), with_entropy=True)
    assert torch.allclose(logp, torch.tensor([[LN(1 / 3), LN(1 / 4)]]))
    assert torch.allclose(entropy, torch.tensor([[LN(3.0), -(0.75 * LN(0.75) + 0.25 * LN(0.25))]]))
    assert torch.equal(entropy, entropy_from_logits(logits[:, :-1]))


def test_implicit_prm_rewards_are_algo_implicit_token_rewards():
    # beta 0.5. Token 0 (id 0): pi_phi (2/3, 1/3, 0), pi_ref uniform -> log ratio ln 2.
    # Token 1 (id 1): pi_phi (1/4, 3/4, 0), pi_ref (1/2, 1/2, 0) -> ln 1.5. Token 2 is padding and
    # impossible under both (log-prob -inf, ratio NaN): its reward is 0, not NaN.
    phi = torch.tensor([[[LN(2.0), 0.0, -math.inf], [0.0, LN(3.0), -math.inf], [0.0, 0.0, -math.inf], [0.0, 0.0, 0.0]]])
    ref = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, -math.inf], [0.0, 0.0, -math.inf], [0.0, 0.0, 0.0]]])
    prm = ImplicitPRM(_FixedLogits(phi), _FixedLogits(ref), beta=0.5, ref_path="")
    inputs = _inputs([0, 1, 2], [1.0, 1.0, 0.0])
    rewards = prm.token_rewards(inputs)
    assert torch.allclose(rewards, torch.tensor([[0.5 * LN(2.0), 0.5 * LN(1.5), 0.0]]))
    logp_phi, logp_ref = prm.log_probs(inputs)
    assert torch.equal(rewards, implicit_token_rewards(logp_phi, logp_ref, 0.5, inputs.response_mask))


class _Counting(torch.nn.Module):
    """Wraps a model and counts the rows it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, input_ids, **kw):
        self.rows += input_ids.shape[0]
        return self.model(input_ids=input_ids, **kw)


def test_frozen_logprobs_are_computed_once_per_trajectory_whatever_the_batch(tiny_dir):
    from repirl_ray.models.policy import load_causal_lm
    from repirl_ray.models.prm import FrozenLogprobs
    from tests.helpers import make_rollouts

    ref = _Counting(load_causal_lm(tiny_dir).eval())
    cache = FrozenLogprobs(ref, max_rows=10)
    batch = make_rollouts(num_prompts=2)  # 8 rows of different lengths
    first = cache(model_inputs(batch))
    with torch.no_grad():
        direct, _ = response_logprobs(ref, model_inputs(batch))
    assert ref.rows == 16 and torch.equal(first, torch.where(torch.from_numpy(batch.response_mask) > 0, direct, 0.0))
    # The same trajectories in another order, another micro-batch and another padding (longer
    # responses beside them): read back, the model not run.
    rows = np.array([5, 0, 3])
    wider = Rollouts.concat([batch.select(rows), make_rollouts(num_prompts=1, seed=7, max_len=12)])
    full = model_inputs(wider)  # model_inputs of rows 0-2 alone would cut the padding: slice it
    part = cache(ModelInputs(full.input_ids[:3], full.attention_mask[:3], full.position_ids[:3], full.response_len,
                             full.response_mask[:3]))
    assert ref.rows == 16 and part.shape[1] == wider.response_ids.shape[1]
    t = batch.response_ids.shape[1]
    assert torch.equal(part[:, :t], first[rows]) and not part[:, t:].any()
    # Trajectories not seen before: the whole micro-batch is computed and remembered; beyond
    # max_rows the least recently used go (rows 1 and 2 of the first batch).
    cache(model_inputs(wider))
    assert ref.rows == 16 + 7 and len(cache.rows) == 10
    cache(model_inputs(batch, np.array([0, 3, 4, 5, 6, 7])))
    assert ref.rows == 23
    cache(model_inputs(batch, np.array([1])))
    assert ref.rows == 24


def test_one_irl_step_and_its_scoring_run_the_reference_once_per_trajectory(tiny_dir):
    from repirl_ray.config import IRLConfig, PRMConfig
    from repirl_ray.learners.prm import PRMLearner
    from tests.helpers import make_rollouts

    learner = PRMLearner(PRMConfig(kind="implicit", micro_batch_size=4), IRLConfig(), tiny_dir, seed=0)
    ref = _Counting(learner.prm.ref)
    learner.prm.ref_logprobs.model = ref
    rollouts, demos = make_rollouts(num_prompts=3), make_rollouts(num_prompts=3, seed=1, is_demo=True)
    learner.update_batch(rollouts, demos)  # the weights pass and the gradient pass
    learner.score_batch(rollouts)  # the rewards for the policy
    assert ref.rows == len(rollouts) + len(demos)  # 15 trajectories, each through pi_ref once (was 3 times)


def test_an_irl_step_whose_rows_fit_one_micro_batch_runs_phi_once_per_trajectory(tiny_dir):
    """The weights pass reuses the gradient pass's forward when the mini-batch is one
    micro-batch; with several micro-batches phi runs twice per row (no-grad, then with grad)."""
    from repirl_ray.config import IRLConfig, PRMConfig
    from repirl_ray.learners.prm import PRMLearner
    from tests.helpers import make_rollouts

    rollouts, demos = make_rollouts(num_prompts=3), make_rollouts(num_prompts=3, seed=1, is_demo=True)
    rows = len(rollouts) + len(demos)  # 15
    for micro, phi_rows in ((rows, rows), (4, 2 * rows)):
        learner = PRMLearner(PRMConfig(kind="implicit", micro_batch_size=micro, lr=1e-2), IRLConfig(), tiny_dir, seed=0)
        phi = _Counting(learner.prm.phi)
        learner.prm.phi = phi
        before = {k: v.clone() for k, v in phi.model.state_dict().items()}
        learner.update_batch(rollouts, demos)
        assert phi.rows == phi_rows, micro
        assert all(not torch.equal(before[k], v) for k, v in phi.model.state_dict().items())
