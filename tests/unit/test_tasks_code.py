"""Code task: code extraction, verification in both sandboxes, verify_batch, the rollout
worker's one verify_batch call, HumanEval loading. Hostile programs: tests/unit/test_sandbox.py."""

import glob
import string
import tempfile
import threading
import time
from types import SimpleNamespace

import pytest

from repirl_ray.config import CodeConfig, RolloutConfig
from repirl_ray.tasks.base import DataError, Problem
from repirl_ray.data.dataset import code_task_kwargs
from repirl_ray.data.reading import load_humaneval
from repirl_ray.tasks.code import CodeTask, extract_code

ADD = Problem(
    id="add",
    prompt='def add(a, b):\n    """Return a + b."""\n',
    answer="    return a + b\n",
    meta={"entry_point": "add", "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n"},
)
TASK = CodeTask(timeout_s=2.0)
PROCESS_TASK = CodeTask(timeout_s=2.0, sandbox="process")


@pytest.mark.parametrize(
    "response, code",
    [
        ("    return a + b\n", "    return a + b\n"),  # HumanEval completion: as it is
        ("Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "def add(a, b):\n    return a + b\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```\nx = 1\n```", "x = 1\n"),
        ("```python\ndef add(a, b):\n    return a + b\n", "def add(a, b):\n    return a + b\n"),  # unclosed
        # The block that defines the entry point wins over a later usage example.
        ("```python\ndef add(a, b):\n    return a + b\n```\n```python\nprint(add(1, 2))\n```",
         "def add(a, b):\n    return a + b\n"),
        ("", None),
        ("   \n", None),
        ("```python\n\n```", None),
    ],
)
def test_extract_code(response, code):
    assert extract_code(response, "add") == code


@pytest.mark.parametrize(
    "response, correct",
    [
        ("    return a + b\n", True),
        ("    return a - b\n", False),
        ("```python\ndef add(a, b):\n    return b + a\n```", True),  # redefines the prompt's stub
        ("    return a +\n", False),  # syntax error
        ("    import sys\n    sys.exit(0)\n", False),  # exits 0 inside check(): not a pass
        ("```python\nimport os\nos._exit(0)\n```", False),  # exits 0 before the tests
        ("```python\nclass E:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return E()\n```", False),
        ("    x = bytearray(4 << 30)\n    return a + b\n", False),  # over the memory limit
    ],
)
@pytest.mark.parametrize("task", [TASK, PROCESS_TASK], ids=["bwrap", "process"])
def test_verify(task, response, correct):
    v = task.verify(ADD, response)
    assert v.correct is correct and v.format_ok


def test_empty_response_is_a_format_error():
    v = TASK.verify(ADD, "  ")
    assert (v.correct, v.format_ok, v.answer) == (False, False, None)


def test_process_mode_timeout_kills_the_process_group(tmp_path):
    # code.sandbox=process (the unsafe fallback) still kills the child's process group and
    # removes its work folder; under bwrap the namespace goes as a whole (test_sandbox.py).
    pid_file = tmp_path / "child.pid"
    response = (
        "    import subprocess\n"
        f"    child = subprocess.Popen(['sleep', '60'])\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "    while True:\n"
        "        pass\n"
    )
    folders = set(glob.glob(f"{tempfile.gettempdir()}/repirl-code-*"))
    start = time.monotonic()
    assert not CodeTask(timeout_s=1.0, sandbox="process").verify(ADD, response).correct
    assert time.monotonic() - start < 3.0
    assert set(glob.glob(f"{tempfile.gettempdir()}/repirl-code-*")) <= folders
    pid = int(pid_file.read_text())
    time.sleep(0.1)
    try:  # gone, or a zombie waiting for a reaper
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        pass


def test_process_mode_environment():
    # The unsafe fallback still gives an empty environment (Python may add LC_CTYPE), a fresh
    # folder, closed stdin and the limits.
    probe = (
        "    import os, resource, sys\n"
        "    assert set(os.environ) <= {'PATH', 'LANG', 'PYTHONDONTWRITEBYTECODE', 'HOME', 'LC_CTYPE'}, os.environ\n"
        "    assert os.listdir('.') == [] and os.environ['HOME'] == os.getcwd()\n"
        "    assert sys.stdin.read() == ''\n"
        "    assert resource.getrlimit(resource.RLIMIT_AS) == (1 << 30, 1 << 30)\n"
        "    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)\n"
        "    assert sys.flags.isolated\n"
        "    return a + b\n"
    )
    assert PROCESS_TASK.verify(ADD, probe).correct


def test_missing_meta_is_a_data_error():
    with pytest.raises(DataError, match="code problem 'x': meta needs 'entry_point'"):
        TASK.verify(Problem(id="x", prompt="def f():\n", answer=""), "    return 1\n")


@pytest.mark.parametrize("prompt, tests, message", [
    ("Write a function f.", "def check(candidate):\n    pass\n", "the prompt is not valid Python"),
    ("def f(x):\n    pass\n", "assert f(1) == 1\n", "the tests define no top-level check"),
])
def test_unusable_problem_is_a_data_error(prompt, tests, message):
    problem = Problem(id="x", prompt=prompt, answer="", meta={"entry_point": "f", "tests": tests})
    with pytest.raises(DataError, match=f"code problem 'x': {message}"):
        TASK.verify(problem, "    return 1\n")


def test_code_task_kwargs_reach_the_sandbox():
    task = CodeTask(**code_task_kwargs(CodeConfig(sandbox="process", timeout_s=3.5, memory_mb=256, workers=3)))
    assert (task.sandbox.kind, task.sandbox.timeout_s, task.sandbox.memory_mb, task.workers) == ("process", 3.5, 256, 3)


def test_verify_batch_equals_verify_in_order_and_runs_workers_at_once():
    responses = ["    return a + b\n", "    return a - b\n", "", "    import time\n    time.sleep(0.5)\n    return a + b\n"] * 2
    task = CodeTask(timeout_s=5.0, workers=2)
    in_flight, most = 0, 0
    lock = threading.Lock()
    run = task.sandbox.run

    def counting_run(*args, **kwargs):
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            return run(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    task.sandbox.run = counting_run
    batch = task.verify_batch([ADD] * len(responses), responses)
    assert batch == [TASK.verify(ADD, r) for r in responses]
    assert [v.correct for v in batch] == [True, False, False, True] * 2
    assert most == 2  # two sandboxes at a time, never more


def test_rollout_worker_verifies_a_batch_with_one_call(tmp_path):
    from repirl_ray.models.tiny import build_char_tokenizer
    from repirl_ray.rollout.worker import RolloutWorker

    tokenizer = build_char_tokenizer("".join(dict.fromkeys(string.printable)))
    tokenizer.save_pretrained(tmp_path)
    responses = [["    return a + b\n", "    return a * b\n"], ["    return b + a\n", "    return 0\n"]]

    class Engine:  # two samples per prompt, as the text the policy "wrote"
        def generate(self, prompts, *, n, **_):
            return [
                [SimpleNamespace(token_ids=tokenizer(r, add_special_tokens=False).input_ids, logprobs=None) for r in group]
                for group in responses
            ]

    worker = RolloutWorker(RolloutConfig(max_new_tokens=32, max_model_len=256), str(tmp_path), "code",
                           max_prompt_tokens=128, task_kwargs={"timeout_s": 5.0}, engine=Engine())
    calls = []
    verify_batch = worker.task.verify_batch
    worker.task.verify_batch = lambda problems, texts: calls.append(texts) or verify_batch(problems, texts)
    rollouts, _, summary = worker.generate([ADD, ADD], [0, 1], n=2, temperature=1.0, seed=0)
    assert calls == [[r for group in responses for r in group]]
    assert list(summary["outcome"]) == [1.0, 0.0, 1.0, 0.0]


def test_humaneval_loads_and_canonical_solutions_pass():
    problems = load_humaneval()
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    p0 = problems[0]
    assert p0.id == "HumanEval/0" and p0.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in p0.meta["tests"] and p0.demos == (p0.answer,)
    for p in problems[:5]:
        assert TASK.verify(p, p.demos[0]).correct, p.id
    # The same solution as a whole function in a fenced block.
    fenced = "```python\n" + p0.prompt + p0.demos[0] + "```"
    assert TASK.verify(p0, fenced).correct
    assert not TASK.verify(p0, "    return False\n").correct
