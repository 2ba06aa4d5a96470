"""Observe a save: which observer, what it saw, and whether that explains what changed.

Two observers feed the crash and fault machinery the same operation log:

``syscalls``
    strace attached to this process (``persistkit.testing.observe.strace``), decoded by
    ``persistkit.testing.observe.syscalls``. Sees every write the kernel sees: Python,
    C/C++/Rust extensions (torch.save, sqlite3, h5py, pyarrow, safetensors),
    other threads and child programs. Cannot see stores through a shared
    ``mmap`` or ``io_uring`` submissions; those are reported, not guessed.
``python``
    The portable fallback: ``persistkit.io`` is recorded and ``open``/``os``/
    ``pathlib``/``shutil``/``numpy.save`` are intercepted. Blind to native code.

``auto`` picks ``syscalls`` where ptrace works and says once why it fell back
otherwise. Whatever the observer, ``check_explained`` refuses to judge a save
whose recorded operations do not reproduce the directory it left: a verdict
is only ever given on what was observed.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from persistkit.io import current_fs, use_fs
from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.ops import Op, Spool
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.fs.snapshot import Entry, Snapshot
from persistkit.testing.observe.intercept import GuardFS, Interceptor
from persistkit.testing.observe.strace import (
    CommandRun,
    Injection,
    ObserverUnavailable,
    SelfTrace,
    TracedProcess,
    TraceFile,
    ptrace_problem,
    run_command,
)
from persistkit.testing.observe.syscalls import CallRecord, FaultPoint, SyscallLog, parse

__all__ = [
    "DEFAULT_VOLATILE",
    "OBSERVERS",
    "NotJudgeable",
    "Observation",
    "ObservedProcess",
    "ObserverNotice",
    "check_explained",
    "choose",
    "observe_command",
    "observe_save",
    "from_trace",
]

Observer = Literal["auto", "syscalls", "python"]
OBSERVERS = ("auto", "syscalls", "python")
_DEFAULT: list[str] = ["auto"]  # set by the plugin's --persistkit-observe


class ObserverNotice(UserWarning):
    """``observe='auto'`` fell back to the Python observer; the message says why."""


class NotJudgeable(AssertionError):
    """The observer could not see enough of the save to give a verdict (never a pass)."""


def set_default(observe: str) -> None:
    if observe not in OBSERVERS:
        raise ValueError(f"observe must be one of {OBSERVERS}, not {observe!r}")
    _DEFAULT[0] = observe


_noticed: set[str] = set()


def choose(observe: str | None) -> str:
    """The observer to use for ``observe`` ("auto" resolves here; one notice per reason)."""
    want = observe or _DEFAULT[0]
    if want not in OBSERVERS:
        raise ValueError(f"observe must be one of {OBSERVERS}, not {want!r}")
    if want == "python":
        return "python"
    problem = ptrace_problem()
    if problem is None:
        return "syscalls"
    if want == "syscalls":
        raise ObserverUnavailable(
            f"observe='syscalls' cannot run: {problem}. Fix that, or pass observe='python' (blind to "
            "writes made by C extensions and other programs)."
        )
    if problem not in _noticed:
        _noticed.add(problem)
        warnings.warn(
            f"persistkit: observing saves with Python interception because {problem}. Writes made by "
            "C extensions (torch.save, sqlite3, h5py, pyarrow) and other programs are not seen; "
            "a save whose changes are not explained by what was seen fails as not judgeable.",
            ObserverNotice,
            stacklevel=3,
        )
    return "python"


# Files that are a rebuildable index rather than state (see ``FsModel``): their stores through a
# shared mapping are not a reason to refuse a verdict, and crash states hold them zero-filled.
# SQLite's WAL index: "the -shm file ... is only used as shared memory; its content is rebuilt
# from the WAL on the first connection after a crash" (sqlite.org/walformat.html, section 2.1).
DEFAULT_VOLATILE: tuple[str, ...] = ("*-shm",)


@dataclass
class Observation:
    """What one observed run of a save recorded."""

    observer: str
    ops: list[Op]
    blind: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    points: list[FaultPoint] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    injected: list[CallRecord] = field(default_factory=list)
    volatile: tuple[str, ...] = DEFAULT_VOLATILE
    spool: Spool | None = None
    late: list[Op] = field(default_factory=list)  # made after the traced program itself exited

    def close(self) -> None:
        """Drop the spooled bytes (the operations can no longer be replayed after this)."""
        if self.spool is not None:
            self.spool.close()


def _sizes(root: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                out[full] = os.lstat(full).st_size
            except OSError:
                continue
    return out


def _outside_changes(log: SyscallLog) -> list[str]:
    """Paths outside the root that the save left changed (transient and cache files aside)."""
    out = []
    for path in sorted(log.outside):
        if "__pycache__" in path or path.endswith((".pyc", " (deleted)")):
            continue
        if os.path.lexists(path):
            out.append(path)
    created = {op.path for op in log.ops if op.kind in ("create", "mkdir", "symlink", "mkfifo")}
    for op in log.ops:
        removed = op.kind in ("unlink", "rmdir") and not log.inside(op.path) and op.path not in created
        if removed and "__pycache__" not in op.path and not os.path.lexists(op.path):
            out.append(f"{op.path} (deleted)")
    return sorted(set(out))


def _open_fds() -> dict[int, tuple[str, int, int]]:
    """This process's descriptors before tracing: fd -> (path, position, open flags)."""
    out: dict[int, tuple[str, int, int]] = {}
    try:
        names = os.listdir("/proc/self/fdinfo")
    except OSError:
        return out
    for name in names:
        try:
            fd = int(name)
            path = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            out[fd] = (path, int(info["pos"].strip()), int(info["flags"].strip(), 8))
        except (OSError, ValueError, KeyError):
            continue  # the descriptor listdir itself used, or one closed meanwhile
    return out


