"""Aim one fault at one file operation: this thread, this call, this descriptor.

Why not strace's ``-e inject``
------------------------------
strace keeps one countdown per traced thread and per system call: the first
time a thread makes a call, strace copies the global injection table into the
thread (``tcb->inject_vec``) and decrements that thread's copy on every call
that passes its trace filter (``tamper_with_syscall_entering`` in strace's
src/syscall.c). ``when=N`` therefore fails the N-th ``write`` of *every*
thread, and a write to a pipe or an eventfd counts like a write to a file. Its
only narrowing is that trace filter (``-P PATH``, ``--trace-fds=SET`` since
6.3), which runs before the countdown; but it is global, it removes the other
calls from the observer's output as well, it matches descriptor numbers or
path strings rather than files, and the countdown is still per thread. strace
also cannot model what a disk does: ``error=`` replaces the call by an invalid
one (the call never runs, so an injected ``close`` error leaks the descriptor),
and ``retval=`` claims a count without writing a byte, which is not a short
write. python-ptrace or a ptrace loop of our own cannot help either: a task has
one tracer, and the observer's strace already is it.

The mechanism: seccomp user notification (seccomp_unotify(2))
-------------------------------------------------------------
``arm()`` runs in the process under test (a forked child; the filter dies
with it) and installs a seccomp filter whose action for the file-mutating
system calls (``NOTIFIED_SYSCALLS``) is ``SECCOMP_RET_USER_NOTIF``. Opens are
only notified when their flags ask for writing, creating, truncating or
O_TMPFILE (checked in the filter itself, from the flags register), so reading
costs nothing. The listener descriptor goes to the parent over a socketpair
(SCM_RIGHTS), and a ``Listener`` thread *in the parent* answers every
notification. It must not be a thread of the process under test: C extensions
such as h5py hold the GIL across ``write(2)``, so a listener that needs the GIL
inside that process would deadlock.

For each notification the listener resolves what the call acts on in the
target (``/proc/TID/fd/N`` stat and link, path arguments read with
``process_vm_readv`` and resolved against the target's cwd or dirfd), counts
the call and answers it (a call abandoned meanwhile makes the answer fail with
ENOENT and is not counted; before acting on bytes read from the target, the
short write checks ``SECCOMP_IOCTL_NOTIF_ID_VALID`` as seccomp_unotify(2) asks):

- let it run: ``SECCOMP_USER_NOTIF_FLAG_CONTINUE`` (every call that is not aimed);
- an errno: the kernel returns -1/errno and the call is not performed;
- a short write: the listener performs a prefix of the write itself on a
  ``pidfd_getfd(2)`` duplicate of the target's descriptor (same open file
  description, so the same offset and O_APPEND), with the bytes read from the
  target, and answers with that count, which is what a filling disk does;
- a close error: ``SECCOMP_IOCTL_NOTIF_ADDFD`` with ``SECCOMP_ADDFD_FLAG_SETFD``
  puts /dev/null (read-only, close-on-exec) in the descriptor's slot, which
  releases the target's reference to the file exactly as ``close(2)`` would
  (flush, POSIX locks dropped, the description freed with its last reference),
  then the call is answered with the errno. What the target sees: ``close``
  returns -1 with the errno, the file is closed, and the descriptor number stays
  taken by /dev/null until the program closes it again or exits (Linux programs
  must not retry ``close``; if one does, it closes /dev/null and gets 0);
- persistent faults: from the aimed call on, every later eligible call on the
  same device (``st_dev``) fails with the errno where that call's man page
  lists it (``PERSISTENT_ERRNOS``: a failing disk's EIO becomes EROFS where
  EIO is not listed); ``close`` is never failed by persistence, and calls
  whose man page lists none of them (``unlink`` on a full disk) run.

Identity of a call. A call is named ``(thread rank, family, ordinal)``: the
ordinal counts the *eligible* calls of that family (``FAMILIES``: ``write``
covers write/pwrite64/writev/pwritev/pwritev2, ...) made by that thread, from
1. Rank 0 is the thread that called ``arm()``; every other thread (of that
process or of any descendant) is ranked by thread id at the moment it is first
seen, together with the still-running threads of its process that have a
lower id. Linux hands out ids in increasing order until ``pid_max`` wraps, so
for a program whose threads are created in a fixed order, the ranks are the
creation order and are the same on every run. Ineligible calls (pipes,
sockets, eventfds, ttys, /dev/null, memfds, reads) never count, so a log line
or a thread pool's wake-up cannot shift an ordinal.

Eligible calls are file operations on regular files, directories and symbolic
links (O_TMPFILE files and temp files outside any root included) for which the
caller's ``eligible(path, kind)`` says yes; the default takes everything
outside /proc, /sys and /dev, plus /dev/shm. ``close`` is eligible only for a
regular file open for writing. ``sync()`` has no file: it is always counted
and never faulted, because sync(2) says it "is always successful" and a
program cannot observe a failed one. Errnos come from ``MAN_PAGE_ERRNOS``
only; note that close(2) lists ENOSPC and EDQUOT (for NFS) besides EIO.

Kernel requirements: Linux >= 5.9 (USER_NOTIF 5.0, FLAG_CONTINUE 5.5,
``pidfd_getfd`` 5.6, TSYNC_ESRCH 5.7, NOTIF_ADDFD 5.9), on x86_64 or aarch64,
with seccomp filters enabled and ptrace-level access from the parent to the
child (``pidfd_getfd`` and ``process_vm_readv`` need it; Yama's default scope
allows a parent). ``SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`` (5.19) is used
when present: once a call is being decided, a signal to the target cannot
abandon and restart it. Without it, such a call is answered ENOENT by the
kernel and comes back as a new notification; it is counted once. The filter
is installed without ``CAP_SYS_ADMIN`` by setting ``no_new_privs`` first (a
set-uid program run under the injector does not gain privileges).
``injector_problem()`` checks all of this once, with a real probe.

Limits (what is not covered):

- only the calls in ``NOTIFIED_SYSCALLS``; not ``close_range``, ``io_uring``,
  ``splice``/``vmsplice``/``tee``, ``fchmod``/``fchown``/xattrs, shared
  writable ``mmap`` stores, nor 32-bit (i386/x32) entry points;
- the filter covers the arming process's threads (TSYNC) and everything they
  start afterwards (threads, forks, exec'd programs); it cannot be removed, so
  once the ``Listener`` stops, each notified call of a still-running target
  fails with ENOSYS (kill the tree before stopping);
- short writes are for the write family only; ``copy_file_range``/``sendfile``
  get errnos only;
- paths are resolved in the listener's mount namespace (no chroot, no other
  mount namespace); thread ids are assumed not to wrap around during a run;
- strace attached to the target works (its syscall-entry stop comes before
  seccomp, and it prints the answered result), but not with strace's
  ``--seccomp-bpf``: that mode waits for SECCOMP_RET_TRACE stops, which
  USER_NOTIF outranks (seccomp(2)), so once strace has seen one seccomp-stop
  in a process, the notified calls of that process are missing from its output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_module
import functools
import os
import platform
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

__all__ = [
    "FAMILIES",
    "MAN_PAGE_ERRNOS",
    "NOTIFIED_SYSCALLS",
    "PERSISTENT_ERRNOS",
    "Aim",
    "Channel",
    "ChildRun",
    "Errno",
    "Fault",
    "FileKind",
    "Fired",
    "InjectorUnavailable",
    "Listener",
    "Log",
    "Point",
    "ProgramRun",
    "ShortWrite",
    "arm",
    "default_eligible",
    "injector_problem",
    "run_in_child",
    "run_program",
]

FileKind = Literal["regular", "directory", "symlink"]

# system call -> family; an ordinal counts the eligible calls of one family in one thread
FAMILIES: Mapping[str, str] = {
    "open": "open", "openat": "open", "openat2": "open", "creat": "open",
    "write": "write", "pwrite64": "write", "writev": "write", "pwritev": "write", "pwritev2": "write",
    "ftruncate": "truncate", "truncate": "truncate",
    "fallocate": "fallocate",
    "fsync": "fsync", "fdatasync": "fsync",
    "sync_file_range": "sync_file_range",
    "sync": "sync",
    "syncfs": "syncfs",
    "close": "close",
    "rename": "rename", "renameat": "rename", "renameat2": "rename",
    "link": "link", "linkat": "link",
    "unlink": "unlink", "unlinkat": "unlink",  # unlinkat(AT_REMOVEDIR) counts as rmdir
    "rmdir": "rmdir",
    "mkdir": "mkdir", "mkdirat": "mkdir",
    "symlink": "symlink", "symlinkat": "symlink",
    "mknod": "mknod", "mknodat": "mknod",
    "copy_file_range": "copy", "sendfile": "copy",
}  # fmt: skip
NOTIFIED_SYSCALLS = tuple(FAMILIES)

# The disk faults each system call may report, and only those its man page (man-pages 6.03,
# ERRORS) lists: an errno a call can never return makes correct programs fail for nothing.
MAN_PAGE_ERRNOS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "write": (
        ("ENOSPC", "EDQUOT", "EIO"),
        "write(2): EDQUOT, EIO, ENOSPC; no EROFS (the descriptor is open)",
    ),
    "pwrite64": (("ENOSPC", "EDQUOT", "EIO"), "pwrite(2): 'any error specified for write(2)'"),
    "writev": (("ENOSPC", "EDQUOT", "EIO"), "readv(2): 'The errors are as given for read(2) and write(2)'"),
    "pwritev": (("ENOSPC", "EDQUOT", "EIO"), "readv(2): as for write(2)"),
    "pwritev2": (("ENOSPC", "EDQUOT", "EIO"), "readv(2): as for write(2)"),
    # open(2): ENOSPC 'pathname was to be created', EDQUOT 'Where O_CREAT is specified, the file
    # does not exist', EROFS 'read-only filesystem and write access was requested'; no EIO.
    "open": (("ENOSPC", "EDQUOT", "EROFS"), "open(2): ENOSPC/EDQUOT only when creating; EROFS; no EIO"),
    "openat": (("ENOSPC", "EDQUOT", "EROFS"), "open(2), as open"),
    "openat2": (("ENOSPC", "EDQUOT", "EROFS"), "openat2(2): 'the same errors as openat(2)'"),
    "creat": (("ENOSPC", "EDQUOT", "EROFS"), "open(2), as open"),
    "truncate": (("EIO", "EROFS"), "truncate(2): EIO 'updating the inode', EROFS; no ENOSPC/EDQUOT"),
    "ftruncate": (("EIO",), "truncate(2): EIO; EROFS is a path error, not a descriptor's"),
    "fallocate": (("ENOSPC", "EIO"), "fallocate(2): ENOSPC, EIO; no EDQUOT"),
    "fsync": (
        ("EIO", "ENOSPC", "EDQUOT"),
        "fsync(2): EIO, ENOSPC, and ENOSPC/EDQUOT on NFS-like filesystems",
    ),
    "fdatasync": (("EIO", "ENOSPC", "EDQUOT"), "fsync(2), as fsync"),
    "sync_file_range": (("EIO", "ENOSPC"), "sync_file_range(2): EIO, ENOSPC"),
    "sync": ((), "sync(2): 'sync() is always successful'"),
    "syncfs": (("EIO", "ENOSPC", "EDQUOT"), "sync(2): syncfs() EIO, ENOSPC, EDQUOT"),
    "close": (("EIO", "ENOSPC", "EDQUOT"), "close(2): EIO; ENOSPC, EDQUOT 'On NFS'"),
    "rename": (("ENOSPC", "EDQUOT", "EROFS"), "rename(2): ENOSPC, EDQUOT, EROFS; no EIO"),
    "renameat": (("ENOSPC", "EDQUOT", "EROFS"), "rename(2), as rename"),
    "renameat2": (("ENOSPC", "EDQUOT", "EROFS"), "rename(2), as rename"),
    "link": (("ENOSPC", "EDQUOT", "EIO", "EROFS"), "link(2): EDQUOT, EIO, ENOSPC, EROFS"),
    "linkat": (("ENOSPC", "EDQUOT", "EIO", "EROFS"), "link(2), as link"),
    "unlink": (("EIO", "EROFS"), "unlink(2): EIO, EROFS; never ENOSPC/EDQUOT"),
    "unlinkat": (("EIO", "EROFS"), "unlink(2), as unlink (with AT_REMOVEDIR: as rmdir)"),
    "rmdir": (("EROFS",), "rmdir(2): EROFS; no EIO, ENOSPC or EDQUOT"),
    "mkdir": (("ENOSPC", "EDQUOT", "EROFS"), "mkdir(2): EDQUOT, ENOSPC, EROFS; no EIO"),
    "mkdirat": (("ENOSPC", "EDQUOT", "EROFS"), "mkdir(2), as mkdir"),
    "symlink": (("ENOSPC", "EDQUOT", "EIO", "EROFS"), "symlink(2): EDQUOT, EIO, ENOSPC, EROFS"),
    "symlinkat": (("ENOSPC", "EDQUOT", "EIO", "EROFS"), "symlink(2), as symlink"),
    "mknod": (("ENOSPC", "EDQUOT", "EROFS"), "mknod(2): EDQUOT, ENOSPC, EROFS; no EIO"),
    "mknodat": (("ENOSPC", "EDQUOT", "EROFS"), "mknod(2), as mknod"),
    "copy_file_range": (("ENOSPC", "EIO"), "copy_file_range(2): EIO, ENOSPC; no EDQUOT"),
    "sendfile": (("EIO",), "sendfile(2): EIO only; no ENOSPC"),
}
# A persistent fault is a state of the device: what each later call on it fails with, in order of
# preference among the errnos its man page lists (a failing disk goes read-only where EIO is not listed).
PERSISTENT_ERRNOS: Mapping[str, tuple[str, ...]] = {
    "ENOSPC": ("ENOSPC",),
    "EDQUOT": ("EDQUOT",),
    "EIO": ("EIO", "EROFS"),
    "EROFS": ("EROFS",),
}


class InjectorUnavailable(RuntimeError):
    """The seccomp injector cannot run here (or the armed child failed); ``str()`` says why."""


# -- faults and aims --------------------------------------------------------------------------


@dataclass(frozen=True)
class Errno:
    """Fail the call with this errno (a name such as ``"ENOSPC"``) without performing it.

    On ``close`` the descriptor is released all the same, as the kernel does.
    """

    name: str

    def __post_init__(self) -> None:
        if not hasattr(errno_module, self.name) or not self.name.startswith("E"):
            raise ValueError(f"{self.name!r} is not an errno name")

    @property
    def code(self) -> int:
        return int(getattr(errno_module, self.name))


@dataclass(frozen=True)
class ShortWrite:
    """Write only the first ``keep`` bytes (default: half) and return that count, as a filling disk does.

    A write of fewer than 2 bytes cannot be short: it fails with ENOSPC instead. With
    ``Aim(persistent=True)`` the disk is then full: later calls fail with ENOSPC.
    """

    keep: int | None = None


Fault = Errno | ShortWrite


@dataclass(frozen=True)
class Aim:
    """The fault for the ``ordinal``-th eligible call of ``family`` made by the thread ranked ``rank``."""

    rank: int
    family: str
    ordinal: int
    fault: Fault
    persistent: bool = False

    @classmethod
    def at(cls, point: Point, fault: Fault, *, persistent: bool = False) -> Aim:
        return cls(point.rank, point.family, point.ordinal, fault, persistent)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.rank, self.family, self.ordinal)

    def persistent_errno(self) -> str | None:
        if not self.persistent:
            return None
        return self.fault.name if isinstance(self.fault, Errno) else "ENOSPC"

    def validate(self) -> None:
        if self.family not in set(FAMILIES.values()):
            raise ValueError(f"unknown family {self.family!r}; choose from {sorted(set(FAMILIES.values()))}")
        if self.rank < 0 or self.ordinal < 1:
            raise ValueError(f"rank must be >= 0 and ordinal >= 1, not {self.rank}/{self.ordinal}")
        if isinstance(self.fault, ShortWrite):
            if self.family != "write":
                raise ValueError(f"a short write is a fault of the write family only, not of {self.family!r}")
            if self.fault.keep is not None and self.fault.keep < 1:
                raise ValueError(f"ShortWrite.keep must be at least 1 byte, not {self.fault.keep}")
            return
        listed = {e for name, fam in FAMILIES.items() if fam == self.family for e in MAN_PAGE_ERRNOS[name][0]}
        if self.fault.name not in listed:
            reasons = "; ".join(
                MAN_PAGE_ERRNOS[name][1] for name, fam in FAMILIES.items() if fam == self.family
            )
            raise ValueError(
                f"{self.fault.name} is never returned by the {self.family} family ({reasons}); "
                f"its man pages list {sorted(listed) or 'no disk error'}"
            )


# -- what the listener reports ----------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One eligible file operation, as the listener saw it before answering it."""

    seq: int  # order among all eligible calls of the run
    rank: int
    tid: int
    pid: int  # the thread's process
    syscall: str
    family: str
    ordinal: int
    fd: int | None
    path: str  # the file acted on ('' for sync); an O_TMPFILE open: the directory
    kind: FileKind | None  # None for sync
    tmpfile: bool
    second: str | None  # rename/link destination
    errnos: tuple[str, ...]  # the disk errors this very call may return (its man page)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.rank, self.family, self.ordinal)

    def describe(self) -> str:
        where = f" fd {self.fd}" if self.fd is not None else ""
        what = self.path + (f" -> {self.second}" if self.second else "")
        extra = ", O_TMPFILE" if self.tmpfile else ""
        return (
            f"{self.syscall} (thread rank {self.rank}, {self.family} #{self.ordinal}){where} "
            f"{what or '(no file)'} [{self.kind or 'none'}{extra}]"
        )

    def same_operation(self, other: Point) -> bool:
        """Same key, system call, kind and directory (temp names and inode numbers differ run to run)."""
        return (
            self.key == other.key
            and self.syscall == other.syscall
            and self.kind == other.kind
            and self.tmpfile == other.tmpfile
            and os.path.dirname(self.path) == os.path.dirname(other.path)
        )


