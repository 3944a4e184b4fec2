"""Programs per second the code sandbox verifies: HumanEval's 164 canonical solutions, with
code.workers 1 and 2 under bwrap, against the sandbox of an earlier revision (--old-rev: by
default the one before the system-call filter, the per-run cgroup and the allow-list view,
loaded from git) and the unsafe `process` mode (same judge, no namespaces), all in one
invocation. Each setting verifies the 164 programs --rounds times (one CodeTask.verify_batch
call per round, as a rollout worker does); the table gives the median round.

    .venv/bin/python benchmarks/sandbox.py              # about 6 minutes on a busy 2-core machine
    .venv/bin/python benchmarks/sandbox.py --rounds 1

Writes benchmarks/results/sandbox.md and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repirl_ray.data.reading import load_humaneval  # noqa: E402
from repirl_ray.tasks.code import CodeTask  # noqa: E402

OLD_REV = "a24c683"  # the last revision with the sandbox of rlimits, a read-only / and a hide-list
SETTINGS = {  # name -> (CodeTask keyword arguments, whether it runs the old revision's sandbox)
    "process, workers=1 (unsafe)": ({"sandbox": "process", "workers": 1}, False),
    "process, workers=2 (unsafe)": ({"sandbox": "process", "workers": 2}, False),
    "bwrap of --old-rev, workers=1": ({"sandbox": "bwrap", "workers": 1}, True),
    "bwrap of --old-rev, workers=2": ({"sandbox": "bwrap", "workers": 2}, True),
    "bwrap, workers=1": ({"sandbox": "bwrap", "workers": 1}, False),
    "bwrap, workers=2 (default)": ({"sandbox": "bwrap", "workers": 2}, False),
}
BASELINE = {"bwrap, workers=1": "bwrap of --old-rev, workers=1", "bwrap, workers=2 (default)": "bwrap of --old-rev, workers=2"}


def old_sandbox_class(rev: str, folder: str):
    """The Sandbox class of repirl_ray/tasks/sandbox.py (its path before repirl_ray/sandbox/) at `rev`,
    imported from a copy."""
    source = subprocess.run(["git", "show", f"{rev}:repirl_ray/tasks/sandbox.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(folder) / "sandbox_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sandbox_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_old"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.Sandbox


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision whose sandbox is the old configuration")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sandbox.md"))
    args = parser.parse_args(argv)
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    problems = load_humaneval()
    responses = [p.demos[0] for p in problems]
    print(f"sandbox: {len(problems)} HumanEval canonical solutions x {args.rounds} rounds x {len(SETTINGS)} settings; {machine}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        old_sandbox = old_sandbox_class(args.old_rev, tmp)
    tasks = {}
    for name, (kwargs, old) in SETTINGS.items():
        tasks[name] = CodeTask(timeout_s=10.0, memory_mb=1024, **kwargs)
        if old:
            tasks[name].sandbox = old_sandbox(kwargs["sandbox"], timeout_s=10.0, memory_mb=1024)
    seconds = {name: [] for name in SETTINGS}
    passed = {name: [] for name in SETTINGS}
    for r in range(args.rounds):  # settings take turns within a round: drift of a shared machine hits all alike
        for name, task in tasks.items():
            t0 = time.perf_counter()
            verdicts = task.verify_batch(problems, responses)
            seconds[name].append(time.perf_counter() - t0)
            passed[name].append(sum(v.correct for v in verdicts))
            print(f"  round {r + 1}, {name}: {len(problems) / seconds[name][-1]:.1f} programs/s, "
                  f"{passed[name][-1]}/{len(problems)} passed", flush=True)
    results = {name: (statistics.median(seconds[name]), min(passed[name])) for name in SETTINGS}
    lines = [
        f"# Code sandbox throughput ({machine})",
        "",
        f"Command: `python benchmarks/sandbox.py --rounds {args.rounds}`. HumanEval's {len(problems)} canonical "
        f"solutions, one verify_batch call per round, median round; `--old-rev` is {args.old_rev} (rlimits, a "
        "read-only / with a hide-list, no system-call filter, no cgroup). The ratio is to the old sandbox with "
        "the same workers, measured in the same invocation.",
        "",
        "| setting | programs/s | ms per program | passed | ratio to --old-rev |",
        "|---|---|---|---|---|",
    ]
    for name, (secs, ok) in results.items():
        rate = len(problems) / secs
        ratio = f"{rate / (len(problems) / results[BASELINE[name]][0]):.2f}" if name in BASELINE else ""
        lines.append(f"| {name} | {rate:.1f} | {1000 * secs / len(problems):.0f} | {ok}/{len(problems)} | {ratio} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
