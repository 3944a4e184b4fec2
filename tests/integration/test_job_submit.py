"""The README's cluster path on this machine: `ray start --head`, then
`ray job submit -- repirl train --address auto ...`; the job's run finishes and writes its
summary; a second job resumes the run from its checkpoint and extends it."""

import json
import sys

import pytest

from tests.cluster_helpers import LocalRayCluster
from tests.conftest import TINY_RUN, TINY_WORLD, overrides

pytestmark = pytest.mark.integration


def test_ray_job_submit_runs_training(tiny_world, world_cache, tmp_path):
    run_dir = tmp_path / "job_run"
    args = overrides(TINY_WORLD, TINY_RUN, **{"world.dir": str(world_cache), "run_dir": str(run_dir), "rollout.num_workers": 1})
    with LocalRayCluster(tmp_path / "cluster") as cluster:
        cli = [sys.executable, "-m", "repirl_ray.cli", "train", "--address", "auto"]
        result = cluster.submit([*cli, *args])
        resumed = cluster.submit([*cli, "--resume", str(run_dir), "iterations=3"])
        pids = cluster.pids()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    assert "joined the Ray cluster" in result.stdout
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "iter_000002" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "rollout/accuracy" in r] == [1, 2, 3]
    # Everything the cluster started is gone.
    import psutil

    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {alive}"
