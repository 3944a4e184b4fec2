"""The code sandbox against hostile programs: each fails, within the timeout plus 2 s, leaves no
file outside its work folder and no process, and the calling process lives on. Plus the
configuration, the start-up check and HumanEval (every canonical solution passes, every wrong
one fails)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import repirl_ray
from repirl_ray.config import ConfigError, load_config
from repirl_ray.tasks import sandbox as sandbox_module
from repirl_ray.tasks.code import CodeTask, load_humaneval
from repirl_ray.tasks.sandbox import Sandbox, check_sandbox, sandbox_uid_range

TIMEOUT = 2.0
PROMPT = 'def f(x):\n    """x + 1"""\n'
TESTS = "def check(candidate):\n    assert candidate(2) == 3\n"
MARK = f"repirl-hostile-{uuid.uuid4().hex[:8]}"
PROJECT = Path(repirl_ray.__file__).resolve().parents[1]
JUDGE_FRAGMENT = "class Forfeit(BaseException)"  # in the argv of the judge and of every fork of it

SANDBOX = Sandbox("bwrap", timeout_s=TIMEOUT, memory_mb=512)


def _targets(scratch: Path) -> list[str]:
    """Where a program must not write: home, /tmp, the project, a test folder, shared memory."""
    return [str(Path(p) / MARK) for p in (Path.home(), "/tmp", PROJECT, scratch, "/dev/shm", "/var/tmp", os.getcwd())]


def _leftover_processes(before: set[int]) -> list[str]:
    """Live processes that a sandboxed program started: a sandbox uid (under root), the judge's
    argv (forks of it), or the mark in the argv (a program's own children)."""
    uids = sandbox_uid_range()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in before:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
        uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
        if state != "Z" and (uid in uids or JUDGE_FRAGMENT in cmdline or MARK in cmdline):
            found.append(f"{entry}: {cmdline[:60]!r}")
    return found


def _program(body: str, **values) -> str:
    for key, value in dict(values, MARK=MARK).items():
        body = body.replace(key, repr(value) if key != "MARK" else value)
    return body


WRITE = """
def write_everywhere():
    for path in PATHS:
        try:
            with open(path, "w") as fh:
                fh.write("escaped")
        except OSError:
            pass
"""

# name -> (program, seconds to wait afterwards for anything it left to act)
HOSTILE = {
    "network: TCP connect to the test's loopback port": ("""
import socket
def f(x):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=1)
    s.sendall(b"escaped")
    return x + 1
""", 0.0),
    "write outside (home, /tmp, project, test dir, /dev/shm, cwd)": (WRITE + """
def f(x):
    write_everywhere()
    return None
""", 0.0),
    "double-forked daemon writing 0.5 s later": ("""
import os, time
""" + WRITE + """
def f(x):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(0.5)
            write_everywhere()
            os._exit(0)
        os._exit(0)
    return None
""", 1.5),
    "Popen(start_new_session=True) child writing 0.5 s later": ("""
import subprocess, sys
CHILD = "import time; time.sleep(0.5)\\nfor p in " + repr(PATHS) + ":\\n    try: open(p, 'w').write('x')\\n    except OSError: pass\\n# MARK"
def f(x):
    subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    return None
""", 1.5),
    "fork bomb": ("""
import os
def f(x):
    while True:
        try:
            os.fork()
        except OSError:
            pass
""", 0.0),
    "memory bomb": ("""
def f(x):
    hog = []
    while True:
        hog.append(bytearray(64 << 20))
""", 0.0),
    "busy loop": ("""
def f(x):
    while True:
        pass
""", 0.0),
    "sleep 60 s": ("""
import time
def f(x):
    time.sleep(60)
    return x + 1
""", 0.0),
    "huge output on stdout and stderr": ("""
import os, sys
def f(x):
    line = "pass\\n" * (1 << 18)
    while True:
        sys.stdout.write(line)
        sys.stderr.write(line)
        os.write(1, b"pass\\n")
""", 0.0),
    "disk fill (work folder, /tmp, /dev/shm)": ("""
import os
def f(x):
    for folder in (".", "/tmp", "/dev/shm", "/var/tmp"):
        for i in range(1000):
            try:
                with open(os.path.join(folder, "MARK-%d" % i), "wb") as fh:
                    fh.write(b"\\0" * (8 << 20))
            except OSError:
                break
    return None
""", 0.0),
    "SIGKILL to its parent": ("""
import os, signal
def f(x):
    os.kill(os.getppid(), signal.SIGKILL)
    return None
""", 0.0),
    "SIGKILL to every python process in /proc, then kill(-1)": ("""
import os, signal
def f(x):
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != me:
            try:
                if b"python" in open("/proc/%s/cmdline" % pid, "rb").read():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    os.kill(-1, signal.SIGKILL)
    return None
""", 0.0),
    "sys.exit(0) at import": ("import sys\nsys.exit(0)\n", 0.0),
    "os._exit(0) at import": ("import os\nos._exit(0)\n", 0.0),
    "raise SystemExit(0) in the function": ("def f(x):\n    raise SystemExit(0)\n", 0.0),
    "os._exit(0) in the function": ("import os\ndef f(x):\n    os._exit(0)\n", 0.0),
    "always-equal object": ("""
class AlwaysEqual:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
def f(x):
    return AlwaysEqual()
""", 0.0),
    "int subclass whose __eq__ is always true": ("""
class Int(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def f(x):
    return Int(0)
""", 0.0),
    "forge the verdict: 'pass' to every fd, /proc/1/fd, then exit 0": ("""
import os
def f(x):
    print("pass")
    for fd in range(256):
        try:
            os.write(fd, b"pass\\n")
        except OSError:
            pass
    try:
        for name in os.listdir("/proc/1/fd"):
            with open("/proc/1/fd/" + name, "w") as fh:
                fh.write("pass\\n")
    except OSError:
        pass
    os._exit(0)
""", 0.0),
    "read the environment (a secret env var of the caller)": ("""
import os
def f(x):
    found = "REPIRL_TEST_SECRET" in os.environ
    for pid in os.listdir("/proc"):
        try:
            found = found or b"REPIRL_TEST_SECRET" in open("/proc/%s/environ" % pid, "rb").read()
        except OSError:
            pass
    return x + 1 if found else None
""", 0.0),
    "read hidden files (a secret in /tmp, the project, home)": ("""
import os
def f(x):
    for path in READ:
        try:
            open(path).read()
            return x + 1
        except OSError:
            pass
    return None
""", 0.0),
}

# Reads the tests' expected value out of memory (its own, then the judge's): passes only if
# the tests reached the program's process. The control below shows the scan finds such text.
SCAN = r"""
import ctypes, re
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # dumpable again (it is a fork of the judge): /proc/self/mem opens
PATTERN = re.compile(rb"candidate\(2\) == (\d+)")
def scan(pid):
    try:
        with open("/proc/%s/maps" % pid) as maps, open("/proc/%s/mem" % pid, "rb", 0) as mem:
            for line in maps:
                span, perms = line.split()[:2]
                if "r" not in perms:
                    continue
                lo, hi = (int(v, 16) for v in span.split("-"))
                for at in range(lo, hi, 1 << 22):
                    try:
                        mem.seek(at)
                        chunk = mem.read(min(1 << 22, hi - at) + 64)
                    except (OSError, ValueError, OverflowError):
                        break
                    m = PATTERN.search(chunk)
                    if m:
                        return int(m.group(1))
    except OSError:
        return None
def f(x):
    return scan("self") or scan(1)
"""
HIDDEN_TESTS = "def check(candidate):\n    assert candidate(2) == 7919\n"
GARBAGE = """
import os, struct
def f(x):
    deep = b"[" * 100000 + b"]" * 100000
    for fd in range(3, 64):
        try:
            os.write(fd, struct.pack(">I", len(deep)) + deep)
        except OSError:
            pass
    os._exit(0)
"""
SWALLOWING_TESTS = "def check(candidate):\n    try:\n        candidate(2)\n    except Exception:\n        pass\n"
MAP_TESTS = "def check(candidate):\n    assert all(map(lambda x: candidate(x) == x + 1, [1, 2, 3]))\n"
HOSTILE_TESTS = {
    "StopIteration to end the tests' map() early": ("def f(x):\n    raise StopIteration\n", MAP_TESTS),
    "read the tests from memory (own, and the judge's /proc/1/mem)": (SCAN, HIDDEN_TESTS),
    "garbage on every fd, in tests that catch Exception": (GARBAGE, SWALLOWING_TESTS),
}


@pytest.fixture(scope="module")
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.3)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile")
    (path / "secret.txt").write_text("secret")
    return path


