"""The files in cluster/, checked offline with Ray's own config code: no cloud SDK, no
credentials, no network, no Ray started.

Autoscaler YAMLs go through what `ray up` does to a config before it touches a cloud
(ray.autoscaler._private.commands._bootstrap_config): `prepare_config` (merge the provider's
defaults.yaml shipped inside the ray package, merge setup commands, check docker settings,
fill per-node-type min/max workers; for the `local` provider, its head_ip/worker_ips rules) and
then `validate_config` (jsonschema against ray/autoscaler/ray-schema.json, plus the cross-field
checks). The step left out is the provider's own bootstrap_config (boto3 / googleapiclient
calls that need credentials); it is also why every node type lists its resources explicitly
(AWS would otherwise look them up from EC2).

The KubeRay manifest's RayCluster spec goes through the function that Ray's autoscaler runs
inside a KubeRay cluster to read the RayCluster resource
(ray.autoscaler._private.kuberay.autoscaling_config._derive_autoscaling_config_from_ray_cr),
which also ends in validate_config. Runtime envs are built with ray.runtime_env.RuntimeEnv
(validation only, no connection), and the excludes are applied with the directory walk Ray uses
to package a working_dir.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from repirl_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AUTOSCALER_YAMLS = ("aws.yaml", "gcp.yaml", "local.yaml")
CLOUD_YAMLS = ("aws.yaml", "gcp.yaml")
OTHER_YAMLS = ("kuberay-rayjob.yaml", "runtime_env.yaml")
GPU_CONFIGS = ("configs/qwen2.5-3b-math.yaml", "configs/qwen3-4b-code.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def ray_check(config: dict) -> dict:
    """prepare_config + validate_config, as `ray up` runs them; returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_demand(path: str) -> dict:
    cfg = load_config(str(ROOT / path))
    return {
        "rollout_gpus": cfg.rollout.num_workers * cfg.rollout.num_gpus,
        "rollout_cpus": cfg.rollout.num_cpus,
        "rollout_gpus_per_worker": cfg.rollout.num_gpus,
        "learner_gpus": cfg.policy.num_workers * cfg.policy.num_gpus + cfg.prm.num_workers * cfg.prm.num_gpus,
        "learner_cpus": max(cfg.policy.num_cpus, cfg.prm.num_cpus),
        "learner_gpus_per_actor": max(cfg.policy.num_gpus, cfg.prm.num_gpus),
    }


def test_every_yaml_in_cluster_is_checked_here():
    found = {p.name for p in CLUSTER.glob("*.y*ml")}
    assert found == set(AUTOSCALER_YAMLS) | set(OTHER_YAMLS)


# --------------------------------------------------------------------------------------------
# Autoscaler YAMLs


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_passes_ray_validation(name):
    prepared = ray_check(load(name))
    assert prepared["provider"]["type"] == name.split(".")[0]
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_syncs_and_installs_the_project(name):
    cfg = load(name)
    assert "." in cfg["file_mounts"].values(), "the checkout is not synced to the nodes"
    remote = next(r for r, local in cfg["file_mounts"].items() if local == ".")
    setup = " ; ".join(cfg["setup_commands"])
    assert 'pip install' in setup and '-e ".[gpu]"' in setup, "the project is not installed with the gpu extra"
    assert remote in setup, f"setup_commands do not install from the synced folder {remote}"
    for heavy in (".venv", "runs", "*.safetensors"):
        assert heavy in cfg["rsync_exclude"], f"{heavy} would be synced to every node"
    assert 1 <= cfg["idle_timeout_minutes"] <= 60
    starts = " ; ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert "--head" in starts and "--autoscaling-config=~/ray_bootstrap_config.yaml" in starts
    assert "$RAY_HEAD_IP:6379" in starts


