"""``crash_points``: run a save while recording every file operation, then load every crash state.

A crash can stop a save after any operation; on power loss, what had not been
fsynced may also be lost or torn (``persistkit.testing.fs.crashsim`` has the model). For
each state the directory could be left in, ``load()`` must return the state
before the save or the state after it, and only the state after once
``save()`` has returned.

The save is observed at the system-call boundary (``observe="syscalls"``:
strace attached to this process, so writes made by C extensions and child
programs count too) or, where ptrace is unavailable, by Python interception
(``observe="python"``); ``persistkit.testing.observe`` has the details. Either
way, if the recorded operations do not reproduce the directory the save left,
there is no verdict: the fixture fails as not judgeable and says why.
``CrashPoints.subprocess`` judges any program the same way.

``CrashPoints.concurrent`` runs several saves at once, interleaved one file
operation at a time in every "A runs k operations, then B runs, then A
finishes" order, and checks the directory still loads to one writer's value:
this is what catches a temp file name shared between writers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from persistkit.io import current_fs, use_fs
from persistkit.testing.compare import first_difference
from persistkit.testing.fs.crashsim import CrashSimulator, Snapshot
from persistkit.testing.observe.intercept import GuardFS, Interceptor
from persistkit.testing.observe import (
    NotJudgeable,
    Observation,
    check_explained,
    choose,
    observe_command,
    observe_save,
)
from persistkit.testing.fs.recordfs import Op, RecordingFS
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["ConcurrencyReport", "CrashPoints", "CrashReport", "Outcome", "outcome", "record_save"]

Model = Literal["process", "power-loss"]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Outcome:
    """What one ``load()`` call did: returned ``value``, or raised ``error``."""

    value: Any = None
    error: BaseException | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"raised {type(self.error).__name__}: {str(self.error)[:300]}"
        text = repr(self.value)
        return f"returned {text if len(text) <= 200 else text[:197] + '...'}"

    def same_as(self, other: Outcome) -> bool:
        if (self.error is None) != (other.error is None):
            return False
        if self.error is not None and other.error is not None:
            return type(self.error) is type(other.error)
        return first_difference(other.value, self.value) is None

    def difference(self, expected: Outcome, label: str) -> str:
        if expected.error is not None or self.error is not None:
            return f"{label}: expected load() to have {expected.describe()}, it {self.describe()}"
        return first_difference(expected.value, self.value, f"{label}: load()") or f"{label}: equal"


def outcome(load: Callable[[], Any]) -> Outcome:
    """Call ``load`` and capture its value or exception."""
    try:
        return Outcome(value=load())
    except Exception as err:
        return Outcome(error=err)


class _Progress:
    """A one-line counter on the terminal (not in captured output) for runs longer than 2 s."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0
        stream = sys.__stderr__
        self.stream = stream if stream is not None and stream.isatty() else None
        self.shown = False

    def tick(self, states: int, violations: int) -> None:
        now = time.monotonic()
        if self.stream is None or now - self.start < 2.0 or now - self.last < 0.2:
            return
        self.last = now
        self.shown = True
        of = f"/{self.total}" if self.total is not None else ""
        self.stream.write(f"\r  crash_points: {states}{of} states loaded, {violations} violations ")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


@dataclass
class Violation:
    description: str
    complete: bool
    got: Outcome
    detail: str


@dataclass
class CrashReport:
    """What ``crash_points`` explored. ``violations`` is empty when the save passed."""

    model: str
    states: int
    operations: list[str]
    old_states: int = 0
    new_states: int = 0
    sampled: bool = False
    seconds: float = 0.0
    violations: list[Violation] = field(default_factory=list)
    observer: str = "python"
    infeasible: int = 0

    def summary(self) -> str:
        skipped = f", {self.infeasible} infeasible combinations skipped" if self.infeasible else ""
        return (
            f"{self.states} crash states ({self.model}) of a {len(self.operations)}-operation save "
            f"(observed by {self.observer}{skipped}{', sampled' if self.sampled else ''}): "
            f"{self.old_states} load the old state, {self.new_states} the new, {len(self.violations)} violations"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".")


