"""Evaluation metrics for a PRM and for picking among N answers (ALGORITHM.md sections 5 and 7).

- step AUROC: token rewards summed per reasoning step; a step before the first wrong step is
  labelled correct (1), the first wrong step and every later one wrong (0) (section 5,
  prm/step_auroc).
- prefix-min step AUROC: the same, each step scored by the lowest step score up to it; the
  labels mark the correctness of the whole prefix, which a per-step score cannot see.
- first-error localisation: does the lowest-scored step coincide with the first wrong step?
- best-of-N (highest score) and majority vote over final answers (section 7).

Inputs may be Python lists, numpy arrays or torch tensors; outputs are Python numbers.
"""

import math
import random
from typing import List, Optional, Sequence, Tuple

import torch


# The PRM quality numbers a scorer of labelled steps reports (PRMLearner's step_quality), as runs
# and `repirl assess` log them.
STEP_QUALITY_KEYS = ("step_auroc", "step_auroc_prefix_min", "first_error_acc")


def _as_1d(values) -> torch.Tensor:
    """Lists, numpy arrays and tensors (any device, with or without grad) -> float64 CPU [n]."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).reshape(-1)
    # A copy: numpy arrays that come out of the Ray object store are read-only.
    return torch.tensor(values, dtype=torch.float64).reshape(-1)


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2.

    scores: [n]; labels: [n] in {0, 1} (1 = positive). Computed from average ranks
    (Mann-Whitney U), O(n log n). NaN when either class is empty.
    """
    s, y = _as_1d(scores), _as_1d(labels)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.numel()} scores but {y.numel()} labels")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("auroc: labels must be 0 or 1")
    num_pos = int((y == 1).sum())
    num_neg = s.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    # Average rank (1-based) of each value: a run of c tied values starting after `before`
    # smaller ones holds ranks before+1 .. before+c, average before + (c + 1) / 2.
    _, value_of, counts = torch.unique(s, return_inverse=True, return_counts=True)
    before = torch.cumsum(counts, dim=0) - counts
    rank = (before + (counts + 1) / 2.0)[value_of]
    u = float(rank[y == 1].sum()) - num_pos * (num_pos + 1) / 2.0
    return u / (num_pos * num_neg)


def step_scores(token_rewards, step_ids) -> List[float]:
    """Per-step sums of token rewards: element k = sum of r_t over tokens with step_ids[t] == k.

    token_rewards: [T]; step_ids: [T] ints, -1 for tokens outside any step (e.g. the final
    answer line). Returns a list of length max(step_ids) + 1 (a step id with no token gets 0).
    """
    r = _as_1d(token_rewards)
    ids = _as_1d(step_ids).to(torch.int64)
    if r.shape != ids.shape:
        raise ValueError(f"step_scores: {r.numel()} token rewards but {ids.numel()} step ids")
    in_step = ids >= 0
    num_steps = int(ids.max()) + 1 if bool(in_step.any()) else 0
    sums = torch.zeros(num_steps, dtype=torch.float64)
    sums.scatter_add_(0, ids[in_step], r[in_step])
    return sums.tolist()


def step_auroc_inputs(
    step_scores_list: Sequence[Sequence[float]], first_wrong_list: Sequence[Optional[int]]
) -> Tuple[List[float], List[int]]:
    """Pool the steps of many samples into (scores, labels) for `auroc`.

    step_scores_list[i]: the step scores of sample i; first_wrong_list[i]: index of its first
    wrong step, None when every step is correct. Label 1 (correct) for steps before the first
    wrong step, 0 for the first wrong step and every step after it.
    """
    if len(step_scores_list) != len(first_wrong_list):
        raise ValueError(
            f"step_auroc_inputs: {len(step_scores_list)} samples of step scores but "
            f"{len(first_wrong_list)} first-wrong indices"
        )
    scores: List[float] = []
    labels: List[int] = []
    for sample_scores, first_wrong in zip(step_scores_list, first_wrong_list):
        for k, score in enumerate(sample_scores):
            scores.append(float(score))
            labels.append(1 if first_wrong is None or k < first_wrong else 0)
    return scores, labels


def prefix_min(step_scores_list: Sequence[Sequence[float]]) -> List[List[float]]:
    """Each step scored by the lowest step score up to and including it: [[3, 1, 2]] -> [[3, 1, 1]].

    A step label is the correctness of the whole prefix (a step after the first mistake is
    wrong even when its own arithmetic is right), so the prefix minimum is the score that
    matches it; it is the form PURE's min-form credit takes."""
    out: List[List[float]] = []
    for sample in step_scores_list:
        low, mins = math.inf, []
        for score in sample:
            low = min(low, float(score))
            mins.append(low)
        out.append(mins)
    return out


def first_error_localisation(
    step_scores_list: Sequence[Sequence[float]], first_wrong_list: Sequence[Optional[int]]
) -> float:
    """Share of samples with a wrong step whose lowest-scored step is the first wrong step.

    Arguments as in `step_auroc_inputs`; argmin takes the first step on ties. Samples with no
    wrong step (None) are left out; NaN when no sample has one.
    """
    if len(step_scores_list) != len(first_wrong_list):
        raise ValueError(
            f"first_error_localisation: {len(step_scores_list)} samples of step scores but "
            f"{len(first_wrong_list)} first-wrong indices"
        )
    hits, total = 0, 0
    for i, (sample_scores, first_wrong) in enumerate(zip(step_scores_list, first_wrong_list)):
        if first_wrong is None:
            continue
        if not 0 <= first_wrong < len(sample_scores):
            raise ValueError(
                f"first_error_localisation: sample {i} has first wrong step {first_wrong} but "
                f"only {len(sample_scores)} scored steps; step labels and step ids disagree"
            )
        lowest = min(range(len(sample_scores)), key=lambda k: sample_scores[k])
        hits += int(lowest == first_wrong)
        total += 1
    return hits / total if total else math.nan


def majority_vote(answers: Sequence[Optional[str]], tie_break_rng: random.Random) -> int:
    """Index of the sample chosen by majority vote over final answers.

    answers[i]: sample i's extracted answer, None when none was found. None never wins unless
    every answer is None (then index 0). Ties between the most frequent answers are broken
    uniformly at random with `tie_break_rng`; the first sample holding the winner is returned.
    """
    if len(answers) == 0:
        raise ValueError("majority_vote: no answers")
    counts = {}  # insertion-ordered: the tied candidates have a fixed order for the rng
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return 0
    top = max(counts.values())
    tied = [answer for answer, count in counts.items() if count == top]
    winner = tied[0] if len(tied) == 1 else tie_break_rng.choice(tied)
    return list(answers).index(winner)


def best_of_n(scores) -> int:
    """Index of the highest score (best-of-N, section 7); the first one on ties; NaN never wins
    unless every score is NaN (then index 0).

    scores: [n], e.g. each sample's mean token reward under the PRM.
    """
    s = _as_1d(scores)
    if s.numel() == 0:
        raise ValueError("best_of_n: no scores")
    # torch.argmax returns the first maximum, and would pick NaN as the maximum.
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    return int(torch.argmax(s))
