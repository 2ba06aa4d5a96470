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
import re
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
from typing import Any

__all__ = [
    "TRACED_SYSCALLS",
    "Injection",
    "ObserverUnavailable",
    "SelfTrace",
    "TracedProcess",
    "CommandRun",
    "TraceFile",
    "ptrace_problem",
    "run_command",
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
    """The argv that runs ``cmd`` under strace, writing the trace to ``out`` (process exits included)."""
    base = _strace_base(out)
    base[base.index("-qq")] = "-q"  # keep "+++ exited with N +++": it tells when the command itself ended
    return base + [arg for inj in injections for arg in ("-e", inj.argument())] + ["--", *cmd]


_EXIT = re.compile(r"^(\d+) +\+\+\+ (?:exited with (\d+)|killed by (SIG\w+))")


@dataclass
class CommandRun:
    """How a traced program ended.

    ``returncode``: its exit status (None when it was killed by a signal or timed out);
    ``signal``: the signal that killed it; ``timed_out``: it ran past the timeout and was killed
    with every process it started; ``stragglers``: processes it started that were still running
    when it ended (killed then, and named: the command had returned, its save had not).
    """

    returncode: int | None
    signal: str | None
    stdout: bytes
    stderr: bytes
    trace: TraceFile
    timed_out: bool
    stragglers: list[str]
    seconds: float


def run_command(
    cmd: Sequence[str],
    *,
    injections: Sequence[Injection] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
) -> CommandRun:
    """Run ``cmd`` (any program) under strace until *it* exits (not its descendants).

    The program's own exit is read off the trace as strace prints it. Whatever it started
    that is still running then is killed and named; at ``timeout`` the program and everything
    it started are killed. Nothing the program started outlives this call.
    """
    problem = ptrace_problem()
    if problem is not None:
        raise ObserverUnavailable(problem)
    tmp = tempfile.mkdtemp(prefix="persistkit-strace-")
    trace = TraceFile(tmp, os.path.join(tmp, "trace"))
    out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            strace_command(trace.path, cmd, injections), cwd=cwd, env=env, stdin=subprocess.PIPE if input else subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
    if input:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(input)
        proc.stdin.close()
    watcher = _Watch(trace.path)
    deadline = None if timeout is None else start + timeout
    timed_out = False
    stragglers: list[str] = []
    while proc.poll() is None:
        watcher.read()
        if watcher.main_exit is not None:
            stragglers = _kill_tracees({watcher.main}, proc.pid)
            break
        if deadline is not None and time.monotonic() > deadline:
            timed_out = True
            _kill_tracees(set(), proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    watcher.read()
    with open(out_path, "rb") as f:
        stdout = f.read()
    with open(err_path, "rb") as f:
        stderr = f.read()
    code, sig = watcher.main_exit if watcher.main_exit is not None else (None, None)
    return CommandRun(code, sig, stdout, stderr, trace, timed_out, stragglers, time.monotonic() - start)


class TracedProcess:
    """A program started under strace whose stdin/stdout/stderr the caller handles.

    For callers that talk to the program while it runs (``lifecycle``'s line protocol) and end it
    themselves. ``stop_and_kill()`` first stops every traced process and waits until each has
    left the system call it was in, so the trace holds every operation that took effect, then
    kills them all; the trace is complete once ``wait()`` returns.
    """

    def __init__(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None, **popen: Any
    ) -> None:
        problem = ptrace_problem()
        if problem is not None:
            raise ObserverUnavailable(problem)
        tmp = tempfile.mkdtemp(prefix="persistkit-strace-")
        self.trace = TraceFile(tmp, os.path.join(tmp, "trace"))
        self.proc = subprocess.Popen(
            strace_command(self.trace.path, cmd), env=env, cwd=cwd, start_new_session=True, **popen
        )
        self.pid = self.proc.pid  # strace's

    def tracees(self) -> list[int]:
        return _traced_by(self.proc.pid)

    def main(self) -> int | None:
        """The program's own pid (the first process strace traced), once it shows in the trace."""
        watch = _Watch(self.trace.path)
        watch.read()  # the first line names it
        return watch.main

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the program itself (not to strace, not to its children)."""
        pid = self.main()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop_and_kill(self, patience: float = 30.0) -> bool:
        """SIGSTOP every traced process, wait until all are stopped, then SIGKILL them all.

        False when some thread did not stop within ``patience`` seconds (stuck in the kernel); it
        is killed all the same, and an operation it was inside may be missing from the trace.
        """
        deadline = time.monotonic() + patience
        stopped = True
        sent: set[int] = set()
        while True:
            pids = self.tracees()
            for pid in set(pids) - sent:  # once each: a second SIGSTOP would be pending again
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                sent.add(pid)
            if all(_all_threads_stopped(pid) for pid in pids):
                break
            if time.monotonic() > deadline:
                stopped = False
                break
            time.sleep(0.002)
        _kill_tracees(set(), self.proc.pid)
        return stopped

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_of_main(self) -> tuple[int | None, str | None] | None:
        """How the program itself ended, as the trace says: (exit status, None) or (None, signal name)."""
        watch = _Watch(self.trace.path)
        while True:
            offset = watch.offset
            watch.read()
            if watch.offset == offset:
                return watch.main_exit


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` has taken its SIGSTOP (so left any system call it was in), or is gone.

    A stopped state alone is not enough under ptrace: a thread also shows as stopped ("t") at
    a system call's entry, before the call ran. A thread whose SIGSTOP is no longer pending
    has dequeued it, which happens only on the way back to user space.
    """
    stop_bit = 1 << (signal.SIGSTOP - 1)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        state = status.get("State", "").strip()[:1]
        if state in ("Z", "X"):
            continue
        pending = int(status.get("SigPnd", "0").strip(), 16) | int(status.get("ShdPnd", "0").strip(), 16)
        if state not in ("T", "t") or pending & stop_bit:
            return False
    return True


class _Watch:
    """Reads a growing strace output: which processes appeared, and when the first one exited."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.tail = b""
        self.pids: set[int] = set()
        self.main: int | None = None
        self.main_exit: tuple[int | None, str | None] | None = None

    def read(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            data = os.pread(fd, 1 << 24, self.offset)
        finally:
            os.close(fd)
        if not data:
            return
        self.offset += len(data)
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        for raw in lines:
            line = raw.decode("ascii", "replace")
            head = line.split(" ", 1)[0]
            if not head.isdigit():
                continue
            pid = int(head)
            if self.main is None:
                self.main = pid
            self.pids.add(pid)
            m = _EXIT.match(line)
            if m is not None and pid == self.main and self.main_exit is None:
                self.main_exit = (int(m.group(2)), None) if m.group(2) is not None else (None, m.group(3))


def _traced_by(tracer: int) -> list[int]:
    """Every process (thread group) that ``tracer`` traces now, from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        if f"\nTracerPid:\t{tracer}\n" in status and f"\nTgid:\t{name}\n" in status:
            out.append(int(name))
    return out


def _kill_tracees(skip: set[int | None], tracer: int) -> list[str]:
    """SIGKILL every process ``tracer`` still traces (but ``skip``); describe each one killed."""
    out = []
    for pid in _traced_by(tracer):
        if pid in skip:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmdline = ""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        out.append(f"pid {pid} ({cmdline[:120] or '?'})")
    return out


def trace_command(
    cmd: Sequence[str],
    *,
    injections: Sequence[Injection] = (),
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    input: bytes | None = None,
) -> tuple[subprocess.CompletedProcess[bytes], TraceFile]:
    """Run ``cmd`` under strace; its result as ``subprocess.run`` gives it (see ``run_command``)."""
    run = run_command(cmd, injections=injections, cwd=cwd, env=env, timeout=timeout, input=input)
    code = run.returncode if run.returncode is not None else -(getattr(signal, run.signal or "SIGKILL"))
    return subprocess.CompletedProcess(list(cmd), code, run.stdout, run.stderr), run.trace