@pytest.fixture
def sentinel():
    """A python process of the caller's that programs try to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _run_hostile(program: str, tests: str, settle: float, scratch: Path):
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    start = time.monotonic()
    result = SANDBOX.run(PROMPT + "\n" + program, tests, "f", prompt=PROMPT)
    wall = time.monotonic() - start
    time.sleep(settle)
    deadline = time.monotonic() + 2.0
    while (procs := _leftover_processes(before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    files = [p for p in _targets(scratch) if os.path.exists(p)]
    files += [str(p) for p in Path("/tmp").glob(MARK + "*")] + [str(p) for p in Path("/dev/shm").glob(MARK + "*")]
    return result, wall, files, procs


@pytest.mark.parametrize("name", list(HOSTILE) + list(HOSTILE_TESTS))
def test_hostile_program_fails_and_leaves_nothing(name, listener, scratch, sentinel, monkeypatch):
    monkeypatch.setenv("REPIRL_TEST_SECRET", MARK)
    secret_reads = [str(scratch / "secret.txt"), str(PROJECT / "pyproject.toml"), os.path.expanduser("~/.bashrc")]
    if name in HOSTILE:
        body, settle = HOSTILE[name]
        tests = TESTS
    else:
        (body, tests), settle = HOSTILE_TESTS[name], 0.0
    program = _program(body, PATHS=_targets(scratch), PORT=listener.getsockname()[1], READ=secret_reads)
    result, wall, files, procs = _run_hostile(program, tests, settle, scratch)
    print(f"\n| {name} | {'pass' if result.passed else 'fail'} ({result.reason[:60]}) | {wall:.2f} | {len(files)} | {len(procs)} |")
    assert not result.passed, result
    assert wall < TIMEOUT + 2.0
    assert files == [] and procs == []
    assert sentinel.poll() is None  # the caller's processes live on (and so does this one)
    with pytest.raises(socket.timeout):
        listener.accept()  # no connection arrived


def test_controls_pass():
    """The same harness passes a correct program, and the memory scan finds text that is there."""
    assert SANDBOX.run(PROMPT + "    return x + 1\n", TESTS, "f", prompt=PROMPT).passed
    planted = SCAN + "\nPLANTED = ''.join(['candidate(2) ', '== 7919'])\n"
    assert SANDBOX.run(PROMPT + "\n" + planted, HIDDEN_TESTS, "f", prompt=PROMPT).passed


def test_inside_the_sandbox():
    """What a program sees: no network interface but loopback, PID 1 is the judge, an empty
    private work folder, hidden home and project, a read-only system, a minimal environment,
    the limits, and (under root) a uid of its own."""
    # Under root a uid of the run's own; otherwise the caller's uid (mapped in a user namespace).
    expected_uids = range(sandbox_uid_range().start, sandbox_uid_range().stop) if os.geteuid() == 0 else [os.getuid()]
    # The work folder is empty, but for the way to the interpreter when it lives under /tmp.
    in_tmp = {p.split("/")[2] for p in sandbox_module._interpreter_paths() if p.startswith("/tmp/")}
    # The project is hidden, but for the way to the interpreter when its venv lives in the
    # project (a clean clone with `make test`'s .venv, as in CI).
    in_project = {Path(p).relative_to(PROJECT).parts[0] for p in sandbox_module._interpreter_paths()
                  if p.startswith(str(PROJECT) + "/")}
    probe = f"""
