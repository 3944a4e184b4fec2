"""The paper's claims, measured on the built-in world: every mode of ALGORITHM.md section 6 and
the demo-using baselines, 3 seeds each at the same iteration budget, plus the early-signal
experiment on hard problems and best-of-N with a trained PRM.

    .venv/bin/python benchmarks/claims.py                 # everything
    .venv/bin/python benchmarks/claims.py --seeds 0 --iterations 10 --modes repirl rloo   # a quick look

Runs go in --parallel lanes (default 2), each a process with one Ray that runs its share of the
runs one after another, in-process, reusing its rollout workers (vLLM engines) across runs with
the same rollout settings: a run starts from its own policy's weights pushed into them (samples
do not depend on an engine's past: seeds are per request). So Python, Ray and vLLM start once per
lane instead of once per run. A run that needs another (ttt needs the repirl PRM of its seed,
sft_rloo the bc run's supervised stage) is in the same lane, after it. Each run has its own run
folder under --out and its log under --out/logs; a finished run is not run again (rerunning the
benchmark resumes it). Writes --out/claims.md (tables: mean +- std over seeds, every number from this run),
learning_curves.png, hard_curves.png, bon.png, claims.json (every per-run number) and prints
the tables. Nothing is cherry-picked: every seed that ran is in the table; a failed run is
reported as failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import threading
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


# Rough cost of a run relative to rloo's (the claims run of 2026-12-04: wall_s, bc with its
# supervised stage), to balance the lanes.
COST = {"repirl": 1.9, "repirl_head": 1.7, "rloo": 1.0, "prime": 1.7, "prm_only": 2.0, "ttt": 1.45, "bc": 1.5,
        "sft_rloo": 0.7, "hard_repirl": 2.4, "hard_rloo": 0.8}
NEEDS = {"ttt": "repirl", "sft_rloo": "bc"}  # run after that mode's run of the same seed (same lane)


def run_name(mode: str, seed: int, hard: bool) -> str:
    return f"{'hard_' if hard else ''}{mode}-s{seed}"


def run_overrides(mode: str, seed: int, hard: bool, iterations: int, common: list[str], out: Path, log) -> list[str] | None:
    """The run's key=value overrides; None when a run it needs has not left what it needs."""
    overrides = [*common, f"seed={seed}", f"name={run_name(mode, seed, hard)}"] + ([] if mode == "bc" else [f"iterations={iterations}"])
    if hard:
        overrides += HARD_OVERRIDES
    if mode == "ttt":
        # Test-time training needs a trained PRM: the repirl run of the same seed.
        prm = sorted((out / "runs" / f"repirl-s{seed}" / "checkpoints").glob("iter_*/prm"))
        if not prm:
            log(f"  {run_name(mode, seed, hard)}: skipped, needs the repirl run of seed {seed} first")
            return None
        overrides.append(f"model.prm_path={prm[-1]}")
    if mode == "sft_rloo":
        # The supervised stage is the bc run's job of the same seed (same demos, steps, seed):
        # start RLOO from its result instead of training the same model a second time.
        sft_policy = out / "runs" / f"bc-s{seed}" / "sft_policy"
        if (sft_policy / "config.json").is_file():
            log(f"  {run_name(mode, seed, hard)}: starts from bc-s{seed}'s supervised stage ({sft_policy})")
            overrides += [f"model.policy_path={sft_policy}", "sft.steps=0"]
    return overrides


