"""`repirl data PATH`: a data set checked as a run reads it, without Ray; its exit status says
whether every row is used as it is. And `repirl train` prints no summary block for a stopped run."""

import json

import pytest

from repirl_ray.cli import main
from repirl_ray.tasks.math import DEFAULT_TEMPLATE

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
    {"question": "A pen costs 2 dollars. How much do 5 pens cost?", "answer": "2*5 = <<2*5=10>>10\n#### 10"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from repirl_ray.models.tiny import build_byte_tokenizer

    path = tmp_path_factory.mktemp("byte_tokenizer")
    build_byte_tokenizer().save_pretrained(path)
    return str(path)


def run(capsys, *argv):
    code = main(["data", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_usable_gsm8k_set_exits_0_with_token_percentiles(capsys, tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    code, out, _ = run(capsys, data, "--format", "gsm8k", "--model", tokenizer_dir, "--max-prompt-tokens", "200", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["problems"], report["with_demos"], report["rejected"], report["usable"]) == (2, 2, 0, True)
    assert report["task"] == "math"  # the format's task
    # Byte tokens: <s> + question + the rest of the default math template (71 bytes).
    assert len(DEFAULT_TEMPLATE.replace("{problem}", "").encode()) == 71
    lengths = sorted(len(r["question"].encode()) + 72 for r in GSM8K_ROWS)
    assert report["prompt_tokens"] == {"p50": lengths[0], "p90": lengths[1], "p99": lengths[1], "max": lengths[1]}
    first = report["first_problem"]
    assert first["answer"] == "7" and first["demos"] == ["3+4 = 7\nThe final answer is \\boxed{7}."]
    assert first["prompt"].startswith(GSM8K_ROWS[0]["question"] + "\nPlease reason step by step")


def test_unusable_set_exits_1_and_says_why(capsys, tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS + [{"question": "q", "answer": "no hash"}])
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"id": 1, "response": "\\boxed{10}"}, {"id": 7, "response": "x"}])
    # key=value overrides may follow the options
    code, out, _ = run(capsys, data, "--format", "gsm8k", "--demos", demos, "--model", tokenizer_dir,
                       "--max-prompt-tokens", "100", "data.chat_template=false")
    assert code == 1
    assert "lines read              3" in out and "problems                2" in out
    assert "rejected lines          1" in out and "(line 3)" in out and "has no '####'" in out
    assert "without a problem     1 (not used; first ids: '7')" in out
    assert "with demos              2 of 2 (per problem: min 1, mean 1.50, max 2)" in out
    assert "over max_prompt_tokens  2 (first: '0' 122 tokens, '1' 119 tokens); data.max_prompt_tokens=100" in out
    assert "changed                 demos with GSM8K calculator annotations <<...>> removed: 2" in out
    assert "first problem (id '0', task math)" in out and "    | The final answer is \\boxed{7}." in out
    assert out.rstrip().endswith("not usable as it is: 1 rejected line, 1 demo without a problem, "
                                 "2 prompts over data.max_prompt_tokens (exit 1)")


def test_without_a_model_lengths_are_not_measured(capsys, tmp_path):
    data = write_jsonl(tmp_path / "own.jsonl", [{"prompt": "1+1?", "answer": "2", "demos": ["\\boxed{2}"]}])
    code, out, _ = run(capsys, data, "--task", "math")
    assert code == 0 and "prompt tokens           not measured (give --model" in out
    assert out.rstrip().endswith("usable: every row is used as it is (exit 0)")
    code, out, _ = run(capsys, data, "--task", "math", "--json")
    report = json.loads(out)
    assert report["prompt_tokens"] is None and report["max_prompt_tokens"] == 64  # the config default


def test_eval_split_needs_no_demos(capsys, tmp_path):
    data = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "1+1?", "answer": "2"}])
    code, out, _ = run(capsys, data, "--task", "math")
    assert code == 1 and "without demos           1 (this config needs a demo for every training problem" in out
    code, out, _ = run(capsys, data, "--task", "math", "--split", "eval")
    assert code == 0 and "without demos           1 (not needed here" in out


def test_shipped_humaneval(capsys, tokenizer_dir):
    code, out, _ = run(capsys, "humaneval", "--model", tokenizer_dir, "--max-prompt-tokens", "2000", "--json")
    report = json.loads(out)
    assert code == 0 and report["task"] == "code" and report["format"] == "humaneval"
    assert (report["problems"], report["with_demos"], report["rejected"]) == (164, 164, 0)
    assert report["first_problem"]["id"] == "HumanEval/0" and report["prompt_tokens"]["max"] > 1000


def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, str(tmp_path / "missing.jsonl"), "--format", "math")
    assert code == 2 and "missing.jsonl' not found" in err and "'problem' and 'solution'" in err and err.count("\n") == 1
    code, _, err = run(capsys, str(tmp_path / "x.jsonl"), "--model", str(tmp_path))
    assert code == 2 and "--model" in err and "not a local HF model folder" in err
    code, _, err = run(capsys, str(tmp_path / "x.jsonl"), "--format", "gsm8k", "--task", "code")
    assert code == 2 and "set data.task=math" in err


def test_a_stopped_run_prints_no_summary_block(capsys, monkeypatch):
    import repirl_ray.driver

    monkeypatch.setattr(repirl_ray.driver, "train", lambda cfg=None, **kw: {"stopped_at": 3})
    assert main(["train", "iterations=5"]) == 0
    assert "summary:" not in capsys.readouterr().out
    monkeypatch.setattr(repirl_ray.driver, "train", lambda cfg=None, **kw: {"iterations": 5, "final_accuracy": 0.5})
    assert main(["train", "iterations=5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("summary:") and "final_accuracy           0.5000" in out


@pytest.fixture(scope="module")
def byte_model_dir(tmp_path_factory):
    from repirl_ray.models.tiny import build_byte_tokenizer, build_tiny_qwen2

    path = tmp_path_factory.mktemp("byte_model")
    tokenizer = build_byte_tokenizer()
    build_tiny_qwen2(len(tokenizer), hidden_size=32, num_layers=1, num_heads=1, intermediate_size=32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("extra, message", [
    # A prompt over data.max_prompt_tokens stops the run before it starts, not in the middle.
    (["data.max_prompt_tokens=80"], "2 of 2 prompts are over data.max_prompt_tokens=80 (first: '0' 122 tokens"),
    # The rePIRL PRM update needs a demo for every training problem.
    (["data.fields.demos=none"], "2 of 2 problems have no expert demo (first ids: '0', '1')"),
])
def test_train_stops_on_unusable_data_before_ray_starts(capsys, monkeypatch, tmp_path, byte_model_dir, extra, message):
    import repirl_ray.run_setup

    def no_ray(*args, **kwargs):  # the test session may hold a Ray already: catch the call itself
        raise AssertionError("Ray was started before the data checks stopped the run")

    monkeypatch.setattr(repirl_ray.run_setup, "init_ray", no_ray)
    data = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    code = main(["train", f"model.policy_path={byte_model_dir}", "data.task=math", "data.format=gsm8k",
                 f"data.train_path={data}", f"data.eval_path={data}", f"run_dir={tmp_path / 'run'}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "run").exists()  # no empty run folder left behind
