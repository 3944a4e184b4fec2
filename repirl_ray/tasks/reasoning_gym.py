"""reasoning-gym tasks: procedural problems generated offline, verified by the task's own scorer.

`data.format=reasoning_gym` generates the train and eval splits with
`reasoning_gym.create_dataset(name, size=, seed=, **config)`; the outcome reward is the task's
`score_answer` on the reply's final answer (1 only for a full score: partial credit is not an
outcome of {0, 1}, ALGORITHM.md section 3).

A reply ends with a line `Answer: <answer>`; the answer is what follows the last `Answer:`
(format_ok), else the last number of the reply (what a model without the format says, so the
base model's accuracy is measured fairly).

Step writers: for chains that evaluate left to right exactly (chain_sum: + and -, products: *),
the expert demo is one line per operation and the answer line, as the built-in world's are, so
step labels are exact:

    4 - 1 = 3
    3 + 7 = 10
    Answer: 10

A step is correct iff its line states the true step at its index (the running value, the
operator, the operand and the result, compared as integers; spaces free). Other tasks get
answer-only demos (`Answer: <answer>`) and no step labels (data.reasoning_gym.steps=false).
"""

from __future__ import annotations

import re
from functools import lru_cache

from repirl_ray.tasks.base import DataError, Problem, StepLabels, Task, Verdict, segment_labels

# Left-to-right chains: the operators each task's expressions may hold.
STEP_WRITERS = {"chain_sum": "+-", "products": "*"}
DEFAULT_TEMPLATE = "{problem}"
STEP_TEMPLATE = (
    "{problem}\nWork it out one operation per line, like `3 + 4 = 7`, then end with the line `Answer: <number>`."
)
MAX_ANSWER_CHARS = 200  # the scorer never sees more of a (hostile) reply than this

_ANSWER_RE = re.compile(r"Answer:[ \t]*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?", re.ASCII)
_STEP_RE = re.compile(r"\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*", re.ASCII)
_TERM_RE = re.compile(r"-?\d+", re.ASCII)
_ANSWER_LINE_RE = re.compile(r"\s*Answer:\s*(-?\d+)\s*", re.ASCII)

Step = tuple[int, str, int, int]  # (running value, operator, operand, result)


@lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    # Here, not at the top: reasoning-gym takes 1.5 s to import (measured, loaded 2-core machine), and
    # config.validate reaches this module whatever the task.
    import reasoning_gym

    return tuple(sorted(reasoning_gym.factory.DATASETS))


def _dataset(name: str, config: dict, size: int, seed: int):
    import reasoning_gym  # here: as in task_names

    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    except (TypeError, ValueError, AssertionError) as err:
        raise DataError(f"config key 'data.reasoning_gym.config': reasoning-gym's {name} rejects {dict(config)} "
                        f"({err}); see its config class for the valid keys") from None


def true_steps(expression: str, operators: str) -> list[Step]:
    """'4 - 1 + 7' -> [(4, '-', 1, 3), (3, '+', 7, 10)]: evaluated left to right, which is exact
    for chains of + and - or of * alone. Raises DataError for anything else."""
    tokens = expression.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(op not in operators for op in tokens[1::2]) \
            or not all(_TERM_RE.fullmatch(t) for t in tokens[0::2]):
        raise DataError(f"expression {expression!r} is not a chain of {' '.join(operators)} over integers; "
                        f"the step writer cannot write it (set data.reasoning_gym.steps=false)")
    value, steps = int(tokens[0]), []
    for op, b in zip(tokens[1::2], map(int, tokens[2::2])):
        result = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append((value, op, b, result))
        value = result
    return steps


def write_steps(steps: list[Step]) -> str:
    return "".join(f"{a} {op} {b} = {c}\n" for a, op, b, c in steps) + f"Answer: {steps[-1][3]}"


