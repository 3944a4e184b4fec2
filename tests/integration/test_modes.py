"""Every mode of ALGORITHM.md section 6 (configs/modes/*.yaml) runs two iterations through real
actors on the tiny world, and does what its config says; `repirl eval` and `repirl bon` work on
the checkpoint of a finished run."""

import json

import numpy as np
import pytest
import ray
from omegaconf import OmegaConf

from repirl_ray.config import load_config
from repirl_ray.driver import Trainer
from repirl_ray.checkpoints import latest_checkpoint
from tests.conftest import TINY_RUN, TINY_WORLD, overrides
from tests.helpers import train_records

pytestmark = pytest.mark.integration

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
QUIET = dict(log_fn=lambda *_: None)


# The mode runs share their rollout workers, as benchmarks/claims.py does (their rollout settings
# are the same): each run starts them again from its own policy.
ENGINES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def stop_shared_engines():
    """The shared workers stop with this module, not with the session's Ray: later modules' actors
    get their memory and cores."""
    yield
    if "shared" in ENGINES:
        ENGINES.pop("shared").shutdown()


def run_mode(mode, world_cache, run_dir, reuse=True, **extra):
    # The mode's own iteration count where it sets one (bc: 0), else the tiny run's 2.
    run = {k: v for k, v in TINY_RUN.items() if not (mode == "bc" and k == "iterations")}
    path = str(ROOT / "configs" / "modes" / f"{mode}.yaml")
    # A mode with a supervised stage (sft_rloo, bc) runs a short one; the others run none, as
    # their configs say (each stage is a Ray Train job: ~15 s of start-up on 2 cores).
    sft = {"sft.steps": 10, "sft.batch_size": 8} if OmegaConf.load(path).get("sft", {}).get("steps", 0) else {}
    cfg = load_config(path, overrides(TINY_WORLD, run, **{"world.dir": str(world_cache), "rollout.num_workers": 1,
                                                           **sft, **extra}))
    run_dir.mkdir(parents=True)
    trainer = Trainer(cfg, run_dir, rollout=ENGINES.get("shared") if reuse else None, **QUIET)
    if reuse:
        ENGINES["shared"] = trainer.rollout
    try:
        before = trainer.policy.parameters()
        summary = trainer.train()
        after = trainer.policy.parameters()
        prm_kind = cfg.prm.kind if trainer.prm is not None else None
    finally:
        trainer.shutdown(keep_rollout=reuse)
    train = train_records(run_dir)
    changed = any(not np.array_equal(before[k], after[k]) for k in before)
    return summary, train, changed, prm_kind


