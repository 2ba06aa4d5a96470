"""``disk_faults``: fail each file operation of a save the way a disk can, and judge what the save did.

SQLite's I/O-error tests, applied to any save. A dry run numbers the file
operations the save performs; then, for each operation, each errno its man
page lists and each mode, the save runs again from the initial directory with
that one fault, and the fixture checks:

1. the error surfaces: if ``save()`` returns although a fault fired, the
   directory must hold the complete new state; after a failed fsync that also
   means the state where the pages the kernel dropped are gone (fsyncgate:
   since Linux 4.13 a failed fsync marks the dirty pages clean, so a save that
   retries fsync and returns success has lost them);
2. the previous state is intact: ``load()`` returns the state before the save
   (or the one after it, when the fault hit after the commit point);
3. no leaked file descriptors (checked after the save's exception was released
   and collected, so a descriptor only its traceback kept alive is not a leak)
   and, for faults that fire once, no temp litter;
4. once the fault clears, the next ``save()`` succeeds and ``load()`` returns
   the new state (``after_retry=`` for saves that advance state each call).

Faults (``observe="syscalls"``, the default where the kernel allows it) are
aimed by ``persistkit.testing.observe.inject`` at one call of one thread on
one file: never at pipes, sockets or eventfds, never "the N-th write of every
thread". Kinds:

* an errno, once or persistently (a full or failing disk: every later file
  operation on that device fails with an errno its man page lists);
* a short write (a ``write`` that returns fewer bytes than asked, which is
  what a filling disk does; a caller that ignores the count publishes a
  truncated file);
* a failed ``close`` (the descriptor is released and the error returned);
* fsyncgate, judged on every fsync fault after which the save returned.

Every case runs isolated (``persistkit.testing.isolate``): in a forked worker,
with the timeout enforced from outside by killing it and everything it
started. A save that segfaults or aborts after a fault (h5py 3.16 in
``File.close()`` after ENOSPC) is a verdict naming the fault and the signal;
a save that never returns is one too; neither can take the test session down.
``load()`` runs in its own worker the same way.

With ``observe="python"`` (no ptrace or no seccomp here) persistkit's own I/O
and the user's plain-Python file calls are failed at the Python level
(``FaultFS`` and the interceptor), also isolated. ``DiskFaults.subprocess``
judges any program: the program runs under the injector, and its whole
process tree is killed at the timeout.
"""

from __future__ import annotations

import collections
import contextlib
import errno as _errno
import gc
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persistkit.io import current_fs, use_fs
from persistkit.testing.fs.faultfs import FAULT_ERRNOS, Fault, FaultFS
from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.ops import OpKind
from persistkit.testing.fs.snapshot import Snapshot, scan
from persistkit.testing.fs.states import CrashSimulator, Plan
from persistkit.testing.judge import UNSET, left_running
from persistkit.testing.observe import (
    DEFAULT_VOLATILE,
    NotJudgeable,
    Observation,
    check_explained,
    choose,
)
from persistkit.testing.observe.intercept import GuardFS, Interceptor
from persistkit.testing.readers import IsolatedReader
from persistkit.testing.report import RECORDER, Recorder

if TYPE_CHECKING:
    from persistkit.testing.isolate import Outcome

__all__ = ["DEFAULT_LITTER", "DiskFaults", "FaultCase", "FaultReport", "open_fds"]

DEFAULT_LITTER = re.compile(r"(?i)(tmp|temp|~$|\.part$|\.partial$|\.new$|\.swp$)")
MODES = ("once", "persistent")


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point at (Linux ``/proc/self/fd``)."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
    return out


def _own(path: str) -> bool:
    """A file of the verifier itself (a spool of written bytes, a trace, a workshop copy)."""
    return "/persistkit-spool-" in path or "/persistkit-strace-" in path or "/.persistkit-" in path


def _file_fds(fds: dict[int, str]) -> collections.Counter[str]:
    return collections.Counter(
        t for t in fds.values() if t.startswith("/") and not t.startswith(("/proc/", "/dev/")) and not _own(t)
    )


@dataclass
class FaultCase:
    operation: str
    fault: str
    raised: str | None
    problems: list[str]


@dataclass
class FaultReport:
    """What ``disk_faults`` injected. ``violations`` lists the failing cases."""

    operations: list[str]
    cases: int = 0
    fired: int = 0
    raised: int = 0
    seconds: float = 0.0
    violations: list[FaultCase] = field(default_factory=list)
    observer: str = "python"
    misfired: int = 0
    points: int = 0  # operations a fault is injected at
    saves: int = 0  # how many times save() ran (each case runs it twice: faulted, then the retry)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    injected: list[str] = field(
        default_factory=list
    )  # every fault that fired, as "ENOSPC at #3 write x (once)"

    def summary(self) -> str:
        missed = f", {self.misfired} injections landed elsewhere (no verdict)" if self.misfired else ""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        return (
            f"{self.cases} faults over {self.points} operations (observed by {self.observer}; {kinds}): "
            f"{self.raised} raised, {len(self.violations)} violations{missed}; save() ran {self.saves} times"
        )


@dataclass
class _Planned:
    """One fault case: where, what, and how to name it."""

    index: int  # which operation (into the plan's list)
    label: str  # the operation, as the report names it
    fault: str  # "ENOSPC", "EIO", ... or "short" (a short write)
    mode: str  # "once" or "persistent"
    family: str  # "write", "fsync", "close", ... ("" for the python observer)
    aim: Any = None  # inject.Aim (syscalls) or faultfs.Fault (python)
    point: Any = None  # the dry run's inject.Point

    def describe(self) -> str:
        what = "short write" if self.fault == "short" else self.fault
        return f"{what} at {self.label} ({self.mode})"


