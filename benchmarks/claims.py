"""The paper's claims, measured on the built-in world: every mode of ALGORITHM.md section 6 and
the demo-using baselines, 3 seeds each at the same iteration budget, plus the early-signal
experiment on hard problems and best-of-N with a trained PRM.

    .venv/bin/python benchmarks/claims.py                 # everything
    .venv/bin/python benchmarks/claims.py --seeds 0 --iterations 10 --modes repirl rloo   # a quick look

Each run is a `repirl train` subprocess (exactly what a user runs) with its own run folder under
--out; --parallel N runs N of them at once (default 2: a run leaves much of 2 cores idle while it
starts, evaluates and waits between phases, and its results do not depend on its neighbours:
sampling seeds come from the iteration and the prompt). A run that needs another (ttt needs the
repirl PRM of its seed, sft_rloo the bc run's supervised stage) waits for it. Writes --out/claims.md (tables: mean +- std over seeds, every number from this run),
learning_curves.png, hard_curves.png, bon.png, claims.json (every per-run number) and prints
the tables. Nothing is cherry-picked: every seed that ran is in the table; a failed run is
reported as failed.
"""

from __future__ import annotations

import argparse
import json
import threading
from concurrent.futures import ThreadPoolExecutor
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repirl_ray import evaluation  # noqa: E402

MODES = ["repirl", "repirl_head", "rloo", "prime", "prm_only", "ttt", "bc", "sft_rloo"]
HARD_MODES = ["repirl", "rloo"]
# The early-signal experiment: train on the hard split (longer chains) with no prompt filter
# (the filter would drop every prompt the policy never solves), evaluate on held-out hard ones.
# A 6-operation solution is up to 52 tokens: room for it. 32 prompts per iteration, unfiltered,
# is about the batch the main runs train on after their filter (about 40 of 64 prompts kept).
HARD_OVERRIDES = ["data.world_split=hard_train", "filter.enabled=false", "eval.hard=true", "rollout.max_new_tokens=64",
                  "data.prompts_per_iteration=32"]

COLUMNS = {
    "final_accuracy": "held-out accuracy (sampled)",
    "final_greedy_accuracy": "greedy",
    "step_auroc": "PRM step AUROC",
    "ess": "ESS",
    "entropy": "policy entropy",
    "wall_s": "wall s",
    "time_vs_rloo": "wall time / rloo's",
}


def run_one(name: str, config: str, overrides: list[str], out: Path, log) -> dict:
    run_dir = out / "runs" / name
    summary = run_dir / "summary.json"
    if summary.is_file():  # a finished run is not run again (rerunning the benchmark resumes it)
        log(f"  {name}: done before, reused")
        return json.loads(summary.read_text())
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [str(Path(sys.executable)), "-m", "repirl_ray.cli", "train", "--config", str(ROOT / config),
           f"run_dir={run_dir}", *overrides]
    t0 = time.time()
    with open(out / "logs" / f"{name}.log", "w") as logfile:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        for line in proc.stdout:
            logfile.write(line)
            # A line every 10 iterations, so that long work shows progress.
            if line.startswith("iter ") and int(line.split()[1].split("/")[0]) % 10 == 0:
                log(f"    {name}: {line.strip()[:150]}")
        proc.wait()
    if proc.returncode != 0 or not summary.is_file():
        log(f"  {name}: FAILED (exit {proc.returncode}); see {out / 'logs' / (name + '.log')}")
        return {"failed": True}
    result = json.loads(summary.read_text())
    log(f"  {name}: final accuracy {result['final_accuracy']:.3f} (base {result['base_accuracy']:.3f}), "
        f"step AUROC {result.get('step_auroc')}, {time.time() - t0:.0f} s")
    return result


