"""The built-in world: arithmetic chains with ground-truth step labels (DESIGN.md section 4).

Prompt `7+5*8-5:` = start 7, then +5, *8, -5, evaluated left to right (no precedence), every
intermediate result taken mod 100 (so 3-5 gives 98). The correct response writes one step per
operation and then the answer:

    7+5=12;12*8=96;96-5=91;#91

Every step can be checked, so the first wrong step of any sample is known; that is what
measures a PRM (step AUROC) without the PRM ever seeing a step label.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from repirl_ray.tasks.base import DataError, Problem, StepLabels, Task, Verdict, segment_labels

OPS = "+-*"
# re.ASCII: \d would otherwise match any Unicode digit, which int() also reads.
_PROMPT_RE = re.compile(r"(\d+)((?:[+\-*]\d+)+):", re.ASCII)
_OP_RE = re.compile(r"([+\-*])(\d+)", re.ASCII)
# The whole response: one `a op b = c;` per step, then `#answer`.
_RESPONSE_RE = re.compile(r"(\d+[+\-*]\d+=\d+;)+#\d+", re.ASCII)
_STEP_RE = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)", re.ASCII)
_ANSWER_RE = re.compile(r"#(\d+)", re.ASCII)
_NUMBER_RE = re.compile(r"[0-9]+", re.ASCII)

Chain = tuple[int, list[tuple[str, int]]]  # (start, [(op, operand), ...])


@dataclass(frozen=True)
class ArithmeticSpec:
    """Difficulty of the generated chains; the defaults are DESIGN.md section 4's world."""

    min_ops: int = 2
    max_ops: int = 4
    max_start: int = 9  # start drawn from 1..max_start
    max_operand: int = 9  # operands drawn from 1..max_operand
    modulus: int = 100  # every intermediate result is taken mod this

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(
                f"ArithmeticSpec: need 1 <= min_ops <= max_ops, got min_ops={self.min_ops}, "
                f"max_ops={self.max_ops}"
            )
        if self.max_start < 1 or self.max_operand < 1 or self.modulus < 2:
            raise ValueError(
                f"ArithmeticSpec: need max_start >= 1, max_operand >= 1, modulus >= 2, got "
                f"{self.max_start}, {self.max_operand}, {self.modulus}"
            )


# The hard split of the early-signal experiment (ALGORITHM.md section 7): longer chains, which
# a policy warmed up on 2-4 operations rarely solves.
HARD_SPEC = ArithmeticSpec(min_ops=5, max_ops=6)


def parse_prompt(prompt: str) -> Chain:
    """`7+5*8-5:` -> (7, [("+", 5), ("*", 8), ("-", 5)])."""
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise DataError(
            f"arithmetic prompt {prompt!r} is malformed: expected a start number, one or more "
            f"operations +N, -N or *N, then ':' (e.g. '7+5*8-5:')"
        )
    ops = [(op, int(b)) for op, b in _OP_RE.findall(m.group(2))]
    return int(m.group(1)), ops


def _apply(a: int, op: str, b: int, modulus: int) -> int:
    # Python's % is non-negative for a positive modulus: (3 - 5) % 100 == 98.
    if op == "+":
        return (a + b) % modulus
    if op == "-":
        return (a - b) % modulus
    return (a * b) % modulus


def _true_steps(chain: Chain, modulus: int) -> list[tuple[int, str, int, int]]:
    """[(lhs, op, operand, result), ...] of the correct solution."""
    start, ops = chain
    value, steps = start % modulus, []
    for op, b in ops:
        result = _apply(value, op, b, modulus)
        steps.append((value, op, b, result))
        value = result
    return steps


def _as_chain(problem_or_chain: Problem | str | Chain) -> Chain:
    if isinstance(problem_or_chain, Problem):
        return parse_prompt(problem_or_chain.prompt)
    if isinstance(problem_or_chain, str):
        return parse_prompt(problem_or_chain)
    return problem_or_chain


def _format(steps: list[tuple[int, str, int, int]]) -> str:
    return "".join(f"{a}{op}{b}={c};" for a, op, b, c in steps) + f"#{steps[-1][3]}"


