import sys, subprocess, time, json, os, glob, shutil
from pathlib import Path
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import scaling
from repirl_ray.world import ensure_world
from repirl_ray.config import WorldConfig
world = ensure_world(WorldConfig())
md, _ = scaling.build_model("125m", Path("/tmp/probe"))
mode, iters, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run_dir = Path(f"/tmp/probe/run125-{mode}")
shutil.rmtree(run_dir, ignore_errors=True)
cmd = [sys.executable, "-m", "repirl_ray.cli", "train", f"run_dir={run_dir}", f"iterations={iters}",
       f"model.policy_path={md}", f"data.train_path={world.train}", f"data.eval_path={world.eval}",
       f"data.prompts_per_iteration={prompts}", "filter.enabled=false", "rollout.max_new_tokens=40", "rollout.min_new_tokens=40",
       "eval.every=0", "eval.num_prompts=8", "eval.samples_per_prompt=1", "eval.greedy=false", "checkpoint.every=0",
       f"pipeline.off_policy_steps={0 if mode=='serial' else 1}", *sys.argv[4:]]
before = set(glob.glob("/tmp/ray/session_2*"))
t0 = time.time()
p = subprocess.run(cmd, capture_output=True, text=True)
print("rc", p.returncode, "wall", round(time.time()-t0,1))
if p.returncode: print(p.stdout[-2000:], p.stderr[-2000:])
recs = [json.loads(l) for l in (run_dir/"metrics.jsonl").read_text().splitlines() if "rollout/accuracy" in l]
for k in ("rollout","prm","score","policy","sync","iteration"):
    print(k, [round(r.get(f"timing/{k}",0),2) for r in recs])
for s in sorted(set(glob.glob("/tmp/ray/session_2*")) - before):
    lines = [l.strip()[-90:] for f in glob.glob(s + "/logs/raylet.out") for l in open(f) if "Spilled" in l or "Restored" in l]
    print(s, "spill lines:", len(lines)); print("\n".join(lines))