class DiskFaults:
    """The ``disk_faults`` fixture. Call it with a save and a load function.

    Example::

        def test_save_survives_full_disks(disk_faults, tmp_path):
            path = tmp_path / "state.json"
            save_json(path, {"n": 1})
            disk_faults(lambda: save_json(path, {"n": 2}), lambda: load_json(path))
    """

    def __init__(self, root: str | os.PathLike[str], *, recorder: Recorder = RECORDER) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.recorder = recorder
        self.reports: list[FaultReport] = []

    def __call__(
        self,
        save: Callable[..., Any],
        load: Callable[[], Any],
        *,
        errnos: Iterable[str] = tuple(FAULT_ERRNOS),
        modes: Iterable[str] = MODES,
        root: str | os.PathLike[str] | None = None,
        litter: re.Pattern[str] | None = DEFAULT_LITTER,
        max_operations: int | None = None,
        setup: Callable[[], Any] | None = None,
        teardown: Callable[[Any], Any] | None = None,
        rotate_errnos: bool = False,
        observe: str | None = None,
        timeout: float | None = 60.0,
        after_retry: Callable[[Any], bool] | None = None,
        allow_outside: Sequence[str] = (),
        short_writes: bool = True,
        close_errors: bool = True,
        volatile: Sequence[str] = DEFAULT_VOLATILE,
    ) -> FaultReport:
        """Inject each fault in turn; raise AssertionError describing the first bad case.

        ``errnos``: names from ``persistkit.testing.fs.faultfs.FAULT_ERRNOS``; each operation
        gets only those its man page lists. ``modes``: "once" and/or "persistent".
        ``short_writes``/``close_errors``: also make each write return short, and each close of a
        written file fail (syscall observer). ``litter``: a regex for names that must not be
        left behind (None: do not check). ``max_operations`` samples that many operations
        evenly instead of all of them.

        ``setup()``, when given, runs before each save without faults (open the store, make
        changes); ``save`` is then called as ``save(ctx)`` with its result, twice per case (the
        faulted save and the retry once the fault clears, as a live process would), and
        ``teardown(ctx)`` runs at the end of each case. ``rotate_errnos``: give each operation
        one errno, in turn, instead of every errno (a cheaper sweep that still covers every
        operation and every errno).

        ``save`` runs many times, each time from the restored initial directory, in a forked
        worker; it must open whatever it writes through (as a fresh process would). ``load``
        runs in a worker of its own. ``timeout``: seconds one faulted save may take before the
        case fails as hung (it is killed from outside). ``after_retry``: for saves that are not
        idempotent (an append-only journal, say), a predicate on ``load()``'s value after a
        failed save and its retry; by default that value must equal the state after one clean
        save. ``volatile``: name patterns of rebuildable indexes whose content is not state
        (default: SQLite's ``*-shm``), as for ``crash_points``: one mapped shared and writable is
        no reason to refuse a verdict (their operations are still faulted).
        """
        __tracebackhide__ = True
        codes = _codes(errnos)
        mode_list = _modes(modes)
        observer = choose(observe)
        if observer == "syscalls":
            from persistkit.testing.observe.inject import injector_problem

            problem = injector_problem()
            if problem is not None:
                if observe == "syscalls":
                    raise NotJudgeable(
                        f"disk_faults: observe='syscalls' cannot aim faults here: {problem}. Pass observe='python' "
                        "(faults in persistkit's and plain-Python file calls only)."
                    )
                observer = "python"
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        body = _Body(save, setup, teardown, None, None, None, None)
        body.load, body.after_retry = load, after_retry
        plan = _Plan(
            self, body, load, top, litter, timeout, after_retry, allow_outside, observer, tuple(volatile)
        )
        return plan.run(codes, mode_list, max_operations, rotate_errnos, short_writes, close_errors)

    def subprocess(
        self,
        cmd: Sequence[str],
        load: Callable[[], Any],
        *,
        errnos: Iterable[str] = tuple(FAULT_ERRNOS),
        modes: Iterable[str] = MODES,
        root: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        litter: re.Pattern[str] | None = DEFAULT_LITTER,
        max_operations: int | None = None,
        rotate_errnos: bool = False,
        timeout: float = 60.0,
        after_retry: Callable[[Any], bool] | None = None,
        allow_outside: Sequence[str] = (),
        short_writes: bool = True,
        close_errors: bool = True,
        volatile: Sequence[str] = DEFAULT_VOLATILE,
    ) -> FaultReport:
        """Fail every file operation of any program ``cmd`` in turn (it runs under the injector).

        A non-zero exit status counts as the error being raised; a death by a signal is named as
        one; exiting 0 although a fault fired means the directory must hold the complete new
        state. At ``timeout`` the program and every process it started are killed.
        """
        __tracebackhide__ = True
        codes = _codes(errnos)
        mode_list = _modes(modes)
        choose("syscalls")
        from persistkit.testing.observe.inject import injector_problem

        problem = injector_problem()
        if problem is not None:
            raise NotJudgeable(
                f"disk_faults.subprocess: no verdict, because faults cannot be aimed here: {problem}"
            )
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        body = _Body(None, None, None, list(cmd), os.fspath(cwd) if cwd is not None else None, env, timeout)
        body.load, body.after_retry = load, after_retry
        plan = _Plan(
            self, body, load, top, litter, timeout, after_retry, allow_outside, "syscalls", tuple(volatile)
        )
        return plan.run(codes, mode_list, max_operations, rotate_errnos, short_writes, close_errors)

    @staticmethod
    def _message(report: FaultReport, top: str) -> str:
        first = report.violations[0]
        lines = [
            f"disk_faults: {len(report.violations)} of {report.fired} injected faults were mishandled "
            f"(observed by {report.observer}).",
            f"First: {first.fault}",
            f"  save() {'raised ' + first.raised if first.raised else 'returned normally'}",
        ]
        lines += [f"  - {p}" for p in first.problems]
        lines.append(f"Operations of the save ({len(report.operations)}; paths relative to {top}):")
        lines += [f"  {_rel(op, top)}" for op in report.operations[:60]]
        others = {v.fault for v in report.violations[1:]}
        if others:
            lines.append(f"Also failing ({len(others)}): " + "; ".join(sorted(others)[:8]))
        lines.append(f"({report.summary()})")
        return "\n".join(lines)


