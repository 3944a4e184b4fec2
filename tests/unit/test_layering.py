"""The import direction of DESIGN.md section 2, checked in fresh interpreters: the learners,
models, tasks and math run without Ray or vLLM; only the rollout engine imports vLLM."""

import subprocess
import sys

import pytest


def _loaded(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", [
    "repirl_ray.algo", "repirl_ray.learners.policy", "repirl_ray.learners.prm", "repirl_ray.models.prm",
    "repirl_ray.tasks", "repirl_ray.rollout.worker", "repirl_ray.evaluation", "repirl_ray.config",
])
def test_no_ray_and_no_vllm_below_the_actors(module):
    loaded = _loaded(module)
    assert "ray" not in loaded and "vllm" not in loaded


def test_algo_needs_only_torch():
    loaded = _loaded("repirl_ray.algo")
    assert not {"transformers", "ray", "vllm", "datasets"} & loaded
