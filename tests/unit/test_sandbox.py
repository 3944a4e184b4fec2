"""The code sandbox against hostile programs: each fails, within the timeout plus 2 s, leaves no
file outside its work folder and no process, and the calling process lives on. Plus the
configuration, the start-up check and HumanEval (every canonical solution passes, every wrong
one fails)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import repirl_ray
from repirl_ray.config import ConfigError, load_config
from repirl_ray.data.reading import load_humaneval
from repirl_ray.sandbox import Sandbox, check_sandbox, seccomp
from repirl_ray.sandbox import runner as sandbox_module
from repirl_ray.sandbox.cgroup import RunCgroups
from repirl_ray.sandbox.runner import sandbox_uid_range
from repirl_ray.tasks.code import CodeTask

TIMEOUT = 2.0
PROMPT = 'def f(x):\n    """x + 1"""\n'
TESTS = "def check(candidate):\n    assert candidate(2) == 3\n"
# The non-root branch imports this file in a child process, which takes the parent's mark.
MARK = os.environ.get("REPIRL_HOSTILE_MARK") or f"repirl-hostile-{uuid.uuid4().hex[:8]}"
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


# --- Sandbox II: the classes of escape a second hostile corpus found under root -----------------
# Each program below earns a pass only if its escape worked (it returns the right answer, 3, only
# then), so a fail verdict is the escape failing, and the harness checks the host besides: no
# file, no process, no kernel key, no connection to the host's sockets, and the run's peak
# memory (its cgroup's, all processes and shared memory) within MEMORY_MB + MEMORY_MARGIN_MB.
MEMORY_MB = 256
ESCAPE_TIMEOUT = 5.0  # page faults are slow on a shared 2-core VM: room to fill what it is allowed
MEMORY_MARGIN_MB = 8  # the cgroup's limit is MEMORY_MB itself; this covers how the kernel batches charges
SYSCALL = seccomp.SYSCALLS[platform.machine()]
SOCKETS = Path(f"/var/lib/{MARK}")  # a host folder that the old hide-list did not cover

KEYRING = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEYRINGS = (-4, -5, -3, -2)  # KEY_SPEC_USER, USER_SESSION, SESSION, PROCESS keyrings
def f(x):
    # An earlier run's key, if one outlived it: the answer it learned.
    for ring in KEYRINGS:
        key = libc.syscall(NR_keyctl, 10, ring, b"user", b"MARK", 0)  # KEYCTL_SEARCH
        if key > 0:
            buf = ctypes.create_string_buffer(64)
            n = libc.syscall(NR_keyctl, 11, key, buf, 64)  # KEYCTL_READ
            if n > 0:
                return int(buf.raw[:n])
    try:
        if "MARK" in open("/proc/keys").read():
            return x + 1
    except OSError:
        pass
    for ring in KEYRINGS:
        libc.syscall(NR_add_key, b"user", b"MARK", b"3", 1, ring)
    return None
"""

UNIX_SOCKETS = """
import os, socket, stat, time
def reach(path):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.2)
        s.connect(path)
        s.sendall(b"escaped")
        return True
    except OSError:
        pass
    try:
        a, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # a socket that names no path, then one
        a.sendto(b"escaped", path)
        return True
    except OSError:
        return False
def f(x):
    found = [p for p in SOCKET_PATHS if os.path.exists(p)]
    deadline = time.monotonic() + 1.0
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys")]
        found += [os.path.join(root, n) for n in files if stat.S_ISSOCK(os.lstat(os.path.join(root, n)).st_mode)]
        if time.monotonic() > deadline:
            break
    reached = [p for p in set(found) | set(SOCKET_PATHS) | {"\\0MARK"} if reach(p)]
    return x + 1 if reached else None
"""

MEMFD = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
CHUNK = b"\\1" * (1 << 20)
TARGET = MEMORY_MB + 64  # MB held at once outside any process's address space
def fill(fd, mb):
    held = 0
    try:
        for _ in range(mb):
            os.write(fd, CHUNK)
            held += 1
    except OSError:  # past RLIMIT_FSIZE (16 MiB a file) or the tmpfs's size
        pass
    return held
