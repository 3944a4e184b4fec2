"""The built-in arithmetic world: generation, splits, noisy warm-up data, verifier, step labels.

Expected values are worked out by hand (left to right, every result mod 100).
"""

import random

import pytest

from repirl_ray.tasks.arithmetic import (
    HARD_SPEC,
    ArithmeticSpec,
    ArithmeticTask,
    generate_problem,
    make_split,
    make_splits,
    noisy_solution,
    num_distinct_prompts,
    parse_prompt,
    solve,
)
from repirl_ray.tasks.base import DataError, Problem

DESIGN_PROMPT = "7+5*8-5:"
DESIGN_SOLUTION = "7+5=12;12*8=96;96-5=91;#91"


def problem(prompt: str, answer: str) -> Problem:
    return Problem(id="p", prompt=prompt, answer=answer)


def true_result(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op] % 100


def steps_of(response: str) -> list[tuple[int, str, int, int]]:
    """[(a, op, b, c)] of a well-formed response."""
    out = []
    for seg in response.split(";")[:-1]:
        lhs, c = seg.split("=")
        op = next(ch for ch in "+-*" if ch in lhs)
        a, b = lhs.split(op)
        out.append((int(a), op, int(b), int(c)))
    return out


# --- prompts and correct solutions ----------------------------------------------------------


def test_parse_prompt_design_example():
    assert parse_prompt(DESIGN_PROMPT) == (7, [("+", 5), ("*", 8), ("-", 5)])


@pytest.mark.parametrize("bad", ["7+5*8-5", "7:", "7+:", "a+b:", "", "7+5 :", "7/2:", "٣+5:"])
def test_parse_prompt_rejects_malformed(bad):
    with pytest.raises(DataError, match="malformed"):
        parse_prompt(bad)


def test_solve_hand_worked():
    assert solve(DESIGN_PROMPT) == DESIGN_SOLUTION
    assert solve("3-5:") == "3-5=98;#98"  # mod 100 of -2
    assert solve("9*9*9:") == "9*9=81;81*9=29;#29"  # 729 mod 100
    assert solve("1-1-1:") == "1-1=0;0-1=99;#99"
    assert solve((7, [("+", 5), ("*", 8), ("-", 5)])) == DESIGN_SOLUTION
    assert solve(problem(DESIGN_PROMPT, "91")) == DESIGN_SOLUTION
    assert solve("9*9*9:", modulus=1000) == "9*9=81;81*9=729;#729"


def test_generate_problem_fields():
    p = generate_problem(random.Random(0), ArithmeticSpec(), "x")
    assert p.id == "x"
    assert p.demos == (solve(p),)
    assert p.answer == p.demos[0].split("#")[1]
    start, ops = parse_prompt(p.prompt)
    assert p.meta == {"num_ops": len(ops), "start": start, "ops": [f"{o}{b}" for o, b in ops]}


def test_generate_problem_respects_spec():
    rng, spec = random.Random(1), ArithmeticSpec()
    starts, lengths, operands, ops_seen = set(), set(), set(), set()
    for i in range(500):
        start, ops = parse_prompt(generate_problem(rng, spec, str(i)).prompt)
        starts.add(start)
        lengths.add(len(ops))
        operands |= {b for _, b in ops}
        ops_seen |= {o for o, _ in ops}
    assert starts == set(range(1, 10))
    assert lengths == {2, 3, 4}
    assert operands == set(range(1, 10))
    assert ops_seen == {"+", "-", "*"}


def test_spec_validation():
    with pytest.raises(ValueError, match="min_ops"):
        ArithmeticSpec(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="modulus"):
        ArithmeticSpec(modulus=1)
    assert num_distinct_prompts(ArithmeticSpec(min_ops=1, max_ops=2, max_start=2, max_operand=1)) == 2 * (3 + 9)


# --- splits ----------------------------------------------------------------------------------


def test_make_split_deterministic_per_seed():
    a, b, c = make_split(5, 50), make_split(5, 50), make_split(6, 50)
    assert a == b
    assert [p.prompt for p in a] != [p.prompt for p in c]
    assert len({p.prompt for p in a}) == 50  # distinct prompts within a split