def from_trace(
    trace: TraceFile,
    root: str,
    sizes: dict[str, int],
    cwd: str,
    fds: dict[int, tuple[str, int, int]] | None = None,
    *,
    keep_calls: bool = False,
    volatile: Sequence[str] = DEFAULT_VOLATILE,
) -> Observation:
    """Decode a trace (streamed: it may be far larger than memory should hold), then drop it."""
    try:
        log = SyscallLog(root, sizes, cwd, fds or {}, keep_calls=keep_calls, volatile=tuple(volatile))
        log.learn_spawns(trace.lines())
        log.feed(parse(trace.lines(), on_exit=log.note_exit))
    finally:
        trace.close()
    return Observation(
        "syscalls", log.ops, log.blind, _outside_changes(log), log.points, log.calls, log.injected, tuple(volatile),
        log.spool, log.late_ops(),
    )  # fmt: skip


def observe_save(
    save: Callable[[], Any],
    root: str,
    observer: str,
    *,
    injections: Sequence[Injection] = (),
    before: Callable[[str, str], None] | None = None,
    keep_calls: bool = False,
    volatile: Sequence[str] = DEFAULT_VOLATILE,
) -> tuple[Any, BaseException | None, Observation]:
    """Run ``save()`` under ``observer``; return its result, its exception, and what was seen."""
    root = os.path.abspath(root)
    if observer == "syscalls":
        sizes = _sizes(root)
        cwd = os.getcwd()
        fds = _open_fds()
        result: Any = None
        error: BaseException | None = None
        tracer = SelfTrace(injections)
        with tracer:
            try:
                result = save()
            except Exception as err:
                error = err
        assert tracer.trace is not None
        obs = from_trace(tracer.trace, root, sizes, cwd, fds, keep_calls=keep_calls, volatile=volatile)
        return result, error, obs
    rec = RecordingFS(current_fs())
    result = None
    error = None
    with use_fs(GuardFS(rec, before=before)), Interceptor(root, log=rec, before=before):
        try:
            result = save()
        except Exception as err:
            error = err
    return (
        result,
        error,
        Observation("python", list(rec.ops), volatile=tuple(volatile), spool=rec.spool_if_any),
    )


def observe_command(
    cmd: Sequence[str],
    root: str,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = 120.0,
    injections: Sequence[Injection] = (),
    keep_calls: bool = False,
    volatile: Sequence[str] = DEFAULT_VOLATILE,
) -> tuple[CommandRun, Observation]:
    """Run any program under strace until it exits; how it ended, and what was seen."""
    root = os.path.abspath(root)
    sizes = _sizes(root)
    run = run_command(cmd, injections=injections, cwd=cwd, env=env, timeout=timeout)
    obs = from_trace(
        run.trace, root, sizes, os.path.abspath(cwd or os.getcwd()), keep_calls=keep_calls, volatile=volatile
    )
    return run, obs