@dataclass(frozen=True)
class Fired:
    """A call the listener answered with a fault. ``result``: what the call returned (-errno or a count)."""

    point: Point
    aim: Aim
    action: Literal["errno", "short-write", "close-error"]
    errno: str | None
    result: int
    requested: int | None = None  # bytes the short write asked for
    aimed: bool = True  # False: a later call failed by the aim's persistent fault

    def describe(self) -> str:
        if self.action == "short-write":
            outcome = f"wrote {self.result} of {self.requested} bytes"
        else:
            outcome = f"-1 {self.errno}" + (" (descriptor released)" if self.action == "close-error" else "")
        how = "aimed" if self.aimed else "persistent"
        return f"{self.point.describe()}: {outcome} ({how})"


@dataclass
class Log:
    """What one armed run did: every eligible call (``points``) and every fault answered (``fired``)."""

    points: list[Point] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # aims reached but not fired, and why
    problems: list[str] = field(default_factory=list)  # notifications the listener could not decode
    notified: int = 0  # notifications received, eligible or not
    armed_pid: int = 0
    armed_tid: int = 0
    killable_waits: bool = False  # SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV was available (Linux >= 5.19)

    def landed(self, aim: Aim) -> Fired | None:
        return next((f for f in self.fired if f.aimed and f.aim == aim), None)

    def misfire(self, aim: Aim, planned: Point) -> str | None:
        """None when ``aim`` fired on the operation ``planned`` (from a dry run); else what happened."""
        hit = self.landed(aim)
        if hit is None:
            why = next((r for r in self.refused if r.startswith(_aim_text(aim))), None)
            return why or f"{_aim_text(aim)} never came: the faulted run made fewer such calls"
        if not hit.point.same_operation(planned):
            return f"the fault landed on {hit.point.describe()} instead of {planned.describe()}"
        return None


