"""Evaluation summaries for a trained PRM and for learning curves (ALGORITHM.md sections 5, 7).

- pass@k: the unbiased estimator of Chen et al. (2021) from n samples of which c are correct.
- best-of-N curves: accuracy as N grows when one answer is picked per prompt by the PRM (the
  highest mean token reward, the highest worst step, the PRM-weighted vote of the released
  code), by majority vote, at random, and by an oracle (any correct answer).
- markdown tables and PNG plots of those curves and of learning curves over seeds.
- the Evaluator: a run's held-out evaluation (at the start, every eval.every iterations, at the
  end) through the run's rollout group and PRM learner group.

No Ray and no vLLM here: the Evaluator only calls the groups it is handed.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from repirl_ray.algo.metrics import STEP_QUALITY_KEYS, best_of_n, majority_vote, prm_weighted_vote
from repirl_ray.batch import load_rollouts, save_rollouts
from repirl_ray.config import EvalConfig
from repirl_ray.learners.prm import null_metrics, null_step_quality
from repirl_ray.utils import atomic_write_bytes

SELECTORS = ("prm_mean", "prm_min_step", "prm_vote", "majority", "random", "oracle")


# --------------------------------------------------------------------------------------------
# pass@k
# --------------------------------------------------------------------------------------------


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n - c, k) / C(n, k): the chance that k samples drawn without
    replacement from the n (c of them correct) hold at least one correct one.

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms a large binomial.
    """
    n, c, k = int(num_samples), int(num_correct), int(k)
    if n < 1:
        raise ValueError(f"pass_at_k: need at least one sample, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: num_correct={c} must lie in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must lie in [1, n={n}]")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct, ks: Iterable[int]) -> Dict[int, float]:
    """Mean pass@k over prompts. correct: [P, n] of 0/1 (row p = the n samples of prompt p).
    Returns {k: mean over the P prompts}; a k > n (or < 1) is an error."""
    c = _as_01_matrix(correct, "mean_pass_at_k", "correct")
    num_prompts, n = c.shape
    per_prompt = c.sum(axis=1).astype(int)
    out: Dict[int, float] = {}
    for k in ks:
        k = int(k)
        if not 1 <= k <= n:
            raise ValueError(f"mean_pass_at_k: k={k} must lie in [1, n={n}]")
        out[k] = float(np.mean([pass_at_k(n, int(cp), k) for cp in per_prompt]))
    return out


# --------------------------------------------------------------------------------------------
# best-of-N
# --------------------------------------------------------------------------------------------


