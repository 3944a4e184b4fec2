"""One memory and process bound for a whole sandbox run: a cgroup per run (v2 with memory.max
and pids.max, or the v1 `memory` hierarchy where that is what the machine mounts).

Every process of the run (bwrap, the judge, the candidate and whatever it forks) lives in the
run's cgroup, so the bound is on their sum, shared memory included: tmpfs pages (the work
folder, /dev/shm), SysV and memfd pages, pipe buffers and page tables are charged to it too,
which per-process rlimits miss. Swap is closed (memory+swap = memory), so the bound is on RAM.
Past it the kernel's OOM killer ends a process of the run (the run fails), never one outside.

On v1 the process bound stays RLIMIT_NPROC (counted per run: a uid per run under root, a user
namespace otherwise): a v1 `pids` cgroup would be a second migration per run, and each costs
a kernel RCU grace period (about 5 ms on a busy 2-core machine), a tenth of a small run.

Runs are children of the cgroup this process is in, so that a deployment's own limits (a
container's, a Ray worker's) stay above them. That needs write access there: root, or a
cgroup delegated to this user. `RunCgroups.detect` says once why not, and the sandbox then
bounds what rlimits can.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass

_names = itertools.count()  # next() on a count is atomic under the GIL: concurrent runs get distinct names


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if tail and tail[0] in ("cgroup", "cgroup2"):
                out.append((fields[3], fields[4], tail[0], set(tail[2].split(",")) if len(tail) > 2 else set()))
    return out


def _own_paths() -> dict[str, str]:
    """controller ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _folder(mount_root: str, mount_point: str, path: str) -> str | None:
    if mount_root != "/" and not (path == mount_root or path.startswith(mount_root + "/")):
        return None  # our cgroup is outside what this mount shows
    rel = path[len(mount_root):] if mount_root != "/" else path
    return os.path.join(mount_point, rel.lstrip("/"))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class RunCgroup:
    """The cgroup of one run: its folder (memory and pids on v2, memory on v1)."""

    version: int
    folders: list[str]

    def enter(self, pids: list[int]) -> None:
        """Move these processes in; what they start from then on is born inside."""
        for folder in self.folders:
            for pid in pids:
                _write(os.path.join(folder, "cgroup.procs"), str(pid))

    def peak_bytes(self) -> int | None:
        """The most memory the run held at once (all its processes, shared memory included)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            with open(os.path.join(self.folders[0], name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None  # memory.peak is there from Linux 5.19

    def remove(self) -> None:
        """Kill whatever is left in it and remove it (a cgroup with processes cannot be)."""
        deadline = time.monotonic() + 2.0
        for folder in self.folders:
            while True:
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                self._kill(folder)
                time.sleep(0.005)

    @staticmethod
    def _kill(folder: str) -> None:
        try:
            with open(os.path.join(folder, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class RunCgroups:
    """Makes a cgroup per run under this process's own, with the run's bounds written in."""

    def __init__(self, version: int, parents: list[str]):
        self.version = version
        self.parents = parents  # one folder: v2's, or v1's memory hierarchy's

    @classmethod
    def detect(cls) -> tuple[RunCgroups | None, str]:
        """(factory, "") when runs can get a cgroup here, else (None, why not). Makes and removes
        a probe cgroup, so a parent that exists but refuses children is found now, not per run."""
        try:
            mounts, own = _mounts(), _own_paths()
        except OSError as exc:
            return None, f"cannot read /proc/self/mountinfo or /proc/self/cgroup ({exc})"
        v1_memory = None
        for root, point, fstype, opts in mounts:
            if fstype == "cgroup2" and "" in own:
                folder = _folder(root, point, own[""])
                if folder and os.path.isdir(folder):
                    try:
                        with open(os.path.join(folder, "cgroup.controllers")) as f:
                            available = set(f.read().split())
                    except OSError:
                        available = set()
                    if {"memory", "pids"} <= available:
                        return cls._probe(cls(2, [folder]))
            if fstype == "cgroup" and "memory" in opts and "memory" in own:
                v1_memory = _folder(root, point, own["memory"])
        if v1_memory:
            return cls._probe(cls(1, [v1_memory]))
        return None, "neither a cgroup2 with the memory and pids controllers nor a cgroup v1 memory hierarchy is mounted"

    @classmethod
    def _probe(cls, factory: RunCgroups) -> tuple[RunCgroups | None, str]:
        try:
            if factory.version == 2:
                factory = cls._v2_parent(factory.parents[0])
            factory.create(1 << 30, 8).remove()
        except OSError as exc:
            return None, f"cannot make a cgroup under {', '.join(factory.parents)} ({exc.strerror or exc})"
        return factory, ""

    @classmethod
    def _v2_parent(cls, own: str) -> RunCgroups:
        """Children get memory and pids only where their parent hands them down, and a cgroup with
        processes of its own cannot (EBUSY, "no internal processes"). So: our own cgroup where it
        hands them down or can start to, else siblings of ours, which our parent hands them to
        already (they are in our cgroup.controllers), where that parent is writable (delegated)."""
        control = os.path.join(own, "cgroup.subtree_control")
        with open(control) as f:
            enabled = set(f.read().split())
        if {"memory", "pids"} <= enabled:
            return cls(2, [own])
        try:
            _write(control, "+memory +pids")
            return cls(2, [own])
        except OSError:
            parent = cls(2, [os.path.dirname(own)])
            parent.create(1 << 30, 8).remove()  # raises where the parent is not ours to write
            return parent

    def create(self, memory_bytes: int, max_pids: int) -> RunCgroup:
        """A run's cgroup; max_pids applies on v2 (v1: the caller's RLIMIT_NPROC)."""
        name = f"repirl-sandbox-{os.getpid()}-{next(_names)}"
        run = RunCgroup(self.version, [os.path.join(p, name) for p in self.parents])
        made = []
        try:
            for folder in run.folders:
                os.mkdir(folder)
                made.append(folder)
            memory = run.folders[0]
            if self.version == 2:
                _write(os.path.join(memory, "memory.max"), str(memory_bytes))
                _write(os.path.join(memory, "pids.max"), str(max_pids))
                settings = {"memory.swap.max": "0", "memory.oom.group": "1"}  # no swap; an OOM ends the whole run
            else:
                _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
                settings = {"memory.memsw.limit_in_bytes": str(memory_bytes)}  # memory + swap: no swap
            for key, value in settings.items():
                # Absent where swap is not accounted: then swapped pages escape the bound (none
                # on a machine without swap, as the ones this was measured on).
                if os.path.exists(os.path.join(memory, key)):
                    _write(os.path.join(memory, key), value)
        except BaseException:
            RunCgroup(self.version, made).remove()
            raise
        return run
