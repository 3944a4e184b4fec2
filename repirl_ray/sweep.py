"""`repirl sweep --config SWEEP.yaml`: a grid or random search over run-config keys on Ray Tune.

Every trial is one `repirl train` run (driver.train, in a Tune trial on the same Ray) with its
own run folder under the sweep's folder; its summary.json is the trial's result. At the end
(and after an interruption) the trials are gathered into one table, sweep.md / sweep.json, with
mean +- std over the seeds of each configuration, and sweep.png: the metric against each swept
key.

    <out_dir>/sweep.yaml       the sweep file as resolved (what the trials were made from)
    <out_dir>/trials.json      the expanded trial list, checked again on every rerun
    <out_dir>/trials/<key>/    each trial's run folder (config.yaml, metrics.jsonl, curves.png,
                               train.log, summary.json when finished, error.txt when it failed)
    <out_dir>/tune-<time>/     Ray Tune's own experiment folder of each invocation
    <out_dir>/sweep.md, sweep.json, sweep.png

Decisions (the issue leaves them to us):
- The trial list is expanded here, deterministically (random draws from `random_seed`), and
  every trial's config is validated with load_config before anything starts, so a bad key
  fails in a second naming the trial and the key. Tune runs a grid over that list.
- Resources: a trial reserves a placement group of one bundle per actor its config creates
  (rollout workers, policy learner, PRM learner; CPUs, GPUs and custom resources as the config
  asks) plus an empty head bundle for the trial's own driver loop, which only waits on its
  actors. Tune captures the trial's actors into that group, so what Tune reserves is exactly
  what the run uses, and two trials can never oversubscribe the cluster.
- max_concurrent defaults to 1: on the 2-core machine one trial's actors ask for both cores
  (4 x 0.5 CPU), each phase of an iteration already uses 2 torch threads, and every concurrent
  trial adds its own vLLM engines and learners to memory; a second trial would only time-share
  the cores. Raise it on a cluster with room for several trials' placement groups.
- Resume: finished trials (summary.json in their folder) are never run again; each rerun of the
  same sweep file starts a fresh Tune run over the rest. A trial interrupted midway resumes from
  its last repirl checkpoint (`checkpoint.every`) in its folder, and starts again from iteration
  0 when it had none. Failed trials (error.txt) are run again. Tune's own `Tuner.restore` is not
  used: its experiment state cannot see a result deleted or a trial folder lost, and it would
  restart an interrupted function trial from scratch (we report no Tune checkpoints; the run's
  own checkpoints are the trial's state).
- A failed trial is reported with its error line, never fatal to the sweep (Tune's
  FailureConfig(max_failures=0) with the other trials continuing).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

import ray

from repirl_ray import evaluation
from repirl_ray.actors.common import sum_bundles
from repirl_ray.checkpoints import latest_checkpoint
from repirl_ray.config import ConfigError, TrainConfig, load_config
from repirl_ray.driver import train
from repirl_ray.run_setup import (
    check_given_paths,
    init_ray,
    node_cores,
    read_given_data,
    resolve_paths,
    resolve_rollout_workers,
    role_demands,
)
from repirl_ray.utils import atomic_write_json, atomic_write_text

TRIALS = "trials"
SUMMARY = "summary.json"
ERROR = "error.txt"
# Keys a sweep sets itself for every trial: a trial's folder and its seed.
OWNED_KEYS = ("run_dir", "seed")


@dataclass
class SweepConfig:
    """The SWEEP.yaml schema. Unknown keys and wrong types are errors naming the key."""

    name: str = "sweep"
    out_dir: str = ""  # "" = runs/sweeps/<name>
    base_config: str = ""  # a run-config YAML under every trial (as `repirl train --config`); "" = defaults
    overrides: list[str] = field(default_factory=list)  # key=value for every trial
    # Named bundles of overrides, one axis of the search: e.g. {rloo: [prm.kind=none, advantage.c_process=0]}.
    variants: dict[str, list[str]] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)  # run-config key -> values (cartesian product)
    # run-config key -> {low, high, log} (uniform or log-uniform; integers for int keys) or a list
    # to choose from; num_samples draws per grid point and variant, from random_seed.
    random: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    random_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])  # every configuration runs once per seed
    metric: str = "step_auroc"  # a summary.json key
    mode: str = "max"  # max | min
    report: list[str] = field(default_factory=lambda: ["final_accuracy", "step_auroc", "wall_s"])  # more summary keys
    max_concurrent: int = 1  # trials at once (see the module docstring)


@dataclass
class Trial:
    key: str  # unique, the trial's folder name
    params: dict[str, Any]  # the swept values (variant, grid and random keys), without the seed
    seed: int
    overrides: list[str]  # everything applied on top of base_config, in order


# ------------------------------------------------------------------------------------------------
# The sweep file
# ------------------------------------------------------------------------------------------------


def load_sweep(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """SweepConfig defaults <- the YAML file <- key=value overrides (e.g. seeds=[0])."""
    cfg = OmegaConf.structured(SweepConfig)
    sources = []
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"sweep file not found: {path}")
        sources.append((path, lambda: OmegaConf.load(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"sweep override {item!r} is not key=value (for example seeds=[0,1])")
        sources.append((f"override {item!r}", lambda item=item: OmegaConf.from_dotlist([item])))
    for source, read in sources:
        try:
            cfg = OmegaConf.merge(cfg, read())
        except ConfigKeyError as err:
            valid = ", ".join(f.name for f in dataclasses.fields(SweepConfig))
            raise ConfigError(f"unknown sweep key '{err.full_key}' (from {source}); valid keys: {valid}") from None
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            raise ConfigError(f"sweep key '{key}' (from {source}): {str(err).splitlines()[0]}") from None
    spec: SweepConfig = OmegaConf.to_object(cfg)
    _validate_spec(spec, path or "the sweep")
    return spec


def _run_key_default(key: str) -> Any:
    """The run config's default of a dotted key; ConfigError naming the key when there is none."""
    node: Any = TrainConfig()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            parent = ".".join(parts[:i])
            valid = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else "none (not a section)"
            raise ConfigError(f"'{key}' is not a run-config key; valid keys" + (f" under '{parent}'" if parent else "") + f": {valid}")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"'{key}' is a config section, not a key; sweep one of its keys")
    return node