def test_make_splits_disjoint_and_reproducible():
    s = make_splits(0, n_train=400, n_eval=100, n_hard=50)
    train, eval_, hard = ({p.prompt for p in x} for x in (s.train, s.eval, s.hard))
    assert (len(train), len(eval_), len(hard)) == (400, 100, 50)
    assert not (train & eval_) and not (train & hard) and not (eval_ & hard)
    assert all(HARD_SPEC.min_ops <= p.meta["num_ops"] <= HARD_SPEC.max_ops for p in s.hard)
    assert s.train[0].id == "train-0" and s.eval[0].id == "eval-0" and s.hard[0].id == "hard-0"
    assert make_splits(0, n_train=400, n_eval=100, n_hard=50) == s
    # Held-out sets do not depend on the training size.
    assert make_splits(0, n_train=10, n_eval=100, n_hard=50).eval == s.eval


def test_make_splits_reports_exclusions_in_a_small_space():
    tiny = ArithmeticSpec(min_ops=1, max_ops=1, max_start=3, max_operand=3)  # 27 prompts
    s = make_splits(1, n_train=15, n_eval=10, n_hard=0, spec=tiny)
    train, eval_ = {p.prompt for p in s.train}, {p.prompt for p in s.eval}
    assert not train & eval_ and len(train | eval_) == 25
    assert s.excluded["train"] > 0  # with 10 of 27 prompts taken, train draws hit them
    with pytest.raises(ValueError, match="allows only 27"):
        make_split(0, 28, tiny)
    with pytest.raises(ValueError, match="new distinct problems"):
        make_splits(1, n_train=20, n_eval=10, spec=tiny)  # 20 > 27 - 10 left


# --- noisy warm-up solutions ---------------------------------------------------------------


def test_noisy_solution_without_errors_is_the_solution():
    rng = random.Random(0)
    for p in make_split(0, 100):
        assert noisy_solution(rng, p, ArithmeticSpec(), step_error_prob=0.0) == p.demos[0]


def test_noisy_solution_always_wrong_and_carried_forward():
    rng, task = random.Random(0), ArithmeticTask()
    for p in make_split(1, 100):
        r = noisy_solution(rng, p, ArithmeticSpec(), step_error_prob=1.0)
        steps = steps_of(r)
        start, _ = parse_prompt(p.prompt)
        assert steps[0][0] == start
        for (a, op, b, c), nxt in zip(steps, steps[1:] + [None]):
            err = (c - true_result(a, op, b)) % 100
            assert err in {1, 2, 3, 97, 98, 99}  # +-1..3, never 0
            if nxt is not None:
                assert nxt[0] == c  # the next step starts from the wrong value
        assert r.endswith(f"#{steps[-1][3]}")  # the answer is the last (wrong) value
        assert task.step_labels(p, r).first_wrong == 0
        assert task.verify(p, r).format_ok


def test_noisy_solution_error_rate_and_determinism():
    problems = make_split(2, 3000)
    rng = random.Random(0)
    n_steps = n_wrong = 0
    for p in problems:
        for a, op, b, c in steps_of(noisy_solution(rng, p, ArithmeticSpec(), step_error_prob=0.2)):
            n_steps += 1
            n_wrong += c != true_result(a, op, b)
    assert abs(n_wrong / n_steps - 0.2) < 0.02  # ~9000 steps: std ~0.004
    p = problems[0]
    assert noisy_solution(random.Random(3), p) == noisy_solution(random.Random(3), p)


def test_noisy_solution_argument_checks():
    p = problem(DESIGN_PROMPT, "91")
    with pytest.raises(ValueError, match="step_error_prob"):
        noisy_solution(random.Random(0), p, ArithmeticSpec(), step_error_prob=1.5)
    with pytest.raises(ValueError, match="max_error"):
        noisy_solution(random.Random(0), p, ArithmeticSpec(modulus=3), max_error=3)


# --- verifier --------------------------------------------------------------------------------

TASK = ArithmeticTask()
DESIGN = problem(DESIGN_PROMPT, "91")


