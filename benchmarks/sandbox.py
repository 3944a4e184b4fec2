"""Programs per second the code sandbox verifies: HumanEval's 164 canonical solutions, with
code.workers 1 and 2 under bwrap, and the unsafe `process` mode (same judge, no namespaces) as
the baseline, all in one invocation. Each setting verifies the 164 programs --rounds times
(one CodeTask.verify_batch call per round, as a rollout worker does); the table gives the
median round.

    .venv/bin/python benchmarks/sandbox.py              # about 4 minutes on a busy 2-core machine
    .venv/bin/python benchmarks/sandbox.py --rounds 1

Writes benchmarks/results/sandbox.md and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repirl_ray.tasks.code import CodeTask, load_humaneval  # noqa: E402

SETTINGS = {  # name -> CodeTask keyword arguments; the first is the baseline of the ratio
    "process, workers=1 (baseline, unsafe)": {"sandbox": "process", "workers": 1},
    "process, workers=2 (unsafe)": {"sandbox": "process", "workers": 2},
    "bwrap, workers=1": {"sandbox": "bwrap", "workers": 1},
    "bwrap, workers=2 (default)": {"sandbox": "bwrap", "workers": 2},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sandbox.md"))
    args = parser.parse_args(argv)
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    problems = load_humaneval()
    responses = [p.demos[0] for p in problems]
    print(f"sandbox: {len(problems)} HumanEval canonical solutions x {args.rounds} rounds x {len(SETTINGS)} settings; {machine}", flush=True)
    results = {}
    for name, kwargs in SETTINGS.items():
        task = CodeTask(timeout_s=10.0, memory_mb=1024, **kwargs)
        seconds, passed = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            verdicts = task.verify_batch(problems, responses)
            seconds.append(time.perf_counter() - t0)
            passed.append(sum(v.correct for v in verdicts))
        results[name] = (statistics.median(seconds), min(passed))
        print(f"  {name}: {len(problems) / results[name][0]:.1f} programs/s, {min(passed)}/{len(problems)} passed", flush=True)
    base = len(problems) / results[next(iter(SETTINGS))][0]
    lines = [
        f"# Code sandbox throughput ({machine})",
        "",
        f"Command: `python benchmarks/sandbox.py --rounds {args.rounds}`. HumanEval's {len(problems)} canonical "
        "solutions, one verify_batch call per round, median round; ratio to the process-mode baseline "
        "measured in the same invocation.",
        "",
        "| setting | programs/s | ms per program | passed | ratio to baseline |",
        "|---|---|---|---|---|",
    ]
    for name, (secs, ok) in results.items():
        rate = len(problems) / secs
        lines.append(f"| {name} | {rate:.1f} | {1000 * secs / len(problems):.0f} | {ok}/{len(problems)} | {rate / base:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