def _validate_spec(spec: SweepConfig, source: str) -> None:
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"sweep key 'mode' ({source}): {spec.mode!r} is not one of max, min")
    if spec.max_concurrent < 1:
        raise ConfigError(f"sweep key 'max_concurrent' ({source}): must be >= 1, got {spec.max_concurrent}")
    if spec.num_samples < 1:
        raise ConfigError(f"sweep key 'num_samples' ({source}): must be >= 1, got {spec.num_samples}")
    if not spec.seeds:
        raise ConfigError(f"sweep key 'seeds' ({source}): give at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"sweep key 'seeds' ({source}): {spec.seeds} repeats a seed")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", spec.name):
        raise ConfigError(f"sweep key 'name' ({source}): {spec.name!r}; use letters, digits, '.', '_' and '-'")
    swept: dict[str, str] = {}
    for name, items in spec.variants.items():
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise ConfigError(f"sweep key 'variants.{name}' ({source}): use letters, digits, '.', '_', '+' and '-' in a variant name")
        for item in items:
            if "=" not in item:
                raise ConfigError(f"sweep key 'variants.{name}' ({source}): {item!r} is not key=value")
            swept.setdefault(item.split("=", 1)[0].strip(), f"variants.{name}")
    for section in ("grid", "random"):
        for key, values in getattr(spec, section).items():
            where = f"sweep key '{section}.{key}' ({source})"
            try:
                default = _run_key_default(key)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            if key in OWNED_KEYS:
                raise ConfigError(f"{where}: the sweep sets '{key}' itself" + (" (list them under 'seeds')" if key == "seed" else ""))
            if key in swept:
                raise ConfigError(f"{where}: '{key}' is also set under '{swept[key]}'; sweep it in one place")
            swept[key] = section
            if section == "grid" and (not isinstance(values, list) or not values):
                raise ConfigError(f"{where}: give a non-empty list of values")
            if section == "random":
                _check_random(values, default, where)
    for item in spec.overrides:
        if "=" not in item:
            raise ConfigError(f"sweep key 'overrides' ({source}): {item!r} is not key=value")
        key = item.split("=", 1)[0].strip()
        if key in OWNED_KEYS:
            raise ConfigError(f"sweep key 'overrides' ({source}): the sweep sets '{key}' itself" + (" (list seeds under 'seeds')" if key == "seed" else ""))
        if key in swept:
            raise ConfigError(f"sweep key 'overrides' ({source}): '{key}' is also swept under '{swept[key]}'; set it in one place")
    for name, items in spec.variants.items():
        for item in items:
            if item.split("=", 1)[0].strip() in OWNED_KEYS:
                raise ConfigError(f"sweep key 'variants.{name}' ({source}): the sweep sets '{item.split('=', 1)[0]}' itself")


