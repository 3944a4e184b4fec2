"""Python programming problems (HumanEval style), checked by running the tests in a sandbox.

A problem's prompt is a function signature and docstring; meta holds `entry_point` (the
function's name) and `tests` (code defining `check(candidate)`). The response is either the
rest of the function (HumanEval's completion style) or a ```python fenced block.

The program (prompt + response) is hostile and runs in the sandbox (repirl_ray/sandbox/): with
code.sandbox=bwrap (the default) in Linux namespaces (no network, its own PIDs, a read-only
allow-list of the system, a private work folder in memory, no home, a minimal environment, a
system-call filter, rlimits, one memory bound for the whole run where a cgroup can be made, a
wall-clock timeout); the tests run in a separate judge process that the program cannot reach, and
values cross from the program to the tests only as plain data, so neither exiting early nor
an always-equal object passes. code.sandbox=process runs the same judge as a plain child with
rlimits only (unsafe; for machines without user namespaces). sandbox/runner.py's docstring says why
the verdict cannot be forged.

verify_batch runs code.workers programs at once (threads, each waiting on its sandbox).
"""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor

from repirl_ray.sandbox import Sandbox
from repirl_ray.tasks.base import DataError, Problem, Task, Verdict

# ```python / ```py / ``` fences; an unclosed last fence runs to the end of the text, since
# vLLM leaves the stop string (a closing ```) out of the output.
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


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

    def __init__(self, *, timeout_s: float = 5.0, memory_mb: int = 1024, sandbox: str = "bwrap", workers: int = 2):
        self.sandbox = Sandbox(sandbox, timeout_s=timeout_s, memory_mb=memory_mb)
        self.workers = workers

    def verify(self, problem: Problem, response: str) -> Verdict:
        entry_point, tests = _checked_meta(problem)
        code = extract_code(response, entry_point)
        if code is None:
            return Verdict(correct=False, format_ok=False, answer=None)
        # The prompt goes first either way: it holds the imports the signature needs, and a
        # full function in a fenced block simply redefines the prompt's stub (a signature
        # with only a docstring is a complete function).
        fenced = _FENCE_RE.search(response) is not None
        program = problem.prompt + ("\n" + code if fenced else code)
        result = self.sandbox.run(program, tests, entry_point, prompt=problem.prompt)
        return Verdict(correct=result.passed, format_ok=True, answer=code)

    def verify_batch(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        """verify over the pairs, `workers` sandboxes at a time (threads waiting on subprocesses)."""
        if len(problems) != len(responses):
            raise ValueError(f"verify_batch: {len(problems)} problems but {len(responses)} responses")
        if self.workers <= 1 or len(problems) <= 1:
            return [self.verify(p, r) for p, r in zip(problems, responses)]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="code-verify") as pool:
            return list(pool.map(self.verify, problems, responses))


def _checked_meta(problem: Problem) -> tuple[str, str]:
    """entry_point and tests of a code problem; DataError naming the problem when they cannot
    work (the judge runs the prompt and then the tests, which must define check)."""
    entry_point = problem.meta.get("entry_point")
    tests = problem.meta.get("tests")
    if not isinstance(entry_point, str) or not isinstance(tests, str):
        raise DataError(
            f"code problem {problem.id!r}: meta needs 'entry_point' (the function name) and "
            f"'tests' (code defining check(candidate)) as strings; add them to the data"
        )
    for what, source in (("prompt", problem.prompt), ("tests", tests)):
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise DataError(
                f"code problem {problem.id!r}: the {what} is not valid Python (line {exc.lineno}: {exc.msg}); "
                f"the code task runs prompt + response, and the tests see the prompt's definitions"
            ) from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise DataError(f"code problem {problem.id!r}: the tests define no top-level check(candidate)")
    return entry_point, tests