class ObservedProcess:
    """A program run under strace that the caller talks to and ends itself (``lifecycle``'s children).

    ``process`` is the ``TracedProcess`` (pipes as given in ``popen``); once it has been
    ended and waited for, ``observation()`` decodes what it did under ``root``.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        root: str,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        volatile: Sequence[str] = DEFAULT_VOLATILE,
        **popen: Any,
    ) -> None:
        self.root = os.path.abspath(root)
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.volatile = tuple(volatile)
        self.sizes = _sizes(self.root)
        self.process = TracedProcess(cmd, env=env, cwd=cwd, **popen)

    def observation(self) -> Observation:
        return from_trace(self.process.trace, self.root, self.sizes, self.cwd, volatile=self.volatile)


def check_explained(
    fixture: str,
    obs: Observation,
    before: Snapshot,
    after: dict[str, Entry],
    model: FsModel,
    *,
    allow_outside: Sequence[str] = (),
) -> None:
    """Raise NotJudgeable unless the observed operations reproduce ``after`` from ``before``.

    ``allow_outside``: glob patterns of paths outside the root that may change without being
    judged (a log file the test process writes, say).
    """
    root = before.root
    problems: list[str] = []
    problems += [f"cannot be judged: {b}" for b in obs.blind]
    problems += [f"not modelled: {u}" for u in model.unmodelled]
    outside = [p for p in obs.outside if not any(fnmatch.fnmatch(p, pat) for pat in allow_outside)]
    if outside:
        problems.append(
            "save() also changed files outside the directory under test, which this fixture cannot judge: "
            + ", ".join(_printable(p) for p in outside[:8])
            + (" ..." if len(outside) > 8 else "")
            + f". Point root= at a directory that holds everything the save writes (now {_printable(root)}), or, for "
            "files that are not part of the saved state (a log), pass allow_outside=['/path/*.log']."
        )
    tagged = _user_xattrs(root)
    if tagged:
        problems.append(
            "files under the root carry extended attributes ("
            + ", ".join(tagged[:4])
            + (" ..." if len(tagged) > 4 else "")
            + "), which crash states are rebuilt without (and setxattr is not observed): a load that "
            "reads them would fail in every state"
        )
    diff = [] if problems else model.explain(after) or model.verify_content()
    if diff:
        seen = sum(model.relevant)
        if obs.observer == "python":
            hint = (
                "the writes come from code the python observer cannot see (C extensions such as "
                "torch.save, sqlite3, h5py, pyarrow; other programs; references captured before "
                "interception); use observe='syscalls'"
            )
        else:
            hint = (
                "the writes come from somewhere the tracer cannot see: a process that was not started by "
                "the traced one, a shared mmap, or io_uring"
            )
        problems.append(
            f"observed {seen} operation{'s' if seen != 1 else ''} under {_printable(root)}, which do not explain how the "
            f"directory changed ({'; '.join(_printable(d) for d in diff[:6])}): {hint}"
        )
    if not problems and not any(model.relevant) and not before.diff(Snapshot(root, after)):
        problems.append(
            f"save() changed nothing under {_printable(root)} and no operation was observed, so there is nothing to "
            "judge. Check that save() writes there (pass root= if it writes elsewhere)."
        )
    if problems:
        raise NotJudgeable(
            f"{fixture}: no verdict, because the {obs.observer} observer did not see the whole save.\n  - "
            + "\n  - ".join(problems)
        )


def _printable(text: str) -> str:
    """A path as text that any terminal can print (names that are not UTF-8 keep their bytes as \\x..)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _user_xattrs(root: str) -> list[str]:
    """Paths under ``root`` with user.* extended attributes (snapshots do not carry them)."""
    out: list[str] = []
    if not hasattr(os, "listxattr"):
        return out
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            full = os.path.join(dirpath, name)
            try:
                names = os.listxattr(full, follow_symlinks=False)
            except OSError:
                continue
            if any(n.startswith("user.") for n in names):
                out.append(os.path.relpath(full, root))
    return sorted(out)