def _as_01_matrix(values, fn: str, name: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must be a non-empty [P, N] array, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{fn}: {name} must hold only 0 and 1")
    return arr


def _subsets(num_total: int, n: int, num_subsets: int, rng: np.random.Generator) -> np.ndarray:
    """[S, n] sorted sample indices. n == N: the single full set. When C(N, n) <= num_subsets,
    every n-subset once (the exact expectation over a uniform random subset); otherwise
    num_subsets independent uniform subsets, each drawn without replacement."""
    if n == num_total:
        return np.arange(num_total)[None, :]
    if math.comb(num_total, n) <= num_subsets:
        return np.array(list(itertools.combinations(range(num_total), n)), dtype=np.int64)
    picks = np.argsort(rng.random((num_subsets, num_total)), axis=1)[:, :n]
    return np.sort(picks, axis=1)


def _mean_se(per_prompt: Sequence[float]) -> Tuple[float, float]:
    x = np.asarray(per_prompt, dtype=np.float64)
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size >= 2 else math.nan
    return mean, se


def best_of_n_curves(
    scores,
    correct,
    answers: Sequence[Sequence[Optional[str]]],
    ns: Iterable[int] = (1, 2, 4, 8, 16, 32),
    num_subsets: int = 16,
    seed: int = 0,
    min_step_scores=None,
) -> dict:
    """Accuracy of the ways to pick one of n samples per prompt, for each n in ns (n <= N).

    scores: [P, N] PRM scores, each sample's mean token reward (NaN never wins); correct: [P, N]
    0/1; answers: P lists of N extracted final answers (None = none found); min_step_scores:
    [P, N] each sample's lowest step reward, or None (then prm_min_step is left out).

    For each n, each prompt gets the same subsets of its N samples for every selector (see
    `_subsets`: the full set when n == N, all C(N, n) subsets when there are at most
    `num_subsets`, else `num_subsets` random ones). On each subset:
      prm_mean     - the sample with the highest score, the first on ties (algo.best_of_n);
      prm_min_step - the same by min_step_scores (the highest worst step);
      prm_vote     - algo.prm_weighted_vote: answers grouped, each group scored by
                     sum of exp(score), the best group's top sample (the released code's);
      majority - algo.majority_vote, ties broken by a seeded random.Random;
      random   - a uniform random pick, taken as its exact expectation: the subset's mean
                 correctness (no sampling noise);
      oracle   - 1 when any sample in the subset is correct (pass@n-like upper bound).
    A prompt's value is the mean over its subsets; the curve point is the mean over prompts,
    with the standard error over prompts (std ddof=1 / sqrt(P); NaN when P = 1).

    Each n uses its own random streams seeded from (seed, n), so the value at one n does not
    depend on which other ns were asked for. ns larger than N are left out.

    Returns {"n": [...], "selectors": [the selectors computed, in SELECTORS order],
    "prm_mean": [...], "prm_mean_se": [...], ... for each selector, "num_prompts": P,
    "num_samples": N}.
    """
    s = _as_float_matrix(scores)
    c = _as_01_matrix(correct, "best_of_n_curves", "correct")
    if s.shape != c.shape:
        raise ValueError(f"best_of_n_curves: scores {s.shape} and correct {c.shape} differ")
    m = None if min_step_scores is None else _as_float_matrix(min_step_scores)
    if m is not None and m.shape != c.shape:
        raise ValueError(f"best_of_n_curves: min_step_scores {m.shape} and correct {c.shape} differ")
    selectors = [k for k in SELECTORS if not (k == "prm_min_step" and m is None)]
    num_prompts, num_total = c.shape
    if len(answers) != num_prompts or any(len(a) != num_total for a in answers):
        raise ValueError(f"best_of_n_curves: answers must be {num_prompts} lists of {num_total}")
    if num_subsets < 1:
        raise ValueError(f"best_of_n_curves: num_subsets={num_subsets} must be >= 1")
    ns = [int(n) for n in ns]
    if any(n < 1 for n in ns):
        raise ValueError(f"best_of_n_curves: every n must be >= 1, got {ns}")
    ns_kept = sorted({n for n in ns if n <= num_total})

    out: dict = {"n": ns_kept, "selectors": selectors, "num_prompts": num_prompts, "num_samples": num_total}
    for key in selectors:
        out[key], out[key + "_se"] = [], []
    for n in ns_kept:
        subset_rng = np.random.default_rng([int(seed), n])
        vote_rng = random.Random(int(seed) * 1_000_003 + n)
        per_prompt = {key: [] for key in selectors}
        for p in range(num_prompts):
            subsets = _subsets(num_total, n, num_subsets, subset_rng)
            picked = {key: [] for key in ("prm_mean", "prm_min_step", "prm_vote", "majority")}
            for idx in subsets:
                sub_answers = [answers[p][i] for i in idx]
                picked["prm_mean"].append(c[p, idx[best_of_n(s[p, idx])]])
                if m is not None:
                    picked["prm_min_step"].append(c[p, idx[best_of_n(m[p, idx])]])
                picked["prm_vote"].append(c[p, idx[prm_weighted_vote(s[p, idx], sub_answers)]])
                picked["majority"].append(c[p, idx[majority_vote(sub_answers, vote_rng)]])
            for key, values in picked.items():
                if values:
                    per_prompt[key].append(float(np.mean(values)))
            sub_correct = c[p][subsets]  # [S, n]
            per_prompt["random"].append(float(sub_correct.mean()))
            per_prompt["oracle"].append(float(sub_correct.max(axis=1).mean()))
        for key in selectors:
            mean, se = _mean_se(per_prompt[key])
            out[key].append(mean)
            out[key + "_se"].append(se)
    return out


def _as_float_matrix(values) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)


def _fmt_mean_pm(mean: float, spread: float, decimals: int) -> str:
    if spread is None or not math.isfinite(spread):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} +- {spread:.{decimals}f}"


def format_bon_table(curves: Mapping, decimals: int = 3) -> str:
    """Markdown table of `best_of_n_curves` output: one row per n, one column per selector
    computed, as "mean +- se" (the +- part left out where se is NaN)."""
    selectors = curves["selectors"]
    lines = ["| N | " + " | ".join(selectors) + " |", "|---" * (len(selectors) + 1) + "|"]
    for i, n in enumerate(curves["n"]):
        cells = [_fmt_mean_pm(curves[k][i], curves[k + "_se"][i], decimals) for k in selectors]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# plots (Agg canvas, no pyplot global state; written atomically)