@pytest.fixture(scope="module")
def repirl_run(ray_session, world_cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("modes") / "repirl"
    return run_dir, run_mode("repirl", world_cache, run_dir)


def test_repirl(repirl_run):
    _, (summary, train, changed, kind) = repirl_run
    assert kind == "implicit" and changed and len(train) == 2
    assert all("prm/ess" in r and "prm/step_auroc" in r and "prm/step_auroc_first_wrong" in r for r in train)
    # The null scorers on the fixed set, beside the PRM's numbers.
    assert 0 <= summary["step_auroc_null_position"] <= 1 and "first_error_acc_null_random" in summary


@pytest.mark.parametrize("mode", ["repirl_head", "rloo", "prime", "prm_only", "sft_rloo", "repirl_released", "oracle"])
def test_mode_runs_two_iterations(mode, ray_session, world_cache, tmp_path):
    summary, train, changed, kind = run_mode(mode, world_cache, tmp_path / mode)
    assert summary["iterations"] == 2 and [r["iteration"] for r in train] == [1, 2]
    assert changed, "the policy did not change"
    if mode == "rloo" or mode == "sft_rloo":
        assert kind is None and not any(k.startswith("prm/") for k in train[0])
    if mode == "repirl_head":
        assert kind == "head" and "prm/ess" in train[0]
    if mode == "prime":
        # The implicit PRM fitted to outcomes by cross-entropy: its predicted probability is logged.
        assert kind == "implicit" and "prm/prob" in train[0] and "prm/ess" not in train[0]
    if mode == "prm_only":
        # c_outcome = 0: the outcome channel is not computed, the PRM's is (and the format reward's).
        assert kind == "implicit"
        assert all("advantage/outcome_abs_mean" not in r and "advantage/process_abs_mean" in r for r in train)
    if mode == "sft_rloo":
        assert (tmp_path / mode / "sft_policy" / "config.json").is_file()
    if mode == "repirl_released":
        # Every importance weight 1: the ESS is the number of negatives.
        assert kind == "head" and train[0]["prm/ess"] == train[0]["prm/num_neg"] and train[0]["prm/ess_within"] == 1.0
        prm = json.loads((latest_checkpoint(tmp_path / mode) / "prm" / "prm.json").read_text())
        assert prm == {"kind": "head", "head": "mlp_tanh"}
    if mode == "oracle":
        # No PRM learner: the process reward comes from the step labels.
        assert kind is None and not any(k.startswith("prm/") for k in train[0])
        assert train[0]["advantage/process_abs_mean"] > 0


def test_pipelined_recompute_logs_the_kernel_mismatch_apart_from_the_lag(ray_session, world_cache, tmp_path):
    """fp32 sampler and learner, pipelined: batch 1 is on-policy, so its gap is the kernels' alone
    (about 1e-6); later batches were sampled one version behind, and their gap is logged as the lag."""
    _, train, _, _ = run_mode("oracle", world_cache, tmp_path / "pipelined", iterations=3, **{
        "pipeline.off_policy_steps": 1, "policy.old_logprobs": "recompute"})
    assert [r["rollout/staleness"] for r in train] == [0, 1, 1]
    assert train[0]["policy/logprob_mismatch"] <= 1e-4 and "policy/logprob_lag" not in train[0]
    for r in train[1:]:
        assert "policy/logprob_mismatch" not in r
        assert r["policy/logprob_lag"] > 10 * train[0]["policy/logprob_mismatch"]  # lr 1e-2 moves the policy


def test_behaviour_cloning_is_supervised_only(ray_session, world_cache, tmp_path):
    summary, train, changed, _ = run_mode("bc", world_cache, tmp_path / "bc")
    assert summary["iterations"] == 0 and train == [] and not changed
    assert summary["final_accuracy"] == summary["base_accuracy"]  # evaluated once: no RL
    paths = json.loads((tmp_path / "bc" / "paths.json").read_text())
    assert paths["policy"].endswith("sft_policy")


def test_test_time_training_with_a_frozen_prm(repirl_run, world_cache, tmp_path):
    run_dir, _ = repirl_run
    prm = latest_checkpoint(run_dir) / "prm"
    summary, train, changed, kind = run_mode("ttt", world_cache, tmp_path / "ttt", **{"model.prm_path": str(prm)})
    assert changed and len(train) == 2
    assert not any(k in train[0] for k in ("prm/loss", "prm/ess"))  # the PRM is frozen: no IRL step
    assert "prm/step_auroc" in train[0]  # ... but it scores every rollout


def test_eval_and_bon_on_a_checkpoint(repirl_run, tmp_path):
    from repirl_ray.assess import best_of_n_checkpoint, evaluate_checkpoint

    run_dir, _ = repirl_run
    ckpt = latest_checkpoint(run_dir)
    result = evaluate_checkpoint(str(ckpt), samples=4, overrides=["eval.num_prompts=6"], **{"log": lambda *_: None})
    assert result["prompts"] == 6
    assert 0 <= result["greedy_pass@1"] <= 1
    assert result["pass@1"] <= result["pass@2"] <= result["pass@4"]
    assert "prm_step_auroc_fixed_set" in result
    assert (ckpt / "eval_eval.json").is_file()

    out = tmp_path / "bon"
    bon = best_of_n_checkpoint(str(ckpt), n_max=4, out_dir=str(out), overrides=["eval.num_prompts=6"], log=lambda *_: None)
    curves = bon["curves"]
    assert curves["n"] == [1, 2, 4]
    assert curves["selectors"] == ["prm_mean", "prm_min_step", "prm_vote", "majority", "random", "oracle"]
    for selector in ("prm_mean", "prm_min_step", "prm_vote", "majority", "random"):
        assert all(s <= o + 1e-9 for s, o in zip(curves[selector], curves["oracle"]))
    assert (out / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bon.md").read_text().count("\n") >= 5


def test_reused_rollout_workers_sample_as_fresh_ones(ray_session, world_cache, tmp_path):
    """A run on rollout workers another run used (their weights reset to its policy) logs the
    same numbers as a run on fresh ones."""
    fresh, fresh_train, _, _ = run_mode("rloo", world_cache, tmp_path / "fresh", reuse=False)
    if "shared" not in ENGINES:  # this test alone: give the workers a run before the one compared
        run_mode("rloo", world_cache, tmp_path / "warm-up")
    reused, reused_train, _, _ = run_mode("rloo", world_cache, tmp_path / "reused")
    for key in ("base_accuracy", "final_accuracy", "base_greedy_accuracy", "final_greedy_accuracy"):
        assert fresh[key] == reused[key], key
    for a, b in zip(fresh_train, reused_train):
        assert a["policy/loss"] == b["policy/loss"] and a["rollout/accuracy"] == b["rollout/accuracy"]