def solve(problem_or_chain: Problem | str | Chain, modulus: int = 100) -> str:
    """The correct solution text of a Problem, a prompt string or a (start, ops) chain."""
    return _format(_true_steps(_as_chain(problem_or_chain), modulus))


def generate_problem(rng: random.Random, spec: ArithmeticSpec, id: str) -> Problem:
    start = rng.randint(1, spec.max_start)
    n = rng.randint(spec.min_ops, spec.max_ops)
    ops = [(rng.choice(OPS), rng.randint(1, spec.max_operand)) for _ in range(n)]
    steps = _true_steps((start, ops), spec.modulus)
    prompt = f"{start}" + "".join(f"{op}{b}" for op, b in ops) + ":"
    return Problem(
        id=id,
        prompt=prompt,
        answer=str(steps[-1][3]),
        demos=(_format(steps),),
        # ops as "+5" strings: a list mixing str and int cannot be stored in Arrow/parquet.
        meta={"num_ops": n, "start": start, "ops": [f"{op}{b}" for op, b in ops]},
    )


def noisy_solution(
    rng: random.Random,
    problem: Problem,
    spec: ArithmeticSpec = ArithmeticSpec(),
    step_error_prob: float = 0.2,
    max_error: int = 3,
) -> str:
    """A solution with carried-forward mistakes: the warm-up data of the base policy.

    Each step's result is off by +-1..max_error with probability step_error_prob; the next
    step starts from the wrong value and computes correctly from it, and the final answer is
    the last (possibly wrong) value. All mod spec.modulus.
    """
    if not 0.0 <= step_error_prob <= 1.0:
        raise ValueError(
            f"noisy_solution: step_error_prob must lie in [0, 1], got {step_error_prob}"
        )
    if not 1 <= max_error < spec.modulus:
        # An error that is a multiple of the modulus would vanish and the step be right after all.
        raise ValueError(
            f"noisy_solution: need 1 <= max_error < modulus ({spec.modulus}), got {max_error}"
        )
    start, ops = parse_prompt(problem.prompt)
    value, steps = start % spec.modulus, []
    for op, b in ops:
        result = _apply(value, op, b, spec.modulus)
        if rng.random() < step_error_prob:
            result = (result + rng.choice((-1, 1)) * rng.randint(1, max_error)) % spec.modulus
        steps.append((value, op, b, result))
        value = result
    return _format(steps)


def num_distinct_prompts(spec: ArithmeticSpec) -> int:
    """How many different prompts the spec can produce (an upper bound for a split's size)."""
    per_op = len(OPS) * spec.max_operand
    return spec.max_start * sum(per_op**k for k in range(spec.min_ops, spec.max_ops + 1))


def _draw(
    rng: random.Random,
    n: int,
    spec: ArithmeticSpec,
    exclude: set[str] | frozenset[str],
    prefix: str,
) -> tuple[list[Problem], int]:
    """n problems with distinct prompts, none in `exclude`; also returns how many were excluded."""
    if n > num_distinct_prompts(spec):
        raise ValueError(
            f"asked for {n} distinct problems but the spec {spec} allows only "
            f"{num_distinct_prompts(spec)}; lower n or widen the spec"
        )
    problems: list[Problem] = []
    seen: set[str] = set()
    excluded = tries = 0
    while len(problems) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(
                f"found only {len(problems)} of {n} new distinct problems after {tries - 1} draws "
                f"({excluded} excluded as seen in another split); lower n or widen the spec {spec}"
            )
        p = generate_problem(rng, spec, f"{prefix}{len(problems)}")
        if p.prompt in exclude:
            excluded += 1
        elif p.prompt not in seen:
            seen.add(p.prompt)
            problems.append(p)
    return problems, excluded


def make_split(
    seed: int | str,
    n: int,
    spec: ArithmeticSpec = ArithmeticSpec(),
    *,
    exclude: set[str] | frozenset[str] = frozenset(),
    prefix: str = "",
) -> list[Problem]:
    """n problems with distinct prompts, none in `exclude`; the same for the same seed."""
    return _draw(random.Random(seed), n, spec, exclude, prefix)[0]


