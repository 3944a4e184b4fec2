"""The learners as plain classes (no Ray): a few steps at a high learning rate change every
trainable parameter; micro-batching does not change the update; save/load restores exactly."""

import numpy as np
import pytest
import torch

from repirl_ray.algo import NULL_SCORERS, STEP_QUALITY_KEYS
from repirl_ray.batch import Rollouts, build_rollouts
from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner, null_metrics, null_step_quality, step_quality
from tests.helpers import K, make_rollouts


def changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not np.allclose(before[k], after[k])]


def test_policy_update_changes_every_parameter_and_logs(tiny_dir):
    cfg = PolicyConfig(lr=1e-2, mini_batch_size=8, micro_batch_size=4, num_threads=1)
    learner = PolicyLearner(cfg, tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
    before = learner.parameters_numpy()
    batch = make_rollouts()
    for _ in range(3):
        metrics = learner.update(None, None, batch)
    after = learner.parameters_numpy()
    assert not [k for k in before if k not in changed(before, after)], "some parameters never changed"
    for key in ("policy/loss", "policy/pg_loss", "policy/entropy", "policy/clipfrac", "policy/approx_kl", "policy/grad_norm"):
        assert np.isfinite(metrics[key]), key
    assert metrics["policy/version"] == 3


def step_gradients(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The gradient of the learner's last optimizer step (a learner zeroes it only before the
    next step): with one mini-batch, the whole accumulated gradient of the update."""
    return {n: p.grad.numpy().copy() for n, p in module.named_parameters() if p.requires_grad}


def assert_same_gradient(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Micro-batching only changes the order of float32 sums. Compared on the gradient, not on
    the parameters after the step: AdamW's first step is lr * g / (|g| + 1e-8), which turns a
    rounding difference of 1e-9 on an element with |g| near 1e-8 into a parameter difference of
    order lr, whatever the tolerance. The bound: 1e-5 of the largest gradient entry, 50x the
    measured difference (max |dg| / max |g| = 1e-7 to 2e-7 on the 2-core dev machine, a few float32
    ulps) and far below what a wrongly weighted micro-batch changes (order max |g|)."""
    scale = max(float(np.abs(g).max()) for g in a.values())
    assert scale > 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5 * scale, err_msg=k)


def test_policy_micro_batching_does_not_change_the_update(tiny_dir):
    batch = make_rollouts(num_prompts=2, seed=3)  # 8 rows: one mini-batch, one optimizer step
    adv = np.random.default_rng(0).normal(size=batch.response_mask.shape).astype(np.float32)
    results = []
    for micro in (8, 1):  # 8 x accumulation 1 against 1 x accumulation 8
        cfg = PolicyConfig(lr=1e-3, mini_batch_size=8, micro_batch_size=micro, num_threads=1)
        learner = PolicyLearner(cfg, tiny_dir, seed=0)
        learner.ppo_update(batch, adv)
        results.append(step_gradients(learner.model))
    assert_same_gradient(*results)


