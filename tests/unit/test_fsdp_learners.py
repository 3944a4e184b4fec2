"""Sharded learners (FSDP2 over 2 gloo ranks on CPU, torch.multiprocessing.spawn) against the
plain 1-rank learner, mixed precision with fp32 masters, and checkpoints of a sharded group.

One spawn runs every 2-rank scenario (a spawn costs seconds of imports); rank 0 writes what it
saw to .npz files, the tests compare them with 1-rank runs in this process.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from repirl_ray.config import AdvantageConfig, IRLConfig, PolicyConfig, PRMConfig
from repirl_ray.learners.common import checkpoint_files
from repirl_ray.learners.distributed import free_port
from repirl_ray.learners.policy import PolicyLearner
from repirl_ray.learners.prm import PRMLearner
from repirl_ray.models.prm import HeadPRM
from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2
from tests.helpers import make_rollouts

K = 3  # samples per prompt: 3 prompts x 3 = 9 rows, uneven over 2 ranks (5 / 4)
# Policy: two mini-batches (5 + 4 rows), micro-batches of 2: rank 0 runs 2 micro-batches of
# the first mini-batch and rank 1 one real and one zero-weight one. A small grad_clip, so the
# clip by the global norm is active.
POLICY = dict(lr=1e-3, mini_batch_size=5, micro_batch_size=2, grad_clip=0.05, num_threads=1)
ADVANTAGE = AdvantageConfig(c_process=0.2)
# PRM: 2 prompts per mini-batch (two optimizer steps), micro-batches of 3 rows.
PRM = dict(lr=1e-3, micro_batch_size=3, prompts_per_mini_batch=2, num_threads=1, beta=0.5)
IRL = IRLConfig(reward_l2=0.1)
PRM_CASES = {"implicit": ("implicit", "repirl"), "head": ("head", "repirl"), "prime": ("implicit", "prime")}


def make_batch(num_prompts=3, seed=0, is_demo=False, version=0):
    """test_learners' batch, a little longer and with larger log-probs (so clipping is active)."""
    return make_rollouts(num_prompts, seed, is_demo, version, max_len=8, logp_range=(0.5, 3.5), k=K)


def token_rewards_for(batch, seed=7):
    return np.random.default_rng(seed).normal(size=batch.response_mask.shape).astype(np.float32) * batch.response_mask


def policy_learner(model_dir, **kw):
    cfg = PolicyConfig(**{**POLICY, **kw.pop("cfg", {})})
    return PolicyLearner(cfg, model_dir, advantage=ADVANTAGE, samples_per_prompt=K, seed=0, **kw)


def prm_learner(model_dir, case, **kw):
    kind, loss = PRM_CASES[case]
    return PRMLearner(PRMConfig(kind=kind, loss=loss, **PRM), IRL, model_dir, seed=0, **kw)


def prm_dir(dirs, case):
    return dirs["head"] if case == "head" else dirs["tiny"]


