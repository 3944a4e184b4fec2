"""The sweep file, its trials and its table (repirl_ray/sweep.py), without Ray: the schema's
errors, the expansion of variants x grid x random x seeds, validation of every trial's config,
a failing trial's error line, and the gathered table against numbers worked out by hand."""

import json
import math

import pytest

from repirl_ray.cli import main
from repirl_ray.config import ConfigError, load_config
from repirl_ray.sweep import (
    SweepConfig,
    expand_trials,
    gather,
    load_sweep,
    run_trial,
    trial_bundles,
    validate_trials,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_sweep_file_loads_with_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "name: q\ngrid:\n  prm.lr: [1e-3, 3e-4]\nseeds: [0, 1]\nmetric: final_accuracy\n")
    spec = load_sweep(path, ["max_concurrent=2"])
    assert spec.grid == {"prm.lr": [0.001, 0.0003]} and spec.seeds == [0, 1]
    assert spec.metric == "final_accuracy" and spec.mode == "max" and spec.max_concurrent == 2
    assert spec.out_dir == "" and spec.variants == {} and spec.num_samples == 1


@pytest.mark.parametrize("text, match", [
    ("gird:\n  prm.lr: [1]\n", "unknown sweep key 'gird'"),
    ("seeds: one\n", "sweep key 'seeds'"),
    ("mode: best\n", "'best' is not one of max, min"),
    ("grid:\n  prm.lrr: [1]\n", "'prm.lrr' is not a run-config key; valid keys under 'prm'"),
    ("grid:\n  prm: [1]\n", "'prm' is a config section"),
    ("grid:\n  seed: [0, 1]\n", "list them under 'seeds'"),
    ("overrides: [run_dir=x]\n", "the sweep sets 'run_dir' itself"),
    ("overrides: [prm.lr=1]\ngrid:\n  prm.lr: [1, 2]\n", "'prm.lr' is also swept under 'grid'"),
    ("variants:\n  a: [prm.lr=1]\ngrid:\n  prm.lr: [1, 2]\n", "also set under 'variants.a'"),
    ("random:\n  prm.lr: {low: 0, high: 1, log: true}\n", "log-uniform needs low > 0"),
    ("random:\n  prm.kind: {low: 0, high: 1}\n", "need a numeric key"),
    ("random:\n  prm.lr: {lo: 0, high: 1}\n", "give {low: .., high: .., log: true|false}"),
    ("grid:\n  prm.lr: []\n", "non-empty list"),
    ("seeds: [1, 1]\n", "repeats a seed"),
])
def test_sweep_file_errors_name_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_sweep(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_expand_variants_grid_seeds_in_order():
    spec = SweepConfig(
        overrides=["iterations=3"],
        variants={"rloo": ["prm.kind=none", "advantage.c_process=0"], "repirl": []},
        grid={"rollout.samples_per_prompt": [2, 4]},
        seeds=[0, 1],
    )
    trials = expand_trials(spec)
    assert len(trials) == 2 * 2 * 2
    assert [t.key for t in trials[:3]] == [
        "000-variant=rloo,rollout.samples_per_prompt=2-seed=0",
        "001-variant=rloo,rollout.samples_per_prompt=2-seed=1",
        "002-variant=rloo,rollout.samples_per_prompt=4-seed=0",
    ]
    # sweep overrides, then the variant's, then the swept values, then the seed: later ones win
    assert trials[0].overrides == ["iterations=3", "prm.kind=none", "advantage.c_process=0",
                                   "rollout.samples_per_prompt=2", "seed=0"]
    assert trials[7].overrides == ["iterations=3", "rollout.samples_per_prompt=4", "seed=1"]
    assert trials[7].params == {"variant": "repirl", "rollout.samples_per_prompt": 4} and trials[7].seed == 1
    # every trial's config is a valid run config; the variant's keys reach it
    configs = validate_trials(spec, trials)
    assert configs[0].prm.kind == "none" and configs[0].rollout.samples_per_prompt == 2 and configs[0].seed == 0
    assert configs[7].prm.kind == "implicit" and configs[7].seed == 1 and configs[7].iterations == 3


def test_random_draws_are_seeded_in_range_and_typed():
    spec = SweepConfig(
        random={"prm.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "prm.epochs": {"low": 1, "high": 3},
                "prm.kind": ["head", "implicit"]},
        num_samples=6, seeds=[0],
    )
    trials = expand_trials(spec)
    assert len(trials) == 6
    assert expand_trials(spec)[3].overrides == trials[3].overrides  # the same list on every rerun
    assert [t.params for t in expand_trials(SweepConfig(**{**vars(spec), "random_seed": 1}))] != [t.params for t in trials]
    for t in trials:
        assert 1e-5 <= t.params["prm.lr"] <= 1e-2
        assert isinstance(t.params["prm.epochs"], int) and 1 <= t.params["prm.epochs"] <= 3
        assert t.params["prm.kind"] in ("head", "implicit")
    # log-uniform: the draws spread over the decades rather than crowding near the top
    assert min(t.params["prm.lr"] for t in trials) < 1e-3
    validate_trials(spec, trials)


def test_a_bad_trial_config_fails_before_anything_starts_naming_trial_and_key():
    spec = SweepConfig(grid={"prm.kind": ["head", "bogus"]}, seeds=[0])
    with pytest.raises(ConfigError, match=r"sweep trial 001-prm.kind=bogus-seed=0: config key 'prm.kind'"):
        validate_trials(spec, expand_trials(spec))
    # a combination the run config forbids: c_process without a PRM
    spec = SweepConfig(variants={"rloo": ["prm.kind=none"]})
    with pytest.raises(ConfigError, match=r"trial 000-variant=rloo-seed=0: config key 'advantage.c_process'"):
        validate_trials(spec, expand_trials(spec))
    spec = SweepConfig(overrides=["sft.steps=10"])
    with pytest.raises(ConfigError, match="Ray Train job, which cannot start inside a Tune trial"):
        validate_trials(spec, expand_trials(spec))


def test_trial_bundles_follow_the_config():
    cfg = load_config(None, ["rollout.num_workers=3", "rollout.num_cpus=0.25", "policy.num_cpus=0.5",
                             "prm.num_cpus=0.75", "prm.num_gpus=0.5", "policy.resources={learner: 1}"])
    assert trial_bundles(cfg) == [{"CPU": 0.25}] * 3 + [{"CPU": 0.5, "learner": 1.0}, {"CPU": 0.75, "GPU": 0.5}]
    rloo = load_config(None, ["prm.kind=none", "advantage.c_process=0", "rollout.num_workers=2"])
    assert trial_bundles(rloo) == [{"CPU": 0.5}] * 3  # no PRM learner


def test_a_failing_trial_writes_its_error_line_and_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run_trial changes the working folder (as in a Tune trial): undone after
    run_dir = tmp_path / "trials" / "000-seed=0"
    trial = {"key": "000-seed=0", "run_dir": str(run_dir), "cwd": str(tmp_path), "base_config": "",
             "overrides": ["model.policy_path=/no/such/model", "seed=0"], "num_workers": 1}
    with pytest.raises(Exception, match="model folder not found"):
        run_trial(trial)
    line = (run_dir / "error.txt").read_text().strip()
    assert line.startswith("ModelPathError: config key 'model.policy_path': model folder not found: /no/such/model")
    assert "\n" not in line
    # a trial that finished (summary.json) is not run again: its summary is returned as it is
    (run_dir / "summary.json").write_text(json.dumps({"step_auroc": 0.5}))
    assert run_trial(trial) == {"step_auroc": 0.5}


def _fake_trial(sweep_dir, key, summary=None, error=None):
    run_dir = sweep_dir / "trials" / key
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if error is not None:
        (run_dir / "error.txt").write_text(error + "\n")


def test_gather_table_mean_std_over_seeds_failures_and_plot(tmp_path):
    spec = SweepConfig(name="t", grid={"prm.lr": [0.001, 0.01]}, seeds=[0, 1, 2], metric="step_auroc",
                       report=["final_accuracy"])
    trials = expand_trials(spec)
    keys = [t.key for t in trials]
    # lr 0.001: AUROC 0.6, 0.7, failed -> 0.65 +- 0.0707 (n=2); lr 0.01: 0.8, 0.9, never ran.
    _fake_trial(tmp_path, keys[0], {"step_auroc": 0.6, "final_accuracy": 0.5})
    _fake_trial(tmp_path, keys[1], {"step_auroc": 0.7, "final_accuracy": 0.7})
    _fake_trial(tmp_path, keys[2], error="RayActorError: The actor died unexpectedly")
    _fake_trial(tmp_path, keys[3], {"step_auroc": 0.8, "final_accuracy": 0.6})
    _fake_trial(tmp_path, keys[4], {"step_auroc": 0.9, "final_accuracy": None})
    result = gather(spec, trials, tmp_path)
    assert result["counts"] == {"finished": 4, "failed": 1, "interrupted": 0, "not run": 1}
    assert result["best"] == {"prm.lr": 0.01}
    best, second = result["configs"]
    assert best["stats"]["step_auroc"]["mean"] == pytest.approx(0.85)
    assert best["stats"]["final_accuracy"] == {"mean": 0.6, "std": None, "n": 1, "values": [0.6]}
    assert second["stats"]["step_auroc"]["mean"] == pytest.approx(0.65)
    assert second["stats"]["step_auroc"]["std"] == pytest.approx(math.sqrt(0.005))
    assert second["failed"] == 1 and best["unfinished"] == 1
    md = (tmp_path / "sweep.md").read_text().splitlines()
    assert "| 1 | 0.01 | 0.850 +- 0.071 (n=2) | 0.600 (n=1) | 0 (1 not run) |" in md
    assert "| 2 | 0.001 | 0.650 +- 0.071 (n=2) | 0.600 +- 0.141 (n=2) | 1 |" in md
    assert f"| {keys[2]} | 2 | failed: RayActorError: The actor died unexpectedly | - | - |" in md
    assert json.loads((tmp_path / "sweep.json").read_text())["counts"]["failed"] == 1
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    # mode min ranks the other way round
    spec.mode = "min"
    assert gather(spec, trials, tmp_path)["best"] == {"prm.lr": 0.001}
    # a metric that no summary has is said, with the keys that are there
    spec.metric = "step_aucroc"
    assert "metric 'step_aucroc' is in no finished trial's summary.json" in gather(spec, trials, tmp_path)["notes"][0]


def test_cli_sweep_dry_run_and_one_line_errors(tmp_path, capsys):
    path = write(tmp_path, "grid:\n  prm.beta: [0.05, 0.1]\nseeds: [0, 1]\n")
    assert main(["sweep", "--config", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 trials, all configs valid" in out and "003-prm.beta=0.1-seed=1" in out
    bad = write(tmp_path, "grid:\n  prm.bta: [0.05]\n", "bad.yaml")
    assert main(["sweep", "--config", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep key 'grid.prm.bta'") and "\n" not in err


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted(p for p in (REPO / "benchmarks" / "sweeps").glob("*.yaml") if not p.name.startswith("core"))


def test_committed_sweep_files_and_core_pins_are_valid(monkeypatch):
    """Every sweep docs/results.md reproduces expands to trials whose configs validate, on either
    one-core base config; the two pins differ only in the core they name."""
    monkeypatch.chdir(REPO)  # base_config and data paths are relative to the repository
    assert {p.stem for p in SWEEP_FILES} >= {"prm_quality", "prm_quality_best", "regimes", "regimes_curriculum", "pipeline"}
    pins = [load_config(f"benchmarks/sweeps/core{c}.yaml", []) for c in (0, 1)]
    for c, cfg in enumerate(pins):
        assert (cfg.rollout.cores, cfg.policy.cores, cfg.prm.cores) == (str(c),) * 3
        assert cfg.policy.num_threads == cfg.prm.num_threads == 1
    for i, path in enumerate(SWEEP_FILES):
        c = i % 2  # each file on one of the pins (the pins differ only in the core, checked above)
        spec = load_sweep(str(path), [f"base_config=benchmarks/sweeps/core{c}.yaml"])
        trials = expand_trials(spec)
        configs = validate_trials(spec, trials)
        assert len(configs) == len(trials) == len({t.key for t in trials}) > 0, path.name
        assert all(cfg.policy.cores == str(c) for cfg in configs), path.name
