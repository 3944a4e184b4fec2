"""The import direction of DESIGN.md section 2: the learners, models, tasks and math run without
Ray or vLLM (checked in fresh interpreters); the package's own import graph, read from the
source (imports inside functions included), has no cycle and no import against LAYERS; Ray is
called only in actors/, run_setup.py, cli.py and sweep.py; the driver stays the loop."""

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
    "repirl_ray.data.dataset", "repirl_ray.sandbox",
])
def test_no_ray_and_no_vllm_below_the_actors(module):
    loaded = _loaded(module)
    assert "ray" not in loaded and "vllm" not in loaded


def test_algo_needs_only_torch():
    loaded = _loaded("repirl_ray.algo")
    assert not {"transformers", "ray", "vllm", "datasets"} & loaded


# The rooms of the package from the bottom up: a module may import its own layer and the layers
# below it, never one above (module-top and in-function imports alike). The sandbox sits below
# tasks because the code task's verifier runs programs in it; config sits above tasks because its
# checks name the tasks (reasoning-gym's task list, the step writers); data reads files into the
# tasks' Problems for the models and learners above.
LAYERS = [
    ("algo",),  # the math: torch only
    ("errors", "utils", "batch", "metrics"),
    ("sandbox",),
    ("tasks",),
    ("config",),
    ("data", "threads"),
    ("models",),
    ("rollout", "learners"),
    ("actors",),
    ("world", "run_setup", "evaluation", "checkpoints"),
    ("driver", "assess"),
    ("sweep",),
    ("cli",),
]
PACKAGE = Path(__file__).resolve().parents[2] / "repirl_ray"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement anywhere in the
    file (module top, functions, classes). `from p import name` points at p.name when that is a
    module, else at p."""
    pkg = root.name
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == pkg}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == pkg:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                edges |= subs or {node.module}
                if len(subs) < len(node.names):
                    edges.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{path}:{node.lineno}: relative import; write the absolute module path")
        graph[mod] = edges - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package itself: imports nothing
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return None


def back_arrows(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(mod):
                wrong.append(f"{mod} (layer {layer_of(mod)}) imports {target} (layer {layer_of(target)})")
    return wrong


def test_every_module_has_a_layer():
    unplaced = [m for m in import_graph(PACKAGE) if layer_of(m) is None]
    assert not unplaced, f"modules in no layer of LAYERS (add each where it belongs): {unplaced}"


def test_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_point_down_the_layers():
    assert back_arrows(import_graph(PACKAGE)) == []


def test_the_checks_see_a_cycle_and_a_back_arrow_inside_a_function(tmp_path):
    """The checks above on a package written here: a cycle made by an import inside a function,
    and a tasks module importing a model module."""
    pkg = tmp_path / "repirl_ray"
    for folder, text in {
        "tasks/__init__.py": "",
        "tasks/a.py": "from repirl_ray.tasks import b\n",
        "tasks/b.py": "def f():\n    from repirl_ray.tasks.a import g\n",
        "models/__init__.py": "",
        "models/m.py": "x = 1\n",
        "tasks/c.py": "def h():\n    from repirl_ray.models import m\n",
        "__init__.py": "",
    }.items():
        (pkg / folder).parent.mkdir(parents=True, exist_ok=True)
        (pkg / folder).write_text(text)
    graph = import_graph(pkg)
    assert cycles(graph) == [["repirl_ray.tasks.a", "repirl_ray.tasks.b"]]
    assert back_arrows(graph) == ["repirl_ray.tasks.c (layer 3) imports repirl_ray.models.m (layer 6)"]


# Where Ray is called: the groups in actors/ (which create the actors), run set-up (Ray itself),
# the CLI and the sweep (Tune). The loop, evaluation and checkpoints only call the groups.
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
