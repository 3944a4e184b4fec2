"""Evaluation summaries (repirl_ray/evaluation.py): pass@k, best-of-N curves, tables and plots,
against numbers worked out by hand and brute-force enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch

from repirl_ray.evaluation import (
    best_of_n_curves,
    format_bon_table,
    format_mean_std_cell,
    format_mean_std_table,
    mean_pass_at_k,
    pass_at_k,
    plot_bon,
    plot_learning_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_values():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == pytest.approx(1.0)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # c = 0 -> 0 for every k; c = n -> 1 for every k
    for k in range(1, 6):
        assert pass_at_k(5, 0, k) == 0.0
        assert pass_at_k(5, 5, k) == 1.0
    # pass@1 = c / n
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_matches_brute_force_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            sample = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(sample, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    # C(200, 100) overflows float; the product form does not. pass@1 still equals c / n.
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)
    v = pass_at_k(200, 1, 100)  # one correct among 200, draw half: 1/2
    assert v == pytest.approx(0.5)


def test_pass_at_k_errors():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)  # k > n
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)  # c > n
    with pytest.raises(ValueError):
        mean_pass_at_k(np.zeros((2, 3)), [4])


def test_mean_pass_at_k_hand_values():
    # prompt 0: c=1 of 4 -> pass@1 .25, pass@2 .5; prompt 1: c=4 -> 1, 1
    correct = np.array([[0, 1, 0, 0], [1, 1, 1, 1]])
    out = mean_pass_at_k(correct, [1, 2])
    assert out[1] == pytest.approx((0.25 + 1.0) / 2)
    assert out[2] == pytest.approx((0.5 + 1.0) / 2)
    # bool arrays and tensors are fine too
    assert mean_pass_at_k(torch.tensor(correct.astype(bool)), [1])[1] == pytest.approx(0.625)


# ---------------------------------------------------------------------------- best-of-N

# Case A: the PRM's top sample (0) is correct, the majority answer "7" is wrong.
A_SCORES, A_CORRECT, A_ANSWERS = [0.9, 0.1, 0.2], [1, 0, 0], ["5", "7", "7"]
# Case B: the PRM's top sample (1) is wrong, the majority answer "5" is right.
B_SCORES, B_CORRECT, B_ANSWERS = [0.1, 0.9, 0.2], [1, 0, 1], ["5", "7", "5"]


def test_bon_prm_right_majority_wrong_and_vice_versa():
    a = best_of_n_curves([A_SCORES], [A_CORRECT], [A_ANSWERS], ns=[3])
    # n = N = 3: prm picks 0 (correct), majority "7" -> sample 1 (wrong),
    # random = 1/3, oracle = 1
    assert a["n"] == [3]
    assert (a["prm_mean"], a["majority"], a["random"], a["oracle"]) == (
        [1.0], [0.0], [pytest.approx(1 / 3)], [1.0])
    assert math.isnan(a["prm_mean_se"][0])  # one prompt: no standard error
    b = best_of_n_curves([B_SCORES], [B_CORRECT], [B_ANSWERS], ns=[3])
    # prm picks 1 (wrong), majority "5" (right), random 2/3, oracle 1
    assert (b["prm_mean"], b["majority"], b["random"], b["oracle"]) == (
        [0.0], [1.0], [pytest.approx(2 / 3)], [1.0])


def test_bon_prm_vote_and_min_step_selectors():
    # A: groups "5" exp(0.9) = 2.46 against "7" exp(0.1) + exp(0.2) = 2.33: "5", sample 0, right.
    # B: "5" 2.33 against "7" 2.46: sample 1, wrong (majority says "5").
    a = best_of_n_curves([A_SCORES], [A_CORRECT], [A_ANSWERS], ns=[3])
    b = best_of_n_curves([B_SCORES], [B_CORRECT], [B_ANSWERS], ns=[3])
    assert a["prm_vote"] == [1.0] and b["prm_vote"] == [0.0]
    assert "prm_min_step" not in a and a["selectors"] == ["prm_mean", "prm_vote", "majority", "random", "oracle"]
    # With two "7"s of exp(1.0) each the group outweighs "5" (2 * 2.72 > 2.46): wrong, as majority.
    assert best_of_n_curves([[0.9, 1.0, 1.0]], [A_CORRECT], [A_ANSWERS], ns=[3])["prm_vote"] == [0.0]
    # The highest worst step: sample 2 (worst step -0.1) over 0 (-2.0) and 1 (-0.5); right.
    c = best_of_n_curves([A_SCORES], [[0, 0, 1]], [A_ANSWERS], ns=[3], min_step_scores=[[-2.0, -0.5, -0.1]])
    assert c["prm_min_step"] == [1.0] and c["prm_mean"] == [0.0]
    assert c["selectors"][:3] == ["prm_mean", "prm_min_step", "prm_vote"]


def test_bon_two_prompts_mean_and_se():
    c = best_of_n_curves(
        [A_SCORES, B_SCORES], [A_CORRECT, B_CORRECT], [A_ANSWERS, B_ANSWERS], ns=[3]
    )
    # prm per prompt [1, 0]: mean .5, se = std([1, 0], ddof=1) / sqrt(2) = 0.7071 / 1.4142 = .5
    assert c["prm_mean"][0] == pytest.approx(0.5) and c["prm_mean_se"][0] == pytest.approx(0.5)
    assert c["majority"][0] == pytest.approx(0.5) and c["majority_se"][0] == pytest.approx(0.5)
    # random per prompt [1/3, 2/3]: mean .5, se = (sqrt(2)/6) / sqrt(2) = 1/6
    assert c["random"][0] == pytest.approx(0.5)
    assert c["random_se"][0] == pytest.approx(1 / 6)
    assert c["oracle"] == [1.0] and c["oracle_se"] == [0.0]
    assert c["num_prompts"] == 2 and c["num_samples"] == 3


def test_bon_small_n_enumerates_all_subsets():
    # case A, n=2, C(3,2)=3 <= 16 subsets -> all of {0,1}, {0,2}, {1,2}:
    #   prm picks 0, 0, 2 -> correct 1, 1, 0 -> 2/3
    #   random: subset means .5, .5, 0 -> 1/3; oracle 1, 1, 0 -> 2/3
    #   majority: {1,2} -> "7" wrong; {0,1}, {0,2} are ties -> rng: value in {0, 1/3, 2/3}
    # n=1: each singleton, every selector = mean correctness = 1/3
    c = best_of_n_curves([A_SCORES], [A_CORRECT], [A_ANSWERS], ns=[1, 2])
    assert c["n"] == [1, 2]
    for key in ("prm_mean", "majority", "random", "oracle"):
        assert c[key][0] == pytest.approx(1 / 3)
    assert c["prm_mean"][1] == pytest.approx(2 / 3)
    assert c["random"][1] == pytest.approx(1 / 3)
    assert c["oracle"][1] == pytest.approx(2 / 3)
    assert min(abs(c["majority"][1] - v) for v in (0, 1 / 3, 2 / 3)) < 1e-12


def test_bon_prm_ties_pick_first():
    # scores tie at samples 0 and 1; sample 0 is wrong, sample 1 right -> prm takes 0 -> 0
    c = best_of_n_curves([[0.5, 0.5, 0.1]], [[0, 1, 1]], [["1", "2", "2"]], ns=[3])
    assert c["prm_mean"] == [0.0]
    # flipped labels -> 1
    c = best_of_n_curves([[0.5, 0.5, 0.1]], [[1, 0, 0]], [["1", "2", "3"]], ns=[3])
    assert c["prm_mean"] == [1.0]
    # NaN scores never win
    c = best_of_n_curves([[math.nan, 0.2, 0.1]], [[0, 1, 0]], [["1", "2", "3"]], ns=[3])
    assert c["prm_mean"] == [1.0]


def test_bon_n_equals_N_is_deterministic_and_random_is_mean_correctness():
    rng = np.random.default_rng(1)
    P, N = 20, 8
    scores = rng.normal(size=(P, N))
    correct = (rng.random((P, N)) < 0.4).astype(int)
    answers = [[str(v) for v in rng.integers(0, 3, size=N)] for _ in range(P)]
    c1 = best_of_n_curves(scores, correct, answers, ns=[N], num_subsets=4, seed=0)
    c2 = best_of_n_curves(scores, correct, answers, ns=[N], num_subsets=64, seed=5)
    # prm, random, oracle don't depend on the seed or num_subsets at n = N
    for key in ("prm_mean", "random", "oracle"):
        assert c1[key] == c2[key]
    # prm = correctness of each row's argmax, random = overall mean, oracle = any correct
    assert c1["prm_mean"][0] == pytest.approx(correct[np.arange(P), scores.argmax(1)].mean())
    assert c1["random"][0] == pytest.approx(correct.mean())
    assert c1["oracle"][0] == pytest.approx(correct.max(1).mean())


def test_bon_random_subsets_properties_and_reproducibility():
    rng = np.random.default_rng(2)
    P, N = 30, 16
    scores = torch.tensor(rng.normal(size=(P, N)))  # tensors accepted
    correct = rng.random((P, N)) < 0.3
    answers = [[None if v == 0 else str(v) for v in rng.integers(0, 4, size=N)] for _ in range(P)]
    ns = (1, 2, 4, 8, 16, 32)  # 32 > N is left out
    c = best_of_n_curves(scores, correct, answers, ns=ns, num_subsets=16, seed=3)
    assert c["n"] == [1, 2, 4, 8, 16]
    for i in range(len(c["n"])):
        for key in ("prm_mean", "majority", "random"):
            assert c["oracle"][i] >= c[key][i] - 1e-12
            assert 0.0 <= c[key][i] <= 1.0
        # random picks are unbiased: near the overall mean correctness at every n
        assert abs(c["random"][i] - correct.mean()) < 0.05
    # oracle grows with n
    assert all(np.diff(c["oracle"]) >= -1e-12)
    # same seed -> identical; one n alone gives the same value as within the full list
    assert best_of_n_curves(scores, correct, answers, ns=ns, num_subsets=16, seed=3) == c
    alone = best_of_n_curves(scores, correct, answers, ns=[4], num_subsets=16, seed=3)
    assert alone["prm_mean"][0] == c["prm_mean"][2] and alone["majority"][0] == c["majority"][2]


def test_bon_majority_ties_use_seeded_rng():
    # every answer distinct -> every vote is a 4-way tie; only sample 0 is correct.
    P, N = 200, 4
    scores = np.zeros((P, N))
    correct = np.tile([1, 0, 0, 0], (P, 1))
    answers = [["a", "b", "c", "d"] for _ in range(P)]
    c = best_of_n_curves(scores, correct, answers, ns=[4], seed=7)
    # uniform tie-break -> about 1/4 (not 1, which "first on ties" would give)
    assert 0.15 < c["majority"][0] < 0.35
    assert best_of_n_curves(scores, correct, answers, ns=[4], seed=7)["majority"] == c["majority"]
    others = {best_of_n_curves(scores, correct, answers, ns=[4], seed=s)["majority"][0]
              for s in range(5)}
    assert len(others) > 1
    # prm (all scores tied) takes the first sample -> 1
    assert c["prm_mean"] == [1.0]


def test_bon_input_errors():
    with pytest.raises(ValueError):
        best_of_n_curves([[0.1, 0.2]], [[1, 0, 0]], [["a", "b", "c"]])  # shape mismatch
    with pytest.raises(ValueError):
        best_of_n_curves([[0.1, 0.2]], [[1, 0]], [["a"]])  # answers wrong length
    with pytest.raises(ValueError):
        best_of_n_curves([[0.1, 0.2]], [[1, 2]], [["a", "b"]])  # not 0/1
    with pytest.raises(ValueError):
        best_of_n_curves([[0.1, 0.2]], [[1, 0]], [["a", "b"]], ns=[0, 1])


# ---------------------------------------------------------------------------- tables, plots


def _two_prompt_curves():
    return best_of_n_curves(
        [A_SCORES, B_SCORES], [A_CORRECT, B_CORRECT], [A_ANSWERS, B_ANSWERS], ns=[1, 2, 3]
    )


def test_format_bon_table_one_row_per_n():
    table = format_bon_table(_two_prompt_curves())
    lines = table.strip().splitlines()
    # No min-step scores given: that column is left out.
    assert lines[0] == "| N | prm_mean | prm_vote | majority | random | oracle |"
    assert len(lines) == 2 + 3
    # n=3 row from test_bon_two_prompts_mean_and_se (prm_vote: 1 on A, 0 on B)
    assert lines[-1] == "| 3 | 0.500 +- 0.500 | 0.500 +- 0.500 | 0.500 +- 0.500 | 0.500 +- 0.167 | 1.000 +- 0.000 |"
    # NaN se (one prompt) prints just the mean
    one = format_bon_table(best_of_n_curves([A_SCORES], [A_CORRECT], [A_ANSWERS], ns=[3]))
    assert one.strip().splitlines()[-1] == "| 3 | 1.000 | 1.000 | 0.000 | 0.333 | 1.000 |"


def test_plot_bon_writes_png(tmp_path):
    path = tmp_path / "sub" / "bon.png"
    plot_bon(_two_prompt_curves(), path, "best-of-N test")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["bon.png"]  # no temp file left


def test_plot_learning_curves_writes_png(tmp_path):
    path = tmp_path / "lc.png"
    curves = {
        "repirl": [(0, 0.3, 0.05), (10, 0.5, 0.04), (20, 0.6, None)],
        "rloo": [(20, 0.5, 0.02), (0, 0.3, 0.0), (10, 0.4, float("nan"))],  # unsorted
    }
    plot_learning_curves(curves, path, "accuracy", "rollout/accuracy")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    # overwrite in place
    plot_learning_curves({"x": [(0, 1.0, 0.1)]}, path, "t", "y")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_mean_std_cells_hand_values():
    # mean .6; std ddof=1 = sqrt(((-.1)^2 + .1^2) / 1) = sqrt(.02) = 0.1414
    assert format_mean_std_cell([0.5, 0.7]) == "0.600 +- 0.141 (n=2)"
    assert format_mean_std_cell([0.25]) == "0.250 (n=1)"
    # NaN / None are skipped and counted: [1, 2, 3] -> mean 2, std 1
    assert format_mean_std_cell([1.0, None, 2.0, float("nan"), 3.0]) == (
        "2.000 +- 1.000 (n=3, 2 skipped)")
    assert format_mean_std_cell([None]) == "- (n=0, 1 skipped)"
    assert format_mean_std_cell([]) == "- (n=0)"


def test_format_mean_std_table():
    rows = {
        "repirl": {"acc": [0.5, 0.7], "auroc": [0.8]},
        "rloo": {"acc": [0.4, None, 0.4]},
    }
    table = format_mean_std_table(rows, ["acc", "auroc"], row_header="mode")
    assert table.splitlines() == [
        "| mode | acc | auroc |",
        "|---|---|---|",
        "| repirl | 0.600 +- 0.141 (n=2) | 0.800 (n=1) |",
        "| rloo | 0.400 +- 0.000 (n=2, 1 skipped) | - (n=0) |",
    ]


# ---------------------------------------------------------------------------- run curves, sweep plot


def _synthetic_metrics_jsonl(path):
    """A metrics.jsonl as MetricsLogger writes it: a base evaluation at iteration 0, training
    records, an evaluation mid-run and at the end; a non-finite value is written as null."""
    import json

    records = [{"iteration": 0, "time": 0.0, "eval/accuracy": 0.3, "eval/greedy_accuracy": 0.8, "eval/step_auroc": 0.6}]
    for it in range(1, 7):
        records.append({
            "iteration": it, "time": float(it), "rollout/accuracy": 0.3 + 0.05 * it, "prm/ess": 40.0 - it,
            "prm/ess_within": 0.9 - 0.05 * it, "policy/entropy": 0.2 - 0.01 * it,
            "prm/step_auroc": None if it == 3 else 0.6 + 0.01 * it,
        })
    records.append({"iteration": 3, "time": 3.5, "eval/accuracy": 0.45, "eval/greedy_accuracy": 0.82})
    records.append({"iteration": 6, "time": 7.0, "eval/accuracy": 0.6, "eval/greedy_accuracy": 0.85, "eval/step_auroc": 0.7})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_plot_run_curves_from_metrics_jsonl(tmp_path):
    import json

    from repirl_ray.evaluation import _series, plot_run_curves

    metrics = tmp_path / "metrics.jsonl"
    _synthetic_metrics_jsonl(metrics)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    drawn = plot_run_curves(records, tmp_path / "curves.png", "a run")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert drawn == {
        "accuracy": ["rollout/accuracy", "eval/accuracy", "eval/greedy_accuracy"],  # no hard split logged
        "PRM step AUROC": ["prm/step_auroc", "eval/step_auroc"],
        "importance weights": ["prm/ess", "prm/ess_within"],
        "policy entropy": ["policy/entropy"],
    }
    # evaluations are points at their iterations; a null is left out, not drawn as 0
    x, y = _series(records, "eval/accuracy")
    assert x.tolist() == [0, 3, 6] and y.tolist() == [0.3, 0.45, 0.6]
    x, _ = _series(records, "prm/step_auroc")
    assert x.tolist() == [1, 2, 4, 5, 6]
    # an outcome-only run (rloo) has no PRM panels' metrics: they say so, the plot still works
    rloo = [{k: v for k, v in r.items() if not k.startswith("prm/") and "auroc" not in k} for r in records]
    drawn = plot_run_curves(rloo, tmp_path / "rloo.png")
    assert drawn["PRM step AUROC"] == [] and drawn["importance weights"] == []
    assert drawn["policy entropy"] == ["policy/entropy"]


def test_plot_sweep_numeric_log_and_categorical(tmp_path):
    from repirl_ray.evaluation import plot_sweep

    points = {
        "prm.lr": [(1e-4, 0.6), (1e-4, 0.62), (1e-2, 0.7), (1e-2, None)],  # a failed trial: None
        "variant": [("rloo", 0.5), ("repirl", 0.6), ("rloo", 0.52)],
        "irl.pseudo_expert": [(True, 0.6), (False, 0.4)],
        "never_finished": [],
    }
    plot_sweep(points, tmp_path / "sweep.png", "step_auroc", log_keys=["prm.lr"], title="t")
    data = (tmp_path / "sweep.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