import os, resource, socket, sys
def f(x):
    assert os.getcwd() == "/tmp" and set(os.listdir(".")) == {in_tmp!r}, os.listdir(".")
    assert set(os.environ) <= {{"PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "HOME", "PWD", "LC_CTYPE"}}, os.environ
    assert os.getppid() == 1 and sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1, os.getpid()]
    seen = set(os.listdir({str(PROJECT)!r})) if os.path.isdir({str(PROJECT)!r}) else set()
    assert seen == {in_project!r}, seen
    assert not os.path.exists({str(PROJECT / "repirl_ray")!r}) and not os.path.exists({str(PROJECT / "README.md")!r})
    assert set(os.listdir("/root")) <= {{".pyenv"}}, os.listdir("/root")
    assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
    for path in ("/usr/x", "/etc/x"):
        try:
            open(path, "w")
            raise AssertionError(path + " is writable")
        except OSError:
            pass
    assert resource.getrlimit(resource.RLIMIT_AS) == (512 << 20, 512 << 20)
    assert resource.getrlimit(resource.RLIMIT_NPROC) == (32, 32)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)
    assert sys.flags.isolated and sys.stdin.read() == ""
    assert os.getuid() in {expected_uids!r}, os.getuid()
    return x + 1
"""
    result = SANDBOX.run(PROMPT + "\n" + probe, TESTS, "f", prompt=PROMPT)
    assert result.passed, result.reason


def test_values_cross_as_exact_plain_data():
    """Containers, big ints, floats (nan too), bytes, sets and dict keys reach the tests with
    their exact types; exceptions of builtin types reach them as such."""
    program = PROMPT + """
