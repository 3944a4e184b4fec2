"""What every task shares: the problem record, the verifier's verdict, step labels, the Task seam.

A task = problems (prompt + reference answer + expert demos) + an outcome verifier (+ step
labels where the task knows them). Tasks import neither ray nor vllm (DESIGN.md section 2):
they run in any process, and in a unit test. Reading problems from files (this project's JSONL
schema, other layouts, whole splits) is the data room's: repirl_ray/data/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repirl_ray.errors import DataError

__all__ = ["DataError", "Problem", "StepLabels", "Task", "Verdict", "segment_labels"]


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    demos: tuple[str, ...] = ()
    # Anything else the task needs: num_ops (arithmetic), entry_point and tests (code), ...
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    correct: bool  # the outcome reward o in {0, 1} (ALGORITHM.md section 3)
    format_ok: bool  # the answer is in the expected format (the format reward of prm_only mode)
    answer: str | None  # the extracted final answer, what majority vote counts


@dataclass(frozen=True)
class StepLabels:
    # Character [start, end) of each step in the response text, the step's delimiter included,
    # so the spans tile the response from 0 to len(response).
    spans: tuple[tuple[int, int], ...]
    # Index of the first wrong step; None when every step is correct and the solution complete.
    # It may equal len(spans): every step present is correct but the solution stops early.
    first_wrong: int | None


def segment_labels(response: str, delimiter: str, correct, num_segments: int) -> StepLabels:
    """Step labels of a response cut after each `delimiter` (each span keeps its delimiter; the
    spans tile the response). correct(i, text) judges segment i; a complete solution has
    num_segments segments. When every segment present is correct but fewer are present, the first
    missing one is the first wrong step (first_wrong = the number of segments)."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(response):
        end = response.find(delimiter, start)
        end = len(response) if end < 0 else end + len(delimiter)
        spans.append((start, end))
        start = end
    first_wrong = next((i for i, (a, b) in enumerate(spans) if not correct(i, response[a:b])), None)
    if first_wrong is None and len(spans) < num_segments:
        first_wrong = len(spans)
    return StepLabels(spans=tuple(spans), first_wrong=first_wrong)


class Task:
    """The seam between the RL loop and a domain: prompt formatting, the verifier, step labels."""

    name: str = "task"

    def format_prompt(self, problem: Problem) -> str:
        """The text given to the policy."""
        return problem.prompt

    def verify(self, problem: Problem, response: str) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__}.verify")

    def verify_batch(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        """verify for each (problem, response) pair, in order; a task whose verifier waits
        (the code task's sandboxes) overrides it to verify several at once."""
        if len(problems) != len(responses):
            raise ValueError(f"verify_batch: {len(problems)} problems but {len(responses)} responses")
        return [self.verify(p, r) for p, r in zip(problems, responses)]

    def step_labels(self, problem: Problem, response: str) -> StepLabels | None:
        """Ground-truth step labels; None when the task has none (math, code)."""
        return None
