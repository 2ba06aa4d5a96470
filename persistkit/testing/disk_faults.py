"""``disk_faults``: fail every file operation of a save with every errno, once and persistently.

SQLite's I/O-error tests, applied to any save: number the mutating operations
the save performs (persistkit's through ``FaultFS``, the user's plain-Python
ones through the interceptor, on one counter), then for each operation N,
each errno (ENOSPC, EIO, EDQUOT, EROFS) and each mode (the fault fires once,
or every operation from N on fails) run the save from the initial directory
and check:

1. the error is raised, not swallowed: if ``save()`` returns although a fault
   fired, the directory must hold the complete new state, and a failed
   ``fsync`` must never be reported as success (fsyncgate);
2. the previous state is intact: ``load()`` returns the state before the save
   (or the state after it, when the fault hit after the commit point, e.g. the
   directory fsync after the rename);
3. no leaked file descriptors (``/proc/self/fd``) and, for faults that fire
   once, no temp litter (files whose names look temporary left behind: with a
   persistent fault even the cleanup fails, so litter is only checked when it
   could have been removed);
4. once the fault clears, the next ``save()`` succeeds and ``load()`` returns
   the new state.

``save`` is called many times, each time from the restored initial directory,
so it must open whatever it writes through (as a fresh process would).

With ``observe="syscalls"`` (the default where ptrace works) the operations are
the system calls the save makes, whoever makes them (Python, C extensions,
child programs), and each fault is injected into the kernel's answer by
strace's ``-e inject`` (the call is not performed and returns the errno). A
``close`` is never failed this way: the kernel always releases a descriptor,
and a skipped close would leak one the code under test never had. An
injection that lands on another call than the planned one (another thread made
the same call as often) gives no verdict and is counted in ``misfired``.
``DiskFaults.subprocess`` judges any program the same way.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from persistkit.io import current_fs, use_fs
from persistkit.testing.fs.faultfs import FAULT_ERRNOS, Fault, FaultFS
from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.snapshot import Snapshot, scan
from persistkit.testing.judge import Outcome, outcome
from persistkit.testing.observe import Observation, check_explained, choose, observe_command, observe_save
from persistkit.testing.observe.intercept import GuardFS, Interceptor
from persistkit.testing.observe.strace import Injection
from persistkit.testing.observe.syscalls import CallRecord, FaultPoint
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["DEFAULT_LITTER", "DiskFaults", "FaultReport", "open_fds"]

DEFAULT_LITTER = re.compile(r"(?i)(tmp|temp|~$|\.part$|\.partial$|\.new$|\.swp$)")
MODES = ("once", "persistent")
# Operation kinds a fault is injected into (close: see the module docstring).
INJECTABLE = frozenset(
    {
        "create",
        "write",
        "truncate",
        "fsync",
        "fsync_dir",
        "replace",
        "link",
        "unlink",
        "mkdir",
        "rmdir",
        "symlink",
    }
)
# What a full or failing disk refuses from the faulted call on (persistent faults).
PERSISTENT_SYSCALLS = (
    "write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "fallocate", "fsync", "fdatasync",
    "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat",
    "symlink", "symlinkat", "copy_file_range", "sendfile",
)  # fmt: skip


class CaseTimeout(Exception):
    """A faulted save did not return within the case timeout."""


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
    points: int = 0  # operations a fault is injected at (the syscall observer skips close)

    def summary(self) -> str:
        missed = f", {self.misfired} injections landed elsewhere (no verdict)" if self.misfired else ""
        return (
            f"{self.cases} faults over {len(self.operations)} operations (observed by {self.observer}): "
            f"{self.raised} raised, {len(self.violations)} violations{missed}"
        )


@dataclass
class _Fired:
    """What one faulted run did: ``error`` raised (or None), whether the fault ``fired``, where."""

    error: BaseException | None
    fired: bool
    operation: str = ""
    kind: str = ""
    misfired: str = ""


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
    ) -> FaultReport:
        """Inject each fault in turn; raise AssertionError describing the first bad case.

        ``errnos``: names from ``persistkit.testing.fs.faultfs.FAULT_ERRNOS``. ``modes``: "once"
        and/or "persistent". ``litter``: a regex for names that must not be left behind
        (None: do not check). ``max_operations`` samples that many operation indexes
        evenly instead of all of them.

        ``setup()``, when given, runs before each save without faults (open the store,
        make changes); ``save`` is then called as ``save(ctx)`` with its result, twice per
        case (the faulted save and the retry once the fault clears, as a live process
        would), and ``teardown(ctx)`` runs at the end of each case. ``rotate_errnos``: give
        each operation one errno, in turn, instead of every errno (a cheaper sweep that still
        covers every operation and every errno). ``load`` must then work
        while ``ctx`` is alive (e.g. open the store read-only).

        ``observe``: "auto" (default, or ``--persistkit-observe``), "syscalls" or "python".
        ``timeout``: seconds a faulted save may take before the case fails as hung (main
        thread only; None: no limit). ``after_retry``: for saves that are not idempotent
        (an append-only journal, say), a predicate on ``load()``'s value after a failed
        save and its retry; by default that value must equal the state after one clean save.
        """
        __tracebackhide__ = True
        codes = []
        for name in errnos:
            if name not in FAULT_ERRNOS:
                raise ValueError(f"unknown errno {name!r}; choose from {sorted(FAULT_ERRNOS)}")
            codes.append((name, FAULT_ERRNOS[name]))
        mode_list = list(modes)
        for mode in mode_list:
            if mode not in MODES:
                raise ValueError(f"mode must be 'once' or 'persistent', not {mode!r}")
        observer = choose(observe)
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        case_save = _Bound(save, setup, teardown)
        plan = _Plan(self, case_save, load, top, litter, timeout, after_retry, allow_outside=allow_outside)
        return plan.run(codes, mode_list, max_operations, rotate_errnos, observer)

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
    ) -> FaultReport:
        """Fail every file operation of any program ``cmd`` (run under strace) in turn.

        A non-zero exit status counts as the error being raised; exiting 0 although a fault
        fired means the directory must hold the complete new state.
        """
        __tracebackhide__ = True
        codes = [(name, FAULT_ERRNOS[name]) for name in errnos]
        choose("syscalls")
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        runner = _Command(list(cmd), os.fspath(cwd) if cwd is not None else None, env, timeout)
        plan = _Plan(self, _Bound(runner, None, None), load, top, litter, None, after_retry, command=runner)
        return plan.run(codes, list(modes), max_operations, rotate_errnos, "syscalls")

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
        return "\n".join(lines)


class _Bound:
    """``save`` with its optional setup/teardown: callable with no arguments."""

    def __init__(
        self, save: Callable[..., Any], setup: Callable[[], Any] | None, teardown: Callable[[Any], Any] | None
    ) -> None:
        self.save, self.setup, self.teardown = save, setup, teardown
        self.stateful = setup is not None
        self.ctx: Any = None
        self.live = False

    def begin(self) -> None:
        if self.setup is not None:
            self.ctx = self.setup()
            self.live = True

    def end(self) -> None:
        if self.live:
            self.live = False
            if self.teardown is not None:
                self.teardown(self.ctx)
            self.ctx = None

    def __call__(self) -> Any:
        return self.save(self.ctx) if self.stateful else self.save()


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".")


def _litter(top: str, allowed: set[str], pattern: re.Pattern[str], when: str) -> list[str]:
    extra = [p for p in scan(top) if p not in allowed and pattern.search(os.path.basename(p))]
    if not extra:
        return []
    return [f"temp litter {when}: {sorted(extra)[:5]}"]


class _Command:
    """A program run as the save: ``raise`` on a non-zero exit, like a Python save would."""

    def __init__(self, cmd: list[str], cwd: str | None, env: dict[str, str] | None, timeout: float) -> None:
        self.cmd, self.cwd, self.env, self.timeout = cmd, cwd, env, timeout

    def observe(self, top: str, injections: Sequence[Injection]) -> tuple[BaseException | None, Observation]:
        code, stderr, obs = observe_command(
            self.cmd, top, cwd=self.cwd, env=self.env, timeout=self.timeout, injections=injections, keep_calls=True
        )
        error = None if code == 0 else RuntimeError(f"exited with status {code}: {stderr.strip()[-300:]}")
        return error, obs

    def __call__(self) -> None:
        error, _ = self.observe(os.getcwd(), ())
        if error is not None:
            raise error


@dataclass
class _Plan:
    """One ``disk_faults`` run: a dry run that numbers the operations, then one case per fault."""

    owner: DiskFaults
    save: _Bound
    load: Callable[[], Any]
    top: str
    litter: re.Pattern[str] | None
    timeout: float | None
    after_retry: Callable[[Any], bool] | None
    command: _Command | None = None
    allow_outside: Sequence[str] = ()
    observer: str = "python"
    dry: Observation | None = None
    points: list[FaultPoint] = field(default_factory=list)

    def run(
        self,
        codes: list[tuple[str, int]],
        modes: list[str],
        max_operations: int | None,
        rotate_errnos: bool,
        observer: str,
    ) -> FaultReport:
        __tracebackhide__ = True
        self.observer = observer
        start = time.perf_counter()
        top = self.top
        initial = Snapshot.take(top)
        # Dry run: number the operations and learn the states before and after a clean save.
        self.save.begin()
        expected_before = outcome(self.load)
        if self.save.setup is None:
            initial.materialize(top)
            before_save = initial
        else:
            before_save = Snapshot.take(top)
        try:
            operations, targets = self._dry_run(before_save)
        finally:
            if before_save is not initial:
                before_save.close()
        after_snapshot = Snapshot.take(top)
        expected_after = outcome(self.load)
        self.save.end()
        if expected_after.error is not None:
            raise AssertionError(
                f"disk_faults: load() fails even after a save without faults: {expected_after.describe()}"
            )
        allowed = set(initial.entries) | set(after_snapshot.entries)
        report = FaultReport(operations, observer=observer, points=len(targets))
        indexes = list(range(len(targets)))
        if max_operations is not None and len(indexes) > max_operations:
            step = (len(indexes) - 1) / max(max_operations - 1, 1)
            indexes = sorted({round(i * step) for i in range(max_operations)})
        judged: set[int] = set()
        unjudged: dict[int, str] = {}  # operation index -> why its faults all landed elsewhere
        try:
            for index in indexes:
                for name, code in [codes[index % len(codes)]] if rotate_errnos else codes:
                    for mode in modes:
                        case = self._case(
                            initial,
                            targets[index],
                            name,
                            code,
                            mode,
                            expected_before,
                            expected_after,
                            allowed,
                        )
                        report.cases += 1
                        if case is None:
                            unjudged.setdefault(index, "the faulted run never made that call")
                            continue
                        if isinstance(case, str):
                            report.misfired += 1
                            unjudged.setdefault(index, case)
                            continue
                        judged.add(index)
                        report.fired += 1
                        report.raised += int(case.raised is not None)
                        if case.problems:
                            report.violations.append(case)
        finally:
            after_snapshot.materialize(top)
            after_snapshot.close()
            initial.close()
            if self.dry is not None:
                self.dry.close()
        report.seconds = time.perf_counter() - start
        self.owner.reports.append(report)
        self.owner.recorder.add_run("disk_faults", faults=report.fired, violations=len(report.violations))
        if report.violations:
            raise AssertionError(self.owner._message(report, top))
        never = {i: why for i, why in unjudged.items() if i not in judged}
        if never:
            from persistkit.testing.observe import NotJudgeable

            raise NotJudgeable(
                "disk_faults: no verdict, because no fault planned for these operations landed on them "
                "(strace counts calls per thread, and this save made a different number of them on the "
                "faulted run):\n  - "
                + "\n  - ".join(
                    f"{_rel(operations[targets[i]], top)}: {why}" for i, why in sorted(never.items())
                )
            )
        return report

    def _dry_run(self, before: Snapshot) -> tuple[list[str], list[int]]:
        """The operation descriptions, and the indexes (into them) a fault is injected at."""
        __tracebackhide__ = True
        if self.observer == "python":
            counter = FaultFS(current_fs())
            error, _ = self._python(counter)
            if error is not None:
                raise error
            return list(counter.log), list(range(len(counter.log)))
        error, obs = self._syscalls(())
        if error is not None:
            raise AssertionError(f"disk_faults: save() fails even without faults: {error}") from error
        model = FsModel(before, obs.ops, volatile=obs.volatile)
        check_explained("disk_faults", obs, before, scan(self.top), model, allow_outside=self.allow_outside)
        self.dry = obs
        self.points = obs.points
        targets: list[int] = []
        seen: set[tuple[str, int, bool]] = set()
        for op, point in zip(obs.ops, obs.points, strict=True):
            inside = _under(op.path, self.top) or (
                op.dst is not None and op.kind != "symlink" and _under(op.dst, self.top)
            )
            key = (point.syscall, point.ordinal, point.first_tid)
            if inside and op.kind in INJECTABLE and key not in seen:
                seen.add(key)
                targets.append(op.index)
        return [op.describe() for op in obs.ops], targets

    # -- running one save ---------------------------------------------------------------
    def _python(self, ffs: FaultFS) -> tuple[BaseException | None, None]:
        try:
            with use_fs(GuardFS(ffs)), Interceptor(self.top, before=ffs.check), _deadline(self.timeout):
                self.save()
        except Exception as err:
            return err, None
        return None, None

    def _syscalls(self, injections: Sequence[Injection]) -> tuple[BaseException | None, Observation]:
        if self.command is not None:
            return self.command.observe(self.top, injections)
        with _deadline(self.timeout):
            _, error, obs = observe_save(self.save, self.top, "syscalls", injections=injections, keep_calls=True)
        return error, obs

    def _faulted(self, index: int, code: int, mode: str) -> _Fired:
        persistent = mode == "persistent"
        if self.observer == "python":
            ffs = FaultFS(current_fs(), Fault(at=index, errno=code, persistent=persistent))
            error, _ = self._python(ffs)
            if not ffs.fired:
                return _Fired(error, False)
            ffs.clear()
            op = ffs.log[index] if index < len(ffs.log) else f"#{index}"
            return _Fired(error, True, op, op.split()[1] if len(op.split()) > 1 else "")
        assert self.dry is not None
        target = self.dry.ops[index]
        point = self.points[index]
        name = next(k for k, v in FAULT_ERRNOS.items() if v == code)
        injections = [Injection(point.syscall, name, point.ordinal, persistent)]
        if persistent:
            injections += self._persistent_rest(point, name)
        error, obs = self._syscalls(injections)
        obs.close()
        if not obs.injected:
            return _Fired(error, False)
        first = obs.injected[0]
        if first.name != point.syscall or first.ordinal != point.ordinal:
            return _Fired(
                error, True, misfired=f"{first.name} #{first.ordinal} instead of {target.describe()}"
            )
        planned = next(
            (c for c in self.dry.calls
             if c.tid == point.tid and c.name == point.syscall and c.ordinal == point.ordinal),
            None,
        )  # fmt: skip
        where = (
            _lands_inside(planned, self.top) if planned is not None else None,
            _lands_inside(first, self.top),
        )
        if None not in where and where[0] != where[1]:
            # when=N counts every call of the thread: an extra one elsewhere (a log flush) took the fault
            return _Fired(
                error, True, misfired=f"{first.describe()} took the fault instead of {target.describe()}"
            )
        if not persistent and len(obs.injected) > 1:
            # strace counts when=N per thread: the N-th call of every thread failed, not one call
            return _Fired(
                error, True, misfired=f"{len(obs.injected)} calls failed instead of {target.describe()} alone"
            )
        return _Fired(error, True, target.describe(), target.kind)

    def _persistent_rest(self, point: FaultPoint, errno_name: str) -> list[Injection]:
        """From the faulted call on, every other mutating call of that thread fails too."""
        assert self.dry is not None
        counts: collections.Counter[str] = collections.Counter()
        for call in self.dry.calls:
            if call.name == point.syscall and call.ordinal == point.ordinal and (call.tid == point.tid):
                break
            if call.tid == point.tid:
                counts[call.name] += 1
        return [
            Injection(sc, errno_name, counts[sc] + 1, True)
            for sc in PERSISTENT_SYSCALLS
            if sc != point.syscall
        ]

    # -- one case ----------------------------------------------------------------------
    def _case(
        self,
        initial: Snapshot,
        index: int,
        name: str,
        code: int,
        mode: str,
        expected_before: Outcome,
        expected_after: Outcome,
        allowed: set[str],
    ) -> FaultCase | str | None:
        top, save, load, litter = self.top, self.save, self.load, self.litter
        initial.materialize(top)
        fds0 = open_fds()
        save.begin()
        case: FaultCase | None = None
        run: _Fired | None = None
        try:
            run = self._faulted(index, code, mode)
            if not run.fired:
                return None  # this run took a shorter path; operation N never came
            if run.misfired:
                return run.misfired
            error = run.error
            op = _rel(run.operation, top)
            fault = f"{name} at {op} ({mode})"
            case = FaultCase(op, fault, f"{type(error).__name__}: {error}" if error else None, [])
            if isinstance(error, CaseTimeout):
                case.problems.append(f"save() hung: it had not returned {self.timeout} s after the fault")
                return case
            got = outcome(load)
            if error is None:
                if run.kind in ("fsync", "fsync_dir"):
                    case.problems.append(
                        f"save() returned normally although {run.kind} failed with {name}: a failed fsync "
                        "may have dropped the data, so the save must raise (never retry or ignore it)"
                    )
                elif not got.same_as(expected_after):
                    case.problems.append(
                        f"error swallowed: save() returned normally, yet load() {got.describe()} instead of the "
                        "new state"
                    )
            elif not (got.same_as(expected_before) or got.same_as(expected_after)):
                case.problems.append(
                    f"previous state lost: save() raised, then load() {got.describe()}; expected the state before "
                    f"the save ({expected_before.describe()})"
                )
            if not save.stateful:
                leaked = _file_fds(open_fds()) - _file_fds(fds0)
                if leaked:
                    case.problems.append(_leak_message(leaked, top))
            if mode == "once" and litter is not None:
                case.problems += _litter(top, allowed, litter, "after the failed save")
            # The fault clears: the next save must work.
            try:
                save()
            except Exception as err:
                case.problems.append(
                    f"the next save() after the fault cleared raised {type(err).__name__}: {err}"
                )
            else:
                again = outcome(load)
                if self.after_retry is not None:
                    ok = again.error is None and self.after_retry(again.value)
                    if not ok:
                        case.problems.append(
                            f"after the fault cleared and save() was retried, load() {again.describe()}, which "
                            "after_retry() does not accept"
                        )
                elif not again.same_as(expected_after):
                    case.problems.append(
                        f"after the fault cleared, save() returned but load() {again.describe()} instead of the new state"
                    )
                if mode == "once" and litter is not None:
                    case.problems += _litter(top, allowed, litter, "after the next save")
            save.end()
            leaked = _file_fds(open_fds()) - _file_fds(fds0)
            if leaked and not any("leaked" in p for p in case.problems):
                case.problems.append(_leak_message(leaked, top))
            return case
        finally:
            save.end()  # idempotent: already ended above before the descriptor count
            if any("leaked" in p for p in (case.problems if case is not None else ())):
                # The leaked file objects hang off the failed save's traceback: collect them now,
                # quietly, rather than in whatever test the garbage collector next runs in.
                run = error = None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ResourceWarning)
                    gc.collect()


def _lands_inside(call: CallRecord, top: str) -> bool | None:
    target = call.target
    if target is None:
        return None
    return _under(os.path.realpath(target), os.path.realpath(top))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def _leak_message(leaked: collections.Counter[str], top: str) -> str:
    return (
        f"leaked file descriptors: {sorted(_rel(t, top) for t in leaked)} (if save() keeps files open on "
        "purpose, as a long-lived store does, pass setup= to open it and teardown= to close it in each case)"
    )


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise CaseTimeout in the main thread if the block runs longer than ``seconds``."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"no return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
