"""Dataset layouts -> Problems: pure functions over rows (dicts); no file I/O, no Ray.

A row that cannot be converted is not dropped here: it comes back as a Rejected (its row number
and the reason), and the caller decides (data/dataset.py: a run refuses to start, or drops them
with a count when data.drop_rejected is set).

Formats (data.format):
  jsonl      this project's schema: prompt, answer (a string or a number), demos (expert
             solutions: a list of strings, or one string), id; other fields -> Problem.meta.
  gsm8k      question; answer = the worked solution, its last line "#### <final answer>".
             The final answer is the text after the last "####" (thousands commas removed:
             "1,000" -> "1000", counted). The worked solution becomes a demo whose "#### 72" line is
             replaced by "The final answer is \\boxed{72}." (the math task grades the last box),
             and GSM8K's calculator annotations ("48/2 = <<48/2=24>>24") are removed from it:
             IRL learns to tell demos from the policy's samples, and a mark that only demos carry
             would be the easiest way to do so. The count of demos changed is reported.
  math       problem; solution with the final answer in its last \\boxed{} (nested braces
             allowed). The answer is that box's content; the solution becomes a demo as is.
  humaneval  task_id, prompt, canonical_solution, test, entry_point (HumanEval's own columns).
             The canonical solution is the answer and the one demo; meta holds entry_point and
             tests (what tasks/code.py reads).

A field mapping (data.fields.*, data.answer_from) reads other layouts: each field names the
column holding the prompt, the answer, the demos and the id ("" = the format's own; a dotted name
reaches into a nested column, e.g. reward_model.ground_truth; demos "none" = no demos from the
data file). answer_from says how the answer is read from its column: field (as it is), boxed
(the last \\boxed{}), hash (after the last "####", with the gsm8k demo rewrite above). A prompt
column holding a list of chat messages ({"role", "content"}) gives the content of its last user
message; rows with other messages besides it are counted in the report (those are not used).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from repirl_ray.tasks.answers import BOX_RE, extract_boxed
from repirl_ray.tasks.base import Problem

FORMATS = ("jsonl", "gsm8k", "math", "humaneval")
ANSWER_FROM = ("field", "boxed", "hash")
NO_DEMOS = "none"  # data.fields.demos=none: take no demos from the data file
HUMANEVAL_COLUMNS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

# Counters of documented changes, reported by name (data/dataset.py DataReport.changed).
CHANGED_ANNOTATIONS = "demos with GSM8K calculator annotations <<...>> removed"
CHANGED_COMMAS = "answers after '####' with thousands commas removed (1,000 -> 1000)"
CHANGED_CHAT = "prompts taken from a chat list's last user message (other messages not used)"


@dataclass(frozen=True)
class Layout:
    """Where a row keeps each part (column names; dotted for nested ones) and how its answer is read."""

    prompt: str
    answer: str
    demos: str | None  # None: no demos from the data file
    id: str
    answer_from: str  # field | boxed | hash


FORMAT_LAYOUTS = {
    "jsonl": Layout("prompt", "answer", "demos", "id", "field"),
    "gsm8k": Layout("question", "answer", "answer", "id", "hash"),
    "math": Layout("problem", "solution", "solution", "id", "boxed"),
}


def layout_for(
    fmt: str, *, prompt: str = "", answer: str = "", demos: str = "", id: str = "", answer_from: str = ""
) -> Layout | None:
    """The format's layout with the given fields in place of its own ("" keeps the format's).

    None for humaneval, whose columns are fixed (config.validate refuses a mapping with it).
    """
    if fmt == "humaneval":
        return None
    base = FORMAT_LAYOUTS[fmt]
    demos_field = demos or base.demos
    return Layout(
        prompt=prompt or base.prompt,
        answer=answer or base.answer,
        demos=None if demos_field == NO_DEMOS else demos_field,
        id=id or base.id,
        answer_from=answer_from or base.answer_from,
    )


class RowError(ValueError):
    """Why one row cannot be converted (the caller adds where)."""


@dataclass(frozen=True)
class Rejected:
    row: int  # counted from 1: the line of a JSONL file, the row of a parquet file
    reason: str


@dataclass
class Conversion:
    problems: list[Problem]
    rows: list[int]  # the row number of each problem
    rejected: list[Rejected]
    changed: dict[str, int] = field(default_factory=dict)


# --- the final answer ----------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")


def hash_answer(text: str, name: str) -> str:
    """The final answer of a GSM8K-style solution: the text after its last "####", with
    thousands commas removed ("1,000" -> "1000", which math-verify would read as a pair)."""
    at = text.rfind("####")
    if at < 0:
        raise RowError(f"field {name!r} has no '####' before the final answer (the GSM8K layout ends with '#### 72')")
    answer = _THOUSANDS_RE.sub("", text[at + 4 :].strip())
    if not answer:
        raise RowError(f"field {name!r} has nothing after its last '####'")
    return answer


def hash_demo(text: str) -> tuple[str, bool]:
    """A GSM8K worked solution as a demo: "#### 72" -> "The final answer is \\boxed{72}.", and
    calculator annotations removed. Returns the demo and whether annotations were removed.
    A text with no "####" is returned as it is."""
    at = text.rfind("####")
    body = text if at < 0 else text[:at].rstrip()
    clean = _ANNOTATION_RE.sub("", body)
    removed = clean != body
    if at >= 0:
        clean += f"\nThe final answer is \\boxed{{{hash_answer(text, 'demo')}}}."
    return clean, removed


def boxed_answer(text: str, name: str) -> str:
    boxed = extract_boxed(text)
    if boxed is None:
        if BOX_RE.search(text):
            raise RowError(f"the last \\boxed{{}} in field {name!r} is not closed")
        raise RowError(f"field {name!r} has no \\boxed{{}} final answer")
    if not boxed.strip():
        raise RowError(f"the last \\boxed{{}} in field {name!r} is empty")
    return boxed.strip()


# --- one row ---------------------------------------------------------------------------------


def field_value(row: dict, name: str) -> Any:
    """row[name]; a dotted name reaches into nested columns (a column named with the dot itself
    wins). None when absent."""
    if name in row:
        return row[name]
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {'/'.join(kinds) or 'nothing'}"
    return type(value).__name__


def _prompt(value: Any, name: str, changed: dict[str, int]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user" and isinstance(m.get("content"), str)]
        if not users:
            raise RowError(f"field {name!r} is a chat message list with no user message")
        if len(value) > 1:
            changed[CHANGED_CHAT] = changed.get(CHANGED_CHAT, 0) + 1
        return users[-1]["content"]
    raise RowError(f"field {name!r} must be a string, got {type(value).__name__} (a list of chat messages is read too)")


def _scalar_answer(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Arrow reads a column of 3 and 2.5 as floats; 3 must not become "3.0"
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # the JSON text: 3 -> "3", true -> "true"
    raise RowError(f"field {name!r} must be a string or a number, got {_describe(value)}")


def row_id(value: Any, name: str) -> str:
    """Ids are compared as strings: 7, 7.0 (an Arrow float column) and "7" are the same id."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"field {name!r} must be a string or an integer, got {_describe(value)}")


