"""The before/after comparison of benchmarks/results/trimmed/before_after.md, as it ran on 2026-12-04: the same
`repirl train` runs from two worktrees (before: be5c880 at /tmp/clm, after: be5c880 + micro-batches cut to their rows
at /tmp/cl6, each with a .venv link), alternated, in one invocation."""
import json, subprocess, sys, tempfile, shutil
from pathlib import Path
import numpy as np
TREES = {"before": "/tmp/clm", "after": "/tmp/cl6"}
LANE = ["rollout.cores=0", "rollout.num_workers=1", "policy.cores=0", "prm.cores=0", "policy.num_threads=1", "prm.num_threads=1"]
CASES = {
    "lane (1 core, 1 thread, as claims.py)": LANE,
    "demo (2 cores, default threads)": [],
}
VARIANTS = [("before", 320), ("after", 320)]
work = Path(tempfile.mkdtemp(prefix="ab2-"))
rows = []
for case, extra in CASES.items():
    for rep in range(3):
        for tree, micro in VARIANTS:
            run_dir = work / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [f"{TREES[tree]}/.venv/bin/python", "-m", "repirl_ray.cli", "train", f"run_dir={run_dir}", "iterations=8",
                   "eval.every=0", "eval.num_prompts=8", "eval.samples_per_prompt=1", "eval.greedy=false", "checkpoint.every=0",
                   f"prm.micro_batch_size={micro}", *extra]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=TREES[tree])
            if p.returncode:
                print(p.stdout[-1500:], p.stderr[-1500:]); sys.exit(1)
            recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            tr = [r for r in recs if "rollout/accuracy" in r][1:]
            ph = {k: float(np.mean([r.get(f"timing/{k}", 0) for r in tr])) for k in ("rollout", "prm", "score", "policy", "iteration")}
            ph["policy_loss"] = [round(r.get("policy/loss", 0), 5) for r in tr]
            ph["loss"] = [round(r.get("prm/loss", 0), 5) for r in tr]
            rows.append((case, rep, tree, micro, ph)); print(case, rep, tree, micro, ph, flush=True)
shutil.rmtree(work, ignore_errors=True)
print("\n| case | code | PRM update s | score s | policy update s | iteration s | PRM / before | policy / before | iteration / before |")
print("|---|---|---|---|---|---|---|---|---|")
for case in CASES:
    for rep in range(3):
        b = [r for r in rows if r[0] == case and r[1] == rep]
        for (_, _, tree, micro, ph) in b:
            o = b[0][4]
            print(f"| {case} | {tree} | {ph['prm']:.3f} | {ph['score']:.3f} | {ph['policy']:.3f} | {ph['iteration']:.3f} | {ph['prm'] / o['prm']:.2f} | {ph['policy'] / o['policy']:.2f} | {ph['iteration'] / o['iteration']:.2f} |")