def f(x):
    held, keep = 0, []
    for folder in ("/dev/shm", "/tmp"):  # tmpfs: bounded by their sizes, and counted by the cgroup
        fd = os.open(folder + "/MARK", os.O_CREAT | os.O_WRONLY)
        keep.append(fd)
        held += fill(fd, 64)
    while held < TARGET:  # memfd pages are in no mapping, so RLIMIT_AS misses them
        try:
            fd = os.memfd_create("MARK")
        except OSError:
            break
        keep.append(fd)
        held += fill(fd, 16)
    while held < TARGET:  # SysV shm: attached, filled, detached, kept
        shm = libc.shmget(0, 64 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        at = libc.shmat(shm, None, 0) if shm >= 0 else None
        if at in (None, ctypes.c_void_p(-1).value):
            break
        ctypes.memset(at, 1, 64 << 20)
        libc.shmdt(ctypes.c_void_p(at))
        held += 64
    return x + 1 if held >= TARGET else None
"""

PROCESSES = """
import os, time
EACH_MB, CHILDREN = 128, 6  # each within its address-space limit; together 3 x memory_mb
def f(x):
    r, w = os.pipe()
    for _ in range(CHILDREN):
        if os.fork() == 0:
            try:
                hog = bytearray(EACH_MB << 20)
                for i in range(0, len(hog), 4096):
                    hog[i] = 1  # touched: resident, not just reserved
                os.write(w, b"1")
                time.sleep(30)
            finally:
                os._exit(0)
    os.close(w)
    held = 0
    while held * EACH_MB <= MEMORY_MB:
        got = os.read(r, 16)  # empty once every child is gone
        if not got:
            break
        held += len(got)
    return x + 1 if held * EACH_MB > MEMORY_MB else None
"""

NAMESPACES = """
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NEWUSER, NEWNS = 0x10000000, 0x00020000
def f(x):
    made = []
    if libc.unshare(NEWUSER | NEWNS) == 0:
        made.append("unshare")
    pid = libc.syscall(NR_clone, NEWUSER | NEWNS | 17, 0, 0, 0, 0)  # | SIGCHLD, no stack: a fork
    if pid == 0:
        os._exit(0)
    if pid > 0:
        made.append("clone")
    for ns in ("user", "mnt", "net", "pid"):
        try:
            fd = os.open("/proc/1/ns/" + ns, os.O_RDONLY)
            if libc.setns(fd, 0) == 0:
                made.append("setns " + ns)
        except OSError:
            pass
    # A nested user namespace mounts a tmpfs of its own, which no limit of the run sized.
    fill = "mount -t tmpfs none /mnt && head -c 600M /dev/zero > /mnt/MARK && echo filled"
    try:
        run = subprocess.run(["unshare", "-Urm", "sh", "-c", fill], capture_output=True, text=True, timeout=2)
        if "filled" in run.stdout:
            made.append("unshare -Urm")
    except (OSError, subprocess.SubprocessError):
        pass
    return x + 1 if made else None
"""

MOUNT_STORM = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def f(x):
    libc.unshare(0x10000000 | 0x00020000)  # a user and mount namespace of its own, where mounts are allowed
    mounted = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        target = "/tmp/m%d" % mounted
        os.makedirs(target, exist_ok=True)
        mounted += libc.mount(b"none", target.encode(), b"tmpfs", 0, b"size=1g") == 0
        mounted += libc.syscall(NR_fsopen, b"tmpfs", 0) >= 0
        mounted += libc.syscall(NR_open_tree, -100, b"/tmp", 1) >= 0  # AT_FDCWD, OPEN_TREE_CLONE
        mounted += libc.umount2(b"/proc", 2) == 0  # MNT_DETACH
        mounted += libc.syscall(NR_pivot_root, b"/tmp", target.encode()) == 0
    return x + 1 if mounted else None
"""

ESCAPES = {
    "keyring: a key that carries the answer to the next run": KEYRING,
    "unix socket files of the host (path, walk of /, abstract)": UNIX_SOCKETS,
    "memfd, SysV shm, /dev/shm and /tmp past memory_mb": MEMFD,
    "6 processes x 128 MB, each within its rlimit": PROCESSES,
    "nested namespaces (unshare, clone, setns, unshare -Urm + tmpfs)": NAMESPACES,
    "mount storm (mount, fsopen, open_tree, umount2, pivot_root)": MOUNT_STORM,
}


def _escape_program(name: str) -> str:
    body = ESCAPES[name]
    for call, nr in SYSCALL.items():
        body = body.replace(f"NR_{call},", f"{nr},")
    paths = [str(SOCKETS / "stream.sock"), str(SOCKETS / "dgram.sock")]
    body = body.replace("SOCKET_PATHS", repr(paths)).replace("MEMORY_MB", str(MEMORY_MB))
    return PROMPT + "\n" + body.replace("MARK", MARK)


def _key_users() -> dict[int, str]:
    """uid -> its line of /proc/key-users (keys and bytes held): every uid's keys, whoever reads."""
    out = {}
    for line in Path("/proc/key-users").read_text().splitlines():
        uid, _, rest = line.strip().partition(":")
        out[int(uid)] = rest.split()[0:2]  # usage, keys: a key added or left shows here
    return out


def _listen() -> list[socket.socket]:
    """The host's unix sockets a program must not reach: a stream and a datagram socket file in
    SOCKETS, which anyone may connect to, and an abstract one."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(SOCKETS / "stream.sock"))
    stream.listen(8)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(SOCKETS / "dgram.sock"))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + MARK)
    abstract.listen(8)
    for name in ("stream.sock", "dgram.sock"):
        os.chmod(SOCKETS / name, 0o777)
    for sock in (stream, dgram, abstract):
        sock.setblocking(False)
    return [stream, dgram, abstract]


def _arrived(sockets: list[socket.socket]) -> int:
    """Connections or datagrams that reached the host's sockets."""
    count = 0
    for sock in sockets:
        try:
            conn = sock.accept()[0] if sock.type == socket.SOCK_STREAM else sock.recv(64)
            count += 1
            if sock.type == socket.SOCK_STREAM:
                conn.close()
        except BlockingIOError:
            pass
    return count


def _measured_peak(result, measure: str | None, baseline: int) -> int | None:
    """The run's peak from its own cgroup, else (no cgroup for runs) from a cgroup around the
    caller that the test set up: its peak less what the caller held before the run."""
    own = getattr(result, "peak_memory_bytes", None)
    if own is not None or measure is None:
        return own
    return int(Path(measure, "memory.max_usage_in_bytes").read_text()) - baseline


def _attack(name: str, sandbox: Sandbox, measure: str | None = None) -> dict:
    """Run one escape program (twice for the keyring, to carry state across runs) and what it
    left on the host. `measure`: a v1 memory cgroup around this process whose peak this process
    may reset, for a sandbox without cgroups of its own."""
    sockets = _listen()
    keys = _key_users()
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    program = _escape_program(name)
    results, walls, peaks = [], [], []
    try:
        for _ in range(2 if "keyring" in name else 1):
            baseline = 0
            if measure is not None:
                Path(measure, "memory.max_usage_in_bytes").write_text("0")
                baseline = int(Path(measure, "memory.usage_in_bytes").read_text())
            start = time.monotonic()
            result = sandbox.run(program, TESTS, "f", prompt=PROMPT)
            walls.append(time.monotonic() - start)
            results.append(result)
            peaks.append(_measured_peak(result, measure, baseline))
        deadline = time.monotonic() + 2.0
        while (procs := _leftover_processes(before)) and time.monotonic() < deadline:
            time.sleep(0.1)
        files = [p for p in _targets(SOCKETS) if os.path.exists(p)]
        files += [str(p) for p in Path("/tmp").glob(MARK + "*")] + [str(p) for p in Path("/dev/shm").glob(MARK + "*")]
        keys_left = {uid: v for uid, v in _key_users().items() if uid != 0 and keys.get(uid) != v}
        connections = _arrived(sockets)
    finally:
        for sock in sockets:
            sock.close()
        for sock_file in ("stream.sock", "dgram.sock"):
            (SOCKETS / sock_file).unlink(missing_ok=True)
    peak = None if None in peaks else max(peaks)
    return {"name": name, "passed": [r.passed for r in results], "reasons": [r.reason[:70] for r in results],
            "seconds": max(walls), "timeout": sandbox.timeout_s, "peak_mb": None if peak is None else round(peak / 2**20, 1), "files": files,
            "processes": procs, "keys": keys_left, "connections": connections}


def _attack_all(measure: str | None = None) -> list[dict]:
    sandbox = Sandbox("bwrap", timeout_s=ESCAPE_TIMEOUT, memory_mb=MEMORY_MB)
    return [_attack(name, sandbox, measure) for name in ESCAPES]


def _assert_contained(row: dict, bounded: bool) -> None:
    print(f"\n| {row['name']} | {'pass' if any(row['passed']) else 'fail'} ({row['reasons'][-1]}) | "
          f"{row['seconds']:.2f} | {row['peak_mb']} | files {len(row['files'])}, processes {len(row['processes'])}, "
          f"keys {len(row['keys'])}, connections {row['connections']} |")
    assert not any(row["passed"]), row
    assert row["seconds"] < row["timeout"] + 2.0, row
    assert row["files"] == [] and row["processes"] == [] and row["keys"] == {} and row["connections"] == 0, row
    if bounded:
        assert row["peak_mb"] is not None and row["peak_mb"] <= MEMORY_MB + MEMORY_MARGIN_MB, row


@pytest.fixture(scope="module")
def sockets_folder():
    SOCKETS.mkdir(mode=0o755)
    os.chmod(SOCKETS, 0o1777)  # the non-root branch makes its sockets here too
    yield SOCKETS
    shutil.rmtree(SOCKETS, ignore_errors=True)


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_fails_and_the_run_stays_within_its_memory(name, sockets_folder):
    """This process's branch (root here: a uid per run, no user namespace): each escape fails
    and, where runs get a cgroup, the run's peak stays within MEMORY_MB + margin."""
    bounded = RunCgroups.detect()[0] is not None
    _assert_contained(_attack(name, Sandbox("bwrap", timeout_s=ESCAPE_TIMEOUT, memory_mb=MEMORY_MB)), bounded)


def test_the_filter_denies_each_call_and_normal_programs_still_run():
    """Every call on the deny-list fails with EPERM whatever its arguments, clone3 with ENOSYS
    (libc falls back to clone), clone only with a namespace flag, socket only for AF_UNIX; and
    what test programs use still works: threads, fork, subprocess, multiprocessing, socketpair,
    numpy."""
    calls = {name: nr for name, nr in seccomp.denied_syscalls(platform.machine()).items()}
    program = PROMPT + f"""
import ctypes, errno, multiprocessing, os, socket, subprocess, sys, threading
import numpy
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    libc.syscall(nr, *args)
    return ctypes.get_errno()
def f(x):
    wrong = {{name: errno.errorcode.get(e, e) for name, nr in {calls!r}.items() if (e := call(nr, 0, 0, 0, 0, 0)) != errno.EPERM}}
    if call({SYSCALL["clone3"]}, 0, 0) != errno.ENOSYS:
        wrong["clone3"] = "not ENOSYS"
    if call({SYSCALL["clone"]}, 0x10000000 | 17, 0, 0, 0, 0) != errno.EPERM:  # CLONE_NEWUSER | SIGCHLD
        wrong["clone with CLONE_NEWUSER"] = "not EPERM"
    try:
        socket.socket(socket.AF_UNIX)
        wrong["socket(AF_UNIX)"] = "allowed"
    except PermissionError:
        pass
    out = []
    t = threading.Thread(target=out.append, args=(1,))
    t.start()
    t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out.append(os.waitpid(pid, 0)[1] >> 8)
    out.append(int(subprocess.run([sys.executable, "-c", "print(2)"], capture_output=True, text=True).stdout))
    with multiprocessing.Pool(2) as pool:
        out += pool.map(abs, [-3, -4])
    a, b = socket.socketpair()
    a.sendall(b"5")
    out.append(int(b.recv(1)))
    out.append(int(numpy.arange(7).sum()))
    assert wrong == {{}} and out == [1, 7, 2, 3, 4, 5, 21], (wrong, out)
    return x + 1
"""
    result = Sandbox("bwrap", timeout_s=30.0, memory_mb=1024).run(program, TESTS, "f", prompt=PROMPT)
    assert result.passed, result.reason


def test_the_view_is_an_allow_list_without_socket_files():
    """What a program sees of the file system: the system folders, a few files of /etc, the
    interpreter's folders and its own /proc, /dev, /tmp; walking all of it finds no socket file
    and nothing it may write but /tmp and /dev/shm."""
    expected_etc = sorted(n for n in sandbox_module._ETC if os.path.exists("/etc/" + n))
    tops = sorted({p.split("/")[1] for p in sandbox_module._interpreter_paths()}
                  | {p.lstrip("/") for p in sandbox_module._SYSTEM_FOLDERS if os.path.lexists(p)} | {"etc", "proc", "dev", "tmp"})
    program = PROMPT + f"""
import os, stat
def f(x):
    assert sorted(os.listdir("/")) == {tops!r}, os.listdir("/")
    assert sorted(os.listdir("/etc")) == {expected_etc!r}, os.listdir("/etc")
    sockets, writable = [], []
    for root, dirs, files in os.walk("/"):
        if root == "/proc":
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(root, name)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                sockets.append(path)
        if os.access(root, os.W_OK) and not root.startswith(("/tmp", "/dev/shm")):
            writable.append(root)
    assert sockets == [] and writable == [], (sockets, writable)
    return x + 1
"""
    result = Sandbox("bwrap", timeout_s=120.0, memory_mb=1024).run(program, TESTS, "f", prompt=PROMPT)
    assert result.passed, result.reason


def test_without_a_cgroup_it_says_so_once_and_bounds_each_process(monkeypatch, caplog):
    """Where runs cannot get a cgroup, one warning names why and what bounds a run instead, and
    the per-process limits still hold (a memory bomb fails)."""
    monkeypatch.setattr(sandbox_module, "_cgroups_checked", None)
    monkeypatch.setattr(RunCgroups, "detect", classmethod(lambda cls: (None, "no cgroup in this test")))
    with caplog.at_level("WARNING", logger="repirl"):
        sandboxes = [Sandbox("bwrap", timeout_s=TIMEOUT, memory_mb=MEMORY_MB) for _ in range(2)]
    assert [r.message.startswith("code.sandbox=bwrap: no cgroup") and "no cgroup in this test" in r.message
            for r in caplog.records] == [True]
    result = sandboxes[0].run(PROMPT + HOSTILE["memory bomb"][0], TESTS, "f", prompt=PROMPT)
    assert not result.passed and result.peak_memory_bytes is None
    assert sandboxes[1].run(PROMPT + "    return x + 1\n", TESTS, "f", prompt=PROMPT).passed


def test_process_mode_admits_what_bwrap_stops(sockets_folder):
    """The unsafe `process` mode: the same program reaches a host socket file and passes."""
    row = _attack("unix socket files of the host (path, walk of /, abstract)", Sandbox("process", timeout_s=ESCAPE_TIMEOUT))
    assert row["passed"] == [True] and row["connections"] >= 1, row


NOBODY = 65534


def _run_as_nobody(delegate: bool) -> list[dict]:
    """_attack_all in a child process of uid and gid 65534 (nobody): bwrap's user-namespace
    branch. The child lives in cgroups this test makes: delegated to it (chowned: its runs get
    cgroups of their own) or not (its runs fall back to rlimits, and it may only reset and read
    the memory cgroup's peak, to measure them). An interpreter under /root (0700) is bound back
    in a mount namespace of the child's own, as a readable installation would be."""
    factory = RunCgroups.detect()[0]
    folders = [os.path.join(p, f"repirl-test-{MARK}-{'delegated' if delegate else 'measured'}") for p in factory.parents]
    for folder in folders:
        os.mkdir(folder)
        if delegate:
            for name in ("", "cgroup.procs", "tasks", "cgroup.threads", "cgroup.subtree_control"):
                if os.path.exists(os.path.join(folder, name)):
                    os.chown(os.path.join(folder, name), NOBODY, NOBODY)
    measure = None
    if not delegate:
        if factory.version != 1:
            raise AssertionError("the measured non-root branch reads cgroup v1's memory.max_usage_in_bytes")
        measure = folders[0]
        for name in ("memory.max_usage_in_bytes", "memory.usage_in_bytes"):
            os.chown(os.path.join(measure, name), NOBODY, NOBODY)
    setup = [f"echo $$ > {os.path.join(f, 'cgroup.procs')}" for f in folders]
    stash = []
    for path in sandbox_module._interpreter_paths():
        if path.startswith("/root/"):
            stash.append((path, f"/tmp/interpreter-{MARK}-{len(stash)}"))
    if stash:
        setup += [f"mkdir -p {s} && mount --bind {p} {s}" for p, s in stash]
        setup += ["mount -t tmpfs -o mode=755 none /root"]
        setup += [f"mkdir -p {p} && mount --bind {s} {p}" for p, s in stash]
    code = f"import json, sys; import tests.unit.test_sandbox as t; print(json.dumps(t._attack_all({measure!r})))"
    env = {"HOME": "/tmp", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT), "REPIRL_HOSTILE_MARK": MARK}
    setup.append("exec setpriv --reuid {0} --regid {0} --clear-groups env -i {1} {2} -c {3}".format(
        NOBODY, " ".join(f"{k}={v}" for k, v in env.items()), sys.executable, shlex.quote(code)))
    try:
        run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", " && ".join(setup)],
                             cwd=PROJECT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        for _, s in stash:
            os.rmdir(s)
        for folder in folders:
            os.rmdir(folder)


