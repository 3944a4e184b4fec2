"""What every task shares: the problem record, the verifier's verdict, step labels, data I/O.

A task = problems (prompt + reference answer + expert demos) + an outcome verifier (+ step
labels where the task knows them). Tasks import neither ray nor vllm (DESIGN.md section 2):
they run in any process, and in a unit test.

Data files are JSONL (.jsonl/.json) or parquet, one problem per row; this project's schema:
    prompt: str, answer: str (any JSON scalar is accepted and turned into a string),
    demos: list[str] or one str (expert solutions; required for training data),
    id: str | int (optional; default: the row's index from 0), any other field -> Problem.meta.
Other layouts (GSM8K, MATH, HumanEval, a field mapping): tasks/formats.py; a whole split with
demos from their own file and its report: tasks/dataset.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable

# Fields with a fixed meaning; every other field of a row goes to Problem.meta.
RESERVED_FIELDS = ("id", "prompt", "answer", "demos")


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    demos: tuple[str, ...] = ()
    # Anything else the task needs: num_ops (arithmetic), entry_point and tests (code), ...
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    correct: bool  # the outcome reward o in {0, 1} (ALGORITHM.md section 3)
    format_ok: bool  # the answer is in the expected format (the format reward of prm_only mode)
    answer: str | None  # the extracted final answer, what majority vote counts


@dataclass(frozen=True)
class StepLabels:
    # Character [start, end) of each step in the response text, the step's delimiter included,
    # so the spans tile the response from 0 to len(response).
    spans: tuple[tuple[int, int], ...]
    # Index of the first wrong step; None when every step is correct and the solution complete.
    # It may equal len(spans): every step present is correct but the solution stops early.
    first_wrong: int | None


def segment_labels(response: str, delimiter: str, correct, num_segments: int) -> StepLabels:
    """Step labels of a response cut after each `delimiter` (each span keeps its delimiter; the
    spans tile the response). correct(i, text) judges segment i; a complete solution has
    num_segments segments. When every segment present is correct but fewer are present, the first
    missing one is the first wrong step (first_wrong = the number of segments)."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(response):
        end = response.find(delimiter, start)
        end = len(response) if end < 0 else end + len(delimiter)
        spans.append((start, end))
        start = end
    first_wrong = next((i for i, (a, b) in enumerate(spans) if not correct(i, response[a:b])), None)
    if first_wrong is None and len(spans) < num_segments:
        first_wrong = len(spans)
    return StepLabels(spans=tuple(spans), first_wrong=first_wrong)


class Task:
    """The seam between the RL loop and a domain: prompt formatting, the verifier, step labels."""

    name: str = "task"

    def format_prompt(self, problem: Problem) -> str:
        """The text given to the policy."""
        return problem.prompt

    def verify(self, problem: Problem, response: str) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__}.verify")

    def verify_batch(self, problems: list[Problem], responses: list[str]) -> list[Verdict]:
        """verify for each (problem, response) pair, in order; a task whose verifier waits
        (the code task's sandboxes) overrides it to verify several at once."""
        if len(problems) != len(responses):
            raise ValueError(f"verify_batch: {len(problems)} problems but {len(responses)} responses")
        return [self.verify(p, r) for p, r in zip(problems, responses)]

    def step_labels(self, problem: Problem, response: str) -> StepLabels | None:
        """Ground-truth step labels; None when the task has none (math, code)."""
        return None


class DataError(ValueError):
    """Bad input data: the message names the file, row and field, and what to do."""


_SCHEMA_HINT = (
    "every row needs 'prompt' and 'answer' (and 'demos', a list of strings, for training data)"
)