def _check_random(spec: Any, default: Any, where: str) -> None:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: an empty list of choices")
        return
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
        raise ConfigError(f"{where}: give {{low: .., high: .., log: true|false}} or a list of choices, got {spec!r}")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ConfigError(f"{where}: low/high need a numeric key (its default is {default!r}); give a list of choices")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: need numbers low < high, got {low!r}, {high!r}")
    if spec.get("log", False) and low <= 0:
        raise ConfigError(f"{where}: log-uniform needs low > 0, got {low}")


# ------------------------------------------------------------------------------------------------
# Trials
# ------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """A value as a key=value override and in names: floats at full precision, lists as YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else _fmt(value)


def _draw(spec: Any, default: Any, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        return spec[int(rng.integers(len(spec)))]
    low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
    u = rng.random()
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log else low + u * (high - low)
    if isinstance(default, int):
        return int(min(max(round(value), math.ceil(low)), math.floor(high)))
    return float(f"{value:.6g}")  # readable in names and tables; far finer than any effect


def expand_trials(spec: SweepConfig) -> list[Trial]:
    """variants x grid x num_samples random draws x seeds, in that nesting; deterministic."""
    rng = np.random.default_rng(spec.random_seed)
    variants = list(spec.variants.items()) or [(None, [])]
    grid_keys = list(spec.grid)
    trials: list[Trial] = []
    for variant, variant_overrides in variants:
        for grid_values in itertools.product(*(spec.grid[k] for k in grid_keys)):
            samples = spec.num_samples if spec.random else 1
            for _ in range(samples):
                params: dict[str, Any] = {}
                if variant is not None:
                    params["variant"] = variant
                params.update(zip(grid_keys, grid_values))
                for key, rspec in spec.random.items():
                    params[key] = _draw(rspec, _run_key_default(key), rng)
                swept = [f"{k}={_fmt(v)}" for k, v in params.items() if k != "variant"]
                for seed in spec.seeds:
                    label = ",".join(f"{k}={_short(v)}" for k, v in params.items())
                    key = f"{len(trials):03d}" + (f"-{label}" if label else "") + f"-seed={seed}"
                    key = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", key)[:150]
                    trials.append(Trial(key=key, params=dict(params), seed=seed,
                                        overrides=[*spec.overrides, *variant_overrides, *swept, f"seed={seed}"]))
    return trials


def validate_trials(spec: SweepConfig, trials: list[Trial]) -> list[TrainConfig]:
    """Every trial's run config through load_config, before anything starts, with rollout.num_workers
    resolved (passed to the trial with its overrides)."""
    if spec.base_config and not os.path.isfile(spec.base_config):
        raise ConfigError(f"sweep key 'base_config': run config not found: {spec.base_config} (relative to {os.getcwd()})")
    configs = []
    for trial in trials:
        try:
            cfg = load_config(spec.base_config or None, trial.overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep trial {trial.key}: {err}") from None
        if cfg.sft.steps > 0:
            raise ConfigError(
                f"sweep trial {trial.key}: sft.steps > 0 runs a Ray Train job, which cannot start inside a Tune trial; "
                "run the supervised stage once (`repirl train iterations=0 sft.steps=N`) and sweep from its policy "
                "(model.policy_path=<run>/sft_policy)"
            )
        # rollout.num_workers=auto as the trial will resolve it: its bundles are reserved before it starts
        configs.append(resolve_rollout_workers(cfg, node_cores(cfg, joined=False), log_fn=lambda _: None))
    return configs


def trial_bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """One placement-group bundle per actor the run creates (every learner rank too), as its
    config asks for them."""
    return [dict(b) for bundles in role_demands(cfg).values() for b in bundles]


# ------------------------------------------------------------------------------------------------
# One trial (runs inside a Tune trial; no Tune import, so it also runs in a plain process)
# ------------------------------------------------------------------------------------------------


def error_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:400]


def run_trial(trial: dict, log: Callable[[str], None] | None = None) -> dict:
    """One trial: `repirl train` in its run folder, resumed from its checkpoint when it has one.

    trial: {"key", "run_dir" (absolute), "cwd", "base_config", "overrides", "num_workers"}. Returns the run's
    summary. On failure writes error.txt (one line) in the run folder and raises."""
    os.chdir(trial["cwd"])  # Tune runs trials in their own folder; relative paths mean the sweep's
    run_dir = Path(trial["run_dir"])
    if (run_dir / SUMMARY).is_file():  # finished before the sweep could record it
        return json.loads((run_dir / SUMMARY).read_text())
    logfile = run_dir / "train.log"

    def log_line(line: str) -> None:
        with open(logfile, "a") as f:
            f.write(line + "\n")
        if log:
            log(line)

    try:
        if latest_checkpoint(run_dir) is not None:
            (run_dir / ERROR).unlink(missing_ok=True)
            log_line(f"sweep: resuming trial {trial['key']} from its checkpoint")
            return train(resume=str(run_dir), log_fn=log_line)
        # No checkpoint: whatever an earlier attempt left (metrics, logs) goes; it starts again.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        # The engines its bundles were reserved for (rollout.num_workers=auto, resolved by the sweep).
        cfg = load_config(trial["base_config"] or None,
                          [*trial["overrides"], f"rollout.num_workers={trial['num_workers']}", f"run_dir={run_dir}"])
        return train(cfg, log_fn=log_line)
    except BaseException as err:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / ERROR, error_line(err) + "\n")
        raise


