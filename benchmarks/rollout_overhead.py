"""What the rollout workers cost against one raw vLLM engine, on the same requests.

    .venv/bin/python benchmarks/rollout_overhead.py                          # 3 sizes x 8, 16 prompts
    .venv/bin/python benchmarks/rollout_overhead.py --sizes 1m --prompts 8 --repeats 5

For each model size (scaling.py's random Qwen2 models with the built-in world's vocabulary) and
batch (prompts x K = 4 samples, 40 new tokens at most), in one process:
- the rollout workers as a run with that policy starts them (RolloutGroup; rollout.num_workers=auto
  and the thread budget resolved as a run resolves them: on 2 cores 2 workers x 1 thread at 0.8M,
  1 worker x 2 threads at 27M and 123M), each batch through
  submit and collect as the driver's serial loop does: prompts, sampling, verification, the
  expert demos, batching, Ray;
- one raw vLLM engine in this process with all the cores, on the same prompts with the same
  per-prompt seeds and weights: the same tokens (both counts are printed).
The two take turns batch by batch (batch_order: workers first, then raw first twice, ...), so a
drift of the machine's speed within a row falls on both sides alike. workers / raw = the raw
engine's seconds over the workers' for the same batch, back to back in one round, the median over
--repeats rounds after a warm-up (pair_ratio): this machine's speed steps by up to 20 % within a minute
(measured: one worker's batch of 27M x 16 prompts went from 2.70 to 3.28 s, its CPU seconds from 5.2 to
6.3, for the same tokens), so a ratio of two medians taken over different minutes is not one of the
same machine; every batch's seconds are in the table. "of which in engines" is the slowest worker's
seconds in its engine.

Why not tokens/s inside a training run (scaling.py): a random model's response lengths swing
from iteration to iteration as it trains (27M: 18, 3, 29 tokens in three iterations), and
tokens/s with them, so a run's batches and a raw engine's are not the same work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scaling import K, MAX_NEW, SIZES, build_model  # noqa: E402


def batch_order(repeats: int) -> list[str]:
    """Which side samples first in each round: workers, raw, raw, workers, workers, raw, ... so a machine
    whose speed drifts during a row slows both sides alike (measured: all the workers' batches, then all
    the raw engine's, gave 0.83 and 1.24 in two rows of one invocation for the same vLLM code)."""
    return ["workers" if (r + 1) // 2 % 2 == 0 else "raw" for r in range(repeats)]


def pair_ratio(workers_s: list[float], raw_s: list[float]) -> float:
    """workers / raw: the median over rounds of the raw engine's seconds over the workers' in that round
    (the two batches of a round run back to back on the same prompts, seeds and weights)."""
    if len(workers_s) != len(raw_s) or not workers_s:
        raise ValueError(f"one raw batch per workers' batch: {len(workers_s)} against {len(raw_s)}")
    return float(np.median([r / w for w, r in zip(workers_s, raw_s)]))


def measure(size: str, prompts: int, repeats: int, work: Path, cfg, problems, tok, task) -> dict:
    from repirl_ray.actors.rollout_group import RolloutGroup
    from repirl_ray.data.prompts import PromptEncoder
    from repirl_ray.run_setup import resolve_rollout_workers, task_kwargs
    from repirl_ray.rollout.vllm_engine import VLLMEngine
    from repirl_ray.rollout.worker import prompt_seed
    from repirl_ray.threads import thread_budgets

    model_dir, n_params = build_model(size, work)
    batch = problems[:prompts]
    seeds = [1000 + r for r in range(repeats)]
    # The workers as a run with this policy starts them (rollout.num_workers=auto resolved by its size).
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, policy_path=str(model_dir)))
    cfg = resolve_rollout_workers(cfg, os.cpu_count() or 1, lambda line: print(f"{size}: {line}", flush=True))
    threads = thread_budgets(cfg, os.cpu_count() or 1, overlapped=False)["rollout"]
    group = RolloutGroup(cfg.rollout, str(model_dir), cfg.data.task, threads=threads, seed=cfg.seed,
                         chat_template=cfg.data.chat_template, max_prompt_tokens=cfg.data.max_prompt_tokens,
                         task_kwargs=task_kwargs(cfg), dtype=cfg.model.dtype, trust_remote_code=False)
    engine = None
    try:
        group.collect(group.submit(batch[:2], n=K, temperature=1.0, seed=999, with_demos=True))  # warm-up
        # The raw engine in this process, beside the idle workers: the two take turns batch by batch.
        engine = VLLMEngine(str(model_dir), max_model_len=cfg.rollout.max_model_len, kv_cache_gib=cfg.rollout.kv_cache_gib)
        encode = PromptEncoder(tok, cfg.data.chat_template, cfg.data.max_prompt_tokens)  # as the workers encode
        ids = [encode(task.format_prompt(p), p.id) for p in batch]
        engine.generate(ids[:2], n=K, temperature=1.0, top_p=1.0, max_tokens=MAX_NEW, seeds=None,
                        min_tokens=cfg.rollout.min_new_tokens)  # warm-up
        workers_s, engines_s, workers_tokens, raw_s, raw_tokens = [], [], [], [], []
        for seed, first in zip(seeds, batch_order(repeats)):
            for side in (first, "raw" if first == "workers" else "workers"):
                t0 = time.perf_counter()
                if side == "workers":
                    sampled = group.collect(group.submit(batch, n=K, temperature=1.0, seed=seed, with_demos=True))
                    workers_s.append(time.perf_counter() - t0)
                    engines_s.append(sampled.worker_times()["rollout/engine_s"])
                    workers_tokens.append(int(sampled.field("response_len").sum()))
                else:
                    out = engine.generate(ids, n=K, temperature=1.0, top_p=1.0, max_tokens=MAX_NEW,
                                          min_tokens=cfg.rollout.min_new_tokens,
                                          seeds=[prompt_seed(seed, i) for i in range(len(ids))])
                    raw_s.append(time.perf_counter() - t0)
                    raw_tokens.append(sum(len(s.token_ids) for group_ in out for s in group_))
    finally:
        del engine
        group.shutdown()
    w, e, r = (float(np.median(x)) for x in (workers_s, engines_s, raw_s))
    return {"size": size, "params": n_params, "prompts": prompts, "threads": threads.describe(),
            "workers": cfg.rollout.num_workers, "workers_s": w, "engines_s": e, "raw_s": r,
            "ratio": pair_ratio(workers_s, raw_s), "engines_ratio": pair_ratio(engines_s, raw_s), "each_workers_s": workers_s, "each_raw_s": raw_s,
            "workers_tokens": workers_tokens, "raw_tokens": raw_tokens}