def _aim_text(aim: Aim) -> str:
    return f"thread rank {aim.rank} {aim.family} #{aim.ordinal}"


def default_eligible(path: str, kind: FileKind) -> bool:
    """Files of a save: anything outside /proc, /sys and /dev (memfds and SysV segments excluded), plus /dev/shm."""
    if path.startswith("/dev/shm/"):  # noqa: S108 - a name to match, not a file we create
        return True
    return path.startswith("/") and not path.startswith(("/proc/", "/sys/", "/dev/", "/memfd:", "/SYSV"))


# -- kernel interface -------------------------------------------------------------------------

_SECCOMP_SET_MODE_FILTER = 1
_FLAG_TSYNC = 1 << 0
_FLAG_NEW_LISTENER = 1 << 3
_FLAG_TSYNC_ESRCH = 1 << 4
_FLAG_WAIT_KILLABLE_RECV = 1 << 5
_RET_ALLOW = 0x7FFF0000
_RET_USER_NOTIF = 0x7FC00000
_USER_NOTIF_FLAG_CONTINUE = 1
_ADDFD_FLAG_SETFD = 1
_PR_SET_NO_NEW_PRIVS = 38
_NR_PIDFD_GETFD = 438  # the same number on every architecture (added after the tables were unified)


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


_IOCTL_RECV = _ioc(3, 0, 80)  # _IOWR('!', 0, struct seccomp_notif)
_IOCTL_SEND = _ioc(3, 1, 24)  # _IOWR('!', 1, struct seccomp_notif_resp)
_IOCTL_ID_VALID = _ioc(1, 2, 8)  # _IOW('!', 2, __u64)
_IOCTL_ADDFD = _ioc(1, 3, 24)  # _IOW('!', 3, struct seccomp_notif_addfd)

_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_AT_REMOVEDIR = 0x200
_AT_EMPTY_PATH = 0x1000
_O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY
_OPEN_WRITE_MASK = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_TMPFILE_BIT
_PATH_MAX = 4096
_PAGE = 4096