def _tune_trainable(config: dict) -> None:
    from ray import tune  # here: see _run_on_tune

    summary = run_trial(config["trial"])
    tune.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})


# ------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------


def sweep_dir_of(spec: SweepConfig) -> Path:
    return Path(spec.out_dir or os.path.join("runs", "sweeps", spec.name)).resolve()


def _trial_list(trials: list[Trial]) -> list[dict]:
    return [{"key": t.key, "seed": t.seed, "params": t.params, "overrides": t.overrides} for t in trials]


def _check_same_sweep(sweep_dir: Path, spec: SweepConfig, trials: list[Trial]) -> None:
    """A rerun continues the same sweep only; a changed trial list in the same folder is an error."""
    path = sweep_dir / "trials.json"
    listed = json.loads(json.dumps(_trial_list(trials)))
    if path.is_file():
        before = json.loads(path.read_text())["trials"]
        if before != listed:
            old = {t["key"]: t["overrides"] for t in before}
            new = {t["key"]: t["overrides"] for t in listed}
            diff = next((k for k in list(new) + list(old) if old.get(k) != new.get(k)), "?")
            raise ConfigError(
                f"{sweep_dir} holds a sweep with a different trial list (first difference: trial {diff}); "
                "give this sweep another out_dir, or remove that folder to start it again"
            )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"base_config": spec.base_config, "trials": listed})
    atomic_write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.structured(spec)))