def run_lane(runs: list[list], out: Path, iterations: int, common: list[str], lane: int, cores: str = "") -> None:
    """One lane: its runs in order, in this process, on one Ray, reusing rollout workers."""
    if cores:
        # Every process of the lane's Ray inherits its cores: the raylet, the actors, and the
        # supervised stage's Ray Train workers, which no config key pins (bc's supervised stage
        # took 99-117 s in one invocation and 132-144 s in the next, sharing the other lane's core).
        from repirl_ray.config import parse_cores

        os.sched_setaffinity(0, parse_cores(cores))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from repirl_ray.config import load_config
    from repirl_ray.driver import Trainer
    from repirl_ray.run_setup import task_kwargs

    def log(msg: str) -> None:
        print(f"[lane {lane}] {msg}", flush=True)

    # The dashboard: Ray Train's placement-group cleaner (bc's supervised stage) polls it.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False)
    engines: dict[str, object] = {}  # rollout settings -> RolloutGroup, reused across runs

    def release(held: dict) -> None:
        for group in held.values():
            group.shutdown()
        held.clear()
    try:
        for mode, seed, hard in runs:
            name = run_name(mode, seed, hard)
            run_dir = out / "runs" / name
            if (run_dir / "summary.json").is_file():  # rerunning the benchmark resumes it
                log(f"{name}: done before, reused")
                continue
            overrides = run_overrides(mode, seed, hard, iterations, common, out, log)
            if overrides is None:
                continue
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            t0 = time.time()
            logfile = open(out / "logs" / f"{name}.log", "w")

            def run_log(line: str, name=name, logfile=logfile) -> None:
                logfile.write(line + "\n")
                logfile.flush()
                # A line every 10 iterations, so that long work shows progress.
                if line.startswith("iter ") and int(line.split()[1].split("/")[0]) % 10 == 0:
                    log(f"{name}: {line.strip()[:140]}")

            try:
                cfg = load_config([str(ROOT / "configs" / "modes" / f"{mode}.yaml")], [*overrides, f"run_dir={run_dir}"])
                key = json.dumps([dataclasses.asdict(cfg.rollout), cfg.data.task, cfg.model.dtype, cfg.data.chat_template,
                                  cfg.data.max_prompt_tokens, repr(task_kwargs(cfg))], sort_keys=True)
                log(f"{name}: started" + (" (rollout workers reused)" if key in engines else ""))
                if key not in engines:
                    # One set of rollout workers at a time: a lane's Ray has the cores of one run,
                    # so a second set beside the first would wait for resources forever.
                    release(engines)
                trainer = Trainer(cfg, run_dir, log_fn=run_log, rollout=engines.get(key))
                engines[key] = trainer.rollout
                try:
                    result = trainer.train()
                finally:
                    trainer.shutdown(keep_rollout=True)
                log(f"{name}: final accuracy {result['final_accuracy']:.3f} (base {result['base_accuracy']:.3f}), "
                    f"step AUROC {result.get('step_auroc')}, {time.time() - t0:.0f} s")
            except Exception as err:  # noqa: BLE001 - a failed run is reported, the lane goes on
                logfile.write(f"FAILED: {type(err).__name__}: {err}\n")
                log(f"{name}: FAILED ({type(err).__name__}: {str(err)[:200]}); see {out / 'logs' / (name + '.log')}")
                release(engines)  # its engines may be broken: the next run starts its own
            finally:
                logfile.close()
    finally:
        ray.shutdown()


def lanes_of(plan: list[tuple], parallel: int) -> list[list[tuple]]:
    """The runs split into `parallel` lanes of about equal cost; a run stays after the run it needs."""
    chains: list[list[tuple]] = []
    for mode, seed, hard in plan:
        if not hard and mode in NEEDS and (NEEDS[mode], seed, False) in plan:
            continue  # it follows the run it needs, below
        chain = [(mode, seed, hard)]
        chain += [(m, seed, False) for m, needed in NEEDS.items() if not hard and needed == mode and (m, seed, False) in plan]
        chains.append(chain)
    lanes: list[list[tuple]] = [[] for _ in range(max(1, parallel))]
    loads = [0.0] * len(lanes)
    for chain in sorted(chains, key=lambda c: -sum(COST[("hard_" if h else "") + m] for m, _, h in c)):
        i = loads.index(min(loads))
        lanes[i] += chain
        loads[i] += sum(COST[("hard_" if h else "") + m] for m, _, h in chain)
    # A lane's hard-problem runs last and together: they sample up to 64 tokens, so they need other
    # rollout workers (~20 s to start), once per lane instead of at every switch (sorted is stable:
    # a run still follows the run it needs).
    return [sorted(lane, key=lambda r: r[2]) for lane in lanes if lane]


