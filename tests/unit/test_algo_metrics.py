"""Evaluation metrics (repirl_ray/algo/metrics.py): AUROC, step scores, first-error
localisation, majority vote and best-of-N, by hand, ties included."""

import math
import random

import numpy as np
import pytest
import torch

from repirl_ray.algo.metrics import (
    STEP_QUALITY_KEYS,
    auroc,
    best_of_n,
    first_error_localisation,
    majority_vote,
    null_step_scores,
    prefix_min,
    prm_weighted_vote,
    step_auroc_inputs,
    step_auroc_split,
    step_quality_metrics,
    step_scores,
)


def test_auroc_hand_value():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs: (0.35 > 0.1) 1, (0.35 > 0.4) 0,
    # (0.8 > 0.1) 1, (0.8 > 0.4) 1 -> 3 / 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    # positive 1 vs negatives 1 (tie: 1/2) and 2 (0) -> 0.5 / 2 = 0.25
    assert auroc([1.0, 1.0, 2.0], [1, 0, 0]) == pytest.approx(0.25)
    # all scores equal -> every pair a tie -> 0.5
    assert auroc([3, 3, 3, 3, 3], [1, 0, 1, 0, 0]) == pytest.approx(0.5)


def test_auroc_accepts_numpy_and_torch_and_matches_pair_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=40).astype(float)  # many ties
    labels = rng.integers(0, 2, size=40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    expected = pairs.mean()
    assert auroc(scores, labels) == pytest.approx(expected)
    as_torch = torch.tensor(scores, requires_grad=True)
    assert auroc(as_torch, torch.tensor(labels)) == pytest.approx(expected)
    assert auroc(list(scores), [bool(x) for x in labels]) == pytest.approx(expected)


def test_auroc_nan_when_a_class_is_empty():
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    assert math.isnan(auroc([], []))
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0.1, 0.2], [1, 2])


def test_step_scores_hand_values():
    # steps 0: 0.5 + 0.25; 1: -1; 2: 2 + 1; tokens with -1 (prompt tail / answer) ignored
    rewards = torch.tensor([9.0, 0.5, 0.25, -1.0, 2.0, 1.0, 7.0])
    ids = torch.tensor([-1, 0, 0, 1, 2, 2, -1])
    assert step_scores(rewards, ids) == pytest.approx([0.75, -1.0, 3.0])
    assert step_scores([1.0, 2.0], [-1, -1]) == []


def test_step_auroc_inputs_labels():
    # sample 0: first wrong step 1 -> labels (1, 0, 0); sample 1: all correct -> (1, 1)
    scores, labels = step_auroc_inputs([[0.5, -0.2, -0.1], [0.3, 0.4]], [1, None])
    assert scores == [0.5, -0.2, -0.1, 0.3, 0.4]
    assert labels == [1, 0, 0, 1, 1]
    # correct steps all score above wrong ones -> AUROC 1
    assert auroc(scores, labels) == 1.0


def test_prefix_min_and_its_auroc_by_hand():
    assert prefix_min([[3.0, 1.0, 2.0], [], [0.5]]) == [[3.0, 1.0, 1.0], [], [0.5]]
    # A perfect checker of each step's own arithmetic: the first wrong step (1) scores 0, the
    # step after it was computed right from the wrong value and scores 1.
    steps, first_wrong = [[1.0, 0.0, 1.0], [1.0, 1.0]], [1, None]
    # Per step: positives 1, 1, 1 against negatives 0 and 1: (3 + 3 * 0.5) / 6 = 0.75.
    assert auroc(*step_auroc_inputs(steps, first_wrong)) == pytest.approx(0.75)
    # Prefix min scores the step after the mistake 0 as well: AUROC 1.
    assert auroc(*step_auroc_inputs(prefix_min(steps), first_wrong)) == 1.0


