"""Problem data I/O (load_problems / write_jsonl), its error messages, and build_task."""

import dataclasses
import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repirl_ray.tasks import ArithmeticSpec, ArithmeticTask, Task, build_task
from repirl_ray.tasks.arithmetic import make_split
from repirl_ray.data.reading import load_problems, write_jsonl
from repirl_ray.tasks.base import DataError, Problem


def write_lines(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


# --- round trips -----------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    problems = make_split(0, 5) + [
        Problem(id="code-1", prompt="def f():\n", answer="    return 1\n", demos=("    return 1\n",),
                meta={"entry_point": "f", "tests": "def check(c):\n    assert c() == 1\n"}),
    ]
    path = str(tmp_path / "new" / "dir" / "train.jsonl")  # parent folders are created
    write_jsonl(path, problems)
    # Keys that only some rows have come back as null in the others and are dropped.
    assert load_problems(path, require_demos=True) == problems
    write_jsonl(path, problems[:2])  # overwrites, and leaves no temporary file behind
    assert load_problems(pathlib.Path(path), require_demos=True) == problems[:2]
    assert os.listdir(tmp_path / "new" / "dir") == ["train.jsonl"]


def test_parquet_round_trip(tmp_path):
    path = str(tmp_path / "eval.parquet")
    table = pa.table({
        "id": [7, 8],
        "prompt": ["1+1:", "2*3:"],
        "answer": [2, 6],  # numbers become strings
        "demos": [["1+1=2;#2"], ["2*3=6;#6"]],
        "level": [1, 2],
    })
    pq.write_table(table, path)
    assert load_problems(path, require_demos=True) == [
        Problem(id="7", prompt="1+1:", answer="2", demos=("1+1=2;#2",), meta={"level": 1}),
        Problem(id="8", prompt="2*3:", answer="6", demos=("2*3=6;#6",), meta={"level": 2}),
    ]


def test_defaults_and_scalar_answers(tmp_path):
    path = write_lines(tmp_path / "a.json", [  # .json holding JSON lines is read too
        {"prompt": "p0", "answer": 3, "source": "x"},
        {"prompt": "p1", "answer": 2.5},
        {"prompt": "p2", "answer": True},
    ])
    problems = load_problems(path, require_demos=False)
    assert [p.id for p in problems] == ["0", "1", "2"]  # row index when there is no id
    assert [p.answer for p in problems] == ["3", "2.5", "true"]  # 3 read as 3.0 by Arrow is "3"
    assert problems[0].meta == {"source": "x"} and problems[1].meta == {}
    assert problems[0].demos == ()


# --- errors: each names the file, the line and the field ----------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"train data file .*nope\.jsonl' not found.*check the path"):
        load_problems(path, require_demos=True, split_name="train")


def test_unsupported_extension(tmp_path):
    path = write_lines(tmp_path / "a.csv", ["prompt,answer"])
    with pytest.raises(DataError, match=r"a\.csv'?: unsupported extension; use \.jsonl, \.json or \.parquet"):
        load_problems(path, require_demos=False)


def test_empty_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_problems(str(path), require_demos=False)


@pytest.mark.parametrize(
    "rows, require_demos, message",
    [
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], False,
         r"b\.jsonl line 2: missing field 'answer'; every row needs 'prompt' and 'answer'"),
        ([{"answer": "1"}], False, r"line 1: missing field 'prompt'"),
        ([{"prompt": "a", "answer": "1"}], True, r"line 1: missing field 'demos'"),
        ([{"prompt": "a", "answer": "1", "demos": []}], True, r"line 1: field 'demos' is empty"),
        ([{"prompt": 5, "answer": "1"}], False, r"line 1: field 'prompt' must be a string, got int"),
        ([{"prompt": "a", "answer": [1]}], False, r"line 1: field 'answer' must be a string or a number"),
        ([{"prompt": "a", "answer": "1", "demos": [1, 2]}], False, r"line 1: field 'demos' must be a list of strings, got a list of int"),
        ([{"prompt": "a", "answer": "1", "id": "x"}, {"prompt": "b", "answer": "2", "id": "x"}], False,
         r"line 2: id 'x' already used at line 1"),
        # Mixed types in one field (datasets reads the column as Json): the row is named.
        ([{"prompt": "a", "answer": "1"}, {"prompt": ["b"], "answer": "2"}], False,
         r"b\.jsonl line 2: field 'prompt' must be a string, got list"),
        # Arrow fails on the whole file here; the stdlib pass names the line.
        ([{"prompt": "a", "answer": "1"}, "{not json"], False, r"b\.jsonl line 2: not valid JSON"),
        ([{"prompt": "a", "answer": "1"}, "[1, 2]"], False, r"b\.jsonl line 2: not a JSON object"),
    ],
)
def test_bad_rows(tmp_path, rows, require_demos, message):
    path = write_lines(tmp_path / "b.jsonl", rows)
    with pytest.raises(DataError, match=message) as info:
        load_problems(path, require_demos=require_demos)
    assert "\n" not in str(info.value)  # one line


def test_one_demo_string_is_one_demo(tmp_path):
    # MATH and GSM8K carry one solution string per row: a string is read as a list of one.
    path = write_lines(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1", "demos": "sol"}])
    assert load_problems(path, require_demos=True)[0].demos == ("sol",)


def test_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": None}]))
    with pytest.raises(DataError, match=r"a\.json row 2: missing field 'answer'"):
        load_problems(str(path), require_demos=False)


def test_parquet_errors_name_the_row(tmp_path):
    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["1", None]}), path)
    with pytest.raises(DataError, match=r"p\.parquet row 2: missing field 'answer'"):
        load_problems(path, require_demos=False)


def test_write_jsonl_rejects_reserved_meta_keys(tmp_path):
    p = Problem(id="a", prompt="q", answer="1", meta={"answer": "2"})
    with pytest.raises(DataError, match=r"problem 'a': meta key\(s\) \['answer'\] clash"):
        write_jsonl(str(tmp_path / "x.jsonl"), [p])
    assert not os.path.exists(tmp_path / "x.jsonl")


# --- the Task seam and build_task ---------------------------------------------------------


def test_task_defaults():
    p = Problem(id="a", prompt="q", answer="1")
    assert Task().format_prompt(p) == "q"
    assert Task().step_labels(p, "r") is None
    with pytest.raises(NotImplementedError):
        Task().verify(p, "r")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "2"


def test_build_task():
    from repirl_ray.tasks.code import CodeTask
    from repirl_ray.tasks.math import MathTask

    spec = ArithmeticSpec(modulus=1000)
    arithmetic = build_task("arithmetic", spec=spec)
    assert isinstance(arithmetic, ArithmeticTask) and arithmetic.spec is spec
    math = build_task("math", template="Q: {problem}")
    assert isinstance(math, MathTask) and math.template == "Q: {problem}"
    assert isinstance(build_task("code", timeout_s=2.0), CodeTask)
    assert {t.name for t in (arithmetic, math, build_task("code"))} == {"arithmetic", "math", "code"}
    with pytest.raises(ValueError, match="unknown task 'chess'; valid names: arithmetic, math, code"):
        build_task("chess")


def test_tasks_import_neither_ray_nor_vllm():
    # DESIGN.md section 2: tasks run in any process. A fresh interpreter, since other tests
    # in this session may have imported ray already.
    import subprocess
    import sys

    code = (
        "import sys, repirl_ray.tasks, repirl_ray.tasks.math, repirl_ray.tasks.code\n"
        "bad = sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