def test_policy_save_load_roundtrip(tiny_dir, tmp_path):
    cfg = PolicyConfig(lr=1e-2, mini_batch_size=8, micro_batch_size=8, num_threads=1)
    a = PolicyLearner(cfg, tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
    a.update(None, None, make_rollouts())
    a.save(str(tmp_path / "policy"))
    b = PolicyLearner(cfg, tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
    b.load(str(tmp_path / "policy"))
    pa, pb = a.parameters_numpy(), b.parameters_numpy()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa) and b.version == a.version
    # The same next update from both: optimizer moments and shuffling RNG came back too.
    batch = make_rollouts(seed=5)
    a.update(None, None, batch)
    b.update(None, None, batch)
    pa, pb = a.parameters_numpy(), b.parameters_numpy()
    assert all(np.allclose(pa[k], pb[k], atol=1e-7) for k in pa)


@pytest.mark.parametrize("kind,loss,head,loss_form", [
    ("head", "repirl", "linear", "paper"), ("implicit", "repirl", "linear", "paper"), ("implicit", "prime", "linear", "paper"),
    ("head", "repirl", "mlp_tanh", "released"),  # the authors' released recipe
])
def test_prm_update_changes_every_trainable_parameter(tiny_dir, kind, loss, head, loss_form):
    cfg = PRMConfig(kind=kind, loss=loss, head=head, lr=1e-2, micro_batch_size=4, num_threads=1, beta=0.5)
    learner = PRMLearner(cfg, IRLConfig(reward_l2=0.1, loss_form=loss_form), tiny_dir)
    before = learner.parameters_numpy()
    rollouts, demos = make_rollouts(seed=1), make_rollouts(seed=2, is_demo=True)
    for step in range(3):
        metrics = learner.update(None, rollouts, demos)
        if step == 0 and loss == "prime":
            # pi_phi starts equal to pi_ref: every predicted probability is sigmoid(0) = 0.5, and the
            # batch mean comes out as 0.5 however the batch is split into micro-batches.
            assert metrics["prm/prob"] == pytest.approx(0.5)
    after = learner.parameters_numpy()
    assert not [k for k in before if k not in changed(before, after)], "some PRM parameters never changed"
    assert np.isfinite(metrics["prm/loss"])
    if loss == "repirl":
        # 2 prompts: 2 demos + 4 correct rollouts in P, 4 failed rollouts in N.
        assert metrics["prm/num_pos"] == 6 and metrics["prm/num_neg"] == 4
        assert 1.0 <= metrics["prm/ess"] <= 4.0
    if loss_form == "released":
        assert metrics["prm/ess"] == 4.0 and metrics["prm/ess_within"] == 1.0  # every weight 1


def test_prm_learns_to_separate_positives_from_negatives(tiny_dir):
    """The IRL step raises the mean reward of P above that of N on a fixed batch."""
    cfg = PRMConfig(lr=3e-3, micro_batch_size=16, num_threads=1)
    learner = PRMLearner(cfg, IRLConfig(reward_l2=0.0), tiny_dir)
    rollouts, demos = make_rollouts(seed=1), make_rollouts(seed=2, is_demo=True)
    for _ in range(20):
        metrics = learner.update(None, rollouts, demos)
    assert metrics["prm/reward_pos"] > metrics["prm/reward_neg"]
    rewards, _ = learner.score(None, rollouts)
    rbar = (rewards * rollouts.response_mask).sum(1) / rollouts.response_mask.sum(1)
    assert rbar[rollouts.outcome == 1].mean() > rbar[rollouts.outcome == 0].mean()


def test_prm_update_reads_sampling_logprobs_only_under_the_mask(tiny_dir):
    """The importance weights' log pi_old sums are algo.masked_sum: NaN in the padding of the
    sampling log-probs (never read) gives the same update as zeros there, bit for bit."""
    rollouts, demos = make_rollouts(seed=1), make_rollouts(seed=2, is_demo=True)
    poisoned = Rollouts(**{**vars(rollouts), "sampling_logprobs": np.where(
        rollouts.response_mask > 0, rollouts.sampling_logprobs, np.float32("nan")).astype(np.float32)})
    assert np.isnan(poisoned.sampling_logprobs).any()
    results = []
    for batch in (rollouts, poisoned):
        learner = PRMLearner(PRMConfig(lr=1e-2, micro_batch_size=16, num_threads=1), IRLConfig(), tiny_dir)
        learner.update(None, batch, demos)
        results.append(learner.parameters_numpy())
    for name, value in results[0].items():
        assert np.isfinite(results[1][name]).all() and np.array_equal(value, results[1][name]), name


def test_prm_micro_batching_does_not_change_the_update(tiny_dir, tmp_path):
    rollouts, demos = make_rollouts(seed=1), make_rollouts(seed=2, is_demo=True)
    irl = IRLConfig(reward_l2=0.5)
    # Every PRM starts at r = 0, where the reward_l2 term has no gradient: one step first, so
    # that the term's whole-batch token count is checked too.
    start = PRMLearner(PRMConfig(lr=1e-2, micro_batch_size=16, num_threads=1), irl, tiny_dir)
    start.update_batch(rollouts, demos)
    start.save(str(tmp_path / "prm"))
    results = []
    for micro in (16, 3):
        learner = PRMLearner(PRMConfig(lr=1e-3, micro_batch_size=micro, num_threads=1), irl, tiny_dir)
        learner.load(str(tmp_path / "prm"))
        learner.update_batch(rollouts, demos)  # prompts_per_mini_batch 0: one optimizer step
        results.append(step_gradients(learner.prm))
    assert_same_gradient(*results)



def test_micro_batches_in_length_order_keep_every_ranks_share():
    from repirl_ray.learners.distributed import Ranks

    lengths = np.array([5, 1, 9, 3, 7, 2, 8])
    one = Ranks(0, 1, sharded=False)
    assert [m.tolist() for m, _ in one.micro_batches(np.arange(7), 3, lengths)] == [[1, 5, 3], [0, 4, 6], [2]]
    # Two ranks: the shares stay rows 0-3 and 4-6, each in length order; rank 1's second
    # micro-batch is the zero-weight one that keeps the collectives in step.
    r0, r1 = Ranks(0, 2, sharded=True), Ranks(1, 2, sharded=True)
    assert [(m.tolist(), w) for m, w in r0.micro_batches(np.arange(7), 3, lengths)] == [([1, 3, 0], 1.0), ([2], 1.0)]
    assert [(m.tolist(), w) for m, w in r1.micro_batches(np.arange(7), 3, lengths)] == [([5, 4, 6], 1.0), ([0], 0.0)]


class _CountingTokens(torch.nn.Module):
    """Wraps a model and counts the rows and token positions (padding included) it runs on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.tokens = model, 0, 0

    def forward(self, input_ids, **kw):
        self.rows += input_ids.shape[0]
        self.tokens += input_ids.numel()
        return self.model(input_ids=input_ids, **kw)


def test_prm_runs_on_micro_batches_of_similar_rows_cut_to_their_length(tiny_dir, monkeypatch):
    """The fused IRL step in pieces of 4 rows sorted by length: phi runs once per row, on fewer
    token positions than the padded batch, and the gradient is the one-piece update's."""
    import repirl_ray.learners.prm as prm_module
    from repirl_ray.learners.common import row_lengths

    rollouts = make_rollouts(num_prompts=3, seed=1, max_len=14)
    demos = make_rollouts(num_prompts=3, seed=2, is_demo=True, max_len=14)
    batch = Rollouts.concat([rollouts, demos])
    padded = len(batch) * (batch.prompt_ids.shape[1] + batch.response_ids.shape[1])
    results = {}
    for piece in (64, 4):
        monkeypatch.setattr(prm_module, "PIECE_ROWS", piece)
        learner = PRMLearner(PRMConfig(lr=1e-3, micro_batch_size=64, num_threads=1), IRLConfig(), tiny_dir)
        phi = _CountingTokens(learner.prm.phi)
        learner.prm.phi = phi
        learner.update_batch(rollouts, demos)
        results[piece] = (phi.rows, phi.tokens, step_gradients(learner.prm))
    assert results[64][0] == results[4][0] == len(batch)  # fused: once per row
    real = int(row_lengths(batch).sum())  # prompt and response tokens, no padding
    assert results[64][1] == padded and real <= results[4][1] < padded
    assert_same_gradient(results[64][2], results[4][2])


def test_recompute_with_pi_old_equal_to_the_sampler_is_sampler_mode(tiny_dir):
    """old_logprobs=recompute: pi_old from the learner, TIS weight min(exp(pi_old - sampler), cap).
    With the sampler's log-probs equal to pi_old, every weight is 1 and the update is sampler mode's."""
    batch = make_rollouts(seed=3)
    base = dict(lr=1e-3, mini_batch_size=4, micro_batch_size=2, num_threads=1)
    batch.sampling_logprobs = PolicyLearner(PolicyConfig(**base), tiny_dir).logprobs(batch)
    results = {}
    for mode in ("sampler", "recompute"):
        learner = PolicyLearner(PolicyConfig(**base, old_logprobs=mode), tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
        results[mode] = (learner.update(None, None, batch), learner.parameters_numpy())
    for k, v in results["sampler"][1].items():
        np.testing.assert_allclose(results["recompute"][1][k], v, atol=1e-7, err_msg=k)
    recompute, sampler = results["recompute"][0], results["sampler"][0]
    assert recompute["policy/logprob_mismatch"] == 0.0 and recompute["policy/tis_capped_frac"] == 0.0
    # Sampler mode measures the mismatch on the first mini-batch, before the first step.
    assert sampler["policy/logprob_mismatch"] < 1e-6 and "policy/tis_capped_frac" not in sampler


def test_recompute_caps_the_importance_weight(tiny_dir):
    """Sampler log-probs 1 nat below pi_old on the first 4 rows: weight min(e, 2) = 2 there, so
    exactly their share of the tokens is capped, and the update moves differently."""
    batch = make_rollouts(seed=3)
    base = dict(lr=1e-3, mini_batch_size=8, micro_batch_size=4, num_threads=1, old_logprobs="recompute")
    pi_old = PolicyLearner(PolicyConfig(**base), tiny_dir).logprobs(batch)
    params, metrics = [], []
    for shift in (0.0, 1.0):
        batch.sampling_logprobs = pi_old.copy()
        batch.sampling_logprobs[:4] -= shift * batch.response_mask[:4]
        learner = PolicyLearner(PolicyConfig(**base), tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
        metrics.append(learner.update(None, None, batch))
        params.append(learner.parameters_numpy())
    share = batch.response_mask[:4].sum() / batch.response_mask.sum()
    assert metrics[1]["policy/tis_capped_frac"] == pytest.approx(share)
    assert metrics[1]["policy/logprob_mismatch"] == pytest.approx(share, rel=1e-5)
    assert changed(params[0], params[1])


def test_step_quality_by_hand():
    """Two samples, 3 steps each: steps before the first wrong step score higher."""
    n = 2
    batch = build_rollouts(
        [[1, 5]] * n, [[5, 5, 5, 2]] * n, None, prompt_index=[0, 0], sample_index=[0, 1], outcome=[1.0, 0.0],
        format_ok=[1.0] * n, is_demo=False, policy_version=0, step_ids=[[0, 1, 2, -1]] * n, first_wrong=[-1, 1],
        pad_id=0,
    )
    rewards = np.array([[0.9, 0.8, 0.7, 0.0], [0.6, 0.1, 0.95, 0.0]], np.float32)
    q = step_quality(rewards, batch)
    # positives: 0.9, 0.8, 0.7, 0.6; negatives: 0.1 (below all 4) and 0.95 (above all 4): 4 / 8.
    assert q["step_auroc"] == 0.5
    # Prefix min: sample 1's steps score (0.6, 0.1, 0.1), every negative below every positive.
    assert q["step_auroc_prefix_min"] == 1.0
    assert q["first_error_acc"] == 1.0  # argmin of (0.6, 0.1, 0.95) is step 1 = the first wrong
    # Split: the first wrong step (0.1) is below every correct step; the step after it (0.95) above.
    assert q["step_auroc_first_wrong"] == 1.0 and q["step_auroc_after_first_wrong"] == 0.0
    nulls = null_metrics(null_step_quality(batch))
    # Minus the step index: positives 0, -1, -2 (sample 0) and 0 against -1, -2 (sample 1):
    # 2 + 1.5 + 0.5 + 2 = 6 of 8 pairs; its lowest step (2) is not the first wrong (1).
    assert nulls["step_auroc_null_position"] == pytest.approx(0.75)
    assert nulls["first_error_acc_null_position"] == 0.0
    # Both responses have 4 tokens: the length scorer ties everything.
    assert nulls["step_auroc_null_length"] == 0.5
    assert set(nulls) == {f"{k}_null_{s}" for k in STEP_QUALITY_KEYS for s in NULL_SCORERS}


def with_step_labels(batch: Rollouts, first_wrong: list[int]) -> Rollouts:
    """Every response token its own step (EOS, the last token, in none) and the given labels."""
    t = batch.response_mask.shape[1]
    ids = np.where(batch.response_mask > 0, np.arange(t)[None, :], -1)
    last = batch.response_mask.sum(1).astype(int) - 1
    ids[np.arange(len(batch)), last] = -1
    batch.step_ids = ids.astype(np.int16)
    batch.first_wrong = np.asarray(first_wrong, np.int16)
    return batch


def test_oracle_process_reward_needs_no_prm_and_needs_step_labels(tiny_dir):
    cfg = PolicyConfig(lr=1e-3, mini_batch_size=8, micro_batch_size=8, num_threads=1)
    adv = AdvantageConfig(c_outcome=0.0, c_process=1.0, whiten=False)
    learner = PolicyLearner(cfg, tiny_dir, advantage=adv, samples_per_prompt=K, oracle_process_reward=True)
    with pytest.raises(ValueError, match="no step labels"):
        learner.update(None, None, make_rollouts(seed=3))
    batch = with_step_labels(make_rollouts(seed=3), [-1, 0, -1, 1] * 2)
    metrics = learner.update(None, None, batch)
    # c_o = 0: the process channel is the whole signal, and the oracle's rewards reach it.
    assert metrics["advantage/process_abs_mean"] > 0
    assert metrics["advantage/abs_mean"] == pytest.approx(metrics["advantage/process_abs_mean"])


def test_recompute_logs_the_policy_lag_apart_from_the_kernel_mismatch(tiny_dir):
    """Rows sampled by the learner's own version carry only the kernels' gap (here 0: the sampler's
    log-probs are pi_old's); rows of an older version (the pipelined loop) carry the lag, here
    1 nat on every token, so their weight min(e, 2) is capped."""
    batch = make_rollouts(seed=3)
    base = dict(lr=1e-3, mini_batch_size=8, micro_batch_size=4, num_threads=1, old_logprobs="recompute")
    learner = PolicyLearner(PolicyConfig(**base), tiny_dir, advantage=AdvantageConfig(c_process=0.0), samples_per_prompt=K)
    batch.sampling_logprobs = learner.logprobs(batch)
    learner.version = 1
    batch.policy_version = np.array([1] * 4 + [0] * 4)
    batch.sampling_logprobs[4:] -= batch.response_mask[4:]
    metrics = learner.update(None, None, batch)
    assert metrics["policy/logprob_mismatch"] == 0.0 and metrics["policy/tis_capped_frac"] == 0.0
    assert metrics["policy/logprob_lag"] == pytest.approx(1.0, rel=1e-5)
    assert metrics["policy/tis_capped_frac_lag"] == 1.0
    # A batch all of the learner's version logs no lag.
    batch.policy_version[:] = 2
    learner.version = 2
    assert "policy/logprob_lag" not in learner.update(None, None, batch)