# ------------------------------------------------------------------------------------------------
# The 2-rank side (runs in the spawned processes)
def _two_ranks(rank: int, world: int, url: str, dirs: dict, out: str) -> None:
    torch.set_num_threads(1)
    group = dict(rank=rank, world_size=world, dist_url=url)
    rollouts, demos = make_batch(seed=1), make_batch(seed=2, is_demo=True)
    rewards = token_rewards_for(rollouts)

    def keep(name, params, metrics):
        if rank == 0:
            np.savez(os.path.join(out, f"{name}.npz"), **params)
            with open(os.path.join(out, f"{name}.json"), "w") as f:
                json.dump(metrics, f)
        else:
            assert params is None  # arrays come back on rank 0 only

    # One update each, to compare with one rank.
    policy = policy_learner(dirs["tiny"], **group)
    metrics = policy.update(None, rewards, rollouts)
    keep("policy", policy.parameters_numpy(), metrics)
    logp = policy.logprobs(rollouts)
    assert (logp is not None) == (rank == 0)
    if rank == 0:
        np.save(os.path.join(out, "policy_logprobs.npy"), logp)
    for case in PRM_CASES:
        prm = prm_learner(prm_dir(dirs, case), case, **group)
        metrics = prm.update(None, rollouts, demos)
        scores, score_stats = prm.score(None, rollouts)
        assert (scores is not None) == (rank == 0)
        keep(f"prm_{case}", prm.parameters_numpy(), {**metrics, **score_stats})

    # update, save, update  against  (fresh) load, update; the PRM saved in bfloat16, so its
    # fp32 masters come back from the optimizer shards.
    ckpt = os.path.join(out, "ckpt")
    second = make_batch(seed=5, version=1)
    a = policy_learner(dirs["tiny"], **group)
    b = prm_learner(dirs["tiny"], "implicit", dtype="bfloat16", **group)
    a.update(None, rewards, rollouts)
    b.update(None, rollouts, demos)
    a.save(os.path.join(ckpt, "policy"))
    b.save(os.path.join(ckpt, "prm"))
    a.update(None, token_rewards_for(second), second)
    b.update(None, second, demos)
    keep("continued_policy", a.parameters_numpy(), {"version": a.version})
    keep("continued_prm", b.parameters_numpy(), {"version": b.version})
    c = policy_learner(dirs["tiny"], **group)
    d = prm_learner(dirs["tiny"], "implicit", dtype="bfloat16", **group)
    c.load(os.path.join(ckpt, "policy"))
    d.load(os.path.join(ckpt, "prm"))
    c.update(None, token_rewards_for(second), second)
    d.update(None, second, demos)
    keep("resumed_policy", c.parameters_numpy(), {"version": c.version})
    keep("resumed_prm", d.parameters_numpy(), {"version": d.version})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """The tiny Qwen2 + char tokenizer, and a head PRM with a non-zero head (a fresh head is
    zero, so one update would move the head alone)."""
    root = tmp_path_factory.mktemp("fsdp_models")
    tok = build_char_tokenizer()
    tiny = root / "tiny"
    build_tiny_qwen2(len(tok), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=3).save_pretrained(tiny)
    tok.save_pretrained(tiny)
    head = HeadPRM.from_pretrained(str(tiny))
    torch.manual_seed(0)
    with torch.no_grad():
        head.model.score.weight.normal_(std=0.5)
    head.save(str(root / "head"))
    tok.save_pretrained(root / "head")
    return {"tiny": str(tiny), "head": str(root / "head")}


@pytest.fixture(scope="module")
def two_rank_results(dirs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two_ranks"))
    mp.spawn(_two_ranks, args=(2, f"tcp://127.0.0.1:{free_port()}", dirs, out), nprocs=2, join=True)
    return out


def _load(out, name):
    with np.load(os.path.join(out, f"{name}.npz")) as f:
        params = {k: f[k] for k in f.files}
    with open(os.path.join(out, f"{name}.json")) as f:
        return params, json.load(f)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def _changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not np.array_equal(before[k], after[k])]


# ------------------------------------------------------------------------------------------------
def test_two_rank_policy_update_equals_one_rank(dirs, two_rank_results):
    rollouts = make_batch(seed=1)
    one = policy_learner(dirs["tiny"])
    before = one.parameters_numpy()
    metrics = one.update(None, token_rewards_for(rollouts), rollouts)
    params, two_metrics = _load(two_rank_results, "policy")
    diff = _max_diff(one.parameters_numpy(), params)
    print(f"\npolicy: max |param diff| 1 rank vs 2 ranks = {diff:.2e}")
    assert diff <= 1e-5
    assert len(_changed(before, params)) == len(before)  # the update did move every parameter
    # Metrics reduced over ranks are the 1-rank metrics (the clip by the global norm included).
    for key in ("policy/loss", "policy/pg_loss", "policy/entropy", "policy/clipfrac", "policy/approx_kl", "policy/grad_norm", "policy/logprob_mismatch"):
        assert two_metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
    assert metrics["policy/grad_norm"] > POLICY["grad_clip"]  # clipping was active
    np.testing.assert_allclose(np.load(os.path.join(two_rank_results, "policy_logprobs.npy")), one.logprobs(rollouts), atol=1e-5)


