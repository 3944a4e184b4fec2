"""Math task: boxed-answer extraction, math-verify equivalence, prompt template, HF-style loading."""

import json
import threading

import pytest

from repirl_ray.tasks.base import DataError, Problem
from repirl_ray.data.reading import load_hf_math
from repirl_ray.tasks.math import DEFAULT_TEMPLATE, MathTask, extract_boxed

TASK = MathTask()


def problem(answer: str) -> Problem:
    return Problem(id="m", prompt="What is 1/2?", answer=answer)


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so \\boxed{5}.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("first \\boxed{1}, finally \\boxed{2}", "2"),  # the last box
        ("\\fbox{3}", "3"),
        ("$\\boxed 5$", "5"),  # brace-less form
        ("\\boxed {7}", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed{}", ""),
        ("\\boxed{1} then \\boxed{\\frac{1}{", None),  # truncated last box: no answer
        ("the answer is 5", None),
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    "answer, response, correct",
    [
        ("\\frac{1}{2}", "... so \\boxed{\\frac{1}{2}}", True),
        ("\\frac{1}{2}", "\\boxed{0.5}", True),  # math-verify: equal values
        ("1/2", "\\boxed{\\dfrac12}", True),
        ("3", "\\boxed{x = 3}", True),
        ("x^2+1", "\\boxed{1 + x^2}", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", False),
        ("5", "the answer is 5", False),  # no box: wrong, whatever the text says
        ("@@", "\\boxed{@@}", True),  # unparseable: normalised string equality
        ("@@", "\\boxed{##}", False),
        ("(1, 2)", "\\boxed{\\left( 1,2 \\right)}", True),
    ],
)
def test_verify(answer, response, correct):
    assert TASK.verify(problem(answer), response).correct is correct


def test_verdict_format_and_answer():
    v = TASK.verify(problem("1/2"), "\\boxed{ \\dfrac{1}{2} }")
    assert v.format_ok and v.answer == "\\frac{1}{2}"  # normalised: the majority-vote key
    for response in ("no box at all", "\\boxed{  }", "\\boxed{\\frac{1}{"):
        v = TASK.verify(problem("1/2"), response)
        assert (v.correct, v.format_ok, v.answer) == (False, False, None)
    assert TASK.step_labels(problem("1"), "\\boxed{1}") is None


def test_verify_off_the_main_thread():
    # math-verify's signal-based timeout raises in threads; the task turns it off there.
    out = []
    t = threading.Thread(target=lambda: out.append(TASK.verify(problem("1/2"), "\\boxed{0.5}")))
    t.start()
    t.join()
    assert out and out[0].correct


def test_prompt_template():
    p = problem("1/2")
    assert DEFAULT_TEMPLATE.endswith("\\boxed{}.")
    assert TASK.format_prompt(p) == (
        "What is 1/2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert MathTask(template="Q: {problem}\nA:").format_prompt(p) == "Q: What is 1/2?\nA:"
    with pytest.raises(ValueError, match="no '{problem}' placeholder"):
        MathTask(template="Solve it.")


def test_load_hf_math_from_a_local_file(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": "1+1?", "answer": "2", "solution": "1+1=\\boxed{2}", "level": "Level 1"},
        {"problem": "2*3?", "answer": "6", "solution": "2*3=\\boxed{6}", "level": "Level 2"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = load_hf_math("json", "train", demos_field="solution", data_files=str(path))
    assert problems[1] == Problem(
        id="1", prompt="2*3?", answer="6", demos=("2*3=\\boxed{6}",), meta={"level": "Level 2"}
    )
    assert TASK.verify(problems[0], problems[0].demos[0]).correct
    # Without demos the solution is kept in meta.
    assert load_hf_math("json", "train", data_files=str(path))[0].meta["solution"] == rows[0]["solution"]
    with pytest.raises(DataError, match=r"no field\(s\) \['question'\]; its fields are \['problem', 'answer'"):
        load_hf_math("json", "train", prompt_field="question", data_files=str(path))
    with pytest.raises(DataError, match="could not be loaded"):
        load_hf_math("json", "train", data_files=str(tmp_path / "missing.jsonl"))
