"""Evaluation metrics for a PRM and for picking among N answers (ALGORITHM.md sections 5 and 7).

- step AUROC: token rewards summed per reasoning step; a step before the first wrong step is
  labelled correct (1), the first wrong step and every later one wrong (0) (section 5,
  prm/step_auroc).
- prefix-min step AUROC: the same, each step scored by the lowest step score up to it; the
  labels mark the correctness of the whole prefix, which a per-step score cannot see.
- first-error localisation: does the lowest-scored step coincide with the first wrong step?
- each AUROC split: the correct steps against the first wrong steps only (local error
  detection), and against the steps after a first mistake only.
- null scorers (random, minus the step index, minus the response length): what a scorer that
  knows nothing of the steps' content gets from the labels' structure alone.
- best-of-N (highest score, the PRM-weighted vote) and majority vote over final answers (section 7).

Inputs may be Python lists, numpy arrays or torch tensors; outputs are Python numbers.
"""

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

import torch


# The PRM quality numbers a scorer of labelled steps reports (`step_quality_metrics`), as runs and
# `repirl eval` log them.
STEP_QUALITY_KEYS = (
    "step_auroc",
    "step_auroc_first_wrong",
    "step_auroc_after_first_wrong",
    "step_auroc_prefix_min",
    "step_auroc_prefix_min_first_wrong",
    "step_auroc_prefix_min_after_first_wrong",
    "first_error_acc",
)

# Scorers that read nothing of a step's content (`null_step_scores`).
NULL_SCORERS = ("random", "position", "length")


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


def step_auroc_split(
    step_scores_list: Sequence[Sequence[float]], first_wrong_list: Sequence[Optional[int]]
) -> Dict[str, float]:
    """AUROC of the steps, whole and split by the kind of wrong step (arguments as in
    `step_auroc_inputs`):

    - "all": every correct step against every wrong one (`step_auroc_inputs`);
    - "first_wrong": the correct steps (of all samples) against the first wrong steps only:
      local error detection, where the scorer must see the mistake itself;
    - "after_first_wrong": the correct steps against the steps after a first mistake only,
      which a scorer can rank low from position or from a running minimum alone.

    A first_wrong index past a sample's last step (it stopped early) adds no wrong step. NaN
    where a class is empty."""
    scores, labels = step_auroc_inputs(step_scores_list, first_wrong_list)
    positives = [s for s, y in zip(scores, labels) if y == 1]
    first: List[float] = []
    after: List[float] = []
    for sample, first_wrong in zip(step_scores_list, first_wrong_list):
        if first_wrong is not None:
            first += [float(x) for x in sample[first_wrong: first_wrong + 1]]
            after += [float(x) for x in sample[first_wrong + 1:]]
    pos_labels = [1] * len(positives)
    return {
        "all": auroc(scores, labels),
        "first_wrong": auroc(positives + first, pos_labels + [0] * len(first)),
        "after_first_wrong": auroc(positives + after, pos_labels + [0] * len(after)),
    }


def step_quality_metrics(
    step_scores_list: Sequence[Sequence[float]], first_wrong_list: Sequence[Optional[int]]
) -> Dict[str, float]:
    """Every STEP_QUALITY_KEYS number of one scorer: the split step AUROC of the step scores and
    of their prefix minimum, and first-error localisation (samples that stop early with every
    present step right, first_wrong == len(steps), have nothing to localise and are left out)."""
    out: Dict[str, float] = {}
    for prefix, scores in (("step_auroc", step_scores_list), ("step_auroc_prefix_min", prefix_min(step_scores_list))):
        for part, value in step_auroc_split(scores, first_wrong_list).items():
            out[prefix if part == "all" else f"{prefix}_{part}"] = value
    localisable = [(s, f) for s, f in zip(step_scores_list, first_wrong_list) if f is None or f < len(s)]
    out["first_error_acc"] = first_error_localisation([s for s, _ in localisable], [f for _, f in localisable])
    return out


def null_step_scores(
    kind: str, num_steps: Sequence[int], response_lengths: Sequence[float], seed: int = 0
) -> List[List[float]]:
    """Step scores of a scorer that reads nothing of the steps' content, one list per sample:

    - "random": independent uniform [0, 1) scores (torch generator seeded with `seed`);
    - "position": minus the step index (0, -1, -2, ...): later steps look worse, and every step
      after a first mistake is labelled wrong, so position alone ranks many pairs right;
    - "length": minus the sample's response length (in tokens) on each of its steps: longer
      responses look worse; all steps of a sample tie.

    num_steps[i], response_lengths[i]: sample i's step count and response length."""
    if len(num_steps) != len(response_lengths):
        raise ValueError(f"null_step_scores: {len(num_steps)} step counts but {len(response_lengths)} response lengths")
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        flat = torch.rand(int(sum(num_steps)), generator=generator, dtype=torch.float64).tolist()
        out, start = [], 0
        for n in num_steps:
            out.append(flat[start: start + n])
            start += n
        return out
    if kind == "position":
        return [[-float(k) for k in range(n)] for n in num_steps]
    if kind == "length":
        return [[-float(length)] * n for n, length in zip(num_steps, response_lengths)]
    raise ValueError(f"null_step_scores: kind {kind!r} is not one of {', '.join(NULL_SCORERS)}")


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


def prm_weighted_vote(scores, answers: Sequence[Optional[str]]) -> int:
    """Index of the sample chosen by the PRM-weighted vote of the authors' released evaluation
    (its commit 7b18380): samples grouped by final answer, each group scored by
    sum over its samples of exp(score); the best group's highest-scored sample wins.

    scores: [n] (e.g. mean token rewards); answers[i]: sample i's answer, None when none was
    found. None answers form no group unless every answer is None (then `best_of_n` over all).
    Ties: the group seen first, then the first sample; a NaN score adds nothing to its group and
    never wins inside it. exp is taken after subtracting the largest score (the same argmax,
    no overflow)."""
    s = _as_1d(scores)
    if s.numel() != len(answers):
        raise ValueError(f"prm_weighted_vote: {s.numel()} scores but {len(answers)} answers")
    if s.numel() == 0:
        raise ValueError("prm_weighted_vote: no scores")
    finite = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    if not any(a is not None for a in answers) or bool(torch.isinf(finite).all()):
        return best_of_n(s)
    weights = torch.exp(finite - finite.max())
    groups: Dict[str, List[int]] = {}  # insertion-ordered: the first group seen wins a tie
    for i, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(answer, []).append(i)
    best = max(groups.values(), key=lambda rows: float(weights[rows].sum()))
    return best[best_of_n(finite[best])]