def _codes(errnos: Iterable[str]) -> list[str]:
    codes = []
    for name in errnos:
        if name not in FAULT_ERRNOS:
            raise ValueError(f"unknown errno {name!r}; choose from {sorted(FAULT_ERRNOS)}")
        codes.append(name)
    return codes


def _modes(modes: Iterable[str]) -> list[str]:
    out = list(modes)
    for mode in out:
        if mode not in MODES:
            raise ValueError(f"mode must be 'once' or 'persistent', not {mode!r}")
    return out


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".")


def _describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# -- what runs in the worker ---------------------------------------------------------------------


class _Body:
    """The save (a callable, or a program) as the case worker runs it, step by step.

    Steps: "fault" (setup, then the save with strace attached and the injector armed,
    then the leak check once the exception is released and collected), "retry" (the same
    save once the fault cleared), "end" (teardown and, for stateful saves, the leak check).
    """

    def __init__(
        self,
        save: Callable[..., Any] | None,
        setup: Callable[[], Any] | None,
        teardown: Callable[[Any], Any] | None,
        cmd: list[str] | None,
        cwd: str | None,
        env: dict[str, str] | None,
        timeout: float | None,
    ) -> None:
        self.save, self.setup, self.teardown = save, setup, teardown
        self.cmd, self.cwd, self.env, self.timeout = cmd, cwd, env, timeout
        self.stateful = setup is not None
        self.ctx: Any = None
        self.fds0: dict[int, str] = {}
        self.trace: Any = None
        self.channel: Any = None  # set by the plan before each case's worker forks
        self.python_fault: Fault | None = None
        self.python_counter: FaultFS | None = None
        self.top = ""
        self.killed_by: str | None = None
        self.left_running: list[str] = []  # what the program (cmd) left running when it exited
        self.stderr: Any = None  # the program's stderr for the next run, opened before the trace starts
        self.load: Callable[[], Any] | None = None
        self.after_retry: Callable[[Any], bool] | None = None

    # -- running the save itself
    def _run_save(self) -> str | None:
        """Run the save once; None when it returned, else a description of what it raised."""
        if self.cmd is not None:
            import subprocess

            from persistkit.testing.isolate import descendants, end_descendants

            before = set(descendants())  # the tracer
            # Output to an unlinked file, not a pipe: the save ends when the program exits, not when
            # the last process holding its output does (a child it left running, say). What it left
            # is named and killed at that exit, as crash_points.subprocess does. No timeout here: the
            # case's worker enforces it from outside, on the whole process tree. (Made before the
            # trace starts, so it adds no operation; not O_TMPFILE, whose calls would be faulted.)
            with self.stderr or _unlinked_file() as err:
                self.stderr = None
                program = subprocess.Popen(
                    self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=err,
                )  # fmt: skip
                code = program.wait()
                self.left_running = end_descendants(spare=before, ended=True)
                err.seek(0)
                tail = err.read().decode(errors="replace").strip()[-300:]
            if code == 0:
                return None
            if code < 0:
                import signal as _signal

                self.killed_by = _signal.Signals(-code).name
                return f"the program was killed by {self.killed_by}: {tail}"
            return f"the program exited with status {code}: {tail}"
        assert self.save is not None
        try:
            if self.stateful:
                self.save(self.ctx)
            else:
                self.save()
        except Exception as err:
            text = _describe_error(err)
            del err
            return text
        return None

    def _python_save(self) -> str | None:
        ffs = (
            FaultFS(current_fs(), self.python_fault)
            if self.python_fault is not None
            else FaultFS(current_fs())
        )
        self.python_counter = ffs
        with use_fs(GuardFS(ffs)), Interceptor(self.top, before=ffs.check):
            return self._run_save()

    def serve(self, step: str, trace: bool = False) -> dict[str, Any]:
        sys.dont_write_bytecode = True  # a .pyc written in one run but not the next shifts the counts
        if step == "setup":
            self._setup()
            return {}
        if step == "fault":
            with _logged() as lines:
                faulted = self._fault(trace)
            faulted["persistkit_log"] = lines
            return faulted
        if step == "retry":
            if self.python_counter is not None:
                self.python_counter.clear()
                self.python_fault = None
            with _logged() as lines:
                error = self._python_save() if self.channel is None and self.cmd is None else self._run_save()
            out: dict[str, Any] = {"error": error, "persistkit_log": lines}
            if error is None and self.after_retry is not None and self.load is not None:
                # judged here, where setup()'s objects live (after_retry may compare with them)
                from persistkit.testing.judge import outcome

                got = outcome(self.load)
                try:
                    out["accepted"] = got.error is None and bool(self.after_retry(got.value))
                except Exception as err:  # the predicate itself failed: say so
                    out["accepted"] = False
                    out["loaded"] = f"{got.describe()}, and after_retry() raised {_describe_error(err)}"
                else:
                    out["loaded"] = got.describe()
            return out
        return self._end()

    def _fault(self, trace: bool) -> dict[str, Any]:
        from persistkit.testing.observe.strace import SelfTrace

        if self.cmd is not None:
            self.stderr = _unlinked_file()
        tracer = SelfTrace() if trace else None
        if tracer is not None:
            tracer.__enter__()  # strace attaches before the filter is installed (inject's rule)
        self._setup()  # setup's own file operations are not faulted
        if self.channel is not None:
            from persistkit.testing.observe.inject import arm

            arm(self.channel)
        self.fds0 = open_fds()
        error = self._python_save() if self.channel is None and self.cmd is None else self._run_save()
        gc.collect()  # the exception is released: what only its traceback kept open is closed now
        leaked = [] if self.stateful else sorted((_file_fds(open_fds()) - _file_fds(self.fds0)).elements())
        out: dict[str, Any] = {
            "error": error,
            "leaked": leaked,
            "killed_by": self.killed_by,
            "left_running": self.left_running,
        }
        if self.python_counter is not None:
            ffs = self.python_counter
            out["fired"] = ffs.fired > 0
            out["log"] = list(ffs.log)
        if tracer is not None:
            tracer.__exit__(None, None, None)
            self.trace = tracer.trace  # kept (and so the file) until the case ends
            assert self.trace is not None
            out["trace"] = self.trace.path
        return out

    def _setup(self) -> None:
        if self.stateful and self.ctx is None:
            assert self.setup is not None
            self.ctx = self.setup()

    def _end(self) -> dict[str, Any]:
        leaked: list[str] = []
        if self.stateful:
            if self.teardown is not None:
                self.teardown(self.ctx)
            self.ctx = None
            gc.collect()
            leaked = sorted((_file_fds(open_fds()) - _file_fds(self.fds0)).elements())
        return {"leaked": leaked}