def _prepare_worlds(configs: list[TrainConfig], log) -> None:
    """Build each distinct built-in world once, here, before Ray starts: inside a trial its
    warm-up (a Ray Train job) could not start, and concurrent trials would build it twice.
    Model and data paths the user gave are checked here too."""
    seen = set()
    for cfg in configs:
        key = json.dumps([dataclasses.asdict(cfg.world), dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.data),
                          cfg.prm.kind, cfg.prm.update, cfg.prm.loss])
        if key not in seen:  # the same paths are checked once, not once per trial
            seen.add(key)
            check_given_paths(cfg)
            read_given_data(cfg)
            resolve_paths(cfg, log)


def _check_fits(trials: list[Trial], configs: list[TrainConfig]) -> None:
    """On a local Ray, a trial that asks for more than the whole machine would wait forever."""
    available = ray.cluster_resources()
    for trial, cfg in zip(trials, configs):
        need = sum_bundles(trial_bundles(cfg))
        short = {k: v for k, v in need.items() if v > available.get(k, 0.0) + 1e-9}
        if short:
            raise ConfigError(
                f"sweep trial {trial.key} needs {need} for its actors but this Ray has "
                f"{ {k: available.get(k, 0.0) for k in need} }; lower rollout/policy/prm num_cpus or num_workers"
            )