def test_escapes_fail_as_a_non_root_user_with_a_delegated_cgroup(sockets_folder):
    """The user-namespace branch, as nobody, in a cgroup delegated to it: each escape fails, and
    each run's peak stays within MEMORY_MB + margin."""
    if os.geteuid() != 0:  # we are the non-root branch already: the module's own tests ran it
        rows = _attack_all()
    else:
        rows = _run_as_nobody(delegate=True)
    assert [r["name"] for r in rows] == list(ESCAPES)
    for row in rows:
        _assert_contained(row, bounded=RunCgroups.detect()[0] is not None)


def test_as_a_non_root_user_without_a_cgroup_only_each_process_is_bounded(sockets_folder):
    """The same, with no cgroup it may write: every escape fails but the one the rlimits cannot
    stop, several processes each within its own limit, which hold more than MEMORY_MB together
    (its verdict may be a timeout: page faults are slow on a busy machine; the peak is what counts)."""
    rows = {r["name"]: r for r in _run_as_nobody(delegate=False)}
    admitted = "6 processes x 128 MB, each within its rlimit"
    for name, row in rows.items():
        if name != admitted:
            _assert_contained(row, bounded=False)
    print(f"\nadmitted without a cgroup: {rows[admitted]}")
    assert rows[admitted]["peak_mb"] > MEMORY_MB + MEMORY_MARGIN_MB, rows[admitted]