def measure_rows(sizes: list[str], prompt_counts: list[int], repeats: int, overrides: list[str], log=print) -> list[dict]:
    """measure() for each size and batch, each row in a Ray of its own."""
    import ray

    from repirl_ray.config import WorldConfig, load_config
    from repirl_ray.data.reading import load_problems
    from repirl_ray.models.tiny import build_char_tokenizer
    from repirl_ray.run_setup import init_ray
    from repirl_ray.tasks.arithmetic import ArithmeticTask
    from repirl_ray.world import ensure_world

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = load_config(None, [f"rollout.max_new_tokens={MAX_NEW}", f"rollout.samples_per_prompt={K}", *overrides])
    world = ensure_world(WorldConfig())
    problems = load_problems(str(world.train), require_demos=False)
    tok, task = build_char_tokenizer(), ArithmeticTask()
    rows = []
    with tempfile.TemporaryDirectory(prefix="repirl-overhead-") as tmp:
        for size in sizes:
            for prompts in prompt_counts:
                t0 = time.time()
                init_ray(cfg, lambda *_: None)  # a Ray per row: the raw engine then runs with no Ray beside it
                try:
                    rows.append(measure(size, prompts, repeats, Path(tmp), cfg, problems, tok, task))
                finally:
                    ray.shutdown()
                r = rows[-1]
                log(f"rollout/raw {size} x {prompts} prompts: workers {r['workers_s']:.3f} s, raw {r['raw_s']:.3f} s, "
                    f"ratio {r['ratio']:.2f} ({time.time() - t0:.0f} s)")
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    lines = ["| size | prompts x K | rollout workers | workers s | of which in engines s | raw engine s | "
             "workers / raw | engines / raw | each batch s (workers; raw) | tokens (workers; raw) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['size']} ({r['params'] / 1e6:.1f} M) | {r['prompts']} x {K} | {r['workers']} x {r['threads']} | "
            f"{r['workers_s']:.3f} | {r['engines_s']:.3f} | {r['raw_s']:.3f} | **{r['ratio']:.2f}** | "
            f"{r['engines_ratio']:.2f} | {', '.join(f'{x:.2f}' for x in r['each_workers_s'])}; "
            f"{', '.join(f'{x:.2f}' for x in r['each_raw_s'])} | {', '.join(map(str, r['workers_tokens']))}; "
            f"{', '.join(map(str, r['raw_tokens']))} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--prompts", type=int, nargs="+", default=[8, 16], help="prompts per batch (x K = 4)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (one batch each side) after a warm-up")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (rollout section)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rollout_overhead.md"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = measure_rows(args.sizes, args.prompts, args.repeats, args.set, log=lambda line: print(line, flush=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = ["# Rollout workers against one raw vLLM engine, on the same requests", "",
              f"Code: {commit or 'unknown'}; `{' '.join(['benchmarks/rollout_overhead.py', *(argv or sys.argv[1:])])}`; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
              f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {args.repeats} rounds of "
              f"one batch each after a warm-up, the two taking turns, K = {K}, {MAX_NEW} new tokens at most"
              + (f"; overrides {' '.join(args.set)}" if args.set else "") + ". workers / raw: the raw engine's "
              "seconds over the workers' (submit to collect, as the serial loop) for the same prompts, seeds and weights, "
              "in one round, median over the rounds (engines / raw likewise, with the seconds inside the engines); the seconds columns are medians of each side's batches.",
              "", *format_rows(rows), ""]
    Path(args.out).write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
