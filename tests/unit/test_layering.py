"""The import direction of DESIGN.md section 2, checked in fresh interpreters: the learners,
models, tasks and math run without Ray or vLLM; only the rollout engine imports vLLM. And where
Ray is called (actors/, run_setup.py, cli.py, sweep.py only), and the driver's size."""

import ast
import subprocess
import sys
from pathlib import Path

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


# Where Ray is called: the groups in actors/ (which create the actors), run set-up (Ray itself),
# the CLI and the sweep (Tune). The loop, evaluation and checkpoints only call the groups.
PACKAGE = Path(__file__).resolve().parents[2] / "repirl_ray"
RAY_HOMES = ("actors/", "run_setup.py", "cli.py", "sweep.py")


def ray_calls(source: str) -> list[str]:
    """`line: call` of every `.remote(...)`, `ray.get/put/wait(...)` (or get/put/wait imported
    from ray) in a module's source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "ray":
            out += [f"{node.lineno}: from ray import {a.name}" for a in node.names if a.name in ("get", "put", "wait")]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "remote" or (f.attr in ("get", "put", "wait") and isinstance(f.value, ast.Name) and f.value.id == "ray"):
                out.append(f"{node.lineno}: {ast.unparse(f)}(...)")
    return out


def test_the_ray_call_finder_finds_them_and_nothing_else():
    source = "a = ray.get(ref)\nb = w.ping.remote()\nc = f.options(num_returns=2).remote(1)\nd = {}.get('k')\nstore.put(1)\n"
    assert ray_calls(source) == ["1: ray.get(...)", "2: w.ping.remote(...)", "3: f.options(num_returns=2).remote(...)"]
    assert ray_calls("from ray import get, util\n") == ["1: from ray import get"]


def test_ray_is_called_only_in_the_actors_run_setup_cli_and_sweep():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith(RAY_HOMES):
            calls = ray_calls(path.read_text())
            if calls:
                found[rel] = calls
    assert not found, f"Ray calls outside {RAY_HOMES}: move them into a group in actors/: {found}"


def test_the_driver_is_the_loop_and_its_schedule():
    lines = len((PACKAGE / "driver.py").read_text().splitlines())
    assert lines <= 250, f"repirl_ray/driver.py has {lines} lines (at most 250): set-up, evaluation, checkpoints have their homes"
