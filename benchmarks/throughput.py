"""Seconds per iteration, by phase, for a few layouts of the built-in world's run, against the
default layout measured in the same invocation (the ratio column).

    .venv/bin/python benchmarks/throughput.py              # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --iterations 10

Each variant is a `repirl train` subprocess of --iterations iterations; the first 2 are left out
of the means (start-up effects). Writes benchmarks/results/throughput.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "default (rollout.num_workers=auto: 2 vLLM workers, pinned cores, implicit PRM)": [],
    "1 rollout worker": ["rollout.num_workers=1"],
    "2 workers, threads not pinned": ["rollout.bind_cores=false"],
    "head PRM (the paper's)": ["prm.kind=head"],
    "no PRM (rloo)": ["prm.kind=none", "advantage.c_process=0"],
    "pipelined (shared cores: the next batch sampled after the updates)": ["pipeline.off_policy_steps=1"],
    "pipelined, overlap=always (sampled beside the updates, idle priority)": ["pipeline.off_policy_steps=1",
                                                                               "pipeline.overlap=always"],
    "learners on 2 ranks each (FSDP2, gloo)": ["policy.num_workers=2", "prm.num_workers=2",
                                                "policy.num_cpus=0.25", "prm.num_cpus=0.25",
                                                "policy.num_threads=1", "prm.num_threads=1"],
}
PHASES = ["rollout", "prm", "score", "policy", "sync", "iteration"]


def measure(name: str, overrides: list[str], iterations: int, work: Path) -> dict:
    run_dir = work / name.split(" (")[0].replace(" ", "_").replace(",", "")
    cmd = [sys.executable, "-m", "repirl_ray.cli", "train", f"run_dir={run_dir}", f"iterations={iterations}",
           "eval.every=0", "eval.num_prompts=32", "eval.greedy=false", "checkpoint.every=0", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        return {}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "rollout/accuracy" in r][2:]
    out = {p: float(np.mean([r.get(f"timing/{p}", 0.0) for r in train])) for p in PHASES}
    summary = json.loads((run_dir / "summary.json").read_text())
    out["peak_rss_gib"] = summary["peak_rss_gib"]
    out["process_s"] = time.time() - t0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.md"))
    args = parser.parse_args(argv)
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    print(f"throughput: {len(VARIANTS)} variants x {args.iterations} iterations (64 prompts x 4 samples); {machine}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="repirl-throughput-") as work:
        for i, (name, overrides) in enumerate(VARIANTS.items(), 1):
            print(f"[{i}/{len(VARIANTS)}] {name}", flush=True)
            results[name] = measure(name, overrides, args.iterations, Path(work))
            if results[name]:
                print(f"  {results[name]['iteration']:.2f} s per iteration", flush=True)
    base = results[next(iter(VARIANTS))].get("iteration")
    lines = [
        f"# Throughput on the built-in world ({machine})",
        "",
        f"Command: `python benchmarks/throughput.py --iterations {args.iterations}` on {_commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Mean seconds per "
        "iteration by phase (iterations 3 and after), and the iteration time as a ratio to the default "
        "layout measured in the same invocation.",
        "",
        "| variant | " + " | ".join(PHASES) + " | ratio to default | peak RSS GiB |",
        "|---|" + "---|" * (len(PHASES) + 2),
    ]
    for name, r in results.items():
        if not r:
            lines.append(f"| {name} | failed |")
            continue
        ratio = r["iteration"] / base if base else float("nan")
        lines.append(f"| {name} | " + " | ".join(f"{r[p]:.2f}" for p in PHASES) + f" | {ratio:.2f} | {r['peak_rss_gib']:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip() or "an unknown commit"


if __name__ == "__main__":
    sys.exit(main())
