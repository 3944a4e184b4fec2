"""Tasks: problems + expert demos + an outcome verifier (+ step labels where known).

No ray, no vllm here (DESIGN.md section 2). The math and code tasks are imported only when
built, so the arithmetic world does not pay for math-verify's sympy import.

Data: tasks/formats.py turns dataset layouts (this project's JSONL, GSM8K, MATH, HumanEval, a
field mapping) into Problems; tasks/dataset.py reads a whole split as a run uses it (demos from
their own file, prompt lengths, a report of everything rejected or dropped).
"""

from repirl_ray.tasks.arithmetic import ArithmeticSpec, ArithmeticTask
from repirl_ray.tasks.base import (
    DataError,
    Problem,
    StepLabels,
    Task,
    Verdict,
    load_problems,
    write_jsonl,
)

TASK_NAMES = ("arithmetic", "math", "code", "reasoning_gym")


def build_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with its own keyword arguments."""
    if name == "arithmetic":
        return ArithmeticTask(**kwargs)
    elif name == "math":
        from repirl_ray.tasks.math import MathTask

        return MathTask(**kwargs)
    elif name == "code":
        from repirl_ray.tasks.code import CodeTask

        return CodeTask(**kwargs)
    elif name == "reasoning_gym":
        from repirl_ray.tasks.reasoning_gym import ReasoningGymTask

        return ReasoningGymTask(**kwargs)
    raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")


__all__ = [
    "ArithmeticSpec",
    "ArithmeticTask",
    "DataError",
    "Problem",
    "StepLabels",
    "Task",
    "Verdict",
    "build_task",
    "load_problems",
    "write_jsonl",
]