_REVERTED = re.compile(r"reverted #\d+ (replace|unlink|create|mkdir|symlink|link|rmdir) (\S+)(?: -> (\S+))?")
_DATA = re.compile(r"(?:lost |crash after )?#\d+ (?:write|truncate|create) (\S+)")


def fix_hint(description: str, operations: Sequence[str]) -> str:
    """One line saying what to change, read off the first violating state."""
    m = _REVERTED.search(description)
    if m is not None:
        kind, path, dst = m.group(1), m.group(2), m.group(3)
        if kind == "replace":
            return (
                f"fsync the directory holding {dst} after os.replace(): until then a power loss can undo "
                "the rename"
            )
        if kind == "unlink":
            return (
                f"fsync the directory after deleting {path}: until then a power loss can bring it back "
                "(for SQLite's rollback journal: PRAGMA synchronous=EXTRA)"
            )
        return f"fsync the directory after the {kind} of {path}: until then a power loss can undo it"
    m = _DATA.search(description)
    if m is not None:
        path = m.group(1)
        renamed = any(op.split(" ", 2)[1:2] == ["replace"] and f" {path} -> " in f" {op.split(' ', 2)[2]}"
                      for op in operations if op.count(" ") >= 2)  # fmt: skip
        if renamed:
            return f"fsync {path} (flush and os.fsync its descriptor) before renaming it over the target"
        return (
            f"write {path} to a temp file in the same directory, fsync it, os.replace() it over the target, "
            "then fsync the directory: a file rewritten in place can be left torn or empty"
        )
    return "make the save write a new file and publish it with one atomic, synced rename"


def record_save(save: Callable[[], Any], root: str) -> tuple[Any, list[Op]]:
    """Run ``save`` with persistkit's and the user's writes under ``root`` recorded in one log."""
    rec = RecordingFS(current_fs())
    with use_fs(GuardFS(rec)), Interceptor(root, log=rec):
        result = save()
    return result, list(rec.ops)


