"""Placement on a cluster of several nodes, simulated on this machine with ray.cluster_utils.Cluster
(a head and two worker nodes that advertise different custom resources): the rollout workers and
the learner ranks land on the nodes their resources name, and a 2-iteration run completes.

The cluster runs in a subprocess: a process joins one Ray, and the test session's Ray is another."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RUN, TINY_WORLD, overrides

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, os, sys
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from ray.cluster_utils import Cluster
from repirl_ray.config import load_config
from repirl_ray.driver import Trainer

args = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1, resources={"rollout": 2})
cluster.add_node(num_cpus=2, resources={"learner": 4})
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
out = {}
try:
    cfg = load_config(None, args["overrides"] + [f"ray.address={cluster.address}"])
    trainer = Trainer(cfg, args["run_dir"], log_fn=lambda *_: None)
    try:
        summary = trainer.train()
        node_of = lambda a: ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
        by_resource = {}
        for n in ray.nodes():
            for key in ("rollout", "learner"):
                if key in n["Resources"]:
                    by_resource[key] = n["NodeID"]
        out = {
            "iterations": summary["iterations"],
            "rollout_nodes": [node_of(w) for w in trainer.rollout.workers],
            "policy_nodes": [node_of(a) for a in trainer.policy.ranks],
            "prm_nodes": [node_of(a) for a in trainer.prm.ranks],
            "rollout_node": by_resource["rollout"],
            "learner_node": by_resource["learner"],
        }
    finally:
        trainer.shutdown()
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


def test_roles_land_on_the_nodes_their_resources_name(tiny_world, world_cache, tmp_path):
    args = {
        "run_dir": str(tmp_path / "run"),
        "overrides": overrides(TINY_WORLD, TINY_RUN, **{
            "world.dir": str(world_cache), "checkpoint.every": 0, "eval.every": 0,
            "rollout.num_workers": 2, "rollout.resources": "{rollout: 1}",
            "policy.num_workers": 2, "policy.resources": "{learner: 1}",
            "prm.resources": "{learner: 1}",
        }),
    }
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["iterations"] == 2
    assert out["rollout_nodes"] == [out["rollout_node"]] * 2
    assert out["policy_nodes"] == [out["learner_node"]] * 2
    assert out["prm_nodes"] == [out["learner_node"]]
    assert out["rollout_node"] != out["learner_node"]