@pytest.mark.parametrize("name", CLOUD_YAMLS)
def test_cloud_node_types_have_role_resources_and_fit_the_gpu_configs(name):
    cfg = load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    rollout, learner = types["rollout"], types["learner"]
    assert rollout["resources"]["rollout"] >= 1 and rollout["resources"]["GPU"] >= 1
    assert learner["resources"]["learner"] >= 1 and learner["resources"]["GPU"] >= 1
    assert "learner" not in rollout["resources"] and "rollout" not in learner["resources"]
    assert rollout["max_workers"] + learner["max_workers"] <= cfg["max_workers"]
    for path in GPU_CONFIGS:
        need = gpu_demand(path)
        assert rollout["max_workers"] * rollout["resources"]["GPU"] >= need["rollout_gpus"], path
        assert rollout["resources"]["GPU"] >= need["rollout_gpus_per_worker"], path
        assert rollout["resources"]["CPU"] >= need["rollout_cpus"], path
        assert learner["max_workers"] * learner["resources"]["GPU"] >= need["learner_gpus"], path
        assert learner["resources"]["GPU"] >= need["learner_gpus_per_actor"], path
        assert learner["resources"]["CPU"] >= need["learner_cpus"], path
        # The whole run placed on the cluster at its size, as the YAML's comments say to run it
        # (one GPU per learner node: the learner ranks spread over the nodes).
        from repirl_ray.run_setup import check_fits, role_demands

        run = load_config(str(ROOT / path), ["rollout.resources={rollout: 1}", "policy.resources={learner: 1}",
                                             "prm.resources={learner: 1}", "policy.placement=spread", "prm.placement=spread"])
        nodes = ([{k: float(v) for k, v in rollout["resources"].items()}] * rollout["max_workers"]
                 + [{k: float(v) for k, v in learner["resources"].items()}] * learner["max_workers"])
        check_fits(role_demands(run), nodes, {"policy": False, "prm": False})
        assert "policy.placement=spread" in (CLUSTER / name).read_text()


def test_local_yaml_lists_machines_and_labels_roles_by_ip():
    cfg = load("local.yaml")
    assert "available_node_types" not in cfg, "the local provider rejects node types"
    provider = cfg["provider"]
    assert isinstance(provider["head_ip"], str) and provider["worker_ips"]
    assert cfg["max_workers"] == len(provider["worker_ips"])
    start = cfg["worker_start_ray_commands"][-1]
    learner_ips = re.search(r'LEARNER_IPS="([^"]*)"', start).group(1).split()
    assert learner_ips and set(learner_ips) <= set(provider["worker_ips"])
    assert "--resources=" in start and "ROLE=rollout" in start and "ROLE=learner" in start
    # What the worker start command passes to `ray start` is valid JSON for both roles.
    quoted = re.search(r"--resources=(\S.*)$", start.strip()).group(1)
    for role in ("rollout", "learner"):
        (rendered,) = shlex.split(quoted.replace("$ROLE", role).replace("$NGPU", "2"))
        assert json.loads(rendered) == {role: 2}


def _misspelled_top_level_key(cfg):
    cfg["max_worker"] = cfg.pop("max_workers")


def _node_type_without_resources(cfg):
    del cfg["available_node_types"]["rollout"]["resources"]


def _node_type_without_node_config(cfg):
    del cfg["available_node_types"]["learner"]["node_config"]


def _max_workers_as_string(cfg):
    cfg["max_workers"] = "8"


def _fractional_custom_resource(cfg):
    cfg["available_node_types"]["rollout"]["resources"]["rollout"] = 0.5


def _unknown_head_node_type(cfg):
    cfg["head_node_type"] = "ray.head.default"


def _min_workers_over_max_workers(cfg):
    cfg["available_node_types"]["rollout"]["min_workers"] = cfg["max_workers"] + 1


BREAKAGES = {
    _misspelled_top_level_key: "schema",
    _node_type_without_resources: "schema",
    _node_type_without_node_config: "schema",
    _max_workers_as_string: "schema",
    _fractional_custom_resource: "schema",
    _unknown_head_node_type: "value",
    _min_workers_over_max_workers: "value",
}


@pytest.mark.parametrize("name", CLOUD_YAMLS)
@pytest.mark.parametrize("breakage", list(BREAKAGES), ids=lambda f: f.__name__.strip("_"))
def test_broken_copy_is_rejected(name, breakage):
    import jsonschema

    cfg = load(name)
    breakage(cfg)
    expected = jsonschema.ValidationError if BREAKAGES[breakage] == "schema" else ValueError
    with pytest.raises(expected):
        ray_check(cfg)