def f(x):
    if x == "raise":
        raise KeyError("k")
    return [x, (1, 2.5), {3: b"b", (4,): frozenset({5})}, {True, None}, 10 ** 5000, float("nan"), 1 + 2j, -0.0]
"""
    tests = """
import math
def check(candidate):
    v = candidate([1, "s"])
    assert type(v) is list and v[0] == [1, "s"] and type(v[1]) is tuple and v[1] == (1, 2.5)
    assert v[2] == {3: b"b", (4,): frozenset({5})} and v[3] == {True, None}
    assert v[4] == 10 ** 5000 and math.isnan(v[5]) and v[6] == 1 + 2j and math.copysign(1, v[7]) == -1
    try:
        candidate("raise")
    except KeyError:
        return
    assert False
"""
    result = SANDBOX.run(program, tests, "f", prompt=PROMPT)
    assert result.passed, result.reason


def test_the_tests_see_the_prompt_not_the_programs_redefinitions():
    """A helper of the prompt that the tests call (like HumanEval's poly) cannot be redefined
    by the program to make the tests pass."""
    prompt = "def helper():\n    return 1\n\ndef f(x):\n    '''x + helper()'''\n"
    tests = "def check(candidate):\n    assert candidate(2) == 2 + helper()\n"
    cheat = prompt + "\ndef helper():\n    return 0\n\ndef f(x):\n    return x\n"
    assert not SANDBOX.run(cheat, tests, "f", prompt=prompt).passed
    assert SANDBOX.run(prompt + "    return x + helper()\n", tests, "f", prompt=prompt).passed


def test_check_sandbox_passes_here_and_fails_in_one_line_naming_the_key(monkeypatch):
    check_sandbox("bwrap")
    monkeypatch.setattr(sandbox_module, "bwrap_binary", lambda: "/bin/false")  # a bwrap that cannot start
    with pytest.raises(ConfigError) as err:
        check_sandbox("bwrap")
    message = str(err.value)
    assert "\n" not in message and "code.sandbox" in message and "code.sandbox=process" in message
    monkeypatch.setattr(sandbox_module, "bwrap_binary", lambda: None)
    with pytest.raises(ConfigError, match="code.sandbox.*bwrap not found"):
        check_sandbox("bwrap")


def test_train_stops_at_start_when_the_sandbox_cannot_start(monkeypatch, capsys, tmp_path):
    from repirl_ray.cli import main

    monkeypatch.setattr(sandbox_module, "bwrap_binary", lambda: "/bin/false")
    code = main(["train", "data.task=code", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "code.sandbox" in err


def test_process_mode_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_module, "_warned_process", False)
    with caplog.at_level("WARNING", logger="repirl"):
        Sandbox("process")
        Sandbox("process")
    assert [r.message.startswith("code.sandbox=process") for r in caplog.records] == [True]


@pytest.mark.parametrize("override, key", [
    ("code.sandbox=docker", "code.sandbox"),
    ("code.workers=0", "code.workers"),
    ("code.timeout_s=0", "code.timeout_s"),
    ("code.memory_mb=-1", "code.memory_mb"),
])
def test_code_config_is_checked(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_humaneval_canonical_pass_and_wrong_fail():
    """All 164 canonical solutions pass; a body that raises fails for every problem (no test
    catches NotImplementedError, so it cannot pass by accident)."""
    problems = load_humaneval()
    task = CodeTask(timeout_s=10.0, workers=2)
    canonical = task.verify_batch(problems, [p.demos[0] for p in problems])
    wrong = task.verify_batch(problems, ["    raise NotImplementedError\n"] * len(problems))
    print(f"\nHumanEval: canonical {sum(v.correct for v in canonical)}/164, wrong failing {sum(not v.correct for v in wrong)}/164")
    assert [p.id for p, v in zip(problems, canonical) if not v.correct] == []
    assert [p.id for p, v in zip(problems, wrong) if v.correct] == []
