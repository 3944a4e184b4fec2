"""`repirl train | make-world | eval | bon`.

    repirl train                                  # the built-in world, defaults
    repirl train --config configs/tiny.yaml policy.lr=5e-5 iterations=50
    repirl train --address auto ...               # join a running Ray cluster
    repirl train --resume runs/repirl-20261126-101500
    repirl make-world                             # build and cache the built-in world
    repirl eval --checkpoint runs/<run>/checkpoints/iter_000100
    repirl bon --checkpoint runs/<run>/checkpoints/iter_000100
    repirl sweep --config benchmarks/sweeps/prm_quality.yaml     # a grid/random search on Ray Tune
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from repirl_ray.config import ConfigError, load_config, to_yaml
from repirl_ray.models.policy import ModelPathError
from repirl_ray.tasks.base import DataError

USER_ERRORS = (ConfigError, DataError, ModelPathError, FileNotFoundError, FileExistsError)


def _print_summary(summary: dict) -> None:
    keys = [
        "base_accuracy", "final_accuracy", "base_greedy_accuracy", "final_greedy_accuracy",
        "base_step_auroc", "step_auroc", "first_error_acc", "iterations", "wall_s", "peak_rss_gib",
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


def cmd_train(args) -> int:
    from repirl_ray.driver import train

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    if args.resume:
        summary = train(resume_dir=args.resume, overrides=overrides)
    else:
        cfg = load_config(args.config, overrides)
        summary = train(cfg)
    _print_summary(summary)
    return 0


def cmd_make_world(args) -> int:
    from repirl_ray.world import ensure_world

    cfg = load_config(args.config, args.overrides)
    paths = ensure_world(cfg.world, use_ray_train=not args.no_ray_train)
    print(f"world: {paths.root}")
    return 0


def cmd_eval(args) -> int:
    from repirl_ray.assess import evaluate_checkpoint, format_eval

    result = evaluate_checkpoint(args.checkpoint, samples=args.samples, split=args.split, overrides=args.overrides)
    print(f"evaluation of {args.checkpoint} ({result['prompts']} {args.split} prompts):")
    print(format_eval(result))
    print(f"  written to {args.checkpoint}/eval_{args.split}.json")
    return 0


def cmd_bon(args) -> int:
    from repirl_ray.assess import best_of_n_checkpoint

    result = best_of_n_checkpoint(args.checkpoint, n_max=args.n, split=args.split, out_dir=args.out, overrides=args.overrides)
    print("best-of-N accuracy (mean +- s.e. over prompts):")
    print(result["table"])
    print(f"plot: {result['png']}")
    return 0


def cmd_sweep(args) -> int:
    from repirl_ray.sweep import load_sweep, run_sweep

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
    p.add_argument("--config", help="YAML run config (defaults: the built-in CPU world)")
    p.add_argument("--address", help="Ray address to join, e.g. auto (default: a private local Ray)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("make-world", help="build and cache the built-in world (data, tokenizer, base policy)")
    p.add_argument("--config")
    p.add_argument("--no-ray-train", action="store_true", help="run the warm-up in this process instead of a Ray Train job")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_make_world)

    p = sub.add_parser("eval", help="evaluate a checkpoint: greedy and sampled pass@k, PRM step AUROC")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="runs/<run>/checkpoints/iter_NNNNNN")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt for pass@k (default 8)")
    p.add_argument("--split", default="eval", choices=["eval", "hard"])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bon", help="best-of-N by the PRM against majority vote and random, N = 1..32")
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
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # One line per iteration is the run's own report; library progress bars only clutter it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