class _SeccompData(ctypes.Structure):
    _fields_ = [
        ("nr", ctypes.c_int32),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class _Notif(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", _SeccompData),
    ]


class _Resp(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class _AddFd(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@dataclass(frozen=True)
class _Arch:
    audit: int
    seccomp_nr: int
    numbers: Mapping[str, int]
    # system calls whose open flags sit in a register (argument index): the filter only notifies writers
    open_flags: Mapping[str, int]


_X86_64_NUMBERS: Mapping[str, int] = {
    "open": 2, "openat": 257, "openat2": 437, "creat": 85,
    "write": 1, "pwrite64": 18, "writev": 20, "pwritev": 296, "pwritev2": 328,
    "ftruncate": 77, "truncate": 76, "fallocate": 285, "fsync": 74, "fdatasync": 75,
    "sync_file_range": 277, "sync": 162, "syncfs": 306, "close": 3,
    "rename": 82, "renameat": 264, "renameat2": 316, "link": 86, "linkat": 265,
    "unlink": 87, "unlinkat": 263, "rmdir": 84, "mkdir": 83, "mkdirat": 258,
    "symlink": 88, "symlinkat": 266, "mknod": 133, "mknodat": 259,
    "copy_file_range": 326, "sendfile": 40,
}  # fmt: skip
# asm-generic numbering: only the *at forms exist
_AARCH64_NUMBERS: Mapping[str, int] = {
    "openat": 56, "openat2": 437,
    "write": 64, "pwrite64": 68, "writev": 66, "pwritev": 70, "pwritev2": 287,
    "ftruncate": 46, "truncate": 45, "fallocate": 47, "fsync": 82, "fdatasync": 83,
    "sync_file_range": 84, "sync": 81, "syncfs": 267, "close": 57,
    "renameat": 38, "renameat2": 276, "linkat": 37, "unlinkat": 35, "mkdirat": 34,
    "symlinkat": 36, "mknodat": 33, "copy_file_range": 285, "sendfile": 71,
}  # fmt: skip
_X86_64 = _Arch(
    audit=0xC000003E, seccomp_nr=317, numbers=_X86_64_NUMBERS, open_flags={"open": 1, "openat": 2}
)
_AARCH64 = _Arch(audit=0xC00000B7, seccomp_nr=277, numbers=_AARCH64_NUMBERS, open_flags={"openat": 2})


def _arch() -> _Arch | None:
    if not sys.platform.startswith("linux") or sys.maxsize <= 2**32:
        return None
    return {"x86_64": _X86_64, "aarch64": _AARCH64}.get(platform.machine())


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    libc.ioctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    libc.process_vm_readv.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_Iovec),
        ctypes.c_ulong,
        ctypes.POINTER(_Iovec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    return libc


def _ioctl(fd: int, request: int, arg: ctypes.Structure | ctypes.c_uint64) -> int:
    """ioctl(2) on the listener; raises OSError. (ctypes releases the GIL for the call.)"""
    ret = _libc().ioctl(fd, request, ctypes.addressof(arg))
    if ret < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(ret)


def _filter_program(arch: _Arch) -> bytes:
    """The classic-BPF program: notify the file-mutating calls (writer opens only), allow the rest."""
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JSET|K, BPF_RET|K
    code: list[tuple[int, int | str, int | str, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, "allow", arch.audit),
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    for name, nr in arch.numbers.items():
        if name not in arch.open_flags:
            code.append((jeq, "notify", 0, nr))
    for name, arg in arch.open_flags.items():
        code += [
            (jeq, 0, 2, arch.numbers[name]),
            (ld, 0, 0, 16 + 8 * arg),  # low word of the flags argument (little-endian)
            (jset, "notify", "allow", _OPEN_WRITE_MASK),
        ]
    labels = {"allow": len(code), "notify": len(code) + 1}
    code += [(ret, 0, 0, _RET_ALLOW), (ret, 0, 0, _RET_USER_NOTIF)]
    out = bytearray()
    for index, (op, jt, jf, k) in enumerate(code):
        t = labels[jt] - index - 1 if isinstance(jt, str) else jt
        f = labels[jf] - index - 1 if isinstance(jf, str) else jf
        out += bytes(_SockFilter(op, t, f, k))
    return bytes(out)


def _install_filter(arch: _Arch) -> tuple[int, bool]:
    """Install the filter on this process (all its threads); return the listener fd and whether waits are killable."""
    libc = _libc()
    program = _filter_program(arch)
    count = len(program) // ctypes.sizeof(_SockFilter)
    filters = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    base = _FLAG_NEW_LISTENER | _FLAG_TSYNC | _FLAG_TSYNC_ESRCH
    last = 0
    for flags in (base | _FLAG_WAIT_KILLABLE_RECV, base):
        for attempt in range(2):
            fd = libc.syscall(
                ctypes.c_long(arch.seccomp_nr),
                ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                ctypes.c_long(flags),
                ctypes.byref(prog),
            )
            if fd >= 0:
                return int(fd), bool(flags & _FLAG_WAIT_KILLABLE_RECV)
            last = ctypes.get_errno()
            if last == errno_module.EACCES and attempt == 0:
                # without CAP_SYS_ADMIN a filter needs no_new_privs (seccomp(2))
                if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    break
                continue
            break
        if last != errno_module.EINVAL:  # EINVAL: this kernel lacks a flag; retry without the newest
            break
    hint = {
        errno_module.EINVAL: "this kernel lacks seccomp user notification with TSYNC (Linux >= 5.9 is needed)",
        errno_module.ENOSYS: "seccomp is not available in this kernel",
        errno_module.EACCES: "seccomp filters are not permitted here",
        errno_module.EPERM: "seccomp filters are not permitted here (a container profile?)",
        errno_module.ESRCH: "another thread of this process has a different seccomp filter",
        errno_module.EBUSY: "this process already has a seccomp listener",
    }.get(last, "")
    raise InjectorUnavailable(f"seccomp(SET_MODE_FILTER) failed: {os.strerror(last)}. {hint}".strip())


def _read_memory(tid: int, address: int, size: int) -> bytes:
    """Up to ``size`` bytes of the target's memory at ``address`` (fewer where a page is unmapped)."""
    if size <= 0 or address == 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    # one remote element per page: process_vm_readv stops at the first element it cannot read
    remotes: list[tuple[int, int]] = []
    at, end = address, address + size
    while at < end:
        step = min(end, (at // _PAGE + 1) * _PAGE) - at
        remotes.append((at, step))
        at += step
    got = 0
    for chunk in range(0, len(remotes), 1024):  # IOV_MAX
        part = remotes[chunk : chunk + 1024]
        remote = (_Iovec * len(part))(*[_Iovec(a, n) for a, n in part])
        local = _Iovec(ctypes.cast(ctypes.byref(buf, got), ctypes.c_void_p), sum(n for _, n in part))
        n = _libc().process_vm_readv(tid, ctypes.byref(local), 1, remote, len(part), 0)
        if n <= 0:
            break
        got += n
        if n < local.len:
            break
    return buf.raw[:got]


def _read_cstring(tid: int, address: int) -> bytes:
    raw = _read_memory(tid, address, _PATH_MAX)
    end = raw.find(b"\0")
    if end < 0:
        raise _Undecodable(f"no NUL-terminated path at {address:#x} within {_PATH_MAX} bytes")
    return raw[:end]


class _Undecodable(Exception):
    """A notification's arguments could not be read (the target is gone or passed a bad pointer)."""


def _s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _s64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


# -- the channel and the child side -----------------------------------------------------------


class Channel:
    """A socketpair made before the fork: the child end goes to ``arm()``, the parent end to ``Listener``.

    From a fork server, send ``child_fd()`` to the child (SCM_RIGHTS) and pass the received
    number to ``arm()``. One channel serves one armed process.
    """

    def __init__(self) -> None:
        self._parent, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def child_fd(self) -> int:
        return self._child.fileno()

    def close_child_end(self) -> None:
        self._child.close()

    def close_parent_end(self) -> None:
        self._parent.close()

    @property
    def parent(self) -> socket.socket:
        return self._parent


def arm(channel: Channel | int, *, timeout: float | None = 60.0) -> None:
    """Install the injector's filter on this process and wait until the parent's ``Listener`` serves it.

    Call it in the process under test, after forking (and after any tracer attached). Every
    thread of this process and everything it starts afterwards are covered. Raises
    InjectorUnavailable (the listener is told why) when the filter cannot be installed.
    """
    if isinstance(channel, Channel):
        channel.close_parent_end()
        sock = channel._child
    else:
        sock = socket.socket(fileno=channel)
    try:
        arch = _arch()
        if arch is None:
            message = f"the seccomp injector supports Linux on x86_64/aarch64, not {sys.platform}/{platform.machine()}"
            sock.sendall(b"ERR " + message.encode())
            raise InjectorUnavailable(message)
        try:
            listener, killable = _install_filter(arch)
        except InjectorUnavailable as err:
            sock.sendall(b"ERR " + str(err).encode())
            raise
        try:
            hello = f"OK {os.getpid()} {threading.get_native_id()} {int(killable)}".encode()
            socket.send_fds(sock, [hello], [listener])
            sock.settimeout(timeout)
            try:
                ack = sock.recv(1)
            except TimeoutError as err:
                raise InjectorUnavailable(f"the listener did not answer within {timeout} s") from err
            if ack != b"S":
                raise InjectorUnavailable("the listener went away before serving (its process ended?)")
        finally:
            os.close(listener)  # the parent holds its own copy; this close is already served
    finally:
        sock.close()


# -- the parent side --------------------------------------------------------------------------


@dataclass
class _Call:
    """A decoded notification: what the call acts on."""

    syscall: str
    family: str
    fd: int | None
    path: str
    kind: str | None  # regular, directory, symlink, other; None for sync
    tmpfile: bool = False
    dev: int | None = None
    second: str | None = None
    creating: bool = False
    write_access: bool = False


class _Threads:
    """Thread ranks: 0 for the arming thread, then thread-id order (see the module docstring)."""

    def __init__(self, armed_tid: int) -> None:
        self.rank: dict[int, int] = {armed_tid: 0}
        self.process: dict[int, int] = {}

    def pid_of(self, tid: int) -> int:
        pid = self.process.get(tid)
        if pid is None:
            pid = tid
            with contextlib.suppress(OSError), open(f"/proc/{tid}/status") as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        pid = int(line.split()[1])
                        break
            self.process[tid] = pid
        return pid

    def rank_of(self, tid: int) -> int:
        known = self.rank.get(tid)
        if known is not None:
            return known
        alive: set[int] = set()
        with contextlib.suppress(OSError):
            alive = {int(t) for t in os.listdir(f"/proc/{self.pid_of(tid)}/task")}
        for t in sorted(t for t in alive | {tid} if t <= tid and t not in self.rank):
            self.rank[t] = len(self.rank)
        return self.rank[tid]


_KINDS: Mapping[int, str] = {stat.S_IFREG: "regular", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}


def _kind(st: os.stat_result | None, missing: str = "regular") -> str:
    if st is None:
        return missing
    return _KINDS.get(stat.S_IFMT(st.st_mode), "other")


_PROC_FD = re.compile(r"^/proc/(\d+)(?:/task/\d+)?/fd/(\d+)$")
_PROC_SELF = re.compile(r"^/proc/(self|thread-self)(?=/|$)")


class Listener:
    """Serve one armed process from a thread of this (the parent) process.

    ``aims``: the faults to fire (none: a counting run). ``eligible(path, kind)``: which files
    are the save's (default ``default_eligible``). ``start()`` returns at once and may come
    before or after the fork; once the child exists, close this process's copy of the child
    end (``Channel.close_child_end()``) so that a child that dies before arming is noticed.
    ``ready()`` waits until the child has armed; ``stop()`` returns the ``Log``. Stop only
    once the armed process tree has exited (see the module docstring).
    """

    def __init__(
        self,
        channel: Channel,
        *,
        aims: Iterable[Aim] = (),
        eligible: Callable[[str, FileKind], bool] | None = None,
    ) -> None:
        self._channel = channel
        self._aims: dict[tuple[int, str, int], Aim] = {}
        for aim in aims:
            aim.validate()
            if aim.key in self._aims:
                raise ValueError(f"two aims at {_aim_text(aim)}")
            self._aims[aim.key] = aim
        self._eligible = eligible or default_eligible
        self.log = Log()  # appended to by the serving thread; complete once stop() returns
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._listener = -1
        self._names: dict[int, str] = {}
        self._threads = _Threads(0)
        self._counts: Counter[tuple[int, str]] = Counter()
        self._pidfds: dict[int, int] = {}
        self._persistent: tuple[Aim, str, int | None] | None = None  # aim, errno, device
        self._notif = _Notif()
        self._resp = _Resp()
        self._id = ctypes.c_uint64()

    # -- public ------------------------------------------------------------------------------
    def start(self) -> Listener:
        self._thread = threading.Thread(target=self._run, name="persistkit-inject-listener", daemon=True)
        self._thread.start()
        return self

    def ready(self, timeout: float | None = 60.0) -> None:
        """Wait until the child has armed; raise InjectorUnavailable with its reason if it could not."""
        if not self._ready.wait(timeout):
            raise InjectorUnavailable(f"the child did not arm within {timeout} s")
        if self._error is not None:
            raise InjectorUnavailable(self._error)

    def stop(self) -> Log:
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1
        self._channel.close_parent_end()
        self._channel.close_child_end()
        return self.log

    def clear(self) -> None:
        """The fault clears: from now on every call runs (and is still counted and logged)."""
        self._aims = {}
        self._persistent = None

    @property
    def error(self) -> str | None:
        """Why the child could not arm (None: it armed, or has not tried yet)."""
        return self._error

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the serving thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if not self._handshake():
                return
            self._serve()
        except BaseException as err:  # never die silently: the child would get ENOSYS from then on
            self.log.problems.append(
                f"listener failed: {type(err).__name__}: {err}\n{traceback.format_exc()}"
            )
            if not self._ready.is_set():
                self._error = f"the listener failed: {err}"
                self._ready.set()
        finally:
            if self._listener >= 0:
                os.close(self._listener)
                self._listener = -1
            for fd in self._pidfds.values():
                os.close(fd)
            self._pidfds.clear()

    def _handshake(self) -> bool:
        sock = self._channel.parent
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        ready = {fd for fd, _ in poller.poll()}
        if sock.fileno() not in ready:
            self._error = "the listener was stopped before the child armed"
            self._ready.set()
            return False
        message, fds, _, _ = socket.recv_fds(sock, 4096, 1)
        if not message.startswith(b"OK ") or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            text = message[4:].decode(errors="replace") if message.startswith(b"ERR ") else ""
            self._error = text or "the child ended before arming the injector"
            self._ready.set()
            return False
        self._listener = fds[0]
        _, pid, tid, killable = message.split()
        self.log.armed_pid, self.log.armed_tid = int(pid), int(tid)
        self.log.killable_waits = killable == b"1"
        self._threads = _Threads(int(tid))
        self._threads.process[int(tid)] = int(pid)
        arch = _arch()
        assert arch is not None  # the child armed, so this machine has a table
        self._names = {nr: name for name, nr in arch.numbers.items()}
        sock.sendall(b"S")
        self._ready.set()
        return True

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._stop_r in events:
                return
            ev = events.get(self._listener, 0)
            if ev & select.POLLIN:
                self._receive()
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return  # every task using the filter has exited and been reaped

    def _receive(self) -> None:
        ctypes.memset(ctypes.addressof(self._notif), 0, ctypes.sizeof(self._notif))
        try:
            _ioctl(self._listener, _IOCTL_RECV, self._notif)
        except OSError as err:
            if err.errno in (errno_module.ENOENT, errno_module.EINTR):
                return  # the call was interrupted or its thread killed before we got it
            raise
        self.log.notified += 1
        nid = int(self._notif.id)
        try:
            answered = self._handle(
                nid, int(self._notif.pid), int(self._notif.data.nr), list(self._notif.data.args)
            )
        except Exception as err:
            answered = False
            self.log.problems.append(f"notification {nid}: {type(err).__name__}: {err}")
        if not answered:
            with contextlib.suppress(OSError):  # ENOENT: gone; EINPROGRESS: answered before the error
                self._continue(nid)

    # -- answering ---------------------------------------------------------------------------
    def _send(self, nid: int, *, val: int = 0, error: int = 0, flags: int = 0) -> bool:
        """Answer a notification; False when its call is gone (target killed or, without killable waits, a signal)."""
        resp = self._resp
        resp.id, resp.val, resp.error, resp.flags = nid, val, error, flags
        try:
            _ioctl(self._listener, _IOCTL_SEND, resp)
        except OSError as err:
            if err.errno == errno_module.ENOENT:
                return False
            raise
        return True

    def _continue(self, nid: int) -> bool:
        return self._send(nid, flags=_USER_NOTIF_FLAG_CONTINUE)

    def _valid(self, nid: int) -> bool:
        self._id.value = nid
        try:
            _ioctl(self._listener, _IOCTL_ID_VALID, self._id)
        except OSError:
            return False
        return True

    def _handle(self, nid: int, tid: int, nr: int, args: list[int]) -> bool:
        """Decide and answer one notification; False: not answered yet (the caller lets it run)."""
        name = self._names.get(nr)
        if name is None or tid == 0:
            return False
        try:
            call = self._decode(name, tid, args)
        except (_Undecodable, OSError):
            call = None  # the thread died, or the call's own arguments are bad: the kernel will say so
        if call is None or not self._is_eligible(call):
            return False
        # No SECCOMP_IOCTL_NOTIF_ID_VALID here: if the call was abandoned while we read its arguments,
        # the answer below fails with ENOENT and nothing is counted. Only the short write acts on bytes
        # read from the target, and it checks before acting.
        rank = self._threads.rank_of(tid)
        ordinal = self._counts[(rank, call.family)] + 1
        point = Point(
            seq=len(self.log.points),
            rank=rank,
            tid=tid,
            pid=self._threads.pid_of(tid),
            syscall=call.syscall,
            family=call.family,
            ordinal=ordinal,
            fd=call.fd,
            path=call.path,
            kind=cast("FileKind | None", call.kind),  # eligible kinds only (see _is_eligible)
            tmpfile=call.tmpfile,
            second=call.second,
            errnos=_call_errnos(call),
        )
        fired = self._answer(nid, point, call, args)
        if fired is _GONE:
            return True  # the call never happened (it will come again as a new notification)
        self._counts[(rank, call.family)] = ordinal
        self.log.points.append(point)
        if isinstance(fired, Fired):
            self.log.fired.append(fired)
            if fired.aimed and fired.aim.persistent:
                persistent = fired.aim.persistent_errno()
                assert persistent is not None
                self._persistent = (fired.aim, persistent, call.dev)
        return True

    def _answer(self, nid: int, point: Point, call: _Call, args: list[int]) -> Fired | _Gone | None:
        """Answer the call: a Fired, None (it ran), or _GONE (it was abandoned before the answer)."""
        aim = self._aims.get(point.key)
        if aim is not None:
            if isinstance(aim.fault, ShortWrite):
                return self._short_write(nid, point, call, args, aim)
            if aim.fault.name in point.errnos:
                return self._fail(nid, point, call, aim, aim.fault.name, aimed=True)
            self.log.refused.append(
                f"{_aim_text(aim)}: {point.describe()} cannot return {aim.fault.name} "
                f"({MAN_PAGE_ERRNOS[point.syscall][1]}; this call: {list(point.errnos) or 'none'}); it ran"
            )
        if self._persistent is not None and call.family != "close":
            source, persistent, dev = self._persistent
            if dev is None or call.dev == dev:
                for name in PERSISTENT_ERRNOS[persistent]:
                    if name in point.errnos:
                        return self._fail(nid, point, call, source, name, aimed=False)
        return None if self._continue(nid) else _GONE

    def _fail(
        self, nid: int, point: Point, call: _Call, aim: Aim, name: str, *, aimed: bool
    ) -> Fired | _Gone:
        code = int(getattr(errno_module, name))
        if call.family == "close":
            assert call.fd is not None
            if not self._release(nid, call.fd):
                return _GONE
            action: Literal["errno", "close-error"] = "close-error"
        else:
            action = "errno"
        if not self._send(nid, error=-code):
            return _GONE
        return Fired(point, aim, action, name, -code, aimed=aimed)

    def _release(self, nid: int, fd: int) -> bool:
        """Replace the target's ``fd`` by /dev/null: its file is released as close(2) would release it."""
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            add = _AddFd(nid, _ADDFD_FLAG_SETFD, null, fd, os.O_CLOEXEC)
            try:
                _ioctl(self._listener, _IOCTL_ADDFD, add)
            except OSError as err:
                if err.errno in (errno_module.ENOENT, errno_module.ESRCH):
                    return False
                raise
        finally:
            os.close(null)
        return True

    def _pidfd(self, pid: int) -> int:
        fd = self._pidfds.get(pid)
        if fd is None:
            fd = self._pidfds[pid] = os.pidfd_open(pid)
        return fd

    def _short_write(
        self, nid: int, point: Point, call: _Call, args: list[int], aim: Aim
    ) -> Fired | _Gone | None:
        assert isinstance(aim.fault, ShortWrite) and call.fd is not None
        name = call.syscall
        if name in ("write", "pwrite64"):
            pieces = [(args[1], args[2])]
        else:
            count = min(int(args[2]), 1024)
            raw = _read_memory(point.tid, args[1], 16 * count)
            pieces = [
                (int.from_bytes(raw[i : i + 8], "little"), int.from_bytes(raw[i + 8 : i + 16], "little"))
                for i in range(0, len(raw) - 15, 16)
            ]
        requested = sum(n for _, n in pieces)
        if requested < 2:
            if "ENOSPC" in point.errnos:  # nothing fits: a full disk refuses the write
                return self._fail(nid, point, call, aim, "ENOSPC", aimed=True)
            return None if self._continue(nid) else _GONE
        keep = min(aim.fault.keep or requested // 2, requested - 1)
        data = bytearray()
        for address, length in pieces:
            if len(data) >= keep:
                break
            data += _read_memory(point.tid, address, min(length, keep - len(data)))
        if len(data) < keep:
            self.log.problems.append(f"{point.describe()}: could not read the bytes to write; it ran")
            return None if self._continue(nid) else _GONE
        if not self._valid(nid):
            return _GONE
        offset = _s64(args[3]) if name in ("pwrite64", "pwritev", "pwritev2") else -1
        flags = int(args[5]) if name == "pwritev2" else 0
        dup = int(
            _libc().syscall(
                ctypes.c_long(_NR_PIDFD_GETFD),
                ctypes.c_long(self._pidfd(point.pid)),
                ctypes.c_long(call.fd),
                ctypes.c_long(0),
            )
        )
        if dup < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"pidfd_getfd: {os.strerror(code)}")
        try:
            try:
                if flags:
                    written = os.pwritev(dup, [bytes(data)], offset, flags)
                elif offset >= 0:
                    written = os.pwrite(dup, bytes(data), offset)
                else:
                    written = os.write(dup, bytes(data))
            except OSError as err:  # the real disk failed first: pass its answer on
                code = err.errno or errno_module.EIO
                if not self._send(nid, error=-code):
                    return _GONE
                return Fired(
                    point, aim, "errno", errno_module.errorcode.get(code, str(code)), -code, requested
                )
            if not self._send(nid, val=written):
                if offset < 0 and not self._fd_flags(point.tid, call.fd) & os.O_APPEND:
                    # the call will be restarted: put the shared offset back so it rewrites the same bytes
                    with contextlib.suppress(OSError):
                        os.lseek(dup, -written, os.SEEK_CUR)
                return _GONE
            return Fired(point, aim, "short-write", None, written, requested)
        finally:
            os.close(dup)

    # -- decoding ----------------------------------------------------------------------------
    def _is_eligible(self, call: _Call) -> bool:
        if call.kind is None:
            return True  # sync(): no file to judge
        if call.kind not in ("regular", "directory", "symlink"):
            return False
        kind = cast(FileKind, call.kind)
        try:
            return bool(self._eligible(call.path, kind)) or (
                call.second is not None and bool(self._eligible(call.second, kind))
            )
        except Exception as err:
            self.log.problems.append(f"eligible({call.path!r}, {kind!r}) raised {type(err).__name__}: {err}")
            return False

    def _fd_file(self, tid: int, fd: int) -> tuple[str, str, bool, os.stat_result] | None:
        link = f"/proc/{tid}/fd/{fd}"
        try:
            st = os.stat(link)
            kind = _kind(st)
            if kind == "other":
                return None  # pipes, sockets, eventfds, devices: no need for a name
            text = os.readlink(link)
        except OSError:
            return None
        deleted = text.endswith(" (deleted)")
        path = text[: -len(" (deleted)")] if deleted else text
        tmpfile = kind == "regular" and deleted and os.path.basename(path) == f"#{st.st_ino}"
        return path, kind, tmpfile, st

    def _decode(self, name: str, tid: int, a: list[int]) -> _Call | None:
        family = FAMILIES[name]
        if name == "sync":
            return _Call(name, family, None, "", None)
        fd_arg = {"copy_file_range": 2}.get(name, 0)
        if (
            family in ("write", "fallocate", "fsync", "sync_file_range", "syncfs", "close", "copy")
            or name == "ftruncate"
        ):
            fd = _s32(a[fd_arg])
            found = self._fd_file(tid, fd)
            if found is None:
                return None
            path, kind, tmpfile, fd_stat = found
            if family == "close" and (
                kind != "regular" or self._fd_flags(tid, fd) & os.O_ACCMODE == os.O_RDONLY
            ):
                return None  # closing what was only read is no file operation of a save
            return _Call(name, family, fd, path, kind, tmpfile, fd_stat.st_dev)
        if family == "open":
            return self._decode_open(name, tid, a)
        if name in ("truncate",):
            path, st, dev = self._path(tid, _AT_FDCWD, a[0], follow=True)
            return _Call(name, family, None, path, _kind(st), dev=dev, write_access=True)
        if family in ("rename", "link"):
            at = name.endswith(("at", "at2"))
            old_dirfd, old_addr = (_s32(a[0]), a[1]) if at else (_AT_FDCWD, a[0])
            new_dirfd, new_addr = (_s32(a[2]), a[3]) if at else (_AT_FDCWD, a[1])
            flags = int(a[4]) if name == "linkat" else 0
            new, _, _ = self._path(tid, new_dirfd, new_addr, follow=False)
            if name == "linkat" and flags & _AT_EMPTY_PATH and not _read_cstring(tid, old_addr):
                found = self._fd_file(tid, old_dirfd)
                if found is None:
                    return None
                path, kind, tmpfile, source = found
                return _Call(name, family, old_dirfd, path, kind, tmpfile, source.st_dev, second=new)
            follow = bool(flags & _AT_SYMLINK_FOLLOW)
            old, st, dev = self._path(tid, old_dirfd, old_addr, follow=follow)
            proc_fd = _PROC_FD.match(old) if follow else None
            if proc_fd is not None:  # linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW): publishing an O_TMPFILE
                found = self._fd_file(int(proc_fd.group(1)), int(proc_fd.group(2)))
                if found is None:
                    return None
                path, kind, tmpfile, st2 = found
                return _Call(name, family, None, path, kind, tmpfile, st2.st_dev, second=new)
            return _Call(name, family, None, old, _kind(st), dev=dev, second=new)
        if family == "unlink" or name == "rmdir":
            dirfd, addr, flags = (_s32(a[0]), a[1], int(a[2])) if name == "unlinkat" else (_AT_FDCWD, a[0], 0)
            directory = name == "rmdir" or bool(flags & _AT_REMOVEDIR)
            path, st, dev = self._path(tid, dirfd, addr, follow=False)
            kind = _kind(st, "directory" if directory else "regular")
            return _Call(name, "rmdir" if directory else "unlink", None, path, kind, dev=dev)
        if family == "mkdir":
            dirfd, addr = (_s32(a[0]), a[1]) if name == "mkdirat" else (_AT_FDCWD, a[0])
            path, _, dev = self._path(tid, dirfd, addr, follow=False)
            return _Call(name, family, None, path, "directory", dev=dev, creating=True)
        if family == "symlink":
            dirfd, addr = (_s32(a[1]), a[2]) if name == "symlinkat" else (_AT_FDCWD, a[1])
            path, _, dev = self._path(tid, dirfd, addr, follow=False)
            return _Call(name, family, None, path, "symlink", dev=dev, creating=True)
        if family == "mknod":
            dirfd, addr, mode = (
                (_s32(a[0]), a[1], int(a[2])) if name == "mknodat" else (_AT_FDCWD, a[0], int(a[1]))
            )
            path, _, dev = self._path(tid, dirfd, addr, follow=False)
            fmt = stat.S_IFMT(mode)
            return _Call(
                name, family, None, path, "regular" if fmt in (0, stat.S_IFREG) else "other", dev=dev
            )
        return None

    def _decode_open(self, name: str, tid: int, a: list[int]) -> _Call | None:
        if name == "creat":
            dirfd, addr, flags = _AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        elif name == "open":
            dirfd, addr, flags = _AT_FDCWD, a[0], int(a[1])
        elif name == "openat":
            dirfd, addr, flags = _s32(a[0]), a[1], int(a[2])
        else:  # openat2(dirfd, path, struct open_how *how, size): flags are the first u64 of *how
            raw = _read_memory(tid, a[2], 8)
            if len(raw) < 8:
                return None
            dirfd, addr, flags = _s32(a[0]), a[1], int.from_bytes(raw, "little")
        if not flags & _OPEN_WRITE_MASK:
            return None
        write_access = flags & os.O_ACCMODE != os.O_RDONLY
        if flags & _O_TMPFILE_BIT:
            path, st, dev = self._path(tid, dirfd, addr, follow=True)
            return _Call(name, "open", None, path, "regular", True, dev, creating=True, write_access=True)
        path, st, dev = self._path(tid, dirfd, addr, follow=not flags & os.O_NOFOLLOW)
        creating = bool(flags & os.O_CREAT) and st is None
        kind = _kind(st)
        return _Call(
            name,
            "open",
            None,
            path,
            kind,
            dev=dev,
            creating=creating,
            write_access=write_access or bool(flags & os.O_TRUNC),
        )

    def _fd_flags(self, tid: int, fd: int) -> int:
        with contextlib.suppress(OSError), open(f"/proc/{tid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
        return 0

    def _path(
        self, tid: int, dirfd: int, address: int, *, follow: bool
    ) -> tuple[str, os.stat_result | None, int | None]:
        """The path argument as an absolute path, its stat (None: missing) and its device (or its parent's)."""
        text = os.fsdecode(_read_cstring(tid, address))
        if text.startswith("/"):
            # /proc/self names the *target* there; here it would name the listener
            pid = self._threads.pid_of(tid)
            local = _PROC_SELF.sub(
                lambda m: f"/proc/{pid}" + ("" if m.group(1) == "self" else f"/task/{tid}"), text
            )
            shown = os.path.normpath(local)
        else:
            base = f"/proc/{tid}/cwd" if dirfd == _AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
            local = f"{base}/{text}" if text else base
            try:
                where = os.readlink(base)
            except OSError:
                return text, None, None
            where = where.removesuffix(" (deleted)")
            shown = os.path.normpath(os.path.join(where, text))
        try:
            st: os.stat_result | None = os.stat(local, follow_symlinks=follow)
        except OSError:
            st = None
        dev: int | None = st.st_dev if st is not None else None
        if dev is None:
            with contextlib.suppress(OSError):
                dev = os.stat(os.path.dirname(local.rstrip("/")) or "/").st_dev
        return shown, st, dev


class _Gone:
    """The call was abandoned before it was answered (its thread was killed or, without killable waits, signalled)."""


_GONE = _Gone()


def _call_errnos(call: _Call) -> tuple[str, ...]:
    listed = MAN_PAGE_ERRNOS["rmdir" if call.family == "rmdir" else call.syscall][0]
    if call.family == "open":
        allowed = set()
        if call.creating:
            allowed |= {"ENOSPC", "EDQUOT"}
        if call.write_access or call.creating:
            allowed.add("EROFS")
        return tuple(e for e in listed if e in allowed)
    return listed


# -- minimal run helpers ----------------------------------------------------------------------


@dataclass
class ChildRun:
    """How a callable run in an armed child ended: ``returncode`` (negative: killed by that signal)."""

    returncode: int
    log: Log
    timed_out: bool = False


@dataclass
class ProgramRun:
    returncode: int
    stdout: bytes
    stderr: bytes
    log: Log
    timed_out: bool = False


def run_in_child(
    fn: Callable[[], object],
    *,
    aims: Iterable[Aim] = (),
    eligible: Callable[[str, FileKind], bool] | None = None,
    timeout: float | None = 60.0,
) -> ChildRun:
    """Run ``fn()`` in a forked, armed child; exit status 0 when it returns, 1 when it raises.

    The child is killed (its whole process group) if it outlives ``timeout``. It shares this
    process's stdout/stderr; hand results back through files or pipes.
    """
    aims = list(aims)
    for aim in aims:
        aim.validate()
    channel = Channel()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage does not follow forks)
        code = 1
        try:
            os.setpgid(0, 0)
            arm(channel)
            fn()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also here: no race with the kill below
    channel.close_child_end()
    listener = Listener(channel, aims=aims, eligible=eligible).start()
    timed_out = False
    try:
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            timed_out = not poller.poll(None if timeout is None else int(timeout * 1000))
        finally:
            os.close(pidfd)
    except BaseException:
        timed_out = True  # interrupted (KeyboardInterrupt...): never leave the child running
        raise
    finally:
        if timed_out:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        log = listener.stop()
    if listener.error is not None and not log.armed_pid:
        raise InjectorUnavailable(listener.error)
    return ChildRun(os.waitstatus_to_exitcode(status), log, timed_out)


def run_program(
    argv: Sequence[str],
    *,
    aims: Iterable[Aim] = (),
    eligible: Callable[[str, FileKind], bool] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
    input: bytes | None = None,
) -> ProgramRun:
    """Run a program armed: the filter is installed between fork and execve, so it covers the
    program and all its descendants. Its whole session is killed at ``timeout``."""
    channel = Channel()
    listener = Listener(channel, aims=aims, eligible=eligible).start()  # serving before the fork
    child_fd = channel.child_fd()
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # between fork and execve, so the program and all it starts are covered; the channel is
            # used and closed before Popen's close_fds step
            preexec_fn=functools.partial(arm, child_fd),
        )
    except subprocess.SubprocessError as err:  # arm() raised in the child
        listener.stop()
        raise InjectorUnavailable(listener.error or str(err)) from err
    except BaseException:
        listener.stop()
        raise
    finally:
        channel.close_child_end()
    timed_out = False
    try:
        try:
            out, errout = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, errout = proc.communicate()
    except BaseException:  # interrupted: never leave the program running
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        proc.wait()
        log = listener.stop()
    if listener.error is not None and not log.armed_pid:
        raise InjectorUnavailable(listener.error)
    return ProgramRun(proc.returncode, out, errout, log, timed_out)


# -- can it run here? -------------------------------------------------------------------------


def _probe(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = os.write(fd, b"abcd")  # aimed: a short write of 1 byte (pidfd_getfd, process_vm_readv)
    try:
        os.close(fd)  # aimed: EIO, descriptor released (NOTIF_ADDFD)
    except OSError as err:
        if err.errno == errno_module.EIO and written == 1:
            os._exit(0)
    os._exit(3)


@functools.cache
def injector_problem() -> str | None:
    """Why the seccomp injector cannot run here (None: it can). Checked once per process, by a real probe."""
    arch = _arch()
    if arch is None:
        return f"the seccomp injector needs 64-bit Linux on x86_64 or aarch64; this is {sys.platform}/{platform.machine()}"
    release = platform.release().split("-")[0].split(".")
    try:
        version = (int(release[0]), int(release[1]))
    except (IndexError, ValueError):
        version = (0, 0)
    if version < (5, 9):
        return f"the seccomp injector needs Linux >= 5.9 (SECCOMP_IOCTL_NOTIF_ADDFD); this kernel is {platform.release()}"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            if "user_notif" not in f.read().split():
                return "this kernel's seccomp has no user_notif action"
    except OSError:
        return "seccomp is not enabled in this kernel (/proc/sys/kernel/seccomp is missing)"
    with tempfile.TemporaryDirectory(prefix="persistkit-inject-probe-") as tmp:
        target = os.path.join(tmp, "probe")
        aims = [Aim(0, "write", 1, ShortWrite(1)), Aim(0, "close", 1, Errno("EIO"))]
        try:
            run = run_in_child(functools.partial(_probe, target), aims=aims, timeout=30.0)
        except (InjectorUnavailable, OSError) as err:
            return f"the seccomp injector cannot run here: {err}"
        if run.returncode != 0 or len(run.log.fired) != 2:
            details = (
                "; ".join(run.log.problems)
                or f"probe exit status {run.returncode}, fired {len(run.log.fired)}"
            )
            return f"the seccomp injector's probe failed ({details}); ptrace access to children may be restricted"
        with open(target, "rb") as f:
            if f.read() != b"a":
                return "the seccomp injector's short write did not reach the file"
    return None