# -- the plan: dry run, then one isolated case per fault ------------------------------------------


@dataclass
class _Plan:
    owner: DiskFaults
    body: _Body
    load: Callable[[], Any]
    top: str
    litter: re.Pattern[str] | None
    timeout: float | None
    after_retry: Callable[[Any], bool] | None
    allow_outside: Sequence[str]
    observer: str
    volatile: tuple[str, ...]
    operations: list[str] = field(default_factory=list)
    after_snapshot: Snapshot | None = None
    before_setup: Snapshot | None = None  # stateful saves: the directory as setup() leaves it
    reader: IsolatedReader | None = None
    after_scan: dict[str, Any] = field(default_factory=dict)
    expected_after: Any = None

    def run(
        self,
        codes: list[str],
        modes: list[str],
        max_operations: int | None,
        rotate_errnos: bool,
        short_writes: bool,
        close_errors: bool,
    ) -> FaultReport:
        __tracebackhide__ = True
        start = time.perf_counter()
        top = self.top
        self.body.top = top
        reader = IsolatedReader(self.load, None, UNSET, fixture="disk_faults", check=self.after_retry)
        initial = Snapshot.take(top)
        after_snapshot: Snapshot | None = None
        try:
            if not self.body.stateful:
                reader.expect_before()
                if _changed(initial, scan(top)):
                    initial.materialize(top)
            # (a stateful save learns its state before once setup() ran: in the dry run)
            self.reader = reader
            planned = self._dry_run(initial, codes, modes, rotate_errnos, short_writes, close_errors)
            after_snapshot = self.after_snapshot
            assert after_snapshot is not None
            expected_after = self.expected_after
            if expected_after.error is not None:
                raise AssertionError(
                    f"disk_faults: load() fails even after a save without faults: {expected_after.describe()}"
                )
            allowed = set(initial.entries) | set(after_snapshot.entries)
            points = sorted({p.index for p in planned})
            if max_operations is not None and len(points) > max_operations:
                step = (len(points) - 1) / max(max_operations - 1, 1)
                keep = {points[round(i * step)] for i in range(max_operations)}
                planned = [p for p in planned if p.index in keep]
                points = sorted(keep)
            report = FaultReport(self.operations, observer=self.observer, points=len(points), saves=1)
            judged: set[int] = set()
            unjudged: dict[int, str] = {}
            for case in planned:
                initial.materialize(top)
                outcome = self._case(case, initial, reader, allowed)
                report.cases += 1
                report.saves += outcome.saves
                if outcome.misfired is not None:
                    report.misfired += outcome.misfired != ""
                    unjudged.setdefault(
                        case.index, outcome.misfired or "the faulted run never made that call"
                    )
                    continue
                judged.add(case.index)
                report.fired += 1
                report.injected.append(_rel(case.describe(), top))
                report.kinds[case.fault if case.fault == "short" else case.family or "python"] += 1
                report.raised += int(outcome.case.raised is not None)
                if outcome.case.problems:
                    report.violations.append(outcome.case)
        finally:
            if after_snapshot is not None:
                after_snapshot.materialize(top)
            if self.after_snapshot is not None:  # taken even when the dry run then failed
                self.after_snapshot.close()
            initial.close()
            if self.before_setup is not None:
                self.before_setup.close()
            reader.close()
        report.seconds = time.perf_counter() - start
        self.owner.reports.append(report)
        self.owner.recorder.add_run("disk_faults", faults=report.fired, violations=len(report.violations))
        if report.violations:
            raise AssertionError(self.owner._message(report, top))
        never = {i: why for i, why in unjudged.items() if i not in judged}
        if never:
            labels = {c.index: c.label for c in planned}
            raise NotJudgeable(
                "disk_faults: no verdict, because no fault planned for these operations landed on them:\n  - "
                + "\n  - ".join(f"{_rel(labels[i], top)}: {why}" for i, why in sorted(never.items()))
            )
        if not report.fired:
            raise NotJudgeable(
                f"disk_faults: no verdict, because the save made no file operation a fault could be aimed at "
                f"under {top} (observed by {self.observer}). Check that save() writes there (root=)."
            )
        return report

    def _learn_after(self) -> None:
        """The directory a clean save leaves, and what load() returns from it (before any teardown)."""
        assert self.reader is not None
        self.after_scan = scan(self.top)
        self.after_snapshot = Snapshot.take(self.top)
        self.expected_after = self.reader.expect_after()

    # -- the dry run ---------------------------------------------------------------------
    def _dry_run(
        self,
        before: Snapshot,
        codes: list[str],
        modes: list[str],
        rotate_errnos: bool,
        short_writes: bool,
        close_errors: bool,
    ) -> list[_Planned]:
        __tracebackhide__ = True
        if self.observer == "python":
            return self._dry_run_python(codes, modes, rotate_errnos)
        from persistkit.testing.observe import from_trace
        from persistkit.testing.observe.inject import Aim, Channel, Errno, Listener, ShortWrite
        from persistkit.testing.observe.observer import _open_fds, _sizes
        from persistkit.testing.observe.strace import TraceFile

        sizes = _sizes(self.top)
        channel = Channel()
        listener = Listener(channel).start()
        self.body.channel = channel
        fault_points: list[Any] = []

        def dry_steps(worker: Any) -> Any:
            if self.body.stateful:
                # the state before the save is the one setup() leaves: learn it, and keep it
                worker.run(("setup",), timeout=self.timeout)
                assert self.reader is not None
                self.reader.expect_before()
                self.before_setup = Snapshot.take(self.top)
            out = worker.run(("fault", True), timeout=self.timeout)
            fault_points.extend(listener.log.points)  # the save's calls (teardown's are not faulted)
            if out.kind == "returned" and out.value["error"] is None:
                self._learn_after()  # before teardown runs
            return out

        try:
            result = self._in_worker(dry_steps, channel)
            listener.stop()
        finally:
            self.body.channel = None
        dry, trace = result
        if dry.kind != "returned":
            raise AssertionError(f"disk_faults: save() fails even without faults: it {dry.describe()}")
        reply = dry.value
        if reply["left_running"]:
            assert self.body.cmd is not None
            raise AssertionError(left_running("disk_faults.subprocess", self.body.cmd, reply["left_running"]))
        if reply["error"] is not None:
            raise AssertionError(f"disk_faults: save() fails even without faults: {reply['error']}")
        obs = from_trace(
            TraceFile(os.path.dirname(trace), trace),
            self.top,
            sizes,
            os.getcwd(),
            _open_fds(),
            volatile=self.volatile,
        )
        before = self.before_setup or before  # what the save starts from (after setup(), if any)
        if self.after_snapshot is not None and _changed(self.after_snapshot, scan(self.top)):
            # load() changed the directory the save left (ZODB's lock file, say): judge the save's own
            self.after_snapshot.materialize(self.top)
        try:
            model = FsModel(before, obs.ops, volatile=obs.volatile)
            check_explained(
                "disk_faults", obs, before, self.after_scan, model, allow_outside=self.allow_outside
            )
            relevant_paths = _relevant_paths(model, obs)
            self.operations = [
                op.describe() for op, keep in zip(obs.ops, model.relevant, strict=True) if keep
            ]
            labels = _label_points(fault_points, obs)
        finally:
            obs.close()
        planned: list[_Planned] = []
        index = 0
        for point in fault_points:
            if not _faultable(point, self.top, relevant_paths):
                continue
            label = labels.get(point.seq) or f"{point.syscall} {point.path}"
            cases: list[_Planned] = []
            if point.family == "close":
                if close_errors and "EIO" in point.errnos:
                    cases.append(
                        _Planned(index, label, "EIO", "once", "close", Aim.at(point, Errno("EIO")), point)
                    )
            else:
                listed = [c for c in codes if c in point.errnos]
                chosen = ([listed[index % len(listed)]] if rotate_errnos else listed) if listed else []
                for name in chosen:
                    for mode in modes:
                        aim = Aim.at(point, Errno(name), persistent=mode == "persistent")
                        cases.append(_Planned(index, label, name, mode, point.family, aim, point))
                if short_writes and point.family == "write":
                    cases.append(
                        _Planned(index, label, "short", "once", "write", Aim.at(point, ShortWrite()), point)
                    )
            if cases:
                planned += cases
                index += 1
        return planned

    def _dry_run_python(self, codes: list[str], modes: list[str], rotate_errnos: bool) -> list[_Planned]:
        __tracebackhide__ = True

        def dry_steps(worker: Any) -> Any:
            if self.body.stateful:
                worker.run(("setup",), timeout=self.timeout)
                assert self.reader is not None
                self.reader.expect_before()
                self.before_setup = Snapshot.take(self.top)
            out = worker.run(("fault", False), timeout=self.timeout)
            if out.kind == "returned" and out.value["error"] is None:
                self._learn_after()
            return out

        dry = self._in_worker(dry_steps, None)[0]
        if dry.kind != "returned":
            raise AssertionError(f"disk_faults: save() fails even without faults: it {dry.describe()}")
        reply = dry.value
        if reply["error"] is not None:
            raise AssertionError(f"disk_faults: save() fails even without faults: {reply['error']}")
        self.operations = list(reply["log"])
        planned = []
        for index, label in enumerate(self.operations):
            chosen = [codes[index % len(codes)]] if rotate_errnos else codes
            for name in chosen:
                for mode in modes:
                    fault = Fault(at=index, errno=FAULT_ERRNOS[name], persistent=mode == "persistent")
                    planned.append(_Planned(index, label, name, mode, "", fault))
        return planned

    def _in_worker(self, steps: Callable[[Any], Any], channel: Any) -> tuple[Any, str]:
        """Fork a case worker (it inherits ``channel``), run ``steps(worker)``, end it."""
        from persistkit.testing.isolate import Worker

        worker = Worker(self.body.serve, timeout=self.timeout or 600.0)
        if channel is not None:
            channel.close_child_end()  # the worker's keeper holds it now
        trace = ""
        try:
            result = steps(worker)
            if result.kind == "returned":
                trace = result.value.get("trace", "")
                if self.body.stateful:
                    worker.run(("end",), timeout=self.timeout)
        finally:
            worker.close()
        return result, trace

    # -- one case ------------------------------------------------------------------------
    def _case(self, case: _Planned, initial: Snapshot, reader: IsolatedReader, allowed: set[str]) -> _Outcome:
        from persistkit.testing.isolate import Worker

        channel = listener = None
        self.body.python_fault = None
        if self.observer == "syscalls":
            from persistkit.testing.observe.inject import Channel, Listener

            channel = Channel()
            listener = Listener(channel, aims=[case.aim]).start()
            self.body.channel = channel
        else:
            self.body.python_fault = case.aim
        worker = Worker(self.body.serve, timeout=self.timeout or 600.0)
        self.body.channel = None
        self.body.python_fault = None
        if channel is not None:
            channel.close_child_end()
        top = self.top
        result = _Outcome(FaultCase(_rel(case.label, top), _rel(case.describe(), top), None, []))
        problems = result.case.problems
        trace_path = ""
        try:
            wants_trace = case.family == "fsync"
            first = worker.run(("fault", wants_trace), timeout=self.timeout)
            result.saves += 1
            _replay_logs(first)
            # the worker answered (or died): every call it made has been answered and logged
            log = listener.log if listener is not None else None
            if listener is not None:
                listener.clear()
            # did the fault land where it was aimed?
            if log is not None:
                hit = log.landed(case.aim)
                if hit is None:
                    result.misfired = ""  # the faulted run never made that call (it took a shorter path)
                    return result
                if not _same_place(hit.point, case.point):
                    result.misfired = (
                        f"the fault landed on {hit.point.describe()} instead of {case.point.describe()}"
                    )
                    return result
            if first.kind == "returned" and self.observer == "python" and not first.value.get("fired"):
                result.misfired = ""
                return result
            if first.kind == "killed":
                problems.append(
                    f"save() was killed by {first.signal} after the fault: the process crashed instead of "
                    f"reporting the error{_where(first)}"
                )
                result.case.raised = f"killed by {first.signal}"
            elif first.kind == "timeout":
                problems.append(
                    f"save() hung: it had not returned {self.timeout} s after the fault (it was killed, with "
                    f"everything it started){_where(first)}"
                )
                result.case.raised = "hung"
                return result
            elif first.kind != "returned":
                problems.append(f"save() {first.describe()}")
                result.case.raised = first.describe()
            reply = first.value if first.kind == "returned" else {"error": result.case.raised, "leaked": []}
            if reply.get("killed_by"):
                problems.append(
                    f"the program was killed by {reply['killed_by']} after the fault: it crashed instead of "
                    "reporting the error"
                )
            if reply.get("left_running"):
                problems.append(
                    "the program exited while processes it started were still running (killed then): "
                    + ", ".join(reply["left_running"][:4])
                )
            error = reply["error"]
            result.case.raised = error
            trace_path = reply.get("trace", "")
            relearn = self._relearner(initial, reader)
            self._judge_state(case, error, reader, problems, relearn)
            if error is None and case.family == "fsync" and trace_path:
                self._fsyncgate(case, initial, trace_path, reader, problems, relearn)
            for name in reply.get("leaked", []):
                problems.append(_leak_message([name], top))
            if case.mode == "once" and self.litter is not None:
                problems += _litter(top, allowed, self.litter, "after the failed save")
            # the fault clears: the next save must work
            if first.kind == "returned":
                retry = worker.run(("retry",), timeout=self.timeout)
                result.saves += 1
                _replay_logs(retry)
                self._judge_retry(retry, reader, problems, result.saves, relearn)
                if case.mode == "once" and self.litter is not None:
                    problems += _litter(top, allowed, self.litter, "after the next save")
                if self.body.stateful:
                    end = worker.run(("end",), timeout=self.timeout)
                    if end.kind == "returned":
                        for name in end.value["leaked"]:
                            problems.append(_leak_message([name], top))
            return result
        finally:
            worker.close()
            if listener is not None:
                listener.stop()
            if trace_path:
                shutil.rmtree(os.path.dirname(trace_path), ignore_errors=True)

    def _relearner(self, initial: Snapshot, reader: IsolatedReader) -> Callable[[], None]:
        """After the loading worker died (a load crashed on a damaged state), teach a fresh one the
        states before and after the save, then put back the directory being judged."""

        def relearn() -> None:
            now = Snapshot.take(self.top)
            try:
                (self.before_setup or initial).materialize(self.top)
                reader.expect_before()
                assert self.after_snapshot is not None
                self.after_snapshot.materialize(self.top)
                reader.expect_after()
                now.materialize(self.top)
            finally:
                now.close()

        return relearn

    def _judge_state(
        self, case: _Planned, error: str | None, reader: IsolatedReader, problems: list[str],
        relearn: Callable[[], None],
    ) -> None:  # fmt: skip
        if error is None and self.observer == "python" and _label_kind(case.label) in ("fsync", "fsync_dir"):
            # no trace of the faulted run to judge the lost pages by: a failed fsync must surface
            problems.append(
                f"save() returned normally although {_label_kind(case.label)} failed with {case.fault}: a failed "
                "fsync may have dropped the data, so the save must raise (never retry or ignore it)"
            )
        verdict = reader.read(error is None, relearn)
        if error is None:
            if verdict.kind == "new":
                return
            problems.append(
                f"error swallowed: save() returned normally, yet load() {verdict.got.describe()} instead of the "
                f"new state ({reader.after_text()})"
            )
        elif verdict.kind == "bad":
            problems.append(
                f"previous state lost: save() raised, then load() {verdict.got.describe()}; expected the state "
                f"before the save ({reader.before_text()})"
            )

    def _fsyncgate(
        self, case: _Planned, initial: Snapshot, trace_path: str, reader: IsolatedReader, problems: list[str],
        relearn: Callable[[], None],
    ) -> None:  # fmt: skip
        """After a failed fsync the kernel may have dropped the dirty pages: the save returned, so the
        state without them must still load as the new state."""
        from persistkit.testing.observe import from_trace
        from persistkit.testing.observe.strace import TraceFile

        obs = from_trace(
            TraceFile(os.path.dirname(trace_path), trace_path),
            self.top,
            {},
            os.getcwd(),
            volatile=self.volatile,
        )
        try:
            model = FsModel(self.before_setup or initial, obs.ops, volatile=obs.volatile)
            dropped = model.dropped_by_failed_fsyncs()
            sim = CrashSimulator(self.before_setup or initial, obs.ops, model=model)
            try:
                if dropped:
                    sim.materialize(Plan(len(model.ops), dropped=dropped))
                    verdict = reader.read(True, relearn)
                    if verdict.kind != "new":
                        files = sorted({model.rel(model.ops[p].path) for p in dropped})
                        problems.append(
                            f"fsyncgate: save() returned normally after fsync failed with {case.fault}, but since "
                            "Linux 4.13 a failed fsync marks the dirty pages clean: with the pages written before it "
                            f"dropped ({', '.join(files[:4])}), load() {verdict.got.describe()}. After a failed "
                            "fsync, write the data again and fsync it (or raise); retrying fsync alone does not "
                            "bring it back"
                        )
                        return
                # The failed fsync made nothing durable. A power loss after save() returned must not lose
                # the new state, and one during the rest of the save (the save went on as if that fsync had
                # worked: SQLite's journal directory) must leave the old state or the new one.
                after = [s for s in sim.states("power-loss", max_states=32) if s.complete]
                for state in [*after, *sim.names_a_failed_dir_sync_left()]:
                    state.materialize()
                    verdict = reader.read(state.complete, relearn)
                    if verdict.kind == "bad" or (state.complete and verdict.kind != "new"):
                        when = "" if state.complete else " during the rest of the save"
                        problems.append(
                            f"save() returned normally after fsync failed with {case.fault}, so nothing that fsync "
                            f"was to make durable is; a power loss{when}: {_rel(state.description, self.top)}, "
                            f"and load() {verdict.got.describe()}. Raise when fsync fails (or write the data again "
                            "and fsync it)"
                        )
                        return
            finally:
                sim.close()
        finally:
            obs.close()

    def _judge_retry(
        self, retry: Any, reader: IsolatedReader, problems: list[str], saves: int, relearn: Callable[[], None]
    ) -> None:
        if retry.kind != "returned":
            problems.append(f"the next save() after the fault cleared {retry.describe()}")
            return
        if retry.value["error"] is not None:
            problems.append(f"the next save() after the fault cleared raised {retry.value['error']}")
            return
        if self.after_retry is not None:
            if not retry.value.get("accepted"):
                problems.append(
                    f"after the fault cleared and save() was retried, load() {retry.value.get('loaded')}, which "
                    "after_retry() does not accept"
                )
            return
        verdict = reader.read(True, relearn)
        if verdict.kind != "new":
            problems.append(
                f"after the fault cleared, save() ran again (it has run {saves} times in this case, from the "
                f"initial directory) and returned, but load() {verdict.got.describe()} instead of the new state "
                f"({reader.after_text()}, what one clean save leaves). If each save() advances the state (an "
                "append, a counter), pass after_retry=lambda value: ... to accept what a retried save leaves"
            )


