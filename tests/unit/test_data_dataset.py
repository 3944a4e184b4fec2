"""A split as a run reads it (data/dataset.py): formats from JSONL and parquet files, demos from
their own file joined by id, counts of everything rejected or unmatched, prompts measured in
tokens as the policy sees them, and the errors a run stops with before anything starts."""

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repirl_ray.config import DataConfig, DataFieldsConfig, WorldConfig
from repirl_ray.models.tiny import build_byte_tokenizer
from repirl_ray.tasks import build_task
from repirl_ray.tasks.base import DataError
from repirl_ray.data.dataset import (
    DROPPED_LONG,
    DROPPED_REJECTED,
    check_prompts,
    load_split,
    percentile,
    read_split,
    task_kwargs,
)
from repirl_ray.tasks.math import DEFAULT_TEMPLATE

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
    {"question": "A pen costs 2 dollars. How much do 5 pens cost?", "answer": "2*5 = <<2*5=10>>10\n#### 10"},
    {"question": "What is 9 minus 1?", "answer": "9-1 is 8"},  # no ####: rejected
]
MATH_DATA = DataConfig(task="math", format="gsm8k")
TOKENIZER = build_byte_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_gsm8k_file_with_a_demos_file(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:2] + [{"question": "Q3?", "answer": "#### 3"}])
    demos = write_jsonl(tmp_path / "demos.jsonl", [
        {"id": 0, "response": "3 + 4 = 7, so \\boxed{7}."},
        {"id": "0", "response": "\\boxed{7}"},  # ids compare as strings: 0 and "0" are problem 0
        {"id": 1, "response": "\\boxed{10}"},
        {"id": 99, "response": "\\boxed{1}"},  # no such problem
        {"id": "99", "response": "\\boxed{2}"},
    ])
    problems, report = read_split(MATH_DATA, data, split="train", require_demos=True, demos_path=demos)
    assert [len(p.demos) for p in problems] == [3, 2, 1]  # the worked solution + the file's demos
    assert problems[0].demos[1:] == ("3 + 4 = 7, so \\boxed{7}.", "\\boxed{7}")
    assert (report.rows, report.problems, report.with_demos) == (3, 3, 3)
    assert (report.demos_min, report.demos_mean, report.demos_max) == (1, 2.0, 3)
    assert (report.demo_rows, report.demos_joined, report.unmatched_demo_ids) == (5, 3, ["99", "99"])
    assert not report.usable  # demos that match no problem are not used as they are
    d = report.to_dict()
    assert d["demos_without_problem"] == 2 and d["demos_without_problem_first_ids"] == ["99"]
    assert d["changed"] == {"demos with GSM8K calculator annotations <<...>> removed": 2}


def test_demos_only_from_their_own_file(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:2])
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"id": 1, "response": "\\boxed{10}"}])
    cfg = dataclasses.replace(MATH_DATA, fields=DataFieldsConfig(demos="none"))
    problems, report = read_split(cfg, data, split="train", demos_path=demos)
    assert [p.demos for p in problems] == [(), ("\\boxed{10}",)]
    assert report.without_demos == ["0"] and report.usable  # demos not required here
    with pytest.raises(DataError, match=r"train data .*train\.jsonl: 1 of 2 problems have no expert demo "
                                        r"\(first ids: '0'\); .*data\.demos_path"):
        read_split(cfg, data, split="train", require_demos=True, demos_path=demos)


def test_rejected_rows_stop_a_run_or_are_dropped_with_a_count(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS)
    with pytest.raises(DataError) as err:
        read_split(MATH_DATA, data, split="train")
    msg = str(err.value)
    assert "\n" not in msg
    assert "train.jsonl: 1 line cannot be converted (line 3: field 'answer' has no '####'" in msg
    assert "data.drop_rejected=true" in msg and "repirl data" in msg
    # Not strict (repirl data): everything in the report.
    problems, report = read_split(MATH_DATA, data, split="train", strict=False)
    assert len(problems) == 2 and [(r.row, r.reason[:26]) for r in report.rejected] == [(3, "field 'answer' has no '###")]
    assert report.to_dict()["rejected"] == 1 and not report.usable
    # Dropped on request, and counted.
    problems, report = read_split(dataclasses.replace(MATH_DATA, drop_rejected=True), data, split="train")
    assert len(problems) == 2 and report.dropped == {DROPPED_REJECTED: 1}


def test_rejected_demo_rows_name_the_demos_file(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", GSM8K_ROWS[:2])
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"id": 0, "response": "r"}, {"id": 1}])
    with pytest.raises(DataError, match=r"demos file .*demos\.jsonl: 1 line cannot be read \(line 2: missing field 'response'\)"):
        read_split(MATH_DATA, data, split="train", demos_path=demos)