@pytest.mark.parametrize("case", list(PRM_CASES))
def test_two_rank_prm_update_equals_one_rank(dirs, two_rank_results, case):
    rollouts, demos = make_batch(seed=1), make_batch(seed=2, is_demo=True)
    one = prm_learner(prm_dir(dirs, case), case)
    before = one.parameters_numpy()
    metrics = one.update(None, rollouts, demos)
    _, stats = one.score(None, rollouts)
    metrics.update(stats)
    params, two_metrics = _load(two_rank_results, f"prm_{case}")
    diff = _max_diff(one.parameters_numpy(), params)
    print(f"\nPRM {case}: max |param diff| 1 rank vs 2 ranks = {diff:.2e}")
    assert diff <= 1e-5
    assert len(_changed(before, params)) == len(before)
    for key, value in metrics.items():
        if not key.startswith("timing/"):
            assert two_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_two_rank_save_then_load_restores_exactly(dirs, two_rank_results):
    for role in ("policy", "prm"):
        continued, meta_c = _load(two_rank_results, f"continued_{role}")
        resumed, meta_r = _load(two_rank_results, f"resumed_{role}")
        assert meta_c == meta_r  # the version came back
        diff = _max_diff(continued, resumed)
        print(f"\n{role}: max |param diff| update-save-update vs load-update = {diff:.2e}")
        assert diff == 0.0
        folder = os.path.join(two_rank_results, "ckpt", role)
        assert [f for f in checkpoint_files(2) if not os.path.isfile(os.path.join(folder, f))] == []
    # The PRM's HF folder is in model.dtype (bfloat16) and loads as an HF model.
    from safetensors import safe_open

    with safe_open(os.path.join(two_rank_results, "ckpt", "prm", "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(os.path.join(two_rank_results, "ckpt", "prm"))


def test_load_with_another_world_size_is_a_clear_error(dirs, two_rank_results):
    one = policy_learner(dirs["tiny"])
    with pytest.raises(ValueError, match=r"learner_state\.pt was saved by a learner group of 2 ranks but this group has 1"):
        one.load(os.path.join(two_rank_results, "ckpt", "policy"))


# ------------------------------------------------------------------------------------------------
# Mixed precision (one rank: FSDP2 on a 1-rank group in this process)
def _whole(grad) -> np.ndarray:
    from torch.distributed.tensor import DTensor

    return (grad.full_tensor() if isinstance(grad, DTensor) else grad).float().numpy()


PAD = 0  # make_rollouts' pad_id
EMBEDDINGS = {"policy": "model.embed_tokens.weight", "prm_implicit": "phi.model.embed_tokens.weight",
              "prm_head": "model.model.embed_tokens.weight"}


@pytest.mark.parametrize("role", ["policy", "prm_implicit", "prm_head"])
def test_bf16_compute_changes_every_fp32_master_at_lr_5e_7(dirs, role):
    """Plain AdamW on bf16 weights loses an update of ~lr = 5e-7 (below half a bf16 ulp of any
    weight above ~1e-4); fp32 masters with bf16 compute keep it."""
    rollouts, demos = make_batch(seed=1), make_batch(seed=2, is_demo=True)
    if role == "policy":
        learner = PolicyLearner(
            PolicyConfig(**{**POLICY, "lr": 5e-7, "grad_clip": 1.0}), dirs["tiny"], advantage=ADVANTAGE, samples_per_prompt=K,
            compute_dtype="bfloat16", dtype="bfloat16",
        )
        step = lambda: learner.update(None, token_rewards_for(rollouts), rollouts)  # noqa: E731
    else:
        case = role.split("_")[1]
        kind, loss = PRM_CASES[case]
        cfg = PRMConfig(kind=kind, loss=loss, **{**PRM, "lr": 5e-7})
        learner = PRMLearner(cfg, IRL, prm_dir(dirs, case), compute_dtype="bfloat16", dtype="bfloat16")
        step = lambda: learner.update(None, rollouts, demos)  # noqa: E731
    before = learner.parameters_numpy()
    assert all(v.dtype == np.float32 for v in before.values())  # masters are fp32
    step()
    after = learner.parameters_numpy()
    # Every fp32 master element with a gradient moves by about lr (a bf16 weight would not). Those
    # without one: the head PRM's padding-token embedding (id 0: no loss sees a padding position;
    # a tied lm_head, as in the policy and pi_phi, still moves it), and rarely an element whose
    # bf16 gradient cancels to exactly 0 (seen once: 1 of 640 embedding entries; which one
    # depends on the rounding).
    trained = learner.model if role == "policy" else learner.trainable
    prefix = "" if role == "policy" else ("model." if case == "head" else "phi.")
    grads = {prefix + n: _whole(p.grad) for n, p in trained.named_parameters() if p.requires_grad}
    assert set(grads) == set(before)
    for k in before:
        still = before[k] == after[k]
        assert not (still & (grads[k] != 0)).any(), k
        if k == EMBEDDINGS[role] and role == "prm_head":  # untied: nothing reaches the padding row
            assert still[PAD].all()
    moved = sum(int((before[k] != after[k]).sum()) for k in before) / sum(v.size for v in before.values())
    assert moved > 0.99
    # What leaves the learner is in model.dtype.
    assert {v.dtype for v in learner.full_state_dict().values()} == {torch.bfloat16}
