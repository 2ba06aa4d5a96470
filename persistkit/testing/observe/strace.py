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
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TRACED_SYSCALLS",
    "Injection",
    "ObserverUnavailable",
    "SelfTrace",
    "ptrace_problem",
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
    "mkdir,mkdirat,rmdir,symlink,symlinkat,"
    "close,close_range,dup,dup2,dup3,fcntl,"
    "copy_file_range,sendfile,splice,mmap,io_uring_setup,"
    "clone,clone3,fork,vfork,chdir,fchdir,getxattr"
)
# strings longer than this are cut by strace; a cut write cannot be replayed and is reported
MAX_STRING = 64 * 1024 * 1024
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


class SelfTrace:
    """Trace this process (all its threads, and the children they start) inside a ``with``.

    After the block, ``text`` holds strace's output. Raises ObserverUnavailable when
    strace cannot attach (ptrace forbidden by Yama or a container's seccomp profile).
    """

    def __init__(self, injections: Sequence[Injection] = (), *, timeout: float = 10.0) -> None:
        self.injections = list(injections)
        self.timeout = timeout
        self.text = ""
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
            try:
                self.text = self._read_all().decode("ascii", "replace")
            finally:
                self._cleanup()

    # -- internals ------------------------------------------------------------------
    def _read_all(self) -> bytes:
        size = os.fstat(self._fd).st_size
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(self._fd, min(size - offset, 1 << 24), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

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


def trace_command(
    cmd: Sequence[str],
    *,
    injections: Sequence[Injection] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run ``cmd`` (any program) under strace; return its result and strace's output."""
    problem = ptrace_problem()
    if problem is not None:
        raise ObserverUnavailable(problem)
    with tempfile.TemporaryDirectory(prefix="persistkit-strace-") as tmp:
        out = os.path.join(tmp, "trace")
        full = _strace_base(out) + [arg for inj in injections for arg in ("-e", inj.argument())]
        full += ["--", *cmd]
        result = subprocess.run(
            full, cwd=cwd, env=env, timeout=timeout, input=input, capture_output=True, check=False
        )
        with open(out, "rb") as f:
            text = f.read().decode("ascii", "replace")
    return result, text
