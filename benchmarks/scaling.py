"""How an iteration's cost grows with the model and the batch, serial against pipelined, on two
layouts of the cores.

    .venv/bin/python benchmarks/scaling.py --iterations 3 1m=12    # all variants (long: see below)
    .venv/bin/python benchmarks/scaling.py --sizes 1m --prompts 8  # a quick look

For each model size (random Qwen2 models of about 1M, 25M and 125M parameters with the built-in
world's 20-token vocabulary, built from a config; no download) and each batch size (prompts per
iteration, K = 4 samples each), a `repirl train` subprocess runs --iterations iterations (SIZE=N
for one size: 12 at 0.8M by default, where an iteration takes about a second, so that a run's mean
does not rest on two iterations as it did: 0.63 against 0.99 s for two runs of one variant) on the
built-in world's prompts (the prompt filter off, so every iteration trains on the whole batch;
every response 40 tokens, rollout.min_new_tokens = max_new_tokens, so that every row of a size
and batch does the same work: a random model's own response lengths swing as it trains, and a
pipelined run, one policy version behind, samples other lengths than a serial one)
and reports seconds per phase (iteration 1 left out: start-up effects), rollout tokens/s through
the rollout workers and the slowest worker's seconds in its engine, learner tokens/s (policy
update), the mean response length, and peak memory. Then, in the same invocation, the rollout workers
of the shared layout against one raw vLLM engine on the same requests (benchmarks/rollout_overhead.py,
--raw-repeats batches each; 0 skips it): the "workers / raw" column. A run's own tokens/s cannot be
compared with a raw engine's: a random model's response lengths swing as it trains, and its cost
with them.

Each size and batch runs serial and pipelined (pipeline.off_policy_steps=1, pipeline.overlap as
the run resolves it: auto) in two layouts:
- shared: the default (rollout.num_workers=auto: 2 workers at 0.8M, 1 at 27M and 123M on 2
  cores; the learners unpinned): every phase competes for the same cores, as on a laptop; pipelined, the next batch is sampled after the updates (auto);
  `--modes overlapped` adds runs that sample it beside them (pipeline.overlap=always);
- split: 1 rollout worker bound to core 0, the learners pinned to core 1, as separate devices
  would be on a cluster: the layout in which overlapping can pay (auto samples beside).
Every role runs the thread budget the run resolves (repirl_ray/threads.py, printed by each run
and kept in its JSON); --set adds config overrides to every run (e.g. policy.num_threads=2).
--repeats N runs every variant N times (SIZE=N: at one size), the loops alternated, and reports
the median and each run: machines of this kind drift by more than the 5 % a pipelined/serial ratio is judged on (on
one, the same work took up to 1.19x as long minutes apart, 2x within the hour), and the table's
drift column (iteration 1, the same work in both loops where the next batch is sampled after the
updates) shows by how much.
Results go to --out (one JSON per variant: a rerun skips what is done) and a table to
--out/scaling.md, printed at the end with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = {  # name: (hidden, layers, heads, intermediate)
    "1m": (128, 3, 4, 512),
    "25m": (512, 8, 8, 1536),
    "125m": (768, 13, 12, 3072),
}
LAYOUTS = {
    "shared": [],
    "split": ["rollout.num_workers=1", "rollout.cores=0", "policy.cores=1", "prm.cores=1"],
}
K = 4
MAX_NEW = 40
SAME_WORK = ("rollout", "prm", "score", "policy")  # iteration 1's phases before the weight push


def build_model(name: str, root: Path) -> tuple[Path, int]:
    from repirl_ray.models.tiny import build_char_tokenizer, build_tiny_qwen2

    out = root / f"model-{name}"
    hidden, layers, heads, inter = SIZES[name]
    tok = build_char_tokenizer()
    model = build_tiny_qwen2(len(tok), hidden, layers, heads, inter, seed=0)
    if not (out / "config.json").is_file():
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def run_variant(model_dir: Path, prompts: int, mode: str, layout: str, iterations: int, work: Path, world,
                extra: list[str] = (), warmup: int = 1) -> dict:
    run_dir = work / "runs" / f"{model_dir.name}-p{prompts}-{mode}-{layout}"
    cmd = [sys.executable, "-m", "repirl_ray.cli", "train", f"run_dir={run_dir}", f"iterations={iterations}",
           f"model.policy_path={model_dir}", f"data.train_path={world.train}", f"data.eval_path={world.eval}",
           f"data.prompts_per_iteration={prompts}", "filter.enabled=false", f"rollout.max_new_tokens={MAX_NEW}",
           f"rollout.min_new_tokens={MAX_NEW}",
           "eval.every=0", "eval.num_prompts=8", "eval.samples_per_prompt=1", "eval.greedy=false",
           "checkpoint.every=0", f"pipeline.off_policy_steps={0 if mode == 'serial' else 1}",
           f"pipeline.overlap={'always' if mode == 'overlapped' else 'auto'}", *LAYOUTS[layout], *extra]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"failed": (proc.stdout + proc.stderr)[-1500:]}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    done = [r for r in records if "rollout/accuracy" in r]
    first, train = done[0], done[warmup:]
    phase = {p: float(np.mean([r.get(f"timing/{p}", 0.0) for r in train]))
             for p in ("rollout", "prm", "score", "policy", "sync", "iteration")}
    # The slowest worker's seconds in its engine and in all (docs/usage.md): what of the rollout
    # is sampling, and what is verification, batching and Ray.
    worker = {k: float(np.mean([r.get(f"rollout/{k}_s", np.nan) for r in train])) for k in ("engine", "worker")}
    tokens = float(np.mean([r["rollout/response_len"] for r in train])) * prompts * K
    summary = json.loads((run_dir / "summary.json").read_text())
    budget = [line for line in proc.stdout.splitlines() if line.startswith("threads per process")]
    return {
        "threads": budget[0] if budget else "",
        **{f"s_{k}": v for k, v in phase.items()},
        "s_rollout_engine": worker["engine"],
        "s_rollout_worker": worker["worker"],
        "engine_tok_s": tokens / worker["engine"],
        "rollout_tok_s": tokens / phase["rollout"] if phase["rollout"] else None,
        "learner_tok_s": tokens / phase["policy"] if phase["policy"] else None,
        "peak_rss_gib": summary["peak_rss_gib"],
        "response_len": float(np.mean([r["rollout/response_len"] for r in train])),
        "wall_s": time.time() - t0,
        # Iteration 1 before its weight push: the same work in every loop of a size and batch where
        # the next batch is sampled after the updates (serial; pipelined on shared cores), so its
        # ratio between two such runs is how much the machine itself changed between them.
        "s_first_same_work": sum(first.get(f"timing/{p}", 0.0) for p in SAME_WORK),
    }


def plan_of(sizes, prompts, layouts, modes, repeats: int | dict[str, int]) -> list[tuple]:
    """(size, prompts, layout, mode, repeat) in run order: within a size, batch and layout the
    loops alternate, the order reversed every other repeat (serial, pipelined, pipelined, serial,
    ...), so that each pair of runs is minutes apart and a steady drift of the machine falls on
    both loops alike. Measured: serial, pipelined, serial, pipelined at 123M / 16 prompts took
    59.3, 67.4, 67.6, 70.4 s an iteration, the machine slowing run by run, and the loop that went
    second in each pair came out 1.09x."""
    per_size = repeats if isinstance(repeats, dict) else dict.fromkeys(sizes, repeats)
    return [(s, p, layout, mode, r) for s in sizes for p in prompts for layout in layouts
            for r in range(per_size[s]) for mode in (modes if r % 2 == 0 else modes[::-1])]


def _per_size(flag: str, items: list[str], error, default: int, minimum: int, why: str) -> dict[str, int]:
    """A count per size from "N" (every size) and "SIZE=N" (one) items; the later wins."""
    per_size = dict.fromkeys(SIZES, default)
    for item in items:
        size, _, n = item.rpartition("=")
        if size and size not in SIZES:
            error(f"{flag} {item}: unknown size {size!r} (sizes: {', '.join(SIZES)})")
        if not n.isdigit() or int(n) < minimum:
            error(f"{flag} {item}: need a whole number of at least {minimum}{why}")
        per_size.update({size: int(n)} if size else dict.fromkeys(SIZES, int(n)))
    return per_size


def iterations_per_size(items: list[str], error, warmup: int = 1) -> dict[str, int]:
    """--iterations: "N" for every size, "SIZE=N" for one; the later wins. Each run needs an
    iteration past the `warmup` ones that are left out."""
    return _per_size("--iterations", items, error, max(3, warmup + 1), warmup + 1,
                     f" (the first {warmup} left out: --warmup)")


def repeats_per_size(items: list[str], error) -> dict[str, int]:
    """--repeats: "N" for every size, "SIZE=N" for one (e.g. more repeats where runs are short and
    the machine's spread is large against the 5 % a ratio is judged on)."""
    return _per_size("--repeats", items, error, 1, 1, "")


def describe_iterations(per_size: dict[str, int], sizes: list[str]) -> str:
    return ", ".join(f"{size} {per_size[size]}" for size in sizes)


def variant_key(size: str, prompts: int, layout: str, mode: str, repeat: int) -> str:
    return f"{size}-p{prompts}-{layout}-{mode}" + (f"-r{repeat}" if repeat else "")


def run_plan(plan, args, out, work, world, t_start) -> list[dict]:
    """Each variant of the plan (or its saved result)."""
    rows = []
    for i, (size, prompts, layout, mode, repeat) in enumerate(plan):
        key = variant_key(size, prompts, layout, mode, repeat)
        path = out / "variants" / f"{key}.json"
        model_dir, n_params = build_model(size, work)
        if path.is_file():
            result = json.loads(path.read_text())
        else:
            result = run_variant(model_dir, prompts, mode, layout, args.iterations[size], work, world, args.set,
                                 warmup=args.warmup)
            result.update({"iterations": args.iterations[size], "warmup": args.warmup, "size": size, "params": n_params, "prompts": prompts,
                           "layout": layout, "mode": mode, "repeat": repeat})
            path.write_text(json.dumps(result, indent=1))
        rows.append(result)
        status = "FAILED" if "failed" in result else f"{result['s_iteration']:.2f} s/iteration"
        print(f"[{i + 1}/{len(plan)}] {key}: {status} ({time.time() - t_start:.0f} s so far)", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", nargs="+", default=["3", "1m=12"], metavar="N or SIZE=N",
                        help="iterations per run: N for every size, SIZE=N for one (default: 3, and 12 at 1m)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--prompts", type=int, nargs="+", default=[8, 16], help="prompts per iteration (x K = 4)")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--modes", nargs="+", default=["serial", "pipelined"], choices=["serial", "pipelined", "overlapped"],
                        help="overlapped: pipelined with pipeline.overlap=always")
    parser.add_argument("--repeats", nargs="+", default=["1"], metavar="N or SIZE=N",
                        help="runs of each variant, the loops alternated (serial, pipelined, pipelined, serial, ...): the table "
                             "shows their median and each run, so that the machine's own drift is visible; N for every size, "
                             "SIZE=N for one (default: 1)")
    parser.add_argument("--raw-repeats", type=int, default=5,
                        help="rounds (one batch each side) per size and batch for workers / raw (rollout_overhead.py); 0: skip")
    parser.add_argument("--warmup", type=int, default=1,
                        help="iterations of each run left out of its means (default 1). At 123M a learner's heap grows by "
                             "1-2 GB in iteration 2 too, first touches that cost 2-30 us a page on a VM (docs/speed.md)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling"))
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error(f"--warmup {args.warmup}: at least 1 (iteration 1 is every run's warm-up: first allocations, first weight push)")
    args.iterations = iterations_per_size(args.iterations, parser.error, args.warmup)
    args.repeats = repeats_per_size(args.repeats, parser.error)
    out = Path(args.out)
    (out / "variants").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from repirl_ray.config import WorldConfig
    from repirl_ray.world import ensure_world

    world = ensure_world(WorldConfig())
    work = Path(tempfile.mkdtemp(prefix="repirl-scaling-"))
    t_start = time.time()
    load_before = os.getloadavg()[0]
    plan = plan_of(args.sizes, args.prompts, args.layouts, args.modes, args.repeats)
    print(f"scaling: {len(plan)} runs, iterations per run {describe_iterations(args.iterations, args.sizes)}; machine: {platform.platform()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    try:
        rows = run_plan(plan, args, out, work, world, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the models built here (2.6 GB at 27M) and their runs
    raw_rows = []
    if args.raw_repeats > 0 and "shared" in args.layouts:
        from rollout_overhead import measure_rows

        raw_rows = measure_rows(args.sizes, args.prompts, args.raw_repeats, [f"rollout.min_new_tokens={MAX_NEW}", *args.set],
                                log=lambda line: print(f"{line} ({time.time() - t_start:.0f} s so far)", flush=True))
    table = format_table(rows, raw_rows)
    env = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS") if k in os.environ}
    report = [f"# Scaling: seconds per iteration by model size, batch, layout and loop", "",
              f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch CPU; 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
              f"iterations per run {describe_iterations(args.iterations, args.sizes)} (the first {args.warmup} left out), K = 4, 40 new tokens at most, implicit PRM"
              + (f"; overrides {' '.join(args.set)}" if args.set else "") + (f"; environment {env}" if env else "")
              + ". One invocation: ratios compare runs made minutes apart on the same machine"
              + (f"; runs of each variant {describe_iterations(args.repeats, args.sizes)}, the loops alternated "
                 "(serial, pipelined, pipelined, serial, ...): the phases are means over its runs, the iteration their "
                 "median, each run's beside it"
                 if max(args.repeats[s] for s in args.sizes) > 1 else "")
              + ". Iteration 1 / serial's (same work): iteration 1 before its weight push does the serial loop's "
              "work in a pipelined run that samples after the updates (shared layout), so this ratio (medians) is "
              "how much the machine itself changed between the runs; a pipelined / serial ratio means no more than "
              "this one's distance from 1. Response tokens: "
              "the mean response length of the measured iterations (rows with different lengths did different "
              "work). Of which in engines: the slowest worker's seconds inside its engine's generate, serial rows "
              "only (a pipelined row's rollout time is only the wait for its batch). Workers / raw (shared layout): "
              "the rollout workers as these runs start them against one raw vLLM engine with all the cores, on the "
              "same prompts, seeds and weights (benchmarks/rollout_overhead.py: the median over "
              f"{args.raw_repeats} rounds of the ratio of two batches run back to back, measured after the runs; table below).",
              "", table, "", "Thread budgets (as each run printed them):", "",
              *sorted({f"- {r.get('layout')}, {r.get('mode')}: {r['threads']}" for r in rows if r.get("threads")}), ""]
    if raw_rows:
        from rollout_overhead import format_rows

        report += ["Rollout workers against one raw vLLM engine, on the same requests (shared layout):", "",
                   *format_rows(raw_rows), ""]
    (out / "scaling.md").write_text("\n".join(report))
    print("\n".join(report))
    return 0


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per size, batch, layout and loop: the phases' means over its runs (--repeats), the
    iteration's median, each run's iteration and iteration 1's same-work seconds (median)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r.get("size"), r.get("prompts"), r.get("layout"), r.get("mode"))
        groups.setdefault(key, []).append(r)
    out = []
    for runs in groups.values():
        done = [r for r in runs if "failed" not in r]
        if not done:
            out.append(runs[0])
            continue
        row = {k: v for k, v in done[0].items() if not isinstance(v, (int, float)) or k in ("params", "prompts", "repeat")}
        for k in done[0]:
            if isinstance(done[0][k], (int, float)) and k not in ("params", "prompts", "repeat"):
                values = [r[k] for r in done if r.get(k) is not None]
                row[k] = float(np.mean(values)) if values else None
        row["s_iteration"] = float(np.median([r["s_iteration"] for r in done]))
        row["runs_s_iteration"] = [r["s_iteration"] for r in done]
        firsts = [r["s_first_same_work"] for r in done if r.get("s_first_same_work")]
        row["s_first_same_work"] = float(np.median(firsts)) if firsts else None
        row["failed_runs"] = len(runs) - len(done)
        out.append(row)
    return out


def format_table(rows: list[dict], raw_rows: list[dict] = ()) -> str:
    head = ("| size | prompts x K | layout | loop | rollout s | PRM s | score s | policy s | sync s | iteration s | "
            "each run s | pipelined / serial | iteration 1 / serial's (same work) | response tokens | rollout tok/s | "
            "of which in engines s | workers / raw | learner tok/s | peak GiB |")
    raw = {(r["size"], r["prompts"]): r["ratio"] for r in raw_rows}
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    rows = aggregate(rows)
    serial = {(r.get("size"), r.get("prompts"), r.get("layout")): r for r in rows if r.get("mode") == "serial" and "failed" not in r}
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r.get('size')} | {r.get('prompts')} x {K} | {r.get('layout')} | {r.get('mode')} | FAILED |")
            continue
        base = serial.get((r["size"], r["prompts"], r["layout"]))
        ratio = r["s_iteration"] / base["s_iteration"] if base else float("nan")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        # Iteration 1 is the serial loop's own work only where the next batch is sampled after it.
        same_work = r["mode"] == "pipelined" and r["layout"] == "shared"
        drift = (fmt(r["s_first_same_work"] / base["s_first_same_work"])
                 if same_work and base and r.get("s_first_same_work") and base.get("s_first_same_work") else "-")
        each = ", ".join(f"{v:.2f}" for v in r["runs_s_iteration"]) + (f" ({r['failed_runs']} failed)" if r["failed_runs"] else "")
        lines.append(
            f"| {r['size']} ({r['params'] / 1e6:.1f} M) | {r['prompts']} x {K} | {r['layout']} | {r['mode']} | "
            f"{fmt(r['s_rollout'])} | {fmt(r['s_prm'])} | {fmt(r['s_score'])} | {fmt(r['s_policy'])} | {fmt(r['s_sync'])} | "
            # Mean response length of the measured iterations: a random model's changes as it trains,
            # and a run's cost with it (rows with different lengths did different work).
            f"{fmt(r['s_iteration'])} | {each} | {ratio:.2f} | {drift} | "
            f"{r.get('response_len') or r['rollout_tok_s'] * r['s_rollout'] / (r['prompts'] * K):.1f} | {r['rollout_tok_s']:.0f} | "
            + f"{fmt(r.get('s_rollout_engine')) if r['mode'] == 'serial' else '-'} | "
            + f"{fmt(raw.get((r['size'], r['prompts']))) if r['layout'] == 'shared' else '-'} | "
            + f"{r['learner_tok_s']:.0f} | {r['peak_rss_gib']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
