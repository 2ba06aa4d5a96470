"""Run strace: attached to this process around a callable, or around a whole program.

This is the tracer half of the syscall observer (``persistkit.testing.observe.syscalls``
turns its output into the operation log that ``persistkit.testing.fs.crashsim`` replays).
strace is the well-kept ptrace tool for this job, and ALICE (OSDI'14) recorded
application I/O the same way; writing our own ptrace loop would mean
re-implementing strace's syscall decoding for every architecture.

Attaching to ourselves uses a start/end handshake so that ``save`` stays an
ordinary in-process callable: after starting strace we make a marker system
call (``getxattr`` on a unique path) until it shows up in strace's output,
which proves every thread is attached; after the save a second marker shows
that every system call the save made has been written out. The output file is
polled with ``pread``, which is not traced, so polling adds nothing to the log.

Fault injection uses strace's own ``-e inject=SYSCALL:error=ERRNO:when=N``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "TRACED_SYSCALLS",
    "Injection",
    "ObserverUnavailable",
    "SelfTrace",
    "TraceFile",
    "ptrace_problem",
    "strace_command",
    "trace_command",
]

# Everything that changes a file, plus what is needed to follow descriptors and positions
# (lseek, read, dup, fcntl), processes (clone, fork, execve) and directories (chdir).
TRACED_SYSCALLS = (
    "open,openat,openat2,creat,"
    "write,pwrite64,writev,pwritev,pwritev2,"
    "read,readv,lseek,"
    "ftruncate,truncate,fallocate,"
    "fsync,fdatasync,sync_file_range,syncfs,sync,"
    "rename,renameat,renameat2,link,linkat,unlink,unlinkat,"
    "mkdir,mkdirat,rmdir,symlink,symlinkat,mknod,mknodat,chmod,fchmod,fchmodat,"
    "close,close_range,dup,dup2,dup3,fcntl,"
    "copy_file_range,sendfile,splice,mmap,io_uring_setup,"
    "clone,clone3,fork,vfork,chdir,fchdir,getxattr"
)
# How many bytes of each write strace prints (hex-escaped, four characters a byte). Longer
# writes are cut there; their bytes are then taken from the file the save left (the usual case: a
# large write that no later operation overwrites), and reported as not capturable otherwise.
# Printing a 64 MiB write whole costs strace seconds; 64 KiB covers every SQLite page, every
# buffered-writer chunk and every header, so most saves are captured in full.
MAX_STRING = int(os.environ.get("PERSISTKIT_STRACE_CAPTURE", 64 * 1024))
_MARKER_XATTR = "user.persistkit-marker"


class ObserverUnavailable(RuntimeError):
    """The syscall observer cannot run here; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Injection:
    """Make the ``when``-th call of ``syscall`` (per thread, counted from attach) fail.

    ``persistent``: that call and every later one fails.
    """

    syscall: str
    errno_name: str
    when: int
    persistent: bool = False

    def argument(self) -> str:
        return (
            f"inject={self.syscall}:error={self.errno_name}:when={self.when}{'+' if self.persistent else ''}"
        )


@functools.cache
def ptrace_problem() -> str | None:
    """Why the syscall observer cannot run here (None: it can). Checked once per process."""
    if not sys.platform.startswith("linux"):
        return f"ptrace/strace observation needs Linux; this is {sys.platform}"
    exe = shutil.which("strace")
    if exe is None:
        return "strace is not installed (apt-get install strace / dnf install strace / apk add strace)"
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("TracerPid:") and line.split()[1] != "0":
                    return (
                        f"this process is already traced by pid {line.split()[1]} (a debugger or strace): "
                        "a process can have only one tracer"
                    )
    except OSError:
        pass
    try:
        with SelfTrace() as probe:
            pass
    except ObserverUnavailable as err:
        return str(err)
    del probe
    return None


def _strace_base(out: str) -> list[str]:
    return [
        "strace", "-f", "-qq", "-xx", "-y", "-s", str(MAX_STRING), "-o", out,
        "-e", "raw=read,readv", "-e", f"trace={TRACED_SYSCALLS}",
    ]  # fmt: skip