def convert_row(row: dict, layout: Layout, index: int, changed: dict[str, int], *, require_demos: bool = False,
                hint: str = "") -> Problem:
    """One row of a mapped layout as a Problem; RowError says why it cannot be.

    index (from 0) is the id of a row without one. changed counts documented changes.
    """
    suffix = f"; {hint}" if hint else ""
    value = field_value(row, layout.prompt)
    if value is None:
        raise RowError(f"missing field {layout.prompt!r}{suffix}")
    prompt = _prompt(value, layout.prompt, changed)
    if not prompt.strip():
        raise RowError(f"field {layout.prompt!r} is empty")

    value = field_value(row, layout.answer)
    if value is None:
        raise RowError(f"missing field {layout.answer!r}{suffix}")
    if layout.answer_from == "field":
        answer = _scalar_answer(value, layout.answer)
    elif not isinstance(value, str):
        raise RowError(f"field {layout.answer!r} must be a string, got {_describe(value)}")
    elif layout.answer_from == "boxed":
        answer = boxed_answer(value, layout.answer)
    else:
        answer = hash_answer(value, layout.answer)
        if answer != value[value.rfind("####") + 4 :].strip():
            changed[CHANGED_COMMAS] = changed.get(CHANGED_COMMAS, 0) + 1

    demos: tuple[str, ...] = ()
    if layout.demos is not None:
        raw = field_value(row, layout.demos)
        if raw is None and require_demos:
            raise RowError(f"missing field {layout.demos!r}{suffix}")
        if isinstance(raw, str):
            raw = [raw]  # one solution, as MATH's and GSM8K's
        if raw is not None:
            if not isinstance(raw, (list, tuple)) or not all(isinstance(d, str) for d in raw):
                raise RowError(f"field {layout.demos!r} must be a list of strings, got {_describe(raw)} (one string is read as one demo)")
            if layout.answer_from == "hash":
                rewritten = []
                for demo in raw:
                    demo, removed = hash_demo(demo)
                    rewritten.append(demo)
                    if removed:
                        changed[CHANGED_ANNOTATIONS] = changed.get(CHANGED_ANNOTATIONS, 0) + 1
                raw = rewritten
            demos = tuple(raw)
        if require_demos and not demos:
            raise RowError(f"field {layout.demos!r} is empty; training data needs at least one expert demo per problem")

    value = field_value(row, layout.id)
    pid = str(index) if value is None else row_id(value, layout.id)
    # Other top-level columns go to meta, except null ones: Arrow fills a key that only some rows
    # have with null in the others, so a null extra means "absent".
    used = {layout.prompt, layout.answer, layout.id} | ({layout.demos} if layout.demos else set())
    meta = {k: v for k, v in row.items() if k not in used and v is not None}
    return Problem(id=pid, prompt=prompt, answer=answer, demos=demos, meta=meta)