@dataclass
class _Outcome:
    case: FaultCase
    misfired: str | None = None  # "": the faulted run never made that call; text: landed elsewhere
    saves: int = 0


def _changed(snapshot: Snapshot, now: dict[str, Any]) -> bool:
    if set(snapshot.entries) != set(now):
        return True
    return any(not e.unchanged(now[rel]) for rel, e in snapshot.entries.items())


def _unlinked_file() -> Any:
    fd, name = tempfile.mkstemp(prefix="persistkit-stderr-")
    os.unlink(name)
    return os.fdopen(fd, "w+b")


def _where(outcome: Outcome) -> str:
    frames = outcome.where()
    return ("; where it was: " + " | ".join(frames)) if frames else ""


def _relevant_paths(model: FsModel, obs: Observation) -> set[str]:
    """Real paths of every file the save's operations touched that is, or ends up, under the root."""
    out: set[str] = set()
    for op, keep in zip(obs.ops, model.relevant, strict=True):
        if keep:
            out.add(os.path.realpath(op.path))
            if op.dst and op.kind != OpKind.SYMLINK:
                out.add(os.path.realpath(op.dst))
    return out


def _faultable(point: Any, top: str, relevant: set[str]) -> bool:
    """A call of the save's own files: under the root, an O_TMPFILE, or a temp file moved in later."""
    if point.family == "sync":
        return False  # sync(2) "is always successful"
    if point.family == "syncfs":
        return True
    real_top = os.path.realpath(top)
    path = os.path.realpath(point.path) if point.path else ""
    if point.tmpfile or path == real_top or path.startswith(real_top + os.sep) or path in relevant:
        return True
    second = os.path.realpath(point.second) if point.second else ""
    return bool(second) and (second.startswith(real_top + os.sep) or second in relevant)