def read_rows(path: str | os.PathLike, what: str = "data file", hint: str = _SCHEMA_HINT):
    """The rows of a JSONL (.jsonl/.json) or parquet file through `datasets`, and the word that
    counts them ("line" for JSON lines, "row" for parquet and a JSON array).

    File-level problems (missing, empty, unreadable, a line that is not a JSON object) raise
    DataError naming the file and, where there is one, the line; rows are checked by the caller.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(
            f"{what} {path!r} not found (cwd {os.getcwd()}): check the path; a data file is "
            f"JSONL or parquet where {hint} (repirl_ray.tasks.base.write_jsonl writes one)"
        )
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        builder, row_word = "json", "line"
    elif lower.endswith(".parquet"):
        builder, row_word = "parquet", "row"
    else:
        raise DataError(
            f"{what} {path!r}: unsupported extension; use .jsonl, .json or .parquet"
        )

    if os.path.getsize(path) == 0:
        raise DataError(f"{what} {path!r} is empty; {hint}")

    import datasets  # imported here: a second or so, paid only by code that reads files

    try:
        ds = datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear line
        detail = _diagnose_jsonl(path) if builder == "json" else None
        if detail:
            raise DataError(f"{path} {detail}") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{what} {path!r} could not be read as {builder} ({first}); {hint}"
        ) from exc
    if builder == "json" and _is_json_array(path):
        row_word = "row"  # one JSON array: its rows are not lines
    if len(ds) == 0:
        raise DataError(f"{what} {path!r} has no rows; {hint}")
    return ds, row_word


def load_problems(
    path: str | os.PathLike, *, require_demos: bool, split_name: str = ""
) -> list[Problem]:
    """Read problems in this project's schema from a JSONL (.jsonl/.json) or parquet file.

    Rows are never dropped: the first bad row raises DataError naming its line (JSONL) or row
    (parquet), counted from 1, and the field. Other layouts (GSM8K, MATH, HumanEval, a field
    mapping), demos from their own file and the whole-split report: tasks/dataset.py.
    """
    path = os.fspath(path)
    what = f"{split_name} data file" if split_name else "data file"
    ds, row_word = read_rows(path, what)
    return rows_to_problems(ds, path, require_demos=require_demos, row_word=row_word)


def rows_to_problems(
    rows: Iterable[dict],
    source: str,
    *,
    require_demos: bool,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    demos_field: str | None = "demos",
    row_word: str = "row",
) -> list[Problem]:
    """Check and convert rows (dicts) into Problems; the first row that cannot be converted
    raises DataError naming it. Fields other than id/prompt/answer/demos go to meta."""
    from repirl_ray.tasks.formats import Layout, convert_rows

    layout = Layout(prompt_field, answer_field, demos_field, "id", "field")
    out = convert_rows(rows, layout, require_demos=require_demos, hint=_SCHEMA_HINT, row_word=row_word)
    if out.rejected:
        first = out.rejected[0]
        raise DataError(f"{source} {row_word} {first.row}: {first.reason}")
    return out.problems


def write_jsonl(path: str | os.PathLike, problems: Iterable[Problem]) -> None:
    """Write problems in the schema load_problems reads (meta fields become top-level fields).

    Atomic: a reader sees the old file or the whole new one, never a half-written one.
    """
    lines = []
    for p in problems:
        clash = set(p.meta) & set(RESERVED_FIELDS)
        if clash:
            raise DataError(
                f"problem {p.id!r}: meta key(s) {sorted(clash)} clash with the reserved fields "
                f"{RESERVED_FIELDS}; rename them"
            )
        row = {"id": p.id, "prompt": p.prompt, "answer": p.answer, "demos": list(p.demos), **p.meta}
        lines.append(json.dumps(row, ensure_ascii=False))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _diagnose_jsonl(path: str) -> str | None:
    """Find the line that made the Arrow JSON reader fail, with the stdlib reader.

    Arrow reports a bad line by byte offset, or not at all; a user counts lines.
    (Mixed types in a field do not fail: datasets 5 reads such a column as Json, and
    rows_to_problems then names the row with the wrong type.)
    """
    try:
        if _is_json_array(path):
            return None  # not JSON lines: there are no lines to name
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    return f"line {n}: not valid JSON ({exc.msg}); write one JSON object per line"
                if not isinstance(row, dict):
                    return f"line {n}: not a JSON object; write one JSON object per line"
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _is_json_array(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(1 << 16).lstrip().startswith("[")