def humaneval_problem(row: dict) -> Problem:
    """A row in HumanEval's own columns as a code Problem (the canonical solution is the demo)."""
    for name in HUMANEVAL_COLUMNS:
        value = row.get(name)
        if value is None:
            raise RowError(f"missing field {name!r}; a HumanEval row has {', '.join(HUMANEVAL_COLUMNS)}")
        if not isinstance(value, str):
            raise RowError(f"field {name!r} must be a string, got {_describe(value)}")
    meta = {k: v for k, v in row.items() if k not in HUMANEVAL_COLUMNS and v is not None}
    meta.update(tests=row["test"], entry_point=row["entry_point"])
    return Problem(
        id=row["task_id"], prompt=row["prompt"], answer=row["canonical_solution"],
        demos=(row["canonical_solution"],), meta=meta,
    )


# --- many rows -------------------------------------------------------------------------------


def convert_rows(rows: Iterable[dict], layout: Layout | None, *, require_demos: bool = False, hint: str = "",
                 row_word: str = "line") -> Conversion:
    """Every row as a Problem or a Rejected (layout None: HumanEval's columns). Ids must be
    unique: a repeated id rejects the later row."""
    out = Conversion(problems=[], rows=[], rejected=[])
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        n = i + 1
        try:
            changed: dict[str, int] = {}  # counted only when the row is kept
            if layout is None:
                problem = humaneval_problem(row)
            else:
                problem = convert_row(row, layout, i, changed, require_demos=require_demos, hint=hint)
            if problem.id in seen:
                raise RowError(f"id {problem.id!r} already used at {row_word} {seen[problem.id]}; ids must be unique")
        except RowError as err:
            out.rejected.append(Rejected(n, str(err)))
            continue
        for what, count in changed.items():
            out.changed[what] = out.changed.get(what, 0) + count
        seen[problem.id] = n
        out.problems.append(problem)
        out.rows.append(n)
    return out


@dataclass(frozen=True)
class Demo:
    id: str
    response: str


def convert_demo_rows(rows: Iterable[dict]) -> tuple[list[Demo], list[Rejected]]:
    """Rows {"id": ..., "response": ...} of a demos file (data.demos_path); other fields are not read."""
    demos, rejected = [], []
    for i, row in enumerate(rows):
        try:
            value = row.get("id")
            if value is None:
                raise RowError("missing field 'id' (the id of the problem this demo solves)")
            pid = row_id(value, "id")
            response = row.get("response")
            if not isinstance(response, str):
                raise RowError(
                    "missing field 'response'" if response is None
                    else f"field 'response' must be a string, got {_describe(response)}"
                )
            if not response.strip():
                raise RowError("field 'response' is empty")
        except RowError as err:
            rejected.append(Rejected(i + 1, str(err)))
            continue
        demos.append(Demo(pid, response))
    return demos, rejected
