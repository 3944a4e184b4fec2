"""The sandbox's system-call filter: a classic-BPF program for seccomp, built here by hand (no
libseccomp), that bwrap installs (`--seccomp FD`) on every process of a run just before the
judge starts; every fork inherits it and no process can remove it.

What it denies, and why (a denied call returns EPERM, so the program sees a plain OSError):
- the kernel keyrings (add_key, request_key, keyctl): keys outlive the run and are shared by a
  uid, a channel to carry state from one run to the next and data out of the sandbox;
- other processes' memory (ptrace, process_vm_readv/writev, pidfd_getfd, process_madvise,
  process_mrelease, kcmp);
- mounts, old and new API (mount, umount2, pivot_root, chroot, open_tree, open_tree_attr,
  move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr), and namespaces (unshare,
  setns, clone with a CLONE_NEW* flag): a nested user namespace could mount a tmpfs that no
  limit of the run bounds;
- memory outside the process's address-space limit: memfd_create, memfd_secret and SysV
  shmget (their pages outlive the mappings that RLIMIT_AS counts);
- unix sockets by path (socket(AF_UNIX, ...)): a socket file of the host is reachable through
  any read-only bind (socketpair, which names no path, stays allowed);
- kernel attack surface a test program never needs (bpf, perf_event_open, userfaultfd,
  io_uring_*, kexec_*, reboot, *_module, swapon/off, acct, clock and host-name setters,
  syslog, quotactl, lookup_dcookie, fanotify_init, vhangup, name_to_handle_at,
  open_by_handle_at, iopl, ioperm, uselib).
clone3 fails with ENOSYS instead: its flags sit in memory a filter cannot read, and glibc then
falls back to clone, whose flags it can. A call from another ABI (32-bit int 0x80 on x86_64,
x32) kills the process: the numbers above would mean other calls there.

Layout of the kernel's struct seccomp_data: nr (u32) at 0, arch (u32) at 4, instruction pointer
(u64) at 8, args (6 x u64) from 16; both architectures here are little-endian, so the low half
of argument i is at 16 + 8 i.
"""

from __future__ import annotations

import errno
import platform
import struct

# The classic-BPF opcodes used (linux/filter.h) and seccomp's return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000

_NR, _ARCH, _ARG0_LO = 0, 4, 16
_X32_BIT = 0x40000000
_AF_UNIX = 1
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (linux/sched.h);
# clone takes only the low 32 bits of its flags.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# name -> number, per architecture (arch/x86/entry/syscalls/syscall_64.tbl and the generic
# table, include/uapi/asm-generic/unistd.h, that aarch64 uses). Calls numbered 424 and above
# have the same number everywhere.
_COMMON = {
    "pidfd_getfd": 438, "process_madvise": 440, "process_mrelease": 448, "memfd_secret": 447,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "quotactl_fd": 443, "open_tree_attr": 467,
}
SYSCALLS = {
    "x86_64": dict(_COMMON, **{
        "add_key": 248, "request_key": 249, "keyctl": 250,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "memfd_create": 319, "shmget": 29,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
        "init_module": 175, "finit_module": 313, "delete_module": 176,
        "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164, "clock_settime": 227,
        "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171,
        "syslog": 103, "quotactl": 179, "lookup_dcookie": 212, "fanotify_init": 300, "vhangup": 153,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "iopl": 172, "ioperm": 173, "uselib": 134,
        "clone": 56, "clone3": 435, "socket": 41,
    }),
    "aarch64": dict(_COMMON, **{
        "add_key": 217, "request_key": 218, "keyctl": 219,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "memfd_create": 279, "shmget": 194,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "kexec_load": 104, "kexec_file_load": 294, "reboot": 142,
        "init_module": 105, "finit_module": 273, "delete_module": 106,
        "swapon": 224, "swapoff": 225, "acct": 89, "settimeofday": 170, "clock_settime": 112,
        "clock_adjtime": 266, "adjtimex": 171, "sethostname": 161, "setdomainname": 162,
        "syslog": 116, "quotactl": 60, "lookup_dcookie": 18, "fanotify_init": 262, "vhangup": 58,
        "name_to_handle_at": 264, "open_by_handle_at": 265,
        "clone": 220, "clone3": 435, "socket": 198,
    }),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # linux/audit.h
# Checked on their arguments (clone, socket) or answered otherwise (clone3), not denied outright.
_SPECIAL = ("clone", "clone3", "socket")


def denied_syscalls(machine: str) -> dict[str, int]:
    """The calls the filter answers with EPERM whatever their arguments, by name."""
    return {name: nr for name, nr in SYSCALLS[machine].items() if name not in _SPECIAL}


def _assemble(program: list[tuple]) -> bytes:
    """(op, k) or (jump op, k, true label, false label) or a label string -> struct sock_filter
    array; a jump target is the label's distance past the next instruction (at most 255)."""
    labels, at = {}, 0
    for item in program:
        if isinstance(item, str):
            labels[item] = at
        else:
            at += 1
    out, at = [], 0
    for item in program:
        if isinstance(item, str):
            continue
        op, k, *targets = item
        jt, jf = (labels[t] - at - 1 if t is not None else 0 for t in (targets or [None, None]))
        assert 0 <= jt < 256 and 0 <= jf < 256, item
        out.append(struct.pack("=HBBI", op, jt, jf, k))
        at += 1
    return b"".join(out)


def filter_program(machine: str | None = None) -> bytes:
    """The BPF program (struct sock_filter[]) for this machine's architecture; ValueError on an
    architecture the table above does not cover."""
    machine = machine or platform.machine()
    if machine not in SYSCALLS:
        raise ValueError(f"no system-call table for {machine} (known: {', '.join(SYSCALLS)})")
    nr = SYSCALLS[machine]
    program: list = [
        (_LD_W_ABS, _ARCH),
        (_JEQ_K, _AUDIT_ARCH[machine], None, "kill"),
        (_LD_W_ABS, _NR),
    ]
    if machine == "x86_64":
        program.append((_JGE_K, _X32_BIT, "kill", None))
    program += [
        (_JEQ_K, nr["clone"], "clone", None),
        (_JEQ_K, nr["clone3"], "enosys", None),
        (_JEQ_K, nr["socket"], "socket", None),
    ]
    program += [(_JEQ_K, number, "eperm", None) for number in sorted(denied_syscalls(machine).values())]
    program += [
        (_RET_K, _RET_ALLOW),
        "clone",
        (_LD_W_ABS, _ARG0_LO),
        (_JSET_K, CLONE_NAMESPACE_FLAGS, "eperm", None),
        (_RET_K, _RET_ALLOW),
        "socket",
        (_LD_W_ABS, _ARG0_LO),
        (_JEQ_K, _AF_UNIX, "eperm", None),
        (_RET_K, _RET_ALLOW),
        "eperm",
        (_RET_K, _RET_ERRNO | errno.EPERM),
        "enosys",
        (_RET_K, _RET_ERRNO | errno.ENOSYS),
        "kill",
        (_RET_K, _RET_KILL_PROCESS),
    ]
    return _assemble(program)