# --------------------------------------------------------------------------------------------


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save_png(fig, path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_bon(curves: Mapping, path, title: str = "best-of-N") -> None:
    """PNG line plot of `best_of_n_curves` output: x = N on a log2 axis, one line per selector
    with a +- se band; written to a temporary file and renamed into place."""
    fig, ax = _new_figure()
    x = np.asarray(curves["n"], dtype=np.float64)
    styles = {"prm_mean": "o-", "prm_min_step": "D-", "prm_vote": "P-", "majority": "s-", "random": "^--", "oracle": "v:"}
    for key in curves["selectors"]:
        y = np.asarray(curves[key], dtype=np.float64)
        se = np.asarray(curves[key + "_se"], dtype=np.float64)
        (line,) = ax.plot(x, y, styles[key], label=key)
        ax.fill_between(x, y - se, y + se, color=line.get_color(), alpha=0.2, linewidth=0)
    if x.size:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([str(int(v)) for v in x])
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save_png(fig, path)


def plot_learning_curves(
    curves: Mapping[str, Sequence[Tuple[float, float, float]]],
    path,
    title: str,
    ylabel: str,
    xlabel: str = "iteration",
) -> None:
    """PNG with one line per label and a shaded mean +- std band. curves[label] = list of
    (x, mean, std) points (sorted by x here; a None/NaN std draws no band at that point)."""
    fig, ax = _new_figure()
    for label, points in curves.items():
        pts = sorted(points, key=lambda t: t[0])
        if not pts:
            continue
        x = np.array([float(t[0]) for t in pts])
        y = np.array([math.nan if t[1] is None else float(t[1]) for t in pts])
        sd = np.array([math.nan if t[2] is None else float(t[2]) for t in pts])
        (line,) = ax.plot(x, y, "-", marker="." if len(pts) < 50 else None, label=str(label))
        ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend()
    _save_png(fig, path)


# --------------------------------------------------------------------------------------------
# mean +- std over seeds
# --------------------------------------------------------------------------------------------


def _is_missing(v) -> bool:
    if v is None:
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def format_mean_std_cell(values: Optional[Sequence], decimals: int = 3) -> str:
    """"mean +- std (n=k)" over the non-missing values (std ddof=1); "mean (n=1)" for one
    value; "- (n=0)" for none; ", m skipped" is added inside the brackets when m values were
    None/NaN."""
    values = list(values or [])
    kept = [float(v) for v in values if not _is_missing(v)]
    skipped = len(values) - len(kept)
    tail = f"n={len(kept)}" + (f", {skipped} skipped" if skipped else "")
    if not kept:
        return f"- ({tail})"
    mean = float(np.mean(kept))
    if len(kept) == 1:
        return f"{mean:.{decimals}f} ({tail})"
    std = float(np.std(kept, ddof=1))
    return f"{mean:.{decimals}f} +- {std:.{decimals}f} ({tail})"


def format_mean_std_table(
    rows: Mapping[str, Mapping[str, Sequence[float]]],
    columns: List[str],
    decimals: int = 3,
    row_header: str = "",
) -> str:
    """Markdown table: one row per key of `rows` (e.g. a mode), one column per name in
    `columns` (e.g. a metric); rows[r][col] = the values over seeds, shown by
    `format_mean_std_cell`. A column a row lacks shows "- (n=0)"."""
    lines = [
        f"| {row_header} | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for label, by_col in rows.items():
        cells = [format_mean_std_cell(by_col.get(col), decimals) for col in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# one run's curves (curves.png in the run folder)
# --------------------------------------------------------------------------------------------

# (panel title, y label, [(metrics key, label, "line" | "points", axis)]); axis "right" is a
# second y axis (ess_within lies in [0, 1], the batch ESS counts samples).
RUN_PANELS = (
    ("accuracy", "accuracy", [
        ("rollout/accuracy", "training batch (sampled)", "line", "left"),
        ("eval/accuracy", "held-out (sampled)", "points", "left"),
        ("eval/greedy_accuracy", "held-out (greedy)", "points", "left"),
        ("eval_hard/accuracy", "held-out hard (sampled)", "points", "left"),
    ]),
    ("PRM step AUROC", "step AUROC", [
        ("prm/step_auroc", "training batch (on-policy)", "line", "left"),
        ("eval/step_auroc", "held-out, fixed base-policy set", "points", "left"),
        ("eval/step_auroc_prefix_min", "held-out, fixed set, prefix min", "points", "left"),
        # The floor the labels' structure gives a scorer that knows only the step's position.
        ("eval/step_auroc_null_position", "null: minus the step index (fixed set)", "points", "left"),
    ]),
    ("importance weights", "ESS (samples)", [
        ("prm/ess", "ESS over the batch", "line", "left"),
        ("prm/ess_within", "ess_within (right axis)", "line", "right"),
    ]),
    ("policy entropy", "entropy (nats / token)", [
        ("policy/entropy", "policy/entropy", "line", "left"),
    ]),
)


def _series(records: Sequence[Mapping], key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of one metrics key; records without it, or with a null (a
    non-finite value in metrics.jsonl), are left out."""
    points = [(float(r["iteration"]), float(r[key])) for r in records if r.get(key) is not None and "iteration" in r]
    if not points:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*points)
    return np.asarray(x), np.asarray(y)


def write_run_curves(records: Sequence[Mapping], run_dir: Path, title: str, log_fn=print) -> None:
    """curves.png in the run folder; a failure is a warning: a plot must never cost the run its
    result or hide its error."""
    try:
        plot_run_curves(records, Path(run_dir) / "curves.png", title=title)
    except Exception as err:  # noqa: BLE001 - see above
        log_fn(f"warning: curves.png not written ({type(err).__name__}: {err})")


def plot_run_curves(records: Sequence[Mapping], path, title: str = "") -> Dict[str, List[str]]:
    """curves.png of one run from its metrics.jsonl records (metrics.MetricsLogger): accuracy,
    step AUROC, ESS and ess_within, entropy by iteration, 2 x 2 panels. Training metrics are
    lines, evaluations (every eval.every iterations, at the start and the end) are points. A
    panel with nothing logged says so. Returns {panel title: the keys drawn}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    drawn: Dict[str, List[str]] = {}
    for i, (panel, ylabel, series) in enumerate(RUN_PANELS):
        ax = fig.add_subplot(2, 2, i + 1)
        right = None
        drawn[panel] = []
        handles = []
        for key, label, style, axis in series:
            x, y = _series(records, key)
            if not x.size:
                continue
            target = ax
            if axis == "right":
                if right is None:
                    right = ax.twinx()
                target = right
                target.set_ylabel(key)
                target.set_ylim(0, 1.05)
            color = f"C{len(handles)}"
            if style == "line":
                (h,) = target.plot(x, y, "-", color=color, marker="." if x.size < 30 else None, label=label)
            else:
                (h,) = target.plot(x, y, "o", color=color, markersize=6, label=label)
            handles.append(h)
            drawn[panel].append(key)
        if not handles:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
        else:
            ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, loc="best")
        ax.set_title(panel)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    _save_png(fig, path)
    return drawn


# --------------------------------------------------------------------------------------------
# a sweep: the chosen metric against each swept key (sweep.png)
# --------------------------------------------------------------------------------------------


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(
    points: Mapping[str, Sequence[Tuple[object, float]]],
    path,
    metric: str,
    log_keys: Iterable[str] = (),
    title: str = "",
) -> None:
    """One panel per swept key: every finished trial's metric (dots) at its value of the key,
    and the mean over trials at each value (line; the other keys and the seeds averaged out).

    points[key] = [(value of key in the trial, metric), ...]. Numeric values get a numeric axis
    (log where the key is in log_keys or its positive values span 100x or more); anything else
    (strings, bools, lists, variant names) is categorical, in order of first appearance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(points)
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    log_keys = set(log_keys)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = [(v, float(m)) for v, m in points[key] if m is not None and math.isfinite(float(m))]
        values = [v for v, _ in pts]
        if not pts:
            ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif _numeric(values):
            x = np.asarray(values, dtype=np.float64)
            y = np.asarray([m for _, m in pts])
            ax.plot(x, y, "o", alpha=0.5, label="trials")
            xs = np.unique(x)
            ax.plot(xs, [y[x == v].mean() for v in xs], "-", color="C1", label="mean")
            positive = x[x > 0]
            if key in log_keys or (positive.size == x.size and positive.size and positive.max() >= 100 * positive.min()):
                ax.set_xscale("log")
        else:
            labels = []
            for v in values:
                if str(v) not in labels:
                    labels.append(str(v))
            x = np.asarray([labels.index(str(v)) for v in values], dtype=np.float64)
            y = np.asarray([m for _, m in pts])
            jitter = (np.arange(x.size) % 5 - 2) * 0.03  # keep seeds at one value apart
            ax.plot(x + jitter, y, "o", alpha=0.5, label="trials")
            ax.plot(range(len(labels)), [y[x == j].mean() for j in range(len(labels))], "_", color="C1",
                    markersize=24, mew=2, label="mean")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=20 if max(len(s) for s in labels) > 6 else 0, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if pts:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save_png(fig, path)


# --------------------------------------------------------------------------------------------
# A run's held-out evaluation
# --------------------------------------------------------------------------------------------


class Evaluator:
    """Held-out accuracy: sampled pass@1 at the training temperature (mean correctness of
    eval.samples_per_prompt samples), greedy accuracy beside it; and the PRM's step AUROC.

    The PRM is judged on one fixed labelled set per split, the base policy's samples of the
    held-out prompts (drawn at the first evaluation and kept in the run folder as
    prm_eval_<tag>.npz), so that its numbers compare across iterations and runs: the current
    policy's samples change, and they hold fewer and different mistakes as it improves. The AUROC
    on them is logged beside it (`*/step_auroc_onpolicy`), and so are the numbers of null scorers
    on the fixed set (what a PRM's distance from them is, it knows).

    rollout: the run's RolloutGroup; prm: its PRMLearnerGroup, or None."""

    def __init__(self, cfg: EvalConfig, run_dir: Path, rollout, prm, *, temperature: float, seed: int,
                 eval_problems: list, hard_problems: list):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.rollout, self.prm = rollout, prm
        self.temperature, self.seed = temperature, seed
        self.eval_problems, self.hard_problems = eval_problems, hard_problems
        self._prm_sets: dict = {}  # per eval split: the fixed set, in the object store
        self._prm_nulls: dict = {}  # per eval split: the null scorers' step quality on its fixed set

    def evaluate_all(self) -> dict:
        out = self.evaluate(self.eval_problems, "eval")
        if self.hard_problems:
            out.update(self.evaluate(self.hard_problems, "eval_hard"))
        return out

    def evaluate(self, problems, tag: str) -> dict:
        out = {}
        t0 = time.perf_counter()
        sampled = self.rollout.generate(problems, n=self.cfg.samples_per_prompt, temperature=self.temperature,
                                        seed=10_007 + self.seed, with_demos=False)
        out[f"{tag}/accuracy"] = float(sampled.field("outcome").mean())
        if self.cfg.greedy:
            greedy = self.rollout.generate(problems, n=1, temperature=0.0, seed=0, with_demos=False)
            out[f"{tag}/greedy_accuracy"] = float(greedy.field("outcome").mean())
        if self.prm is not None:
            fresh = tag not in self._prm_sets and not (self.run_dir / f"prm_eval_{tag}.npz").is_file()
            fixed = self._prm_eval_set(tag, sampled.rollouts)
            # At the first evaluation the fixed set is these very samples: score them once.
            sets = (("", [fixed]),) if fresh else (("", [fixed]), ("_onpolicy", sampled.rollouts))
            for suffix, parts in sets:
                _, stats = self.prm.score(None, parts)
                for key in STEP_QUALITY_KEYS:
                    if f"prm/{key}" in stats:
                        out[f"{tag}/{key}{suffix}"] = stats[f"prm/{key}"]
                        if fresh:
                            out[f"{tag}/{key}_onpolicy"] = stats[f"prm/{key}"]
            out.update({f"{tag}/{k}": v for k, v in self._prm_nulls[tag].items()})
        out[f"timing/{tag}"] = time.perf_counter() - t0
        return out

    def _prm_eval_set(self, tag: str, rollouts: list):
        """The fixed PRM evaluation set of this eval split: saved at the first evaluation (the
        base policy's samples), reloaded from the run folder on resume."""
        if tag not in self._prm_sets:
            path = self.run_dir / f"prm_eval_{tag}.npz"
            if path.is_file():
                batch = load_rollouts(path)
            else:
                batch = self.rollout.gather(rollouts)
                save_rollouts(batch, path)
            self._prm_sets[tag] = self.rollout.put(batch)
            self._prm_nulls[tag] = null_metrics(null_step_quality(batch, seed=self.seed))
        return self._prm_sets[tag]
