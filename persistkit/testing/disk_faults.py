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
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from persistkit.io import current_fs, use_fs
from persistkit.io.crash import Snapshot
from persistkit.io.faults import FAULT_ERRNOS, Fault, FaultFS, InjectedFault
from persistkit.testing.crash_points import Outcome, outcome
from persistkit.testing.intercept import GuardFS, Interceptor
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["DEFAULT_LITTER", "DiskFaults", "FaultReport", "open_fds"]

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


def _file_fds(fds: dict[int, str]) -> collections.Counter[str]:
    return collections.Counter(
        t for t in fds.values() if t.startswith("/") and not t.startswith(("/proc/", "/dev/"))
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

    def summary(self) -> str:
        return (
            f"{self.cases} faults over {len(self.operations)} operations: {self.raised} raised, "
            f"{len(self.violations)} violations"
        )


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
    ) -> FaultReport:
        """Inject each fault in turn; raise AssertionError describing the first bad case.

        ``errnos``: names from ``persistkit.io.faults.FAULT_ERRNOS``. ``modes``: "once"
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
        """
        codes = []
        for name in errnos:
            if name not in FAULT_ERRNOS:
                raise ValueError(f"unknown errno {name!r}; choose from {sorted(FAULT_ERRNOS)}")
            codes.append((name, FAULT_ERRNOS[name]))
        mode_list = list(modes)
        for mode in mode_list:
            if mode not in MODES:
                raise ValueError(f"mode must be 'once' or 'persistent', not {mode!r}")
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        start = time.perf_counter()
        initial = Snapshot.take(top)
        case_save = _Bound(save, setup, teardown)

        # Dry run: count the operations and learn the states before and after a clean save.
        case_save.begin()
        expected_before = outcome(load)
        if setup is None:
            initial.materialize(top)
        counter = FaultFS(current_fs())
        self._run(case_save, top, counter)
        operations = list(counter.log)
        after_snapshot = Snapshot.take(top)
        expected_after = outcome(load)
        case_save.end()
        if expected_after.error is not None:
            raise AssertionError(
                f"disk_faults: load() fails even after a save without faults: {expected_after.describe()}"
            )
        allowed_names = set(initial.entries) | set(after_snapshot.entries)
        report = FaultReport(operations)
        indexes = list(range(len(operations)))
        if max_operations is not None and len(indexes) > max_operations:
            step = (len(indexes) - 1) / max(max_operations - 1, 1)
            indexes = sorted({round(i * step) for i in range(max_operations)})
        try:
            for index in indexes:
                for name, code in [codes[index % len(codes)]] if rotate_errnos else codes:
                    for mode in mode_list:
                        case = self._case(
                            case_save, load, top, initial, index, name, code, mode,
                            expected_before, expected_after, allowed_names, litter, operations,
                        )  # fmt: skip
                        report.cases += 1
                        report.fired += int(case is not None)
                        if case is None:
                            continue
                        report.raised += int(case.raised is not None)
                        if case.problems:
                            report.violations.append(case)
        finally:
            after_snapshot.materialize(top)
        report.seconds = time.perf_counter() - start
        self.reports.append(report)
        self.recorder.add_run("disk_faults", faults=report.fired, violations=len(report.violations))
        if report.violations:
            raise AssertionError(self._message(report, top))
        return report

    @staticmethod
    def _run(save: Callable[[], Any], top: str, ffs: FaultFS) -> Any:
        def hook(kind: str, path: str) -> None:
            code = ffs._check(kind, path)
            if code is not None:
                raise InjectedFault(code, os.strerror(code), path)

        with use_fs(GuardFS(ffs)), Interceptor(top, before=hook):
            return save()

    def _case(
        self,
        save: _Bound,
        load: Callable[[], Any],
        top: str,
        initial: Snapshot,
        index: int,
        name: str,
        code: int,
        mode: str,
        expected_before: Outcome,
        expected_after: Outcome,
        allowed: set[str],
        litter: re.Pattern[str] | None,
        operations: list[str],
    ) -> FaultCase | None:
        initial.materialize(top)
        fds0 = open_fds()
        save.begin()
        try:
            ffs = FaultFS(current_fs(), Fault(at=index, errno=code, persistent=mode == "persistent"))
            error: BaseException | None = None
            try:
                self._run(save, top, ffs)
            except Exception as err:
                error = err
            if not ffs.fired:
                return None  # this run took a shorter path; operation N never came
            ffs.clear()
            op = _rel(operations[index] if index < len(operations) else f"#{index}", top)
            fault = f"{name} at {op} ({mode})"
            case = FaultCase(op, fault, f"{type(error).__name__}: {error}" if error else None, [])
            got = outcome(load)
            if error is None:
                failed_kind = ffs.log[index].split()[1] if index < len(ffs.log) else ""
                if failed_kind in ("fsync", "fsync_dir"):
                    case.problems.append(
                        f"save() returned normally although {failed_kind} failed with {name}: a failed fsync "
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
                    case.problems.append(f"leaked file descriptors: {sorted(_rel(t, top) for t in leaked)}")
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
                if not again.same_as(expected_after):
                    case.problems.append(
                        f"after the fault cleared, save() returned but load() {again.describe()} instead of the new state"
                    )
                if mode == "once" and litter is not None:
                    case.problems += _litter(top, allowed, litter, "after the next save")
            save.end()
            leaked = _file_fds(open_fds()) - _file_fds(fds0)
            if leaked and not any("leaked" in p for p in case.problems):
                case.problems.append(f"leaked file descriptors: {sorted(_rel(t, top) for t in leaked)}")
            return case
        finally:
            save.end()  # idempotent: already ended above before the descriptor count

    @staticmethod
    def _message(report: FaultReport, top: str) -> str:
        first = report.violations[0]
        lines = [
            f"disk_faults: {len(report.violations)} of {report.fired} injected faults were mishandled.",
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
    now = Snapshot.take(top)
    extra = [p for p in now.entries if p not in allowed and pattern.search(os.path.basename(p))]
    if not extra:
        return []
    return [f"temp litter {when}: {sorted(extra)[:5]}"]