def lane_cores(parallel: int) -> list[str]:
    """Each lane's cores ("" = not pinned: one lane, or fewer cores than lanes)."""
    from repirl_ray.actors.rollout_group import core_lists

    cores = core_lists(1)[0].split(",")  # this process's cores
    if parallel <= 1 or len(cores) < parallel:
        return [""] * max(1, parallel)
    return core_lists(parallel)


def lane_pins(cores: list[str]) -> list[list[str]]:
    """Overrides that give each lane its own cores, with one torch thread per core: lanes that
    share every core with 2 threads per learner oversubscribe them (4 learners x 2 spinning
    OpenMP threads on 2 cores ran an iteration 3x slower than one lane alone). Within a lane the
    phases run one after another, so a lane needs no more cores than one phase uses."""
    pins = []
    for mine in cores:
        if not mine:
            pins.append([])
            continue
        per = len(mine.split(","))
        # One rollout worker per core of the lane: two engines on one core took 1.2x as long
        # (benchmarks/claims.py --seeds 0 1 --iterations 10 --modes repirl rloo: 131 s vs 107 s, same numbers).
        pins.append([f"rollout.cores={mine}", f"rollout.num_workers={per}", f"policy.cores={mine}", f"prm.cores={mine}",
                     f"policy.num_threads={per}", f"prm.num_threads={per}", f"sft.num_threads={per}"])
    return pins


def read_result(out: Path, name: str) -> dict:
    summary = out / "runs" / name / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {"failed": True}


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
    parser.add_argument("--parallel", type=int, default=2, help="lanes of runs at once (default 2)")
    parser.add_argument("--lane", help=argparse.SUPPRESS)  # internal: run these runs in this process
    parser.add_argument("--lane-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lane-cores", default="", help=argparse.SUPPRESS)
    parser.add_argument("--common", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", metavar="key=value", help="overrides for every run")
    args = parser.parse_args(argv)
    if args.lane:
        run_lane([tuple(r) for r in json.loads(args.lane)], Path(args.out), args.iterations, json.loads(args.common),
                 args.lane_index, args.lane_cores)
        return 0

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
    lanes = lanes_of(plan, args.parallel)
    cores = lane_cores(len(lanes))
    pins = lane_pins(cores)
    for i, lane in enumerate(lanes):
        log(f"lane {i}: " + ", ".join(run_name(*r) for r in lane) + (f" [{' '.join(pins[i])}]" if pins[i] else ""))
    procs = [subprocess.Popen([sys.executable, __file__, "--lane", json.dumps(lane), "--lane-index", str(i), "--lane-cores", cores[i],
                               "--out", str(out), "--iterations", str(args.iterations), "--common", json.dumps(common + pins[i])],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, lane in enumerate(lanes)]
    def relay(proc, i):
        with open(out / "logs" / f"lane{i}.log", "w") as lane_log:
            for line in proc.stdout:
                lane_log.write(line)
                if line.startswith("[lane "):
                    log(f"{line.rstrip()} ({time.time() - t_start:.0f} s so far)")

    threads = [threading.Thread(target=relay, args=(p, i), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for p, t in zip(procs, threads):
        p.wait()
        t.join()
    results: dict[str, dict] = {}
    for mode, seed, hard in plan:
        name = run_name(mode, seed, hard)
        results[name] = read_result(out, name)
        results[name].update(training_means(out / "runs" / name))

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
        f"Machine: {machine}. Wall time: {wall / 60:.1f} min for {len(plan)} runs in {len(lanes)} lanes "
        "(runs of different lanes overlapped: the wall-time ratios are indicative only).",
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