def test_eurus_like_parquet_with_nested_columns(tmp_path):
    rows = [
        {"data_source": "numina_synthetic_math",
         "prompt": [{"role": "system", "content": "Think first."}, {"role": "user", "content": f"What is {i}+1?"}],
         "ability": "math", "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
         "extra_info": {"index": 100 + i, "split": "train"}}
        for i in range(3)
    ]
    path = str(tmp_path / "eurus.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = DataConfig(task="math", fields=DataFieldsConfig(answer="reward_model.ground_truth", id="extra_info.index",
                                                          demos="none"))
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"id": 100 + i, "response": f"\\boxed{{{i + 1}}}"} for i in range(3)])
    problems, report = read_split(cfg, path, split="train", require_demos=True, demos_path=demos)
    assert [(p.id, p.prompt, p.answer, p.demos) for p in problems] == [
        (str(100 + i), f"What is {i}+1?", str(i + 1), (f"\\boxed{{{i + 1}}}",)) for i in range(3)
    ]
    assert report.row_word == "row" and report.usable
    assert report.changed == {"prompts taken from a chat list's last user message (other messages not used)": 3}


def test_shipped_humaneval():
    problems, report = read_split(DataConfig(task="code", format="humaneval"), "humaneval", split="eval")
    assert report.rows == 164 and report.problems == 164 and report.with_demos == 164 and report.row_word == "problem"
    assert problems[0].id == "HumanEval/0"
    # The shipped set is HumanEval whatever data.format says, but only for the code task.
    assert read_split(DataConfig(task="code"), "humaneval", split="eval")[1].format == "humaneval"
    with pytest.raises(DataError, match="data.eval_path=humaneval: HumanEval problems are code problems; set data.task=code"):
        read_split(DataConfig(task="math"), "humaneval", split="eval")


def test_file_errors_use_the_formats_own_columns(tmp_path):
    with pytest.raises(DataError, match=r"data.train_path\) .*nope.jsonl' not found.*every row needs 'question' and 'answer'"):
        read_split(MATH_DATA, str(tmp_path / "nope.jsonl"), split="train")


# --- prompt lengths ----------------------------------------------------------------------------


def test_prompt_tokens_are_counted_as_the_policy_sees_them(tmp_path):
    rows = [{"prompt": "a" * n, "answer": "1", "demos": ["d"] * (n // 10)} for n in (10, 20, 30, 40)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = DataConfig(task="math", prompt_template="Q: {problem}\nA:", max_prompt_tokens=40)
    task = build_task("math", **task_kwargs(cfg, WorldConfig()))
    problems, report = read_split(cfg, data, split="eval")
    # Byte tokenizer: "Q: " + prompt + "\nA:" is 6 bytes more than the prompt, plus <s>: n + 7 tokens.
    check_prompts(problems, report, cfg, task=task, tokenizer=TOKENIZER, tokenizer_name="byte", strict=False)
    assert report.prompt_tokens == {"p50": 27, "p90": 47, "p99": 47, "max": 47}
    assert report.too_long == [("3", 47)] and not report.usable
    with pytest.raises(DataError, match=r"eval data .*p.jsonl: 1 of 4 prompts are over data.max_prompt_tokens=40 "
                                        r"\(first: '3' 47 tokens; longest 47\).*data.drop_long_prompts=true"):
        check_prompts(problems, report, cfg, task=task, tokenizer=TOKENIZER)
    kept, report = load_split(dataclasses.replace(cfg, drop_long_prompts=True), data, split="eval", task=task,
                              tokenizer=TOKENIZER)
    assert [p.id for p in kept] == ["0", "1", "2"] and report.problems == 3
    assert report.dropped == {DROPPED_LONG: 1}
    # The counts are of the problems kept.
    assert (report.with_demos, report.demos_min, report.demos_mean, report.demos_max) == (3, 1, 2.0, 3)
    # With the chat template: "<|user|>\n" + text + "\n<|assistant|>\n" adds 24 bytes and no <s>.
    chat = dataclasses.replace(cfg, chat_template=True, max_prompt_tokens=1000)
    _, report = load_split(chat, data, split="eval", task=task, tokenizer=TOKENIZER)
    assert report.prompt_tokens["max"] == 40 + 6 + 24


def test_default_math_template_and_missing_chat_template(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc", "answer": "1"}])
    task = build_task("math", **task_kwargs(DataConfig(task="math"), WorldConfig()))
    _, report = load_split(DataConfig(task="math", max_prompt_tokens=500), data, split="eval", task=task, tokenizer=TOKENIZER)
    assert report.prompt_tokens["max"] == len(DEFAULT_TEMPLATE.replace("{problem}", "abc").encode()) + 1
    no_chat = build_byte_tokenizer()
    no_chat.chat_template = None
    with pytest.raises(DataError, match="data.chat_template=true, but the tokenizer .* has no chat template"):
        load_split(DataConfig(task="math", chat_template=True), data, split="eval", task=task, tokenizer=no_chat)


@pytest.mark.parametrize("q, expected", [(0, 1), (25, 1), (26, 2), (50, 2), (90, 4), (99, 4), (100, 4)])
def test_percentile_nearest_rank(q, expected):
    assert percentile([1, 2, 3, 4], q) == expected