class _Progress:
    """A one-line report per finished or failed trial (Tune's own status table is kept short)."""

    def __init__(self, metric: str, total: int, done_before: int, log) -> None:
        from ray import tune  # here: see _run_on_tune

        outer = self

        class Callback(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                outer.finished += 1
                value = (trial.last_result or {}).get(outer.metric)
                shown = f"{value:.4f}" if isinstance(value, float) else str(value)
                outer.log(f"sweep: trial {trial.config['trial']['key']} done ({outer.finished + outer.done_before}/{outer.total}): "
                          f"{outer.metric} {shown}")

            def on_trial_error(self, iteration, trials, trial, **info):
                outer.finished += 1
                path = Path(trial.config["trial"]["run_dir"]) / ERROR
                line = path.read_text().strip() if path.is_file() else "see the trial's train.log"
                outer.log(f"sweep: trial {trial.config['trial']['key']} FAILED: {line}")

        self.metric, self.total, self.done_before, self.log = metric, total, done_before, log
        self.finished = 0
        self.callback = Callback()


def run_sweep(spec: SweepConfig, *, address: str = "", dry_run: bool = False, log=print) -> dict:
    """Validate every trial, run the unfinished ones on Ray Tune, gather the results.
    Returns the gathered results (also written to sweep.json / sweep.md / sweep.png)."""
    trials = expand_trials(spec)
    configs = validate_trials(spec, trials)
    sweep_dir = sweep_dir_of(spec)
    if dry_run:
        for trial, cfg in zip(trials, configs):
            log(f"{trial.key}: {' '.join(trial.overrides)}  [bundles {trial_bundles(cfg)}]")
        log(f"{len(trials)} trials, all configs valid; folder {sweep_dir}")
        return {"trials": _trial_list(trials)}
    _check_same_sweep(sweep_dir, spec, trials)
    done = [t for t in trials if (sweep_dir / TRIALS / t.key / SUMMARY).is_file()]
    pending = [(t, c) for t, c in zip(trials, configs) if not (sweep_dir / TRIALS / t.key / SUMMARY).is_file()]
    failed_before = sum((sweep_dir / TRIALS / t.key / ERROR).is_file() for t, _ in pending)
    log(f"sweep {spec.name}: {len(trials)} trials, {len(done)} finished before, {len(pending)} to run"
        + (f" ({failed_before} failed before and run again)" if failed_before else "") + f"; folder {sweep_dir}")
    if pending:
        _prepare_worlds([c for _, c in pending], log)
        _run_on_tune(spec, sweep_dir, pending, len(trials), len(done), address, log)
    result = gather(spec, trials, sweep_dir)
    log(f"sweep {spec.name}: {result['counts']}; table {sweep_dir / 'sweep.md'}, plot {sweep_dir / 'sweep.png'}")
    return result


def _run_on_tune(spec, sweep_dir: Path, pending, total: int, done_before: int, address: str, log) -> None:
    from ray import tune  # here: ray.tune takes 1.5 s more than ray (measured); run_trial and --dry-run do without

    first = pending[0][1]
    if address:
        first = dataclasses.replace(first, ray=dataclasses.replace(first.ray, address=address))
    started = init_ray(first, log)
    try:
        if started:
            _check_fits([t for t, _ in pending], [c for _, c in pending])
        params = [
            {"key": t.key, "run_dir": str(sweep_dir / TRIALS / t.key), "cwd": os.getcwd(), "base_config": spec.base_config,
             "overrides": t.overrides, "num_workers": c.rollout.num_workers, "bundles": trial_bundles(c)}
            for t, c in pending
        ]
        progress = _Progress(spec.metric, total, done_before, log)
        trainable = tune.with_resources(
            _tune_trainable,
            # An empty head bundle for the trial's driver loop, one bundle per actor it creates.
            resources=lambda config: tune.PlacementGroupFactory([{}] + config["trial"]["bundles"], strategy="PACK"),
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(params)},
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=spec.max_concurrent,
                trial_name_creator=lambda t: t.config["trial"]["key"],
                trial_dirname_creator=lambda t: t.config["trial"]["key"],
            ),
            run_config=tune.RunConfig(
                name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(sweep_dir),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[progress.callback],
                verbose=0,
            ),
        )
        try:
            results = tuner.fit()
        except KeyboardInterrupt:
            log("sweep: interrupted; run the same command again to continue (finished trials are kept)")
            return
        for r in results:
            if r.error is not None:
                path = Path(r.config["trial"]["run_dir"]) / ERROR
                if not path.is_file():  # the trial's process died before it could write one
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(path, error_line(r.error) + "\n")
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def gather(spec: SweepConfig, trials: list[Trial], sweep_dir: Path) -> dict:
    """Read every trial's folder; write sweep.json, sweep.md and sweep.png; return the json."""
    columns = [spec.metric] + [k for k in spec.report if k != spec.metric]
    rows = []
    for t in trials:
        run_dir = sweep_dir / TRIALS / t.key
        row = {"key": t.key, "params": t.params, "seed": t.seed, "run_dir": str(run_dir), "error": None, "values": {}}
        if (run_dir / SUMMARY).is_file():
            summary = json.loads((run_dir / SUMMARY).read_text())
            row["status"] = "finished"
            row["values"] = {c: _number(summary.get(c)) for c in columns}
            row["summary_keys"] = sorted(k for k, v in summary.items() if _number(v) is not None)
        elif (run_dir / ERROR).is_file():
            row["status"] = "failed"
            row["error"] = (run_dir / ERROR).read_text().strip()
        else:
            row["status"] = "not run" if not run_dir.exists() else "interrupted"
        rows.append(row)

    groups: dict[str, dict] = {}
    for row in rows:
        gkey = json.dumps(row["params"], sort_keys=True, default=str)
        g = groups.setdefault(gkey, {"params": row["params"], "trials": [], "failed": 0, "unfinished": 0})
        g["trials"].append(row["key"])
        g["failed"] += row["status"] == "failed"
        g["unfinished"] += row["status"] in ("not run", "interrupted")
    for g in groups.values():
        members = [r for r in rows if r["key"] in g["trials"] and r["status"] == "finished"]
        g["stats"] = {}
        for c in columns:
            values = [r["values"][c] for r in members if r["values"].get(c) is not None]
            mean, std = _mean_std(values)
            g["stats"][c] = {"mean": mean, "std": std, "n": len(values), "values": values}
    sign = 1.0 if spec.mode == "max" else -1.0
    configs = sorted(groups.values(), key=lambda g: (g["stats"][spec.metric]["mean"] is None,
                                                     -sign * (g["stats"][spec.metric]["mean"] or 0.0)))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "interrupted", "not run")}
    finished = [r for r in rows if r["status"] == "finished"]
    notes = []
    if finished and not any(r["values"].get(spec.metric) is not None for r in finished):
        notes.append(f"metric '{spec.metric}' is in no finished trial's summary.json; numeric keys there: "
                     + ", ".join(finished[0]["summary_keys"]))
    out = {
        "name": spec.name, "metric": spec.metric, "mode": spec.mode, "columns": columns, "counts": counts,
        "best": configs[0]["params"] if configs and configs[0]["stats"][spec.metric]["mean"] is not None else None,
        "configs": configs, "trials": rows, "notes": notes, "sweep_dir": str(sweep_dir),
    }
    atomic_write_json(sweep_dir / "sweep.json", out)
    atomic_write_text(sweep_dir / "sweep.md", format_sweep_table(out, spec))
    swept = list(dict.fromkeys(k for t in trials for k in t.params))
    points = {k: [(r["params"].get(k), r["values"].get(spec.metric)) for r in finished] for k in swept}
    if points:
        log_keys = [k for k, v in spec.random.items() if isinstance(v, dict) and v.get("log")]
        evaluation.plot_sweep(points, sweep_dir / "sweep.png", spec.metric, log_keys=log_keys,
                              title=f"{spec.name}: {spec.metric} ({spec.mode}), {counts['finished']} trials")
    return out


