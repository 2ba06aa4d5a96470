"""Where code under test runs, so that it cannot crash, hang or kill the test session.

``run_isolated(fn, *args, timeout=...)`` runs one call in a forked child;
``Worker(fn, timeout=...)`` is forked once and then called many times with small
picklable arguments (crash states, damaged copies). Both give an ``Outcome``:
what ``fn`` returned, what it raised (as a description), or how its process
died: killed by a named signal, exited with a status, or timed out.

The process tree of a worker::

    test process (pytest)       enforces every timeout from outside, through a pidfd
      └─ keeper                 forked from the test process: setsid(), PR_SET_CHILD_SUBREAPER,
          │                     runs no code under test; forks runners, reaps and reports their deaths
          └─ runner             forked from the keeper: calls fn; PR_SET_CHILD_SUBREAPER too
              └─ whatever fn starts (subprocesses, double-forked setsid() daemons, ...)

Rules, and why:

* **Timeouts come from outside.** The test process SIGKILLs the runner when a
  call overruns. Code that catches every exception, blocks in C, or blocks again
  while unwinding cannot outlast it. Before the kill the runner is asked (with a
  signal ``faulthandler`` answers from C) to dump every thread's stack, so a
  timeout says where the code was stuck.
* **Nothing a call starts outlives the call.** After each call the runner kills
  and reaps every descendant it still has. Being a child subreaper, it inherits
  the orphans of its descendants, so a grandchild that double-forks and calls
  ``setsid()`` is still found (walking ``/proc/PID/task/*/children``). Each one
  is named in ``Outcome.stragglers``: a save that leaves work running after it
  returned has a bug. Python threads still alive after a call are named too, and
  the runner retires (exits) after answering, which ends them.
* **A dead runner's processes are the keeper's.** When a runner dies (signal,
  exit, timeout) its descendants are reparented to the keeper, which kills and
  reaps them before reporting the death. The keeper exists because PID 1 in
  many containers never reaps orphans (zombies pile up), and because a process
  that escaped its runner's session could not be found once the runner is gone.
* **Every runner is a fork of the same image.** The keeper was forked from the
  caller when the ``Worker`` was made, so each runner (the first and every
  restart) sees the caller's memory as it was then: closures, a loaded baseline,
  imported modules. A restart costs one fork of the keeper, no imports.
* **Children never run the parent's finalizers.** stdio is flushed before each
  fork; children end with ``os._exit``; SIGALRM, SIGTERM, SIGINT, SIGCHLD and
  the wakeup fd are reset in the keeper.
* **One thread for OpenMP.** A fork copies only the calling thread. OpenMP
  runtimes (libgomp, used by torch, scikit-learn, LightGBM, xgboost) are not
  fork-safe: the child's first parallel region waits forever for pool threads
  that do not exist in it. Runners therefore cap OpenMP/BLAS pools at one
  thread (``torch.set_num_threads(1)``, ``threadpoolctl``), as torch's own
  DataLoader workers do. Locks another parent thread held at the fork stay held
  in the child; a call that needs one times out and its stack shows where.

Linux only (pidfds, ``PR_SET_CHILD_SUBREAPER``, ``/proc``). A worker is not
thread-safe: one caller at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

__all__ = [
    "Outcome",
    "OutcomeKind",
    "Worker",
    "WorkerBroken",
    "descendants",
    "end_descendants",
    "run_isolated",
]

OutcomeKind = Literal["returned", "raised", "killed", "exited", "timeout"]

_PR_SET_CHILD_SUBREAPER = 36
_DUMP_SIGNAL = (
    signal.SIGUSR2
)  # the runner's faulthandler dumps every stack on it (asked before a timeout kill)
_FRAME = struct.Struct("!Q")
_DIAG_LIMIT = 64 * 1024
_REPR_LIMIT = 2000
_GRACE = 30.0  # how long the keeper may take to fork a runner or to report a death (a loaded 2-core box)


class WorkerBroken(RuntimeError):
    """The keeper process stopped answering; the worker was torn down (the next call starts a new one)."""


_STACK_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+) in (\S+)', re.M)  # a frame in faulthandler's dump


@dataclass(frozen=True)
class Outcome:
    """What one isolated call did. ``kind`` says which of the fields below apply.

    * ``returned``: ``value`` (when it pickled; else ``value_pickled`` is False) and ``value_repr``.
    * ``raised``: ``error_type`` (qualified name), ``error_bases`` (qualified names of its MRO),
      ``error_message``, ``traceback``. The exception itself stays in the child: it is
      described, never rebuilt, so a class the parent cannot import is no problem.
    * ``killed``: ``signal`` ("SIGSEGV", "SIGBUS", "SIGABRT", ...); ``traceback`` is
      faulthandler's dump of the stacks at the crash, when it could write one.
    * ``exited``: ``exit_status`` (``os._exit``, ``sys.exit``, a C library calling ``exit``).
    * ``timeout``: the call ran past ``timeout`` seconds; it was killed with everything
      it started; ``traceback`` is where every thread was when it was stopped.

    ``stragglers`` names processes and threads the call left running after it
    ended; they were killed.
    """

    kind: OutcomeKind
    seconds: float
    value: Any = None
    value_repr: str = ""
    value_pickled: bool = False
    error_type: str = ""
    error_bases: tuple[str, ...] = ()
    error_message: str = ""
    traceback: str = ""
    signal: str = ""
    exit_status: int | None = None
    timeout: float | None = None
    stragglers: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind == "returned"

    @property
    def crashed(self) -> bool:
        """The process died (signal or exit) instead of returning or raising."""
        return self.kind in ("killed", "exited")

    def where(self, count: int = 3) -> list[str]:
        """``file:line in function`` of the innermost ``count`` frames in faulthandler's dump
        (``killed``, ``timeout``): of the thread that crashed, or was running, when it was written."""
        blocks = re.split(r"^(?=(?:Current thread|Thread) 0x)", self.traceback, flags=re.M)
        current = [b for b in blocks if b.startswith("Current thread")]
        frames = [b for b in current or blocks if _STACK_FRAME.search(b)]
        if not frames:
            return []
        found = list(_STACK_FRAME.finditer(frames[0]))[:count]
        return [f"{os.path.basename(m[1])}:{m[2]} in {m[3]}" for m in found]

    def raised_a(self, *names: str) -> bool:
        """Whether the call raised one of ``names`` (a class name or qualified name), subclasses included."""
        if self.kind != "raised":
            return False
        for qualified in self.error_bases:
            if qualified in names or qualified.rpartition(".")[2] in names:
                return True
        return False

    def describe(self) -> str:
        if self.kind == "returned":
            text = f"returned {self.value_repr}"
        elif self.kind == "raised":
            text = f"raised {self.error_type}: {self.error_message}"
        elif self.kind == "killed":
            text = f"killed by {self.signal}"
            with contextlib.suppress(ValueError, KeyError):
                text += f" ({signal.strsignal(signal.Signals[self.signal])})"
        elif self.kind == "exited":
            text = f"exited with status {self.exit_status}"
        else:
            text = f"did not finish within {self.timeout:g} s; it was killed with every process it started"
        if self.stragglers:
            text += f"; still running after it ended (killed): {', '.join(self.stragglers)}"
        return text

    def __str__(self) -> str:
        return self.describe()


# -- processes -------------------------------------------------------------------------


def _read_proc(path: str) -> bytes | None:
    # os.open, not open(): a Python-level observer may have replaced builtins.open in this process
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16)
    except OSError:
        return None
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        found.extend(int(p) for p in (_read_proc(f"/proc/{pid}/task/{tid}/children") or b"").split())
    return found


def _descendants(root: int) -> list[int]:
    out: list[int] = []
    todo = _children(root)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(_children(pid))
    return out


def descendants(root: int | None = None) -> list[int]:
    """The pids of every descendant of ``root`` (default: this process), zombies included."""
    return _descendants(os.getpid() if root is None else root)


def _state(pid: int) -> str:
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return "gone"
    return stat[stat.rfind(b")") + 2 :][:1].decode()


def _name(pid: int) -> str:
    cmd = (_read_proc(f"/proc/{pid}/cmdline") or b"").replace(b"\0", b" ").strip()
    if not cmd:
        cmd = (_read_proc(f"/proc/{pid}/comm") or b"?").strip()
    return f"pid {pid} ({cmd.decode(errors='replace')[:120]})"


def end_descendants(
    root: int | None = None, *, patience: float = _GRACE, spare: Collection[int] = (), ended: bool = False
) -> list[str]:
    """SIGKILL and reap every descendant of ``root`` (default: this process); their names.

    Call it from the process that reaps them (a parent, or a child subreaper):
    killed processes are waited for with ``waitpid(-1)``, so none is left as a
    zombie. Processes forked while the tree is being killed are found on the
    next walk; the loop ends when the walk finds nothing alive. For another
    process's descendants (which only their parent can reap) it waits at most
    ``patience`` seconds for the kills to land. ``spare``: pids left alone (a tracer
    this process started). ``ended``: name the descendants that already ended but
    were never reaped too (for a subreaper, right after a program it started exited:
    those outlived it, however briefly).
    """
    root = os.getpid() if root is None else root
    named: dict[int, str] = {}
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        found = [p for p in _descendants(root) if p not in spare]
        if ended:
            for pid in found:
                if pid not in named and _state(pid) == "Z":
                    named[pid] = f"{_name(pid)}, ended after it"
        alive = [p for p in found if _state(p) not in ("Z", "gone")]
        for pid in alive:
            if pid not in named:
                named[pid] = _name(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if root == os.getpid():
            try:
                reaped, _ = os.waitpid(-1, 0 if alive else os.WNOHANG)
            except ChildProcessError:
                reaped = 0
            if not alive and reaped == 0:
                break
        elif not alive:
            break
        else:  # not our children: wait for the kill to land before walking again
            time.sleep(0.001)
    return [named[p] for p in sorted(named)]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- framing ---------------------------------------------------------------------------


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_FRAME.pack(len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, _FRAME.size)
    if head is None:
        return None
    return _recv_exact(sock, _FRAME.unpack(head)[0])


# -- the children ----------------------------------------------------------------------

# Descriptors the test process holds for its workers. A keeper forked for another
# worker must not keep copies of them: a copy of a control socket would hide the
# test process closing it (the keeper waits for that EOF to exit).
_PARENT_FDS: set[int] = set()


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _fork() -> int:
    _flush_stdio()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child. Forking
        # is the point here (the child must inherit the caller's closures); a child stuck on a lock
        # another thread held is caught by the outside timeout, and its stack says which.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _set_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reset_signals() -> None:
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, _DUMP_SIGNAL):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # a mask inherited from the forking thread


def _one_thread_for_openmp() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.set_num_threads(1)
    if any(name in sys.modules for name in ("sklearn", "lightgbm", "xgboost", "scipy", "threadpoolctl")):
        with contextlib.suppress(Exception):
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)


def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    with contextlib.suppress(Exception):
        print(err.code, file=sys.stderr)
    return 1


def _describe_value(value: Any) -> tuple[bytes | None, str]:
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxother = shortener.maxstring = _REPR_LIMIT
    try:
        text = shortener.repr(value)
    except Exception as err:
        text = f"<{type(value).__qualname__} whose repr() raised {type(err).__name__}>"
    try:
        blob: bytes | None = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    return blob, text[:_REPR_LIMIT]


def _describe_error(err: BaseException) -> dict[str, Any]:
    import traceback

    def qualified(t: type) -> str:
        return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"

    try:
        message = str(err)
    except Exception:
        message = "<str() of the exception raised>"
    try:
        text = "".join(traceback.format_exception(err))
    except Exception:
        text = ""
    return {
        "type": qualified(type(err)),
        "bases": tuple(qualified(t) for t in type(err).__mro__),
        "message": message[: _REPR_LIMIT * 4],
        "traceback": text[-_DIAG_LIMIT:],
    }


def _freeze_inherited_heap() -> None:
    """Keep the garbage collector off every object inherited from the test process.

    A test session that loaded boto3/moto, torch or transformers holds millions of objects. A
    full collection in a forked child walks them all, which copies every page of that heap
    (copy-on-write) and took seconds per call: disk_faults collects after each faulted save, so
    one SQLite sweep went from 8 s to 200 s once such a test had run earlier in the same process.
    ``gc.freeze()`` (Python's documented answer for fork-based servers) moves them to a permanent
    generation in O(1); objects the child makes are collected as usual.
    """
    import gc

    gc.freeze()


def _runner_main(
    sock: socket.socket, diag: int, fn: Callable[..., Any], fresh: bool = False, keep_threads: bool = False
) -> NoReturn:
    code = 0
    try:
        import faulthandler

        _freeze_inherited_heap()

        # disable first: enable() on an enabled faulthandler (pytest enables it in the test process)
        # only changes the file and keeps the handlers it installed then, although a library loaded
        # since may have put its own SIGSEGV handler in their place; the crash would then say nothing
        faulthandler.disable()
        faulthandler.enable(file=diag, all_threads=True)
        faulthandler.register(_DUMP_SIGNAL, file=diag, all_threads=True, chain=False)
        _set_subreaper()
        _one_thread_for_openmp()
        me = os.getpid()
        while True:
            request = _recv_frame(sock)
            if request is None:
                break
            args, kwargs = pickle.loads(request)  # noqa: S301 - sent by our own test process
            before = set(threading.enumerate())
            try:
                value = fn(*args, **kwargs)
            except SystemExit as err:  # a process that calls sys.exit() exits
                code = _exit_code(err)
                break
            except BaseException as err:  # every exception is reported, none escapes
                reply: dict[str, Any] = {"kind": "raised", **_describe_error(err)}
                del err
            else:
                blob, text = _describe_value(value)
                reply = {"kind": "returned", "value": blob, "repr": text}
                del value
            stragglers = end_descendants(me)
            threads = [t for t in threading.enumerate() if t not in before and t.is_alive()]
            stragglers += [f"thread {t.name!r}" for t in threads]
            reply["stragglers"] = tuple(stragglers)
            retire = (bool(threads) and not keep_threads) or fresh
            reply["retire"] = retire
            _flush_stdio()
            _send_frame(sock, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            if retire:  # threads that outlive a call end with the process; fresh: one call each
                break
    except BaseException:  # the channel broke: the test process is gone or gave up
        code = 70
    _flush_stdio()
    os._exit(code)


def _keeper_main(
    ctl: socket.socket, fn: Callable[..., Any], fresh: bool = False, keep_threads: bool = False
) -> NoReturn:
    try:
        _freeze_inherited_heap()
        for fd in list(_PARENT_FDS):
            with contextlib.suppress(OSError):
                os.close(fd)
        _PARENT_FDS.clear()  # a worker made inside a runner must not close what those numbers are now
        os.setsid()
        _set_subreaper()
        _reset_signals()
        while True:
            request = ctl.recv(64)
            if request != b"SPAWN":
                break
            ours, theirs = socket.socketpair()
            diag_r, diag_w = os.pipe()
            pid = _fork()
            if pid == 0:
                ctl.close()
                ours.close()
                os.close(diag_r)
                _runner_main(theirs, diag_w, fn, fresh, keep_threads)
            theirs.close()
            os.close(diag_w)
            pidfd = os.pidfd_open(pid)
            socket.send_fds(ctl, [f"SPAWNED {pid}".encode()], [ours.fileno(), diag_r, pidfd])
            ours.close()
            os.close(diag_r)
            if not _keeper_watch(ctl, pid, pidfd):
                break
    except BaseException:  # noqa: S110 - whatever happens, clean up below and exit
        pass
    with contextlib.suppress(BaseException):
        end_descendants()
    os._exit(0)


def _keeper_watch(ctl: socket.socket, pid: int, pidfd: int) -> bool:
    """Wait for the runner to die, then kill what it left and report; False when the test process left."""
    try:
        while True:
            ready = _ready([ctl.fileno(), pidfd], None)
            if pidfd in ready:
                _, status = os.waitpid(pid, 0)
                stragglers = end_descendants()
                report = {"pid": pid, "status": status, "stragglers": stragglers}
                ctl.send(b"DEAD " + json.dumps(report).encode())
                return True
            # the test process never talks while a runner lives: readable means it closed the socket
            if ctl.fileno() in ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return False
    finally:
        os.close(pidfd)


# -- the test process side -------------------------------------------------------------


class _Runner:
    """The test process's handles on one runner: its socket, faulthandler's pipe, a pidfd."""

    def __init__(self, pid: int, sock: socket.socket, diag: int, pidfd: int) -> None:
        self.pid, self.sock, self.diag, self.pidfd = pid, sock, diag, pidfd
        self.diag_text = bytearray()
        _PARENT_FDS.update((sock.fileno(), diag, pidfd))

    def close(self) -> None:
        _PARENT_FDS.difference_update((self.sock.fileno(), self.diag, self.pidfd))
        self.sock.close()
        for fd in (self.diag, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def signal(self, sig: int) -> None:
        # through the pidfd: never a recycled pid
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def read_diag(self) -> bool:
        """Keep what the runner's faulthandler wrote; False at EOF."""
        try:
            chunk = os.read(self.diag, 65536)
        except BlockingIOError:
            return True
        self.diag_text += chunk[: max(_DIAG_LIMIT - len(self.diag_text), 0)]
        return bool(chunk)

    def diag_until_eof(self) -> str:
        """faulthandler's text once the runner and its tree are gone (every writer closed)."""
        give_up = time.monotonic() + _GRACE
        while _readable([self.diag], give_up - time.monotonic()) and self.read_diag():
            pass
        return self.diag_text.decode(errors="replace")

    def dump_stacks(self) -> None:
        """Ask the runner's faulthandler for every thread's stack; read until it goes quiet."""
        self.signal(_DUMP_SIGNAL)
        # the first bytes may take a while on a loaded machine; the handler runs in C, even while Python is stuck
        wait = 3.0
        while _readable([self.diag], wait) and self.read_diag():
            wait = 0.05


class _Keeper:
    def __init__(self, fn: Callable[..., Any], fresh: bool = False, keep_threads: bool = False) -> None:
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = _fork()
        if pid == 0:
            ctl.close()
            _keeper_main(theirs, fn, fresh, keep_threads)
        theirs.close()
        self.pid, self.ctl = pid, ctl
        self.pidfd = os.pidfd_open(pid)
        _PARENT_FDS.update((ctl.fileno(), self.pidfd))

    def spawn(self) -> _Runner:
        if _readable([self.pidfd], 0):
            raise WorkerBroken("the keeper process died")
        try:
            self.ctl.send(b"SPAWN")
        except OSError as err:
            raise WorkerBroken(f"the keeper stopped listening: {err}") from err
        if not _readable([self.ctl], _GRACE):
            raise WorkerBroken(f"the keeper did not start a runner within {_GRACE:g} s")
        message, fds, _, _ = socket.recv_fds(self.ctl, 256, 3)
        if not message.startswith(b"SPAWNED ") or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise WorkerBroken(f"the keeper answered {message[:80]!r} to SPAWN")
        os.set_blocking(fds[1], False)
        return _Runner(int(message.split()[1]), socket.socket(fileno=fds[0]), fds[1], fds[2])

    def death_report(self) -> dict[str, Any]:
        if not _readable([self.ctl], _GRACE):
            raise WorkerBroken(f"the keeper did not report its runner's death within {_GRACE:g} s")
        message = self.ctl.recv(1 << 20)
        if not message.startswith(b"DEAD "):
            raise WorkerBroken(f"the keeper answered {message[:80]!r} instead of a death report")
        report: dict[str, Any] = json.loads(message[5:])
        return report

    def close(self) -> None:
        _PARENT_FDS.difference_update((self.ctl.fileno(), self.pidfd))
        self.ctl.close()  # on this EOF the keeper kills its runner and everything else, then exits
        if not _readable([self.pidfd], _GRACE):  # a keeper that hangs: kill its tree from here
            end_descendants(self.pid, patience=5.0)
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.pidfd)