def _label_points(points: Sequence[Any], obs: Observation) -> dict[int, str]:
    """Name each injector point by the trace operation it was (same thread, call and file, in order)."""
    queue: dict[tuple[str, str], list[Any]] = collections.defaultdict(list)
    for op in obs.ops:
        if op.kind == OpKind.OPEN_EXISTING and not op.syscall.startswith(("open", "creat")):
            # a file first seen through a descriptor opened elsewhere (or read-only, as coreutils' sync
            # opens what it fsyncs) is announced with the call that used it: the fault is that call's
            continue
        queue[(op.thread, op.syscall)].append(op)
    out: dict[int, str] = {}
    for point in points:
        ops = queue.get((str(point.tid), point.syscall))
        if not ops:
            continue
        real = os.path.realpath(point.path) if point.path else ""
        for i, op in enumerate(ops):
            if not real or os.path.realpath(op.path) == real or point.tmpfile:
                out[point.seq] = op.describe()
                del ops[: i + 1]
                break
    return out


# the parts of a name that change from run to run: pids, counters, random or hex suffixes
# the random part of temp names: uuid/hex/pid suffixes, and Python's tempfile names (8 characters from
# [a-z0-9_], so about one in five has an underscore: tempfile._RandomNameSequence)
_RANDOM = re.compile(
    r"(?<=[.\-_])[a-z0-9_]{8}(?=\.|$)|(?<=[.\-_])(?:[A-Za-z0-9]{6,}|[0-9]{3,})|(?<=/tmp)[A-Za-z0-9_]{6,8}(?=$|/)"
)


