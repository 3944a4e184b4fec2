"""What bounds the PRM's step AUROC on the built-in world? Three measured reference points on
the runs' fixed PRM set (the base policy's samples of the held-out prompts, as `repirl train`
draws it), and where a demo-trained PRM loses its AUROC.

    .venv/bin/python benchmarks/prm_ceiling.py                       # 13 min on one shared core here
    .venv/bin/python benchmarks/prm_ceiling.py --kinds '' --prm runs/sweeps/prm_quality*/trials/*/checkpoints/iter_0000[24]0/prm

1. Oracle checkers that read the text: `local` scores a step 1 when its own arithmetic is right
   (a op b = c, mod 100, the prompt's op and operand at that index), `chained` also requires its
   left-hand value to be the previous step's written result. A step label is prefix
   correctness (ALGORITHM.md section 5: the first wrong step and every later one are wrong), so
   a step after a mistake that computes correctly from the wrong value is labelled wrong while
   both checkers pass it: their AUROC is what a PRM that judges each step on its own reaches.
2. Supervised ceiling: the same PRM (same kind, beta, initialisation from the base policy)
   fitted on the ground-truth step labels of the base policy's samples of *training* prompts
   (binary cross-entropy on each step's summed token rewards), scored on the fixed set after
   each pass. A demo-trained PRM never sees a step label; this is what the model and the
   step-sum score reach when it does.
3. Any PRM checkpoint given with --prm (e.g. a sweep trial's final PRM), scored on the same set.

4. Null scorers that read nothing of a step (algo.null_step_scores): random, minus the step
   index, minus the response length. The labels' structure alone gives them AUROC above 0.5 (a
   step after a first mistake is wrong, so later steps are more often wrong; a prefix minimum
   never rises), so every other row is read against them.

Every row also splits the AUROC: correct steps against the first wrong step only, and against
the steps after it only; and gives the AUROC of the prefix minimum (each step scored by the
lowest step score up to it, as PURE's min-form credit does), which matches the labels' prefix
semantics, split the same way; and first-error localisation (algo.step_quality_metrics, the
numbers runs log). Writes benchmarks/results/prm_ceiling.md (and .json) and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repirl_ray import algo  # noqa: E402
from repirl_ray.batch import Rollouts, load_rollouts  # noqa: E402
from repirl_ray.config import load_config  # noqa: E402
from repirl_ray.learners.prm import PRMLearner, null_step_quality  # noqa: E402
from repirl_ray.models.sequence import model_inputs  # noqa: E402
from repirl_ray.run_setup import load_run_data, resolve_paths, task_kwargs  # noqa: E402
from repirl_ray.tasks.arithmetic import _ANSWER_RE, _STEP_RE, ArithmeticSpec, ArithmeticTask, _apply, parse_prompt  # noqa: E402
from repirl_ray.tasks.base import Problem  # noqa: E402


def num_steps(batch: Rollouts, i: int) -> int:
    """The steps step_scores() pools for row i (the step ids' max + 1)."""
    ids = batch.step_ids[i]
    return int(ids.max()) + 1 if (ids >= 0).any() else 0


def oracle_scores(batch: Rollouts, texts: list[str], problems: list[Problem], modulus: int) -> dict[str, list[list[float]]]:
    """Per row, per step: 1.0 when the `local` / `chained` checker passes the step, else 0.0.
    Steps are the task's own segments (ArithmeticTask.step_labels)."""
    task = ArithmeticTask(ArithmeticSpec(modulus=modulus))
    out = {"local": [], "chained": []}
    for i, (text, problem) in enumerate(zip(texts, problems)):
        start, ops = parse_prompt(problem.prompt)
        spans = [text[a:b] for a, b in task.step_labels(problem, text).spans]
        local, chained, prev = [], [], start % modulus
        for k, seg in enumerate(spans[: num_steps(batch, i)]):
            m = _STEP_RE.fullmatch(seg[:-1]) if seg.endswith(";") else None
            a = _ANSWER_RE.fullmatch(seg)
            if m and k < len(ops):
                lhs, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                ok = (op, b) == ops[k] and _apply(lhs, op, b, modulus) == c
                local.append(float(ok))
                chained.append(float(ok and lhs == prev))
                prev = c
            elif a and k == len(ops):  # the answer repeats the last written result
                local.append(float(int(a[1]) == prev))
                chained.append(float(int(a[1]) == prev))
            else:  # malformed, an answer too early, or text after the answer
                local.append(0.0)
                chained.append(0.0)
        out["local"].append(local)
        out["chained"].append(chained)
    return out


# Table columns: algo.STEP_QUALITY_KEYS, in this order, with their headers.
COLUMNS = {
    "step_auroc": "step AUROC",
    "step_auroc_first_wrong": "vs first wrong",
    "step_auroc_after_first_wrong": "vs after first wrong",
    "step_auroc_prefix_min": "prefix-min AUROC",
    "step_auroc_prefix_min_first_wrong": "prefix-min vs first wrong",
    "step_auroc_prefix_min_after_first_wrong": "prefix-min vs after",
    "first_error_acc": "first-error acc",
}
NULL_LABELS = {"random": "random scores", "position": "minus the step index", "length": "minus the response length"}


def prm_step_scores(learner: PRMLearner, batch: Rollouts) -> list[list[float]]:
    rewards, _ = learner.score_batch(batch)
    return [algo.step_scores(rewards[i], batch.step_ids[i]) for i in range(len(batch))]


def label(path: str) -> str:
    """A checkpoint's run folder relative to the sweep (trials/<trial>/checkpoints/...)."""
    parts = Path(path).resolve().parts
    return "/".join(parts[parts.index("trials") + 1:]) if "trials" in parts else path


def first_wrongs(batch: Rollouts) -> list[int | None]:
    return [None if f < 0 else int(f) for f in batch.first_wrong]


def step_targets(batch: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S] labels (1 = before the first wrong step) and a mask of the steps each row has."""
    s = max(num_steps(batch, i) for i in range(len(batch)))
    k = torch.arange(s)[None, :]
    n = torch.tensor([num_steps(batch, i) for i in range(len(batch))])[:, None]
    fw = torch.from_numpy(batch.first_wrong.astype(np.int64))[:, None]
    labels = ((fw < 0) | (k < fw)).float()
    return labels, (k < n).float()


def fit_supervised(learner: PRMLearner, train: Rollouts, fixed: Rollouts, passes: int, micro: int, lr: float, log) -> list[dict]:
    """Binary cross-entropy of each step's summed token rewards (plus one learned bias, which
    AUROC ignores) against its ground-truth label; the fixed set's AUROC after each pass."""
    labels, mask = step_targets(train)
    bias = torch.zeros((), requires_grad=True)
    params = [p for p in learner.prm.parameters() if p.requires_grad] + [bias]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    curve = []
    for p in range(1, passes + 1):
        t0, losses = time.perf_counter(), []
        learner.prm.train()
        for rows in np.array_split(rng.permutation(len(train)), max(1, len(train) // micro)):
            inputs = model_inputs(train, rows)
            r = learner.prm.token_rewards(inputs).float()  # [b, T]
            ids = torch.from_numpy(train.step_ids[rows].astype(np.int64))
            width = labels.shape[1]
            # Summed token rewards per step: tokens outside any step (id -1) go to a dropped column.
            sums = torch.zeros(len(rows), width + 1).scatter_add(1, torch.where(ids < 0, width, ids), r)[:, :width]
            m = mask[rows]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(sums + bias, labels[rows], reduction="none")
            loss = (bce * m).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        learner.prm.eval()
        with torch.no_grad():
            row = {"pass": p, "loss": float(np.mean(losses)), "s": time.perf_counter() - t0,
                   **algo.step_quality_metrics(prm_step_scores(learner, fixed), first_wrongs(fixed))}
        curve.append(row)
        log(f"  pass {p}/{passes}: loss {row['loss']:.4f}, fixed-set step AUROC {row['step_auroc']:.3f} "
            f"(vs first wrong {row['step_auroc_first_wrong']:.3f}, vs after {row['step_auroc_after_first_wrong']:.3f}, "
            f"prefix min {row['step_auroc_prefix_min']:.3f}), {row['s']:.1f} s")
    return curve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-prompts", type=int, default=1024, help="training prompts sampled for the supervised fit")
    parser.add_argument("--passes", type=int, default=6, help="passes over the supervised data")
    parser.add_argument("--micro", type=int, default=64, help="rows per supervised step")
    parser.add_argument("--lr", type=float, default=1e-4, help="supervised AdamW learning rate")
    parser.add_argument("--kinds", default="implicit,head", help="PRM kinds to fit on the labels ('' = none: only score --prm)")
    parser.add_argument("--prm", nargs="*", default=[], help="PRM checkpoint folders to score on the fixed set")
    parser.add_argument("--fixed-set", default="", help="a run's prm_eval_eval.npz: check that the set drawn here is the same")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prm_ceiling.md"))
    parser.add_argument("overrides", nargs="*", help="run-config key=value (the world, seed, eval.num_prompts, prm.beta ...)")
    args = parser.parse_args(argv)
    for path in args.prm:
        if not (Path(path) / "config.json").is_file():
            parser.error(f"--prm {path}: not a PRM checkpoint folder (no config.json); give run-config overrides "
                         "before --prm, which takes every argument after it")
    t_start = time.time()
    log = lambda msg: print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731

    # The runs' eval settings of the sweeps (benchmarks/sweeps/prm_quality.yaml) unless overridden.
    cfg = load_config(None, ["eval.num_prompts=128", "rollout.num_workers=1", *args.overrides])
    if cfg.prm.num_threads != "auto":  # auto: torch's own count (this process runs alone)
        torch.set_num_threads(cfg.prm.num_threads)
    paths = resolve_paths(cfg, log)
    data, _ = load_run_data(cfg, paths, {}, log)
    eval_problems = data["eval"][: cfg.eval.num_prompts]
    train_problems = data["train"][: args.train_prompts]

    from repirl_ray.rollout.worker import RolloutWorker

    worker = RolloutWorker(cfg.rollout, paths.policy, cfg.data.task, dtype=cfg.model.dtype, seed=cfg.seed,
                           chat_template=cfg.data.chat_template, max_prompt_tokens=cfg.data.max_prompt_tokens,
                           trust_remote_code=cfg.model.trust_remote_code, task_kwargs=task_kwargs(cfg))
    # The fixed set exactly as a run draws it at its first evaluation (evaluation.Evaluator).
    fixed, _, _ = worker.generate(eval_problems, list(range(len(eval_problems))), n=cfg.eval.samples_per_prompt,
                                  temperature=cfg.rollout.temperature, seed=10_007 + cfg.seed)
    same = None
    if args.fixed_set:
        given = load_rollouts(args.fixed_set)
        same = given.response_ids.shape == fixed.response_ids.shape and bool((given.response_ids == fixed.response_ids).all())
        log(f"fixed set drawn here {'is' if same else 'is NOT'} the one in {args.fixed_set}")
        fixed = given
    kinds = [k for k in args.kinds.split(",") if k]
    train = None
    if kinds:  # only the supervised fit needs the training prompts' samples
        train, _, _ = worker.generate(train_problems, list(range(len(train_problems))), n=cfg.rollout.samples_per_prompt,
                                      temperature=cfg.rollout.temperature, seed=cfg.seed)
    del worker
    fw = first_wrongs(fixed)
    n_steps = sum(num_steps(fixed, i) for i in range(len(fixed)))
    n_first = sum(f is not None and f < num_steps(fixed, i) for i, f in enumerate(fw))
    n_after = sum(max(0, num_steps(fixed, i) - f - 1) for i, f in enumerate(fw) if f is not None)
    log(f"fixed set: {len(fixed)} samples, {n_steps} steps ({n_steps - n_first - n_after} correct, {n_first} first wrong, "
        f"{n_after} after the first wrong); accuracy {fixed.outcome.mean():.3f}"
        + (f". Supervised data: {len(train)} samples of {len(train_problems)} training prompts, accuracy "
           f"{train.outcome.mean():.3f}" if train is not None else ""))

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths.policy, trust_remote_code=cfg.model.trust_remote_code)
    texts = [tok.decode(fixed.response_ids[i][fixed.response_mask[i] > 0], skip_special_tokens=True) for i in range(len(fixed))]
    problems = [eval_problems[int(p)] for p in fixed.prompt_index]
    rows = []
    for scorer, q in null_step_quality(fixed, seed=cfg.seed).items():
        rows.append({"scorer": f"null: {NULL_LABELS[scorer]}", **q})
        log(f"{rows[-1]['scorer']}: {rows[-1]['step_auroc']:.3f}")
    for name, scores in oracle_scores(fixed, texts, problems, cfg.world.modulus).items():
        rows.append({"scorer": f"oracle: {name} checker", **algo.step_quality_metrics(scores, fw)})
        log(f"{rows[-1]['scorer']}: {rows[-1]['step_auroc']:.3f}")

    curves = {}
    for kind in kinds:
        kcfg = load_config(None, ["eval.num_prompts=128", *args.overrides, f"prm.kind={kind}"])
        learner = PRMLearner(kcfg.prm, kcfg.irl, paths.policy, ref_path=paths.ref, seed=kcfg.seed)
        log(f"supervised {kind} PRM (lr {args.lr}, {args.passes} passes of {len(train)} samples):")
        curve = fit_supervised(learner, train, fixed, args.passes, args.micro, args.lr, log)
        best = max(curve, key=lambda r: r["step_auroc"])
        rows.append({"scorer": f"supervised {kind} PRM on step labels (best of {args.passes} passes: {best['pass']})",
                     **{k: best[k] for k in COLUMNS}})
        curves[kind] = curve
        del learner

    for path in args.prm:
        meta = json.loads((Path(path) / "prm.json").read_text()) if (Path(path) / "prm.json").is_file() else {}
        kind = meta.get("kind", cfg.prm.kind)
        kcfg = load_config(None, [*args.overrides, f"prm.kind={kind}"] + ([f"prm.beta={meta['beta']}"] if "beta" in meta else [])
                           + ([f"prm.head={meta['head']}"] if "head" in meta else []))
        learner = PRMLearner(kcfg.prm, kcfg.irl, path, ref_path=paths.ref, seed=kcfg.seed)
        learner.prm.eval()
        with torch.no_grad():
            rows.append({"scorer": f"checkpoint {label(path)}", **algo.step_quality_metrics(prm_step_scores(learner, fixed), fw)})
        log(f"{rows[-1]['scorer']}: {rows[-1]['step_auroc']:.3f}")
        del learner

    machine = f"{platform.node() or 'unknown'}: {torch.get_num_threads()} torch threads, {__import__('os').cpu_count()} cores, {platform.platform()}"
    lines = [
        "# What bounds step AUROC on the built-in world",
        "",
        f"Fixed PRM set: {len(fixed)} base-policy samples of {len(eval_problems)} held-out prompts (seed {cfg.seed}), "
        f"{n_steps} steps: {n_steps - n_first - n_after} correct, {n_first} first wrong, {n_after} after the first wrong. "
        + ("" if same is None else f"Same set as {args.fixed_set}: {same}. ")
        + (f"Supervised data: {len(train)} samples of {len(train_problems)} training prompts. " if train is not None else "")
        + f"Wall time {time.time() - t_start:.0f} s on {machine}.",
        "",
        "Columns (the runs' `eval/<key>`, algo.STEP_QUALITY_KEYS): AUROC over all steps; of the correct steps against the "
        "first wrong steps only; against the steps after them only; the same three with each step scored by the lowest step "
        "score up to it (prefix min); the share of samples with a wrong step whose lowest-scored step is the first wrong one. "
        "The null rows are what the labels' structure gives a scorer that reads nothing of a step.",
        "",
        "| scorer | " + " | ".join(COLUMNS.values()) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for r in rows:
        lines.append(f"| {r['scorer']} | " + " | ".join(f"{r[k]:.3f}" for k in COLUMNS) + " |")
    # One row per (variant, seed): a variant run again with the same seed in a second sweep is the
    # same run (the runs are deterministic), and counting it twice would shrink the spread.
    by_seed: dict[str, dict[str, dict]] = {}
    for r in rows:
        m = re.match(r"checkpoint \d+-variant=(.+)-seed=(\d+)/", r["scorer"])
        if m:
            by_seed.setdefault(m[1], {}).setdefault(m[2], r)
    groups = {variant: list(seeds.values()) for variant, seeds in by_seed.items()}
    if groups:
        lines += ["", "Checkpoints by sweep variant (mean +- std over seeds; a seed that ran in two sweeps counted once):", "",
                  "| variant | n | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
        keys = tuple(COLUMNS)
        for variant, rs in sorted(groups.items(), key=lambda kv: -np.mean([r["step_auroc_prefix_min"] for r in kv[1]])):
            cells = [f"{np.mean([r[k] for r in rs]):.3f} +- {np.std([r[k] for r in rs], ddof=1) if len(rs) > 1 else 0:.3f}" for k in keys]
            lines.append(f"| {variant} | {len(rs)} | " + " | ".join(cells) + " |")
    for kind, curve in curves.items():
        lines += ["", f"Supervised {kind} PRM by pass: " + ", ".join(f"{c['pass']}: {c['step_auroc']:.3f}" for c in curve)]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "curves": curves, "same_fixed_set": same,
                                                     "overrides": args.overrides}, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