@pytest.mark.parametrize(
    "response, correct, format_ok, answer",
    [
        (DESIGN_SOLUTION, True, True, "91"),
        ("7+5=12;12*8=96;96-5=90;#90", False, True, "90"),  # wrong answer
        ("7+5=13;13*8=96;96-5=91;#91", True, True, "91"),  # right answer through a wrong step
        ("7+5=12;12*8=96;96-5=91", False, False, None),  # no answer
        ("7+5=12 12*8=96;#91", True, False, "91"),  # malformed steps, answer still read
        ("#91", True, False, "91"),  # no steps: not the format
        ("7+5=12;12*8=96;96-5=91;#091", True, True, "91"),  # same number
        ("7+5=12;12*8=96;96-5=91;#91\n", False, False, None),  # no whitespace anywhere
        ("7+5=12;12*8=96;96-5=91;#91;", False, False, None),
        ("7+5=12;#12;96-5=91;#x", False, False, None),  # the last '#' counts
        ("", False, False, None),
    ],
)
def test_verify(response, correct, format_ok, answer):
    v = TASK.verify(DESIGN, response)
    assert (v.correct, v.format_ok, v.answer) == (correct, format_ok, answer)


def test_format_prompt_is_the_prompt():
    assert TASK.format_prompt(DESIGN) == DESIGN_PROMPT


# --- step labels -----------------------------------------------------------------------------


def assert_tiles(spans, response):
    assert "".join(response[s:e] for s, e in spans) == response
    assert all(s < e for s, e in spans)
    assert all(response[e - 1] == ";" for _, e in spans[:-1])


def test_step_labels_correct_solution():
    labels = TASK.step_labels(DESIGN, DESIGN_SOLUTION)
    assert labels.spans == ((0, 7), (7, 15), (15, 23), (23, 26))  # "7+5=12;" ... "#91"
    assert labels.first_wrong is None


def test_step_labels_wrong_at_second_step():
    response = "7+5=12;12*8=95;95-5=90;#90"  # error carried forward from step 2
    labels = TASK.step_labels(DESIGN, response)
    assert labels.first_wrong == 1
    assert len(labels.spans) == 4
    assert_tiles(labels.spans, response)


@pytest.mark.parametrize(
    "response, n_spans, first_wrong",
    [
        ("7+5=13;13*8=96;96-5=91;#91", 4, 0),  # right answer, wrong first step
        ("7+5=12;12*8=96;", 2, 2),  # stopped early: the first missing step
        ("7+5=12;12*8=96;96-5=91;", 3, 3),  # the answer missing
        ("7+5=12;12*8=9", 2, 1),  # truncated inside a step
        ("7+5=12;#12", 2, 1),  # answer given too early
        # Anything after the answer makes the answer step wrong, as verify cannot read it either.
        ("7+5=12;12*8=96;96-5=91;#91;1+1=2", 5, 3),
        ("7+5=12;12*8=96;96-5=91;#91;", 4, 3),
        ("7+5=12;;12*8=96;96-5=91;#91", 5, 1),  # empty segment
        ("7+5=12;12*8=96;96-5=91;#90", 4, 3),  # only the answer wrong
        ("7+5=12;12 * 8=96;96-5=91;#91", 4, 1),  # spaces: malformed
        ("07+5=12;12*8=096;96-5=91;#091", 4, None),  # numbers compare as numbers, like verify
        ("7-5=12;12*8=96;96-5=91;#91", 4, 0),  # wrong op
        ("", 0, 0),
    ],
)
def test_step_labels_edge_cases(response, n_spans, first_wrong):
    labels = TASK.step_labels(DESIGN, response)
    assert len(labels.spans) == n_spans
    assert labels.first_wrong == first_wrong
    assert_tiles(labels.spans, response)


def test_step_labels_catch_a_modulus_mismatch():
    with pytest.raises(DataError, match="modulus"):
        ArithmeticTask().step_labels(problem("9*9*9:", "729"), "9*9=81;81*9=729;#729")
    assert ArithmeticTask(ArithmeticSpec(modulus=1000)).step_labels(
        problem("9*9*9:", "729"), "9*9=81;81*9=729;#729"
    ).first_wrong is None
