"""Tasks: problems + expert demos + an outcome verifier (+ step labels where known).

No ray, no vllm here (DESIGN.md section 2). base.py: the problem record, the verdict, step
labels, the Task seam; answers.py: the boxed final answer; one module per task (arithmetic,
math, code, reasoning_gym). Reading problems from files is the data room's (repirl_ray/data/);
the code task's programs run in the sandbox (repirl_ray/sandbox/).
"""

from repirl_ray.tasks.arithmetic import ArithmeticSpec, ArithmeticTask
from repirl_ray.tasks.base import DataError, Problem, StepLabels, Task, Verdict
from repirl_ray.tasks.code import CodeTask
from repirl_ray.tasks.reasoning_gym import ReasoningGymTask

TASK_NAMES = ("arithmetic", "math", "code", "reasoning_gym")


def build_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with its own keyword arguments."""
    if name == "arithmetic":
        return ArithmeticTask(**kwargs)
    elif name == "math":
        # Here, not at the top: math-verify imports sympy (0.6 s measured on a loaded 2-core machine), which only the math task needs.
        from repirl_ray.tasks.math import MathTask

        return MathTask(**kwargs)
    elif name == "code":
        return CodeTask(**kwargs)
    elif name == "reasoning_gym":
        return ReasoningGymTask(**kwargs)
    raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")


__all__ = [
    "TASK_NAMES",
    "ArithmeticSpec",
    "ArithmeticTask",
    "CodeTask",
    "DataError",
    "Problem",
    "ReasoningGymTask",
    "StepLabels",
    "Task",
    "Verdict",
    "build_task",
]