def generate(name: str, config: dict, size: int, seed: int, *, steps: bool, prefix: str,
             exclude: frozenset[str] = frozenset()) -> tuple[list[Problem], int]:
    """`size` problems of the task (ids prefix0, prefix1, ...) with their expert demo, none whose
    question is in `exclude`; also returns how many generated problems were left out for that.
    reasoning-gym draws item i from Random(seed + i): splits need seeds at least a split's size
    apart, or they share items."""
    out, left_out = [], 0
    # Up to 4x size draws to replace the left-out ones; fewer than size problems only when the
    # task has too few distinct questions outside `exclude` (the report then counts them).
    dataset = _dataset(name, dict(config), 4 * size if exclude else size, seed)
    for i in range(len(dataset)):
        if len(out) == size:
            break
        entry = dataset[i]
        if entry["question"] in exclude:
            left_out += 1
            continue
        answer = str(entry["answer"])
        meta = {"rg_task": name, "rg_index": i, "rg_metadata": entry.get("metadata", {})}
        if steps:
            chain = true_steps(entry["metadata"]["expression"], STEP_WRITERS[name])
            if str(chain[-1][3]) != answer.strip():
                raise DataError(f"reasoning-gym {name} problem {i}: the chain {entry['metadata']['expression']!r} "
                                f"gives {chain[-1][3]}, the task says {answer!r}")
            demo = write_steps(chain)
        else:
            demo = f"Answer: {answer}"
        out.append(Problem(id=f"{prefix}{len(out)}", prompt=entry["question"], answer=answer, demos=(demo,), meta=meta))
    return out, left_out


def extract_answer(response: str) -> tuple[str | None, bool]:
    """(the final answer, whether it came from an `Answer:` line)."""
    found = _ANSWER_RE.findall(response)
    if found:
        return found[-1].strip()[:MAX_ANSWER_CHARS], True
    numbers = _NUMBER_RE.findall(response[-4 * MAX_ANSWER_CHARS:])
    return (numbers[-1] if numbers else None), False


class ReasoningGymTask(Task):
    """Verifier (the task's own scorer) and, for tasks with a step writer, step labels."""

    name = "reasoning_gym"

    def __init__(self, rg_task: str, config: dict | None = None, steps: bool = True, template: str = ""):
        if rg_task not in task_names():
            raise DataError(f"config key 'data.reasoning_gym.name': {rg_task!r} is not a reasoning-gym task")
        self.rg_task = rg_task
        self.steps = steps and rg_task in STEP_WRITERS
        self.template = template or (STEP_TEMPLATE if self.steps else DEFAULT_TEMPLATE)
        # The scorer is a method of the dataset; one problem is enough to have it.
        self._scorer = _dataset(rg_task, dict(config or {}), 1, 0)

    def format_prompt(self, problem: Problem) -> str:
        return self.template.replace("{problem}", problem.prompt)

    def verify(self, problem: Problem, response: str) -> Verdict:
        answer, format_ok = extract_answer(response)
        if answer is None or not answer:
            return Verdict(correct=False, format_ok=format_ok, answer=None)
        entry = {"question": problem.prompt, "answer": problem.answer, "metadata": problem.meta.get("rg_metadata", {})}
        try:
            score = float(self._scorer.score_answer(answer, entry))
        except Exception:  # noqa: BLE001 - a scorer that chokes on a reply scores it 0, never stops the run
            score = 0.0
        return Verdict(correct=score >= 1.0, format_ok=format_ok, answer=answer)

    def step_labels(self, problem: Problem, response: str) -> StepLabels | None:
        """Lines are the steps (each span keeps its newline), the `Answer:` line the last one. A
        wrong line, an answer given too early, anything after the answer: wrong. When every line
        present is correct but the reply stops early, first_wrong = the number of lines."""
        if not self.steps:
            return None
        steps = true_steps(problem.meta["rg_metadata"]["expression"], STEP_WRITERS[self.rg_task])
        answer = steps[-1][3]

        def correct(i: int, text: str) -> bool:
            if i < len(steps):
                m = _STEP_RE.fullmatch(text)
                return m is not None and (int(m[1]), m[2], int(m[3]), int(m[4])) == steps[i]
            m = _ANSWER_LINE_RE.fullmatch(text)
            return i == len(steps) and m is not None and int(m[1]) == answer

        return segment_labels(response, "\n", correct, len(steps) + 1)