class TraceFile:
    """strace's output file, read line by line (it can be far larger than memory should hold)."""

    def __init__(self, directory: str, path: str) -> None:
        self.dir = directory
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, directory, True)

    def lines(self) -> Iterator[str]:
        with open(self.path, encoding="ascii", errors="replace") as f:
            yield from f

    @property
    def text(self) -> str:
        with open(self.path, encoding="ascii", errors="replace") as f:
            return f.read()

    def close(self) -> None:
        self._finalizer()


class SelfTrace:
    """Trace this process (all its threads, and the children they start) inside a ``with``.

    After the block, ``trace`` is strace's output (``TraceFile``; close it when done). Raises
    ObserverUnavailable when strace cannot attach (ptrace forbidden by Yama or a container's
    seccomp profile).
    """

    def __init__(self, injections: Sequence[Injection] = (), *, timeout: float = 10.0) -> None:
        self.injections = list(injections)
        self.timeout = timeout
        self.trace: TraceFile | None = None
        self._dir = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1

    def __enter__(self) -> SelfTrace:
        self._dir = tempfile.mkdtemp(prefix="persistkit-strace-")
        out = os.path.join(self._dir, "trace")
        # Open our reading end before strace starts, so polling adds no traced open().
        self._fd = os.open(out, os.O_RDONLY | os.O_CREAT, 0o600)
        cmd = _strace_base(out) + [arg for inj in self.injections for arg in ("-e", inj.argument())]
        cmd += ["-p", str(os.getpid())]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as err:
            self._cleanup()
            raise ObserverUnavailable(f"could not start strace: {err}") from err
        try:
            self._handshake("start")
        except BaseException:
            self._stop()
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._handshake("end")
        finally:
            self._stop()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.trace = TraceFile(self._dir, os.path.join(self._dir, "trace"))
            self._dir = ""

    @property
    def text(self) -> str:
        return self.trace.text if self.trace is not None else ""

    # -- internals ------------------------------------------------------------------
    def _handshake(self, what: str) -> None:
        token = f"/persistkit-{what}-{uuid.uuid4().hex}"
        needle = "".join(f"\\x{b:02x}" for b in token.encode()).encode()
        deadline = time.monotonic() + self.timeout
        offset = 0
        tail = b""
        while True:
            with contextlib.suppress(OSError):  # the path does not exist: the call is only a marker
                os.getxattr(token, _MARKER_XATTR)
            size = os.fstat(self._fd).st_size
            if size > offset:
                data = tail + os.pread(self._fd, size - offset, offset)
                if needle in data:
                    return
                offset = size
                tail = data[-len(needle) :]
            assert self._proc is not None
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                raise ObserverUnavailable(_attach_advice(err.strip()))
            if time.monotonic() > deadline:
                raise ObserverUnavailable(
                    f"strace did not report the {what} marker within {self.timeout:.0f} s; "
                    "the machine may be overloaded (raise the timeout) or ptrace may be blocked"
                )
            time.sleep(0.0005)

    def _stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # strace detaches cleanly on SIGINT
            try:
                self._proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def _attach_advice(stderr: str) -> str:
    text = stderr or "strace exited without output"
    if "Operation not permitted" in text or "EPERM" in text:
        return (
            f"ptrace is not permitted here ({text}). Allow it with "
            "`sysctl kernel.yama.ptrace_scope=0`, or run the container with `--cap-add=SYS_PTRACE` "
            "(docker) / a seccomp profile that allows ptrace; or use observe='python'."
        )
    return f"strace could not attach: {text}"


def strace_command(out: str, cmd: Sequence[str], injections: Sequence[Injection] = ()) -> list[str]:
    """The argv that runs ``cmd`` under strace, writing the trace to ``out``."""
    return _strace_base(out) + [arg for inj in injections for arg in ("-e", inj.argument())] + ["--", *cmd]


def trace_command(
    cmd: Sequence[str],
    *,
    injections: Sequence[Injection] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
) -> tuple[subprocess.CompletedProcess[bytes], TraceFile]:
    """Run ``cmd`` (any program) under strace; return its result and strace's output."""
    problem = ptrace_problem()
    if problem is not None:
        raise ObserverUnavailable(problem)
    tmp = tempfile.mkdtemp(prefix="persistkit-strace-")
    trace = TraceFile(tmp, os.path.join(tmp, "trace"))
    result = subprocess.run(
        strace_command(trace.path, cmd, injections), cwd=cwd, env=env, timeout=timeout, input=input,
        capture_output=True, check=False,
    )  # fmt: skip
    return result, trace