def _ready(fds: list[int], timeout: float | None) -> set[int]:
    """The descriptors of ``fds`` readable (or at EOF/hung up) within ``timeout`` seconds (None: no limit).

    poll, not select: a test session can hold more than FD_SETSIZE (1024) descriptors.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    events = poller.poll(None if timeout is None else max(timeout, 0.0) * 1000)  # EINTR is retried (PEP 475)
    return {fd for fd, _ in events}


def _readable(fds: list[Any], timeout: float) -> bool:
    return bool(_ready([fd if isinstance(fd, int) else fd.fileno() for fd in fds], timeout))


def _shut_down(state: dict[str, Any]) -> None:
    """Kill a worker's runner, then close its keeper (also at interpreter exit, via weakref.finalize)."""
    runner: _Runner | None = state.pop("runner", None)
    keeper: _Keeper | None = state.pop("keeper", None)
    if runner is not None:
        runner.signal(signal.SIGKILL)
        runner.close()
    if keeper is not None:
        keeper.close()


class Worker:
    """A forked process that calls ``fn(*args, **kwargs)`` many times, each call under its own timeout.

    ``fn`` and everything it refers to are the caller's as they were when the
    worker was made (its keeper is forked then). Arguments and results cross a
    socket as pickles; keep arguments small. When a call kills its process or
    times out, the next call transparently gets a fresh runner (``restarts``
    counts them). ``fresh=True`` gives every call a runner of its own, forked from
    the keeper, so nothing one call leaves in memory (a cache) reaches the next.
    A call that leaves Python threads running retires its runner (they end with it), unless
    ``keep_threads=True``: a loader's thread pool (transformers, tokenizers) then stays, still
    named in ``stragglers``, and what the runner learned stays too. Should the keeper itself
    die, the call raises ``WorkerBroken`` and the next call forks a new keeper from the caller
    as it is by then.

        with Worker(judge_state, timeout=10) as worker:
            outcomes = [worker.call(i) for i in range(len(states))]
    """

    def __init__(
        self, fn: Callable[..., Any], *, timeout: float, fresh: bool = False, keep_threads: bool = False
    ) -> None:
        if not hasattr(os, "pidfd_open"):
            raise RuntimeError("persistkit.testing.isolate needs Linux 5.3+ (pidfds)")
        self.fn = fn
        self.timeout = timeout
        self.fresh = fresh
        self.keep_threads = keep_threads
        self.calls = 0
        self.restarts = 0
        self._spawned = 0
        self._state: dict[str, Any] = {"keeper": _Keeper(fn, fresh, keep_threads)}
        self._finalizer = weakref.finalize(self, _shut_down, self._state)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def call(self, *args: Any, **kwargs: Any) -> Outcome:
        """``fn(*args, **kwargs)`` in the worker, under ``self.timeout``."""
        return self.run(args, kwargs)

    def run(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Outcome:
        """Like ``call``, with this call's own ``timeout``."""
        if not self._finalizer.alive:
            raise RuntimeError("this Worker is closed")
        limit = self.timeout if timeout is None else timeout
        request = pickle.dumps((args, kwargs or {}), protocol=pickle.HIGHEST_PROTOCOL)
        self.calls += 1
        try:
            if "keeper" not in self._state:
                self._state["keeper"] = _Keeper(self.fn, self.fresh, self.keep_threads)
            return self._exchange(self._runner(), request, limit)
        except WorkerBroken:
            _shut_down(self._state)
            raise

    def _runner(self) -> _Runner:
        runner: _Runner | None = self._state.get("runner")
        if runner is None:
            runner = self._state["keeper"].spawn()
            self._state["runner"] = runner
            self.restarts += bool(self._spawned) and not self.fresh
            self._spawned += 1
        return runner

    def _exchange(self, runner: _Runner, request: bytes, limit: float) -> Outcome:
        start = time.monotonic()
        deadline = start + limit
        with contextlib.suppress(OSError):  # a runner that is gone already: its death is reported below
            _send_frame(runner.sock, request)
        buffer = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._timed_out(runner, start, limit)
            ready = _ready([runner.sock.fileno(), runner.diag], remaining)
            if runner.diag in ready:
                runner.read_diag()
            if runner.sock.fileno() not in ready:
                continue
            try:
                chunk = runner.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                return self._died(runner, start)
            buffer += chunk
            if len(buffer) >= _FRAME.size:
                end = _FRAME.size + _FRAME.unpack_from(buffer)[0]
                if len(buffer) >= end:
                    return self._answered(runner, bytes(buffer[_FRAME.size : end]), start)

    def _forget(self, runner: _Runner) -> dict[str, Any]:
        """The runner is dead or exiting: take the keeper's report of its death, close our handles."""
        self._state.pop("runner", None)
        keeper: _Keeper = self._state["keeper"]
        try:
            report = keeper.death_report()
            runner.diag_until_eof()
        finally:
            runner.close()
        return report

    def _answered(self, runner: _Runner, frame: bytes, start: float) -> Outcome:
        seconds = time.monotonic() - start
        reply = pickle.loads(frame)  # noqa: S301 - our own runner's reply: a dict of builtins
        if reply["retire"]:
            self._forget(runner)
        stragglers = tuple(reply["stragglers"])
        if reply["kind"] == "raised":
            return Outcome(
                "raised",
                seconds,
                error_type=reply["type"],
                error_bases=reply["bases"],
                error_message=reply["message"],
                traceback=reply["traceback"],
                stragglers=stragglers,
            )
        value, pickled = None, reply["value"] is not None
        if pickled:
            try:
                # our own child's pickle of fn's value, made by the same code as this process
                value = pickle.loads(reply["value"])  # noqa: S301
            except Exception:
                pickled = False
        return Outcome(
            "returned",
            seconds,
            value=value,
            value_repr=reply["repr"],
            value_pickled=pickled,
            stragglers=stragglers,
        )

    def _died(self, runner: _Runner, start: float) -> Outcome:
        report = self._forget(runner)
        status = int(report["status"])
        seconds = time.monotonic() - start
        stragglers = tuple(report["stragglers"])
        if os.WIFSIGNALED(status):
            return Outcome(
                "killed",
                seconds,
                signal=_signal_name(os.WTERMSIG(status)),
                traceback=runner.diag_text.decode(errors="replace"),
                stragglers=stragglers,
            )
        return Outcome(
            "exited", seconds, exit_status=os.waitstatus_to_exitcode(status), stragglers=stragglers
        )

    def _timed_out(self, runner: _Runner, start: float, limit: float) -> Outcome:
        runner.dump_stacks()
        runner.signal(signal.SIGKILL)
        report = self._forget(runner)
        return Outcome(
            "timeout",
            time.monotonic() - start,
            timeout=limit,
            traceback=runner.diag_text.decode(errors="replace"),
            stragglers=tuple(report["stragglers"]),
        )


def run_isolated(fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any) -> Outcome:
    """``fn(*args, **kwargs)`` in a forked child, under a timeout enforced from outside."""
    with Worker(fn, timeout=timeout) as worker:
        return worker.call(*args, **kwargs)
