# serial/pipelined ABBA at one size and batch, shared layout; keeps every run's metrics.jsonl
import sys, os, json, shutil, tempfile, time
from pathlib import Path
sys.path.insert(0, 'benchmarks')
import scaling
os.environ.setdefault("RAY_AUTH_MODE", "disabled"); os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from repirl_ray.config import WorldConfig
from repirl_ray.world import ensure_world
size, prompts, repeats, iters, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
extra = sys.argv[6:]
out.mkdir(parents=True, exist_ok=True)
world = ensure_world(WorldConfig()); work = Path(tempfile.mkdtemp(prefix='ab-'))
model_dir, _ = scaling.build_model(size, work)
for r in range(repeats):
    for mode in (["serial", "pipelined"] if r % 2 == 0 else ["pipelined", "serial"]):
        t0 = time.time()
        res = scaling.run_variant(model_dir, prompts, mode, "shared", iters, work, world, extra)
        run_dir = work / "runs" / f"{model_dir.name}-p{prompts}-{mode}-shared"
        shutil.copy(run_dir / "metrics.jsonl", out / f"{r}_{mode}.metrics.jsonl")
        json.dump({"t0": t0, "t1": time.time(), **res}, open(out / f"{r}_{mode}.json", "w"))
        print(r, mode, round(res.get("s_iteration", -1), 3), round(res.get("s_rollout_engine", -1), 3), flush=True)
shutil.rmtree(work, ignore_errors=True)
