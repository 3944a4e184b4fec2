"""Evaluation metrics (repirl_ray/algo/metrics.py): AUROC, step scores, first-error
localisation, majority vote and best-of-N, by hand, ties included."""

import math
import random

import numpy as np
import pytest
import torch

from repirl_ray.algo.metrics import (
    prefix_min,
    auroc,
    best_of_n,
    first_error_localisation,
    majority_vote,
    step_auroc_inputs,
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
