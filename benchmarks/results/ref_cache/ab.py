"""The before/after comparison of benchmarks/results/ref_cache/before_after.md, as it ran on 2026-12-04:
the same `repirl train` runs from two worktrees of the repository (before: 542c15b at /tmp/bench,
after: fe8273a at /tmp/bnew, each with a .venv link), alternated, in one invocation."""
import json, subprocess, sys, time, tempfile, shutil
from pathlib import Path
import numpy as np
sys.path.insert(0, "/tmp/bnew/benchmarks"); sys.path.insert(0, "/tmp/bnew")
from scaling import build_model
TREES = {"before (542c15b)": "/tmp/bench", "after (6c12e70+)": "/tmp/bnew"}
work = Path(tempfile.mkdtemp(prefix="ab-"))
from repirl_ray.world import ensure_world
from repirl_ray.config import WorldConfig
world = ensure_world(WorldConfig())
m27, _ = build_model("25m", work)
CASES = {
    "0.8M, 64 prompts (the demo's batch), 2 workers": (["rollout.num_workers=2"], 8),
    "27M, 8 prompts, 1 worker": ([f"model.policy_path={m27}", f"data.train_path={world.train}", f"data.eval_path={world.eval}",
                                   "data.prompts_per_iteration=8", "filter.enabled=false", "rollout.max_new_tokens=40",
                                   "rollout.num_workers=1"], 4),
}
rows = []
for case, (extra, iters) in CASES.items():
    for rep in range(2):
        for label, tree in TREES.items():
            run_dir = work / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = [f"{tree}/.venv/bin/python", "-m", "repirl_ray.cli", "train", f"run_dir={run_dir}", f"iterations={iters}",
                   "eval.every=0", "eval.num_prompts=8", "eval.samples_per_prompt=1", "eval.greedy=false", "checkpoint.every=0", *extra]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
            if p.returncode:
                print(p.stdout[-1500:], p.stderr[-1500:]); sys.exit(1)
            recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            tr = [r for r in recs if "rollout/accuracy" in r][1:]
            ph = {k: float(np.mean([r.get(f"timing/{k}", 0) for r in tr])) for k in ("rollout", "prm", "score", "policy", "iteration")}
            ph["loss"] = [round(r.get("prm/loss", 0), 5) for r in tr]
            rows.append((case, rep, label, ph)); print(case, rep, label, ph, flush=True)
shutil.rmtree(work, ignore_errors=True)
print("\n| case | tree | PRM update s | score s | PRM + score s | iteration s | (after / before, same repeat) |")
print("|---|---|---|---|---|---|---|")
for case in CASES:
    for rep in range(2):
        b = [r for r in rows if r[0] == case and r[1] == rep]
        for (_, _, label, ph) in b:
            ratio = (ph["prm"] + ph["score"]) / (b[0][3]["prm"] + b[0][3]["score"])
            print(f"| {case} | {label} | {ph['prm']:.3f} | {ph['score']:.3f} | {ph['prm'] + ph['score']:.3f} | {ph['iteration']:.3f} | {ratio:.2f} |")