def _cell(stat: dict, decimals: int = 3) -> str:
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.{decimals}f} (n={stat['n']})"
    return f"{stat['mean']:.{decimals}f} +- {stat['std']:.{decimals}f} (n={stat['n']})"


def format_sweep_table(result: dict, spec: SweepConfig) -> str:
    """sweep.md: the configurations ranked by the metric (mean +- std over seeds), then every
    trial with its status and, for a failed one, its error line."""
    swept = list(dict.fromkeys(k for g in result["configs"] for k in g["params"]))
    cols = result["columns"]
    lines = [
        f"# Sweep {result['name']}",
        "",
        f"Metric: `{spec.metric}` ({spec.mode}), mean +- std over seeds {list(spec.seeds)}; trials: "
        + ", ".join(f"{v} {k}" for k, v in result["counts"].items() if v) + ".",
        f"Folder: {result['sweep_dir']}. Base config: {spec.base_config or 'the defaults'}; overrides for every trial: "
        + (" ".join(f"`{o}`" for o in spec.overrides) or "none") + ".",
    ]
    if spec.variants:
        lines.append("Variants: " + "; ".join(f"`{k}` = {' '.join(v) or '(no overrides)'}" for k, v in spec.variants.items()) + ".")
    lines += [""] + [f"Note: {n}" for n in result["notes"]] + ([""] if result["notes"] else [])
    header = ["rank", *swept, *cols, "failed"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---" * len(header) + "|")
    for i, g in enumerate(result["configs"], 1):
        cells = [str(i)] + [_short(g["params"].get(k, "")) for k in swept] + [_cell(g["stats"][c]) for c in cols]
        cells.append(str(g["failed"]) + (f" ({g['unfinished']} not run)" if g["unfinished"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Trials", "", "| trial | seed | status | " + " | ".join(cols) + " |", "|---" * (3 + len(cols)) + "|"]
    for r in result["trials"]:
        values = [("-" if r["values"].get(c) is None else f"{r['values'][c]:.4g}") for c in cols]
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        lines.append(f"| {r['key']} | {r['seed']} | {status.replace('|', '/')} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