def test_first_error_localisation():
    # sample 0: argmin step 1 == first wrong 1 (hit); sample 1: argmin 0 != 2 (miss);
    # sample 2: no wrong step (left out); sample 3: tie between steps 0 and 2 -> first, 0 == 0 (hit)
    steps = [[0.5, -0.2, 0.1], [-1.0, 0.0, -0.5], [0.2], [-3.0, 1.0, -3.0]]
    assert first_error_localisation(steps, [1, 2, None, 0]) == pytest.approx(2 / 3)
    assert math.isnan(first_error_localisation(steps, [None] * 4))
    with pytest.raises(ValueError, match="sample 0"):
        first_error_localisation([[0.1]], [3])


def test_majority_vote_clear_winner_returns_first_holder():
    assert majority_vote(["3", None, "5", "5", "3", "5"], random.Random(0)) == 2


def test_majority_vote_none_never_wins_unless_all_none():
    assert majority_vote([None, None, None, "7"], random.Random(0)) == 3
    assert majority_vote([None, None], random.Random(0)) == 0


def test_majority_vote_ties_are_uniform_among_tied_answers():
    # "a" and "b" tie with 2 votes (first held by rows 0 and 1), "c" has 1 and never wins
    answers = ["a", "b", "b", "c", "a"]
    rng = random.Random(1)
    picks = [majority_vote(answers, rng) for _ in range(2000)]
    assert set(picks) == {0, 1}
    assert abs(picks.count(0) / 2000 - 0.5) < 0.05
    # the same seed gives the same choice
    assert majority_vote(answers, random.Random(7)) == majority_vote(answers, random.Random(7))


def test_best_of_n_first_on_ties_and_nan_never_wins():
    assert best_of_n([0.1, 0.7, 0.3, 0.7]) == 1
    assert best_of_n(np.array([float("nan"), -2.0, -1.0])) == 2
    assert best_of_n(torch.tensor([float("nan"), float("nan")])) == 0
    with pytest.raises(ValueError):
        best_of_n([])


def test_step_auroc_split_by_hand():
    # Sample A all correct: steps 0.9, 0.8. Sample B first wrong at 1: steps 0.7 (correct),
    # 0.1 (first wrong), 0.95 and 0.3 after it. Sample C stopped early (first_wrong 1 = its
    # step count): its one step is correct and it adds no wrong step.
    scores = [[0.9, 0.8], [0.7, 0.1, 0.95, 0.3], [0.2]]
    out = step_auroc_split(scores, [None, 1, 1])
    # Positives 0.9, 0.8, 0.7, 0.2; negatives 0.1, 0.95, 0.3: pairs won 3 + 0 + 3 + 1 of 12.
    assert out["all"] == pytest.approx(7 / 12)
    assert out["first_wrong"] == pytest.approx(4 / 4)  # every positive above 0.1
    assert out["after_first_wrong"] == pytest.approx(3 / 8)  # 0.95: none; 0.3: 0.9, 0.8, 0.7
    # No wrong step anywhere: the split AUROCs are undefined (NaN), not 0 or 1.
    assert math.isnan(step_auroc_split([[0.5, 0.2]], [None])["first_wrong"])


# Three samples for the null scorers: A all correct (3 steps, 10 tokens), B first wrong at 1
# (4 steps, 12 tokens), C first wrong at 0 (2 steps, 6 tokens). Labels: A 1 1 1, B 1 0 0 0, C 0 0.
NULL_STEPS, NULL_LENGTHS, NULL_FIRST_WRONG = [3, 4, 2], [10, 12, 6], [None, 1, 0]


def test_position_null_by_hand():
    scores = null_step_scores("position", NULL_STEPS, NULL_LENGTHS)
    assert scores == [[0, -1, -2], [0, -1, -2, -3], [0, -1]]
    q = step_quality_metrics(scores, NULL_FIRST_WRONG)
    assert set(q) == set(STEP_QUALITY_KEYS)
    # Positives 0, -1, -2, 0 against negatives -1, -2, -3, 0, -1 (ties 1/2):
    # 0: 4.5, -1: 3, -2: 1.5, 0: 4.5 -> 13.5 / 20.
    assert q["step_auroc"] == pytest.approx(13.5 / 20)
    # ... against the first wrong steps -1 (B) and 0 (C): 1.5 + 0.5 + 0 + 1.5 = 3.5 / 8
    assert q["step_auroc_first_wrong"] == pytest.approx(3.5 / 8)
    # ... against the steps after them -2, -3 (B), -1 (C): 3 + 2.5 + 1.5 + 3 = 10 / 12
    assert q["step_auroc_after_first_wrong"] == pytest.approx(10 / 12)
    # Minus the index never rises: its prefix minimum is itself.
    assert q["step_auroc_prefix_min"] == q["step_auroc"]
    assert q["step_auroc_prefix_min_after_first_wrong"] == q["step_auroc_after_first_wrong"]
    # The lowest step is the last one: B's (3) is not its first wrong (1), nor is C's (1 vs 0).
    assert q["first_error_acc"] == 0.0