@pytest.mark.parametrize("breakage", ["node_types", "no_worker_ips", "misspelled_key"])
def test_broken_local_copy_is_rejected(breakage):
    import click
    import jsonschema

    cfg = load("local.yaml")
    if breakage == "node_types":
        cfg["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    elif breakage == "no_worker_ips":
        del cfg["provider"]["worker_ips"]
    else:
        cfg["idle_timeout_minute"] = cfg.pop("idle_timeout_minutes")
    with pytest.raises((click.ClickException, jsonschema.ValidationError)):
        ray_check(cfg)


# --------------------------------------------------------------------------------------------
# KubeRay RayJob


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_rayjob_has_the_fields_kuberay_requires():
    job = load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"]), "not a DNS-1123 name"
    spec = job["spec"]
    assert "repirl train" in spec["entrypoint"] and "--address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert _containers(head)[0]["image"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"rollout", "learner"}
    for group in [head, *groups.values()]:
        # rayStartParams is a map of strings in the CRD: a bare number is rejected.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        res = _containers(group)[0]["resources"]
        assert int(res["limits"]["nvidia.com/gpu"]) >= 1, f"{name}: no GPU limit"
        # Kubernetes needs an extended resource's request (if given) to equal its limit.
        assert res["requests"].get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"]) == res["limits"]["nvidia.com/gpu"]
        assert "cpu" in res["limits"] and "memory" in res["limits"]
        assert _containers(group)[0]["image"] == _containers(head)[0]["image"]


def test_kuberay_cluster_spec_is_read_by_rays_kuberay_autoscaler_code():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    job = load("kuberay-rayjob.yaml")
    ray_cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": job["metadata"]["name"], "namespace": "default"},
        "spec": job["spec"]["rayClusterSpec"],
    }
    types = _derive_autoscaling_config_from_ray_cr(ray_cluster)["available_node_types"]
    assert types["rollout"]["resources"]["rollout"] == 1 and types["rollout"]["resources"]["GPU"] == 1
    assert types["learner"]["resources"]["learner"] == 1 and types["learner"]["resources"]["GPU"] == 1
    assert types["headgroup"]["resources"]["CPU"] == 0 and "GPU" not in types["headgroup"]["resources"]

    # The cluster holds the run the entrypoint starts.
    config = re.search(r"--config\s+(\S+)", job["spec"]["entrypoint"]).group(1)
    assert config in GPU_CONFIGS
    need = gpu_demand(config)
    rollout, learner = types["rollout"], types["learner"]
    assert rollout["max_workers"] * rollout["resources"]["GPU"] >= need["rollout_gpus"]
    assert rollout["resources"]["CPU"] >= need["rollout_cpus"]
    assert learner["max_workers"] * learner["resources"]["GPU"] >= need["learner_gpus"]
    assert learner["resources"]["CPU"] >= need["learner_cpus"]


def test_kuberay_entrypoint_overrides_and_shared_volume_agree():
    job = load("kuberay-rayjob.yaml")
    entry = job["spec"]["entrypoint"]
    overrides = [a for a in entry.split() if "=" in a and not a.startswith("-")]
    config = re.search(r"--config\s+(\S+)", entry).group(1)
    cfg = load_config(str(ROOT / config), overrides)  # the overrides are real config keys
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    mounts = [{m["mountPath"] for m in _containers(g)[0]["volumeMounts"]} for g in groups]
    shared = set.intersection(*mounts) - {"/dev/shm"}
    assert shared, "no volume is mounted at the same path in every pod"
    assert any(cfg.run_dir.startswith(m + "/") for m in shared), "run_dir is not on the shared volume"


def test_kuberay_runtime_env_matches_the_image():
    from ray.runtime_env import RuntimeEnv

    job = load("kuberay-rayjob.yaml")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert env["working_dir"] == workdir, "working_dir is the project's folder inside the image"
    # The folder exists only inside the image; the rest is checked by Ray here.
    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"})
    dockerfile_ray = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == dockerfile_ray
    for name in CLOUD_YAMLS:
        assert load(name)["docker"]["image"].startswith(f"rayproject/ray:{dockerfile_ray}-"), name


# --------------------------------------------------------------------------------------------
# runtime_env.yaml


def test_runtime_env_is_accepted_by_ray(monkeypatch):
    from ray.runtime_env import RuntimeEnv

    monkeypatch.chdir(ROOT)  # `ray job submit` runs from the repo root; working_dir "." is checked to exist
    env = load("runtime_env.yaml")
    runtime_env = RuntimeEnv(**env)
    assert runtime_env["working_dir"] == "."
    assert runtime_env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 600


def test_runtime_env_excludes_leave_heavy_files_behind(tmp_path):
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    env = load("runtime_env.yaml")
    kept = [
        "pyproject.toml", "repirl_ray/driver.py", "configs/qwen2.5-3b-math.yaml",
        "cluster/runtime_env.yaml", "data/math_train.jsonl",
    ]
    dropped = [
        ".venv/bin/python", ".git/HEAD", "runs/r1/metrics.jsonl",
        "runs/r1/checkpoints/iter_000010/policy/model.safetensors", "elsewhere/checkpoints/iter_1/state.json",
        "model.safetensors", "pytorch_model.bin", "optimizer.pt", "data/raw/big.jsonl",
        "data/train.parquet", "datasets/math/x.jsonl", ".cache/repirl_ray/world/model.json",
        "repirl_ray/__pycache__/driver.cpython-311.pyc",
    ]
    for rel in kept + dropped:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    packaged: list[str] = []

    def collect(path: Path) -> None:
        if path.is_file():
            packaged.append(path.relative_to(tmp_path).as_posix())

    _dir_travel(tmp_path, [_get_excludes(tmp_path, env["excludes"])], collect, include_gitignore=True)
    assert sorted(packaged) == sorted(kept)
