"""`repirl sweep` end to end on the tiny world: a 2-value x 2-seed grid as Ray Tune trials on the
session's Ray (each trial's actors created from inside its Tune trial, in the trial's placement
group), one table over the seeds, then an interruption and a rerun that runs only what is
missing: a trial whose result was lost resumes from its checkpoint, a trial that died before
its first checkpoint starts again, the finished ones are not touched."""

import json

import pytest

from repirl_ray.sweep import SweepConfig, expand_trials, run_sweep
from tests.conftest import TINY_RUN, TINY_WORLD, overrides

pytestmark = pytest.mark.integration


def _iterations(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "rollout/accuracy" in r]


def test_sweep_grid_over_seeds_then_resume(ray_session, world_cache, tmp_path):
    # The oracle process reward (step labels, no PRM learner): the credit forms still differ, and
    # each trial starts two actors instead of three (a trial is mostly actor start-up here).
    base = overrides(TINY_WORLD, TINY_RUN, **{"world.dir": str(world_cache), "rollout.num_workers": 1,
                                              "checkpoint.every": 1, "prm.kind": "oracle"})
    spec = SweepConfig(
        name="tiny", out_dir=str(tmp_path / "sweep"), overrides=base,
        grid={"advantage.process_credit": ["sum", "min"]}, seeds=[0, 1],
        metric="final_accuracy", report=["final_greedy_accuracy", "wall_s"], max_concurrent=2,
    )
    lines = []
    result = run_sweep(spec, log=lines.append)
    assert result["counts"] == {"finished": 4, "failed": 0, "interrupted": 0, "not run": 0}, lines

    sweep_dir = tmp_path / "sweep"
    trials = [sweep_dir / "trials" / t.key for t in expand_trials(spec)]
    for run_dir in trials:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["iterations"] == 2 and summary["run_dir"] == str(run_dir)
        assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for record in _iterations(run_dir):
            # both advantage channels ran (the oracle's process rewards are nonzero at a wrong step)
            assert "advantage/outcome_abs_mean" in record and record["advantage/process_abs_mean"] > 0.0
    # min-form returns differ from the sum's: the same seed, the other credit, other advantages
    sum0, min0 = _iterations(trials[0])[0], _iterations(trials[2])[0]
    assert sum0["advantage/process_abs_mean"] != min0["advantage/process_abs_mean"]
    # one row per credit, each the mean over its 2 seeds
    assert [g["stats"]["final_accuracy"]["n"] for g in result["configs"]] == [2, 2]
    assert {g["params"]["advantage.process_credit"] for g in result["configs"]} == {"sum", "min"}
    table = (sweep_dir / "sweep.md").read_text()
    assert "| rank | advantage.process_credit | final_accuracy | final_greedy_accuracy | wall_s | failed |" in table
    assert (sweep_dir / "sweep.png").is_file() and json.loads((sweep_dir / "sweep.json").read_text())["best"]

    # An interruption: trial 1's result is lost (its checkpoints remain), trial 3 died before its
    # first checkpoint (only a partial metrics file is left). The others stay as they are.
    untouched = {p: (p / "summary.json").stat().st_mtime_ns for p in (trials[0], trials[2])}
    (trials[1] / "summary.json").unlink()
    before_resume = len(_iterations(trials[1]))
    import shutil

    shutil.rmtree(trials[3])
    trials[3].mkdir()
    (trials[3] / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "rollout/accuracy": 0.0}) + "\n")

    lines = []
    result = run_sweep(spec, log=lines.append)
    assert any("2 finished before, 2 to run" in line for line in lines), lines
    assert result["counts"]["finished"] == 4
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in untouched} == untouched
    # trial 1 resumed from its last checkpoint (iteration 2): no iteration ran twice
    assert "resuming trial" in (trials[1] / "train.log").read_text()
    assert len(_iterations(trials[1])) == before_resume == 2
    # trial 3 started again: the partial record is gone, both iterations are its own
    assert [r["iteration"] for r in _iterations(trials[3])] == [1, 2]
    assert "advantage/process_abs_mean" in _iterations(trials[3])[0]
