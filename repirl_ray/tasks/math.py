"""Math word problems with a boxed final answer, checked with math-verify.

The policy is asked to put its answer in \\boxed{}; the verifier takes the last box and
compares it with the reference answer symbolically (math-verify), so 1/2, \\frac12 and 0.5
agree. There are no step labels: the paper's math domain has none (ALGORITHM.md section 8).
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

from repirl_ray.tasks.answers import extract_boxed
from repirl_ray.tasks.base import Problem, Task, Verdict

DEFAULT_TEMPLATE = (
    "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
)

# Spacing and sizing commands that do not change an answer, for the string fallback.
_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle")


def normalise_answer(answer: str) -> str:
    """A canonical string form: the fallback comparison and the majority-vote key."""
    s = answer.strip().strip("$")
    for noise in _NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


class MathTask(Task):
    name = "math"

    def __init__(self, template: str = DEFAULT_TEMPLATE, timeout_s: int = 5):
        if "{problem}" not in template:
            raise ValueError(
                f"MathTask template {template!r} has no '{{problem}}' placeholder; add one where "
                f"the problem text goes"
            )
        self.template = template
        self.timeout_s = timeout_s

    def format_prompt(self, problem: Problem) -> str:
        # replace, not str.format: the template's own "\boxed{}" would read as a format field.
        return self.template.replace("{problem}", problem.prompt)

    def verify(self, problem: Problem, response: str) -> Verdict:
        boxed = extract_boxed(response)
        if boxed is None or not boxed.strip():
            return Verdict(correct=False, format_ok=False, answer=None)
        answer = normalise_answer(boxed)
        return Verdict(correct=self._equal(problem.answer, boxed), format_ok=True, answer=answer)

    def _equal(self, gold_text: str, pred_text: str) -> bool:
        if normalise_answer(gold_text) == normalise_answer(pred_text):
            return True
        # math-verify times out with signal.alarm, which raises outside the main thread; a
        # caller verifying from a thread pool gets no timeout rather than an error.
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        gold = parse(f"${gold_text}$", parsing_timeout=timeout)
        pred = parse(f"${pred_text}$", parsing_timeout=timeout)
        if not gold or not pred:  # unparseable: only the string comparison above can match
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
