"""Code task: code extraction, the sandboxed test run, HumanEval loading."""

import os
import time

import pytest

from repirl_ray.tasks.base import DataError, Problem
from repirl_ray.tasks.code import CodeTask, extract_code, load_humaneval

ADD = Problem(
    id="add",
    prompt='def add(a, b):\n    """Return a + b."""\n',
    answer="    return a + b\n",
    meta={"entry_point": "add", "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n"},
)
TASK = CodeTask(timeout_s=2.0)


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
        ("    x = bytearray(4 << 30)\n    return a + b\n", False),  # over the memory limit
    ],
)
def test_verify(response, correct):
    v = TASK.verify(ADD, response)
    assert v.correct is correct and v.format_ok


def test_empty_response_is_a_format_error():
    v = TASK.verify(ADD, "  ")
    assert (v.correct, v.format_ok, v.answer) == (False, False, None)


def test_timeout_kills_the_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    response = (
        "    import subprocess\n"
        f"    child = subprocess.Popen(['sleep', '60'])\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "    while True:\n"
        "        pass\n"
    )
    start = time.monotonic()
    assert not CodeTask(timeout_s=1.0).verify(ADD, response).correct
    assert time.monotonic() - start < 3.0
    pid = int(pid_file.read_text())
    time.sleep(0.1)
    try:  # gone, or a zombie waiting for a reaper
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        pass


def test_sandbox_environment():
    # The program sees an empty environment (Python may add LC_CTYPE), a fresh directory,
    # closed stdin, and the limits.
    probe = (
        "    import os, resource, sys\n"
        "    assert set(os.environ) <= {'PATH', 'LC_CTYPE'}, os.environ\n"
        "    assert sorted(os.listdir('.')) == ['program.py', 'stderr.txt', 'stdout.txt']\n"
        "    assert sys.stdin.read() == ''\n"
        "    assert resource.getrlimit(resource.RLIMIT_AS) == (1 << 30, 1 << 30)\n"
        "    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)\n"
        "    assert sys.flags.isolated\n"
        "    return a + b\n"
    )
    assert TASK.verify(ADD, probe).correct


def test_missing_meta_is_a_data_error():
    with pytest.raises(DataError, match="code problem 'x': meta needs 'entry_point'"):
        TASK.verify(Problem(id="x", prompt="def f():\n", answer=""), "    return 1\n")


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