@dataclass(frozen=True)
class Splits:
    train: list[Problem]
    eval: list[Problem]
    hard: list[Problem]
    # Draws rejected per split because the prompt was already in an earlier split.
    excluded: dict[str, int] = field(default_factory=dict)


def make_splits(
    seed: int,
    n_train: int,
    n_eval: int,
    n_hard: int = 0,
    spec: ArithmeticSpec = ArithmeticSpec(),
    hard_spec: ArithmeticSpec = HARD_SPEC,
) -> Splits:
    """Train / eval / hard-eval splits with no prompt in two of them.

    Eval is drawn first and hard second, each excluding the prompts before it, then train
    excluding both: the held-out sets do not depend on n_train, so runs that differ only in
    training size are evaluated on the same prompts. Each split has its own random stream,
    seeded with a string ("0/eval"): Python hashes string seeds with SHA-512, so the splits
    are the same in every process whatever PYTHONHASHSEED is.
    """
    eval_, _ = _draw(random.Random(f"{seed}/eval"), n_eval, spec, frozenset(), "eval-")
    taken = {p.prompt for p in eval_}
    hard, hard_excluded = _draw(random.Random(f"{seed}/hard"), n_hard, hard_spec, taken, "hard-")
    taken |= {p.prompt for p in hard}
    train, train_excluded = _draw(random.Random(f"{seed}/train"), n_train, spec, taken, "train-")
    return Splits(train, eval_, hard, {"hard": hard_excluded, "train": train_excluded})


class ArithmeticTask(Task):
    """Verifier and step labels of the arithmetic world.

    Steps are compared as canonical text with the true step at the same index: same left-hand
    value, op, operand and result, written `a op b=c` with no spaces or leading zeros.
    """

    name = "arithmetic"

    def __init__(self, spec: ArithmeticSpec | None = None):
        self.spec = spec or ArithmeticSpec()

    def verify(self, problem: Problem, response: str) -> Verdict:
        # The outcome looks only at the answer: a right answer reached through a wrong step
        # still counts as correct, as an outcome verifier cannot see the steps. No whitespace
        # is accepted anywhere (the grammar has none), so verify and step_labels agree.
        format_ok = _RESPONSE_RE.fullmatch(response) is not None
        hash_at = response.rfind("#")
        text = response[hash_at + 1 :] if hash_at >= 0 else ""
        if not _NUMBER_RE.fullmatch(text):
            return Verdict(correct=False, format_ok=format_ok, answer=None)
        answer = str(int(text))  # "091" and "91" are the same vote
        correct = answer == str(int(problem.answer))
        return Verdict(correct=correct, format_ok=format_ok, answer=answer)

    def step_labels(self, problem: Problem, response: str) -> StepLabels:
        """Segments split at ';' (each span keeps its ';'), the final `#answer` the last step.

        A segment is correct iff it states the true step at its index (same left-hand value,
        op, operand and result, compared as numbers, as verify compares the answer). Wrong:
        malformed, a wrong value, an answer given too early, and an answer followed by
        anything (';' or more steps), which verify cannot read as an answer either. When every
        segment present is correct but the solution stops early, first_wrong = the number of
        segments (the first missing one).
        """
        steps = _true_steps(parse_prompt(problem.prompt), self.spec.modulus)
        answer = steps[-1][3]
        if str(answer) != problem.answer.strip():
            raise DataError(
                f"arithmetic problem {problem.id!r}: answer {problem.answer!r} is not the chain "
                f"{problem.prompt!r} evaluated mod {self.spec.modulus} ({answer}); give the "
                f"task the modulus the data was generated with"
            )

        def correct(i: int, text: str) -> bool:
            if i < len(steps):
                m = _STEP_RE.fullmatch(text[:-1]) if text.endswith(";") else None
                return m is not None and (int(m[1]), m[2], int(m[3]), int(m[4])) == steps[i]
            m = _ANSWER_RE.fullmatch(text)
            return i == len(steps) and m is not None and int(m[1]) == answer

        return segment_labels(response, ";", correct, len(steps) + 1)
