"""27M x 16 prompts: the rollout worker's batch time (a) before the raw engine exists in the driver,
(b) alternating with it, (c) after it is deleted, with the CPU seconds of the driver and of the
worker during each turn (psutil). From the repository root:
    .venv/bin/python benchmarks/results/scaling_amd/engine_gap_probe.py 25m 16
"""
import os, sys, time, dataclasses, tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled"); os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
import numpy as np, psutil, ray
from scaling import K, MAX_NEW, build_model
from repirl_ray.config import WorldConfig, load_config
from repirl_ray.data.reading import load_problems
from repirl_ray.models.tiny import build_char_tokenizer
from repirl_ray.run_setup import init_ray, resolve_rollout_workers, task_kwargs
from repirl_ray.tasks.arithmetic import ArithmeticTask
from repirl_ray.world import ensure_world
from repirl_ray.actors.rollout_group import RolloutGroup
from repirl_ray.data.prompts import PromptEncoder
from repirl_ray.rollout.vllm_engine import VLLMEngine
from repirl_ray.rollout.worker import prompt_seed
from repirl_ray.threads import thread_budgets
size = sys.argv[1] if len(sys.argv) > 1 else "25m"; prompts = int(sys.argv[2]) if len(sys.argv) > 2 else 16
cfg = load_config(None, [f"rollout.max_new_tokens={MAX_NEW}", f"rollout.samples_per_prompt={K}", f"rollout.min_new_tokens={MAX_NEW}"])
world = ensure_world(WorldConfig()); problems = load_problems(str(world.train), require_demos=False)
tok, task = build_char_tokenizer(), ArithmeticTask()
tmp = Path(tempfile.mkdtemp()); model_dir, n = build_model(size, tmp)
init_ray(cfg, print)
cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, policy_path=str(model_dir)))
cfg = resolve_rollout_workers(cfg, os.cpu_count(), print)
threads = thread_budgets(cfg, os.cpu_count(), overlapped=False)["rollout"]
group = RolloutGroup(cfg.rollout, str(model_dir), cfg.data.task, threads=threads, seed=cfg.seed, chat_template=cfg.data.chat_template,
                     max_prompt_tokens=cfg.data.max_prompt_tokens, task_kwargs=task_kwargs(cfg), dtype=cfg.model.dtype, trust_remote_code=False)
wp = psutil.Process(group.pids()[0]); me = psutil.Process()
print("worker env OMP", ray.get(group.workers[0].__ray_call__.remote(lambda _: {k: v for k, v in os.environ.items() if k.startswith(("OMP", "MALLOC", "VLLM", "KMP", "GOMP"))})))
print("worker threads", wp.num_threads(), "torch", ray.get(group.workers[0].__ray_call__.remote(lambda _: __import__("torch").get_num_threads())))
batch = problems[:prompts]
def cpu(p): t = p.cpu_times(); return t.user + t.system
def turn(side, seed, engine=None, ids=None):
    c0w, c0d, t0 = cpu(wp), cpu(me), time.perf_counter()
    if side == "workers":
        s = group.collect(group.submit(batch, n=K, temperature=1.0, seed=seed, with_demos=True)); tokens = int(s.field("response_len").sum()); eng = s.worker_times()["rollout/engine_s"]
    else:
        out = engine.generate(ids, n=K, temperature=1.0, top_p=1.0, max_tokens=MAX_NEW, min_tokens=cfg.rollout.min_new_tokens, seeds=[prompt_seed(seed, i) for i in range(len(ids))])
        tokens = sum(len(x.token_ids) for g in out for x in g); eng = float("nan")
    dt = time.perf_counter() - t0
    print(f"{side:8s} seed {seed}: {dt:.3f} s (engine {eng:.3f}) tokens {tokens}; cpu worker {cpu(wp)-c0w:.2f} driver {cpu(me)-c0d:.2f}; load {os.getloadavg()[0]:.2f}", flush=True)
    return dt
group.collect(group.submit(batch[:2], n=K, temperature=1.0, seed=999, with_demos=True))
alone = [turn("workers", 1000 + r) for r in range(4)]
engine = VLLMEngine(str(model_dir), max_model_len=cfg.rollout.max_model_len, kv_cache_gib=cfg.rollout.kv_cache_gib)
print("driver threads", me.num_threads(), "torch", __import__("torch").get_num_threads())
encode = PromptEncoder(tok, cfg.data.chat_template, cfg.data.max_prompt_tokens)
ids = [encode(task.format_prompt(p), p.id) for p in batch]
engine.generate(ids[:2], n=K, temperature=1.0, top_p=1.0, max_tokens=MAX_NEW, seeds=None, min_tokens=cfg.rollout.min_new_tokens)
w, r = [], []
for rr in range(6):
    first = "workers" if (rr + 1) // 2 % 2 == 0 else "raw"
    for side in (first, "raw" if first == "workers" else "workers"):
        (w if side == "workers" else r).append(turn(side, 1000 + rr, engine, ids))
del engine; import gc; gc.collect()
after = [turn("workers", 1000 + r) for r in range(4)]
print(f"workers alone after median {np.median(after):.3f}")
print(f"workers alone median {np.median(alone):.3f}; alternating workers {np.median(w):.3f} raw {np.median(r):.3f} ratio {np.median(r)/np.median(w):.2f}")