class CrashPoints:
    """The ``crash_points`` fixture. Call it with a save and a load function.

    Example::

        def test_my_save_is_atomic(crash_points, tmp_path):
            path = tmp_path / "model.json"
            save_json(path, {"w": 1})
            crash_points(lambda: save_json(path, {"w": 2}), lambda: load_json(path))
    """

    def __init__(self, root: str | os.PathLike[str], *, recorder: Recorder = RECORDER) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.recorder = recorder
        self.reports: list[CrashReport] = []

    def __call__(
        self,
        save: Callable[[], Any],
        load: Callable[[], Any],
        *,
        model: Model = "power-loss",
        before: Any = None,
        after: Any = UNSET,
        root: str | os.PathLike[str] | None = None,
        max_states: int | None = None,
        observe: str | None = None,
        allow_outside: Sequence[str] = (),
    ) -> CrashReport:
        """Enumerate the crash states of ``save()`` and ``load()`` each one.

        ``before``: the value ``load()`` returns before the save (default: call ``load()``
        first; if it raises, e.g. FileNotFoundError, a crash state that raises the same
        exception type counts as "before"). ``after``: the value after (default: call
        ``load()`` once the save has returned). ``root``: the directory the save writes
        under (default: the test's ``tmp_path``). ``max_states`` caps the enumeration.
        ``observe``: "auto" (default, or ``--persistkit-observe``), "syscalls" or "python".
        ``allow_outside``: glob patterns of files outside ``root`` the save may change unjudged.
        Raises AssertionError naming the first violating state and the operation log, or
        ``NotJudgeable`` (an AssertionError) when the observer did not see the whole save.
        """
        __tracebackhide__ = True
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        observer = choose(observe)
        top, start, initial, expected_before = self._begin(root, load, before)
        _, error, obs = observe_save(save, top, observer)
        if error is not None:
            raise error
        return self._judge(
            obs, initial, load, expected_before, after, model, max_states, top, start, allow_outside
        )

    def subprocess(
        self,
        cmd: Sequence[str],
        load: Callable[[], Any],
        *,
        model: Model = "power-loss",
        before: Any = None,
        after: Any = UNSET,
        root: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
        max_states: int | None = None,
        allow_outside: Sequence[str] = (),
    ) -> CrashReport:
        """Run any program ``cmd`` (Python or not) under strace as the save, then judge it.

        The program must exit 0; every file operation it (and its children) makes
        under ``root`` is enumerated exactly as for an in-process save.
        """
        __tracebackhide__ = True
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        choose("syscalls")
        top, start, initial, expected_before = self._begin(root, load, before)
        code, stderr, obs = observe_command(
            cmd, top, cwd=os.fspath(cwd) if cwd is not None else None, env=env, timeout=timeout
        )
        if code != 0:
            raise AssertionError(
                f"crash_points.subprocess: {list(cmd)} exited with status {code} without a crash, so there is "
                f"no completed save to judge. Its stderr ends:\n{stderr[-2000:]}"
            )
        return self._judge(
            obs, initial, load, expected_before, after, model, max_states, top, start, allow_outside
        )

    def _begin(
        self, root: str | os.PathLike[str] | None, load: Callable[[], Any], before: Any
    ) -> tuple[str, float, Snapshot, Outcome]:
        """The directory, the start time, its initial snapshot and what load() returns before the save."""
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        start = time.perf_counter()
        initial = Snapshot.take(top)
        expected_before = outcome(load) if before is None else Outcome(value=before)
        if Snapshot.take(top).fingerprint() != initial.fingerprint():
            initial.materialize(top)  # the load tidied up; the save starts from the real initial state
        return top, start, initial, expected_before

    def _judge(
        self,
        obs: Observation,
        initial: Snapshot,
        load: Callable[[], Any],
        expected_before: Outcome,
        after: Any,
        model: Model,
        max_states: int | None,
        top: str,
        start: float,
        allow_outside: Sequence[str] = (),
    ) -> CrashReport:
        __tracebackhide__ = True
        final = Snapshot.take(top)
        sim = CrashSimulator(initial, obs.ops)
        check_explained("crash_points", obs, initial, final, sim, allow_outside=allow_outside)
        expected_after = outcome(load) if after is UNSET else Outcome(value=after)
        if expected_after.error is not None and after is UNSET:
            raise AssertionError(
                f"crash_points: load() fails even after save() completed without a crash: "
                f"{expected_after.describe()}. Fix the save or the load first."
            )
        report = CrashReport(model, 0, [_rel(op.describe(), top) for op in sim.ops], observer=obs.observer)
        chosen: set[int] | None = None
        total: int | None = None
        if max_states is not None:
            # Sample evenly across the whole save instead of taking the first states only.
            total = sum(1 for _ in sim.states(model))
            if total > max_states:
                # evenly spaced, first and last state included (the last is the completed save)
                step = (total - 1) / max(max_states - 1, 1)
                chosen = {round(i * step) for i in range(max_states)}
        progress = _Progress(total)
        try:
            for n, state in enumerate(sim.states(model)):
                if chosen is not None and n not in chosen:
                    continue
                report.states += 1
                progress.tick(report.states, len(report.violations))
                state.materialize(top)
                got = outcome(load)
                if state.after == 0 and got.same_as(expected_after) and not got.same_as(expected_before):
                    # The state before the first operation is the initial directory itself.
                    raise NotJudgeable(
                        "crash_points: no verdict, because load() returned the new state from the directory "
                        "as it was before the save: it does not read what the save wrote (an in-process "
                        "cache? a path outside root?), so no crash state can be judged by it."
                    )
                if got.same_as(expected_after):
                    report.new_states += 1
                    continue
                if not state.complete and got.same_as(expected_before):
                    report.old_states += 1
                    continue
                if state.complete:
                    detail = got.difference(expected_after, "vs the state after the save")
                else:
                    detail = (
                        got.difference(expected_before, "vs the state before the save")
                        + "\n    "
                        + got.difference(expected_after, "vs the state after the save")
                    )
                report.violations.append(Violation(_rel(state.description, top), state.complete, got, detail))
        finally:
            progress.done()
            final.materialize(top)
        report.sampled = sim.stats.sampled or chosen is not None
        report.infeasible = sim.stats.infeasible
        report.seconds = time.perf_counter() - start
        self.reports.append(report)
        self.recorder.add_run(
            "crash_points", states=report.states, violations=len(report.violations), model=model
        )
        if report.violations:
            raise AssertionError(self._message(report, top))
        return report

    @staticmethod
    def _message(report: CrashReport, top: str) -> str:
        first = report.violations[0]
        when = (
            "after save() returned, so only the state after the save is acceptable"
            if first.complete
            else "while save() was running, so the state before or after the save is acceptable"
        )
        lines = [
            f"crash_points: {len(report.violations)} of {report.states} crash states ({report.model} model) "
            f"load something that is neither the state before nor the state after the save.",
            f"First violation: {first.description}",
            f"  ({when})",
            f"  load() {first.got.describe()}",
            f"    {first.detail}",
            f"Operations recorded during save() by the {report.observer} observer ({len(report.operations)}; "
            f"paths relative to {top}):",
        ]
        lines += [f"  {op}" for op in report.operations[:80]]
        if len(report.operations) > 80:
            lines.append(f"  ... and {len(report.operations) - 80} more")
        if len(report.violations) > 1:
            lines.append("Other violating states:")
            lines += [f"  {v.description}" for v in report.violations[1:6]]
        if report.sampled:
            lines.append(
                f"(sampled: {report.states} states were loaded, spread over the whole save; the rest were not)"
            )
        lines.append(f"Fix: {fix_hint(first.description, report.operations)}")
        return "\n".join(lines)

    # -- concurrent writers --------------------------------------------------------------
    def concurrent(
        self,
        save: Callable[[Any], Any],
        load: Callable[[], Any],
        *,
        values: Sequence[Any],
        root: str | os.PathLike[str] | None = None,
        timeout: float = 2.0,
    ) -> ConcurrencyReport:
        """Run ``save(v)`` for two values at once, interleaved at every file operation.

        For writers A and B and every k, A performs k file operations, then B runs to
        completion, then A finishes (and the same with A and B swapped). Afterwards
        ``load()`` must return the value of a writer whose save returned (or the initial
        state if both raised). A save may raise a clear error (a lock refusing the second
        writer is fine); it must never leave a torn or foreign result.

        Example::

            crash_points.concurrent(lambda v: save_json(path, v), lambda: load_json(path),
                                    values=[{"w": 1}, {"w": 2}])
        """
        if len(values) != 2:
            raise ValueError("concurrent() interleaves exactly two writers: pass values=[a, b]")
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        initial = Snapshot.take(top)
        expected_before = outcome(load)
        solo: list[tuple[int, Outcome]] = []
        for v in values:
            initial.materialize(top)
            _, ops = record_save(functools.partial(save, v), top)
            solo.append((len(ops), outcome(load)))
        report = ConcurrencyReport()
        try:
            for first, second in ((0, 1), (1, 0)):
                for k in range(solo[first][0] + 1):
                    initial.materialize(top)
                    run = _interleave(save, values, top, [(first, k), (second, None), (first, None)], timeout)
                    got = outcome(load)
                    report.schedules += 1
                    report.enforced += int(run.enforced)
                    succeeded = [i for i in (0, 1) if run.errors[i] is None]
                    acceptable = [solo[i][1] for i in succeeded] or [expected_before, solo[0][1], solo[1][1]]
                    if any(got.same_as(a) for a in acceptable):
                        continue
                    names = "AB"
                    desc = (
                        f"writer {names[first]} ran {k} file operation(s), then writer {names[second]} ran to "
                        f"completion, then {names[first]} finished"
                    )
                    errs = "; ".join(
                        f"{names[i]} raised {type(e).__name__}: {e}" for i, e in enumerate(run.errors) if e
                    )
                    report.violations.append(
                        f"{desc}: load() {got.describe()}, which is not the value of "
                        f"{' or '.join(names[i] for i in succeeded) or 'either writer or the initial state'}"
                        + (f" ({errs})" if errs else "")
                        + "\n  operations: "
                        + "; ".join(_rel(f"{t}: {op.describe()}", top) for t, op in run.ops[:24])
                    )
        finally:
            initial.materialize(top)
        self.recorder.add_run(
            "crash_points.concurrent", states=report.schedules, violations=len(report.violations)
        )
        if report.violations:
            raise AssertionError(
                f"crash_points.concurrent: {len(report.violations)} of {report.schedules} interleavings of two "
                f"concurrent saves leave a state that is neither writer's value (writer A saves "
                f"{_short(values[0])}, B saves {_short(values[1])}).\nFirst: {report.violations[0]}"
            )
        return report