def _same_place(hit: Any, planned: Any) -> bool:
    """The same call on the same file, allowing for the random part of temp names (mkstemp, uuid suffixes)."""
    return (
        hit.syscall == planned.syscall
        and hit.kind == planned.kind
        and hit.tmpfile == planned.tmpfile
        and _RANDOM.sub("*", hit.path) == _RANDOM.sub("*", planned.path)
    )


def _label_kind(label: str) -> str:
    parts = label.split()
    return parts[1] if len(parts) > 1 and parts[0].startswith("#") else ""


def _leak_message(leaked: Sequence[str], top: str) -> str:
    return (
        f"leaked file descriptors: {sorted(_rel(t, top) for t in leaked)} (if save() keeps files open on "
        "purpose, as a long-lived store does, pass setup= to open it and teardown= to close it in each case)"
    )


def _litter(top: str, allowed: set[str], pattern: re.Pattern[str], when: str) -> list[str]:
    extra = [p for p in scan(top) if p not in allowed and pattern.search(os.path.basename(p))]
    if not extra:
        return []
    return [f"temp litter {when}: {sorted(extra)[:5]}"]


# silence "imported but unused" for names kept for the public surface of this module
_ = (_errno,)


@contextlib.contextmanager
def _logged() -> Iterator[list[tuple[int, str]]]:
    """In a case worker: persistkit's warnings during one call, to send back with its reply."""
    lines: list[tuple[int, str]] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelno, record.getMessage()))

    logger = logging.getLogger("persistkit")
    handler = _Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _replay_logs(result: Any) -> None:
    """In the test process: log what persistkit logged in the case worker (the run's aftermath, e.g. a
    temp file a failed save could not remove), as if it had happened here."""
    if result.kind != "returned" or not isinstance(result.value, dict):
        return
    logger = logging.getLogger("persistkit.testing.disk_faults")
    for level, message in result.value.get("persistkit_log", []):
        logger.log(level, "%s", message)