def test_length_null_by_hand():
    scores = null_step_scores("length", NULL_STEPS, NULL_LENGTHS)
    assert scores == [[-10] * 3, [-12] * 4, [-6] * 2]
    q = step_quality_metrics(scores, NULL_FIRST_WRONG)
    # Positives -10 x 3 (each above B's three -12, below C's two -6) and -12 (ties B's three):
    # 3 * 3 + 1.5 = 10.5 / 20.
    assert q["step_auroc"] == pytest.approx(10.5 / 20)
    # All steps of a sample tie: argmin is step 0, right for C (first wrong 0), not for B.
    assert q["first_error_acc"] == 0.5


def test_random_null_is_seeded_and_shaped():
    a = null_step_scores("random", NULL_STEPS, NULL_LENGTHS, seed=3)
    assert [len(x) for x in a] == NULL_STEPS and all(0 <= v < 1 for x in a for v in x)
    assert a == null_step_scores("random", NULL_STEPS, NULL_LENGTHS, seed=3)
    assert a != null_step_scores("random", NULL_STEPS, NULL_LENGTHS, seed=4)
    with pytest.raises(ValueError, match="position"):
        null_step_scores("index", NULL_STEPS, NULL_LENGTHS)


def test_random_null_prefix_min_favours_any_scorer():
    # Many samples of 4 steps, the first wrong at step 2: random step scores give AUROC ~0.5, but
    # their prefix minimum falls along each sample, so the later (wrong) steps rank low.
    n = 4000
    scores = null_step_scores("random", [4] * n, [0] * n, seed=0)
    q = step_quality_metrics(scores, [2] * n)
    assert abs(q["step_auroc"] - 0.5) < 0.02
    # Pairs of different samples: the prefix min of step k is the min of k + 1 uniforms, and
    # P(min of a uniforms > min of b others) = b / (a + b). Correct steps 0, 1 (a = 1, 2) against
    # wrong steps 2, 3 (b = 3, 4): (3/4 + 4/5 + 3/5 + 4/6) / 4 = 0.704.
    assert abs(q["step_auroc_prefix_min"] - (3 / 4 + 4 / 5 + 3 / 5 + 4 / 6) / 4) < 0.02


def test_prm_weighted_vote_by_hand():
    ln = math.log
    # Groups "a": exp = 10; "b": 2 + 3 + 1 = 6 -> "a" wins, though "b" has the majority.
    answers = ["a", "b", "b", "b"]
    assert prm_weighted_vote([ln(10), ln(2), ln(3), ln(1)], answers) == 0
    assert majority_vote(answers, random.Random(0)) == 1
    # "a": 3; "b": 2 + 2 = 4 -> "b", and in it the first of the tied top scores (row 1), although
    # the single highest score (row 0) is an "a".
    scores = [ln(3), ln(2), ln(2)]
    assert prm_weighted_vote(scores, ["a", "b", "b"]) == 1
    assert best_of_n(scores) == 0
    # A shift of every score changes no choice (and large scores do not overflow).
    assert prm_weighted_vote([s + 1000 for s in scores], ["a", "b", "b"]) == 1
    # None answers form no group; a NaN adds nothing and never wins: "a" 0 + 1 ties "b" 1, the
    # first group seen ("a") wins, and in it row 1.
    assert prm_weighted_vote([float("nan"), 0.0, 0.0, 50.0], ["a", "a", "b", None]) == 1
    # Every answer None: the highest score.
    assert prm_weighted_vote([0.1, 0.3], [None, None]) == 1