def training_means(run_dir: Path, last: int = 10) -> dict:
    """Mean ESS and entropy over the last `last` iterations; the training-batch accuracy curve."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "rollout/accuracy" in r]
    out = {}
    for key, name in (("prm/ess", "ess"), ("policy/entropy", "entropy")):
        values = [r[key] for r in train[-last:] if r.get(key) is not None]
        out[name] = float(np.mean(values)) if values else None
    out["curve_train"] = [(r["iteration"], r["rollout/accuracy"]) for r in train]
    return out


def mean_std_curves(curves_by_seed: list[list[tuple[int, float]]]) -> list[tuple[int, float, float]]:
    by_x: dict[int, list[float]] = {}
    for curve in curves_by_seed:
        for x, y in curve:
            by_x.setdefault(x, []).append(y)
    return [(x, float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for x, v in sorted(by_x.items())]


def smooth(curve: list[tuple[int, float]], window: int = 5) -> list[tuple[int, float]]:
    ys = np.array([y for _, y in curve], dtype=float)
    if len(ys) < window:
        return curve
    kernel = np.ones(window) / window
    sm = np.convolve(ys, kernel, mode="valid")
    xs = [x for x, _ in curve][window - 1:]
    return list(zip(xs, sm.tolist()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--hard-modes", nargs="*", default=HARD_MODES, choices=HARD_MODES)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "claims"))
    parser.add_argument("--no-bon", action="store_true")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("extra", nargs="*", metavar="key=value", help="overrides for every run")
    args = parser.parse_args(argv)

    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg: str) -> None:
        print(msg, flush=True)

    # Held-out evaluation at the start and the end only (128 prompts x 4 samples): the learning
    # curves are the training batches' accuracy, logged every iteration anyway.
    common = ["eval.every=0", "eval.num_prompts=128", "checkpoint.every=0", *args.extra]
    plan = [(m, s, False) for s in args.seeds for m in args.modes] + [(m, s, True) for s in args.seeds for m in args.hard_modes]
    log(f"claims benchmark: {len(plan)} runs ({args.modes} + early-signal {args.hard_modes}) x seeds {args.seeds}, "
        f"{args.iterations} iterations each; machine: {platform.platform()}, {os.cpu_count()} CPUs")
    results: dict[str, dict] = {}
    done = {name: threading.Event() for name in (f"{'hard_' if h else ''}{m}-s{s}" for m, s, h in plan)}
    started = iter(range(1, len(plan) + 1))
    lock = threading.Lock()

    def wait_for(name: str) -> None:
        if name in done:
            done[name].wait()

    def run_planned(mode: str, seed: int, hard: bool) -> None:
        name = f"{'hard_' if hard else ''}{mode}-s{seed}"
        try:
            # Behaviour cloning has no RL iterations (bc.yaml sets iterations=0).
            overrides = [*common, f"seed={seed}", f"name={name}"] + ([] if mode == "bc" else [f"iterations={args.iterations}"])
            if hard:
                overrides += HARD_OVERRIDES
            if mode == "ttt":
                # Test-time training needs a trained PRM: the repirl run of the same seed.
                wait_for(f"repirl-s{seed}")
                repirl_dir = out / "runs" / f"repirl-s{seed}"
                prm = sorted((repirl_dir / "checkpoints").glob("iter_*/prm"))
                if not prm:
                    log(f"  {name}: skipped, needs the repirl run of seed {seed} first")
                    results[name] = {"failed": True, "reason": "no trained PRM"}
                    return
                overrides.append(f"model.prm_path={prm[-1]}")
            if mode == "sft_rloo":
                # The supervised stage is the bc run's job of the same seed (same demos, steps, seed):
                # start RLOO from its result instead of training the same model a second time.
                wait_for(f"bc-s{seed}")
                sft_policy = out / "runs" / f"bc-s{seed}" / "sft_policy"
                if (sft_policy / "config.json").is_file():
                    log(f"  {name}: starts from bc-s{seed}'s supervised stage ({sft_policy})")
                    overrides += [f"model.policy_path={sft_policy}", "sft.steps=0"]
            with lock:
                i = next(started)
            log(f"[{i}/{len(plan)}] {name} ({time.time() - t_start:.0f} s so far)")
            result = run_one(name, f"configs/modes/{mode}.yaml", overrides, out, log)
            result.update(training_means(out / "runs" / name))
            results[name] = result
        finally:
            done[name].set()

    # Runs that others wait for go first, so a waiting run never holds a slot its dependency needs.
    first = {"repirl", "bc"}
    ordered = sorted(plan, key=lambda p: (p[0] not in first, p[2], p[1]))
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for future in [pool.submit(run_planned, *p) for p in ordered]:
            future.result()

    # Speed against the baseline of the same seed, measured in this same benchmark run.
    for (mode, seed, hard) in plan:
        name = f"{'hard_' if hard else ''}{mode}-s{seed}"
        base = results.get(f"{'hard_' if hard else ''}rloo-s{seed}", {})
        if results.get(name, {}).get("wall_s") and base.get("wall_s"):
            results[name]["time_vs_rloo"] = results[name]["wall_s"] / base["wall_s"]

    # ---- tables ----
    def table(modes, prefix, columns):
        rows = {}
        for mode in modes:
            rows[mode] = {c: [results.get(f"{prefix}{mode}-s{s}", {}).get(c) for s in args.seeds] for c in columns}
            rows[mode]["base_accuracy"] = [results.get(f"{prefix}{mode}-s{s}", {}).get("base_accuracy") for s in args.seeds]
        return evaluation.format_mean_std_table(rows, ["base_accuracy", *columns], row_header="mode")

    main_table = table(args.modes, "", list(COLUMNS))
    hard_table = table(args.hard_modes, "hard_", ["final_hard_accuracy", "final_hard_greedy_accuracy", "final_accuracy", "ess"]) if args.hard_modes else ""

    # ---- plots: training-batch accuracy per iteration (moving average of 5), mean +- std over seeds ----
    def plot(prefix, modes, path, title):
        curves = {}
        for mode in modes:
            per_seed = [smooth(results.get(f"{prefix}{mode}-s{s}", {}).get("curve_train") or []) for s in args.seeds]
            per_seed = [c for c in per_seed if c]
            if per_seed:
                curves[mode] = mean_std_curves(per_seed)
        if curves:
            evaluation.plot_learning_curves(curves, path, title, "training-batch accuracy")

    plot("", [m for m in args.modes if m != "bc"], out / "learning_curves.png",
         f"training-batch accuracy (moving avg 5), mean +- std, {len(args.seeds)} seeds")
    plot("hard_", args.hard_modes, out / "hard_curves.png",
         "hard problems (5-6 ops): training-batch accuracy")

    # ---- best-of-N with the trained PRM of the first repirl run ----
    bon_table = ""
    if not args.no_bon and "repirl" in args.modes:
        ckpts = sorted((out / "runs" / f"repirl-s{args.seeds[0]}" / "checkpoints").glob("iter_*"))
        if ckpts:
            log(f"best-of-N with {ckpts[-1]}")
            proc = subprocess.run([sys.executable, "-m", "repirl_ray.cli", "bon", "--checkpoint", str(ckpts[-1]), "--out", str(out)],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode == 0 and (out / "bon.md").is_file():
                bon_table = (out / "bon.md").read_text()
            else:
                log(f"best-of-N failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    wall = time.time() - t_start
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, no GPU" if not _has_gpu() else platform.platform()
    report = [
        "# Claims on the built-in world",
        "",
        f"Command: `python benchmarks/claims.py --seeds {' '.join(map(str, args.seeds))} --iterations {args.iterations}"
        + (f" {' '.join(args.extra)}" if args.extra else "") + "`",
        f"Machine: {machine}. Wall time: {wall / 60:.1f} min for {len(plan)} runs, {args.parallel} at a time "
        "(wall times of runs that overlapped others: their ratios are indicative only).",
        "",
        f"## Modes ({args.iterations} iterations of 64 prompts x 4 samples; mean +- std over seeds)",
        "",
        "Accuracy: 128 held-out prompts, mean correctness of 4 samples at T = 1.0 (greedy beside it).",
        "Step AUROC: the PRM on the base policy's samples of the held-out prompts. ESS and entropy:",
        "mean of the last 10 iterations. `bc` has no RL iterations; `ttt` trains on the held-out",
        "prompts themselves without their labels, with the repirl run's PRM frozen. For `bc` and",
        "`sft_rloo`, `base_accuracy` is the policy after the supervised stage (where RL starts).",
        "",
        main_table,
        "",
    ]
    if hard_table:
        report += [
            "## Early signal on hard problems",
            "",
            "Trained on 5-6 operation chains (the base policy was warmed up on 2-4), no prompt filter;",
            "`final_hard_*`: held-out hard prompts.",
            "",
            hard_table,
            "",
        ]
    if bon_table:
        report += ["## Best-of-N with the PRM of repirl seed " + str(args.seeds[0]), "", bon_table, ""]
    (out / "claims.md").write_text("\n".join(report))
    (out / "claims.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(report))
    print(f"written: {out / 'claims.md'}, plots in {out}")
    return 0


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