@dataclass
class ConcurrencyReport:
    schedules: int = 0
    enforced: int = 0
    violations: list[str] = field(default_factory=list)


@dataclass
class _Run:
    errors: list[BaseException | None]
    ops: list[tuple[str, Op]]
    enforced: bool


class _Scheduler:
    """Lets writer threads perform file operations in a fixed order of phases.

    A phase is (writer, quota): that writer may perform ``quota`` operations (None:
    until it finishes). If the writer whose turn it is makes no progress for
    ``timeout`` seconds (it waits on a lock the other holds, say), ordering is given
    up and the run is marked not enforced, rather than deadlocking.
    """

    def __init__(self, phases: list[tuple[int, int | None]], timeout: float) -> None:
        self.phases = phases
        self.timeout = timeout
        self.phase = 0
        self.used = 0
        self.done: set[int] = set()
        self.free = False
        self.cond = threading.Condition()
        self.writer_of: dict[int, int] = {}

    def _turn(self) -> int | None:
        while self.phase < len(self.phases):
            writer, quota = self.phases[self.phase]
            if writer in self.done or (quota is not None and self.used >= quota):
                self.phase += 1
                self.used = 0
                continue
            return writer
        return None

    def before(self, kind: str, path: str) -> None:
        me = self.writer_of.get(threading.get_ident())
        if me is None:
            return
        with self.cond:
            deadline = time.monotonic() + self.timeout
            while not self.free:
                turn = self._turn()
                if turn is None or turn == me:
                    self.used += 1
                    self.cond.notify_all()  # the quota may be spent: let the next writer re-check
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.free = True
                    self.cond.notify_all()
                    return
                self.cond.wait(remaining)

    def finished(self, writer: int) -> None:
        with self.cond:
            self.done.add(writer)
            self.cond.notify_all()


def _interleave(
    save: Callable[[Any], Any],
    values: Sequence[Any],
    top: str,
    phases: list[tuple[int, int | None]],
    timeout: float,
) -> _Run:
    sched = _Scheduler(phases, timeout)
    errors: list[BaseException | None] = [None, None]
    rec = RecordingFS(current_fs())

    def worker(i: int) -> None:
        sched.writer_of[threading.get_ident()] = i
        try:
            save(values[i])
        except BaseException as err:
            errors[i] = err
        finally:
            sched.finished(i)

    with use_fs(GuardFS(rec, before=sched.before)), Interceptor(top, log=rec, before=sched.before):
        threads = [threading.Thread(target=worker, args=(i,), name=f"writer-{'AB'[i]}") for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    return _Run(errors, [(op.thread, op) for op in rec.ops], not sched.free)


@contextlib.contextmanager
def recording(root: str) -> Iterator[RecordingFS]:
    """Record persistkit's and the user's writes under ``root`` (for custom harnesses)."""
    rec = RecordingFS(current_fs())
    with use_fs(GuardFS(rec)), Interceptor(root, log=rec):
        yield rec
