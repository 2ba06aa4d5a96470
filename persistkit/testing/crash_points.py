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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from persistkit.io import current_fs, use_fs
from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.recordfs import Op, RecordingFS
from persistkit.testing.fs.snapshot import Snapshot, scan
from persistkit.testing.fs.states import CrashSimulator, CrashState
from persistkit.testing.judge import (
    UNSET,
    Outcome,
    Report,
    Verdict,
    Violation,
    fix_hint,
    judge_states,
    judged,
    outcome,
)
from persistkit.testing.observe import (
    DEFAULT_VOLATILE,
    Observation,
    check_explained,
    choose,
    observe_command,
    observe_save,
)
from persistkit.testing.observe.intercept import GuardFS, Interceptor
from persistkit.testing.observe.strace import CommandRun
from persistkit.testing.readers import InProcessReader, IsolatedReader, StateReader
from persistkit.testing.report import RECORDER, Recorder

__all__ = [
    "ConcurrencyReport",
    "CrashPoints",
    "CrashReport",
    "Outcome",
    "Violation",
    "outcome",
    "record_save",
]

Model = Literal["process", "power-loss"]
CrashReport = Report


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".")


def record_save(save: Callable[[], Any], root: str) -> tuple[Any, list[Op]]:
    """Run ``save`` with persistkit's and the user's writes under ``root`` recorded in one log."""
    rec = RecordingFS(current_fs())
    with use_fs(GuardFS(rec)), Interceptor(root, log=rec):
        result = save()
    return result, list(rec.ops)


def _changed(snapshot: Snapshot, now: dict[str, Any]) -> bool:
    if set(snapshot.entries) != set(now):
        return True
    return any(not e.unchanged(now[rel]) for rel, e in snapshot.entries.items())


def _ended_well(cmd: Sequence[str], run: CommandRun, obs: Observation, timeout: float, top: str) -> None:
    """The program exited 0 by itself, and nothing it started went on writing after it returned."""
    __tracebackhide__ = True
    stderr = run.stderr.decode(errors="replace")[-2000:]
    if run.timed_out:
        obs.close()
        raise AssertionError(
            f"crash_points.subprocess: {list(cmd)} did not exit within {timeout:g} s; it was killed with every "
            f"process it started, so there is no completed save to judge. Its stderr ends:\n{stderr}"
        )
    if run.signal is not None:
        obs.close()
        raise AssertionError(
            f"crash_points.subprocess: {list(cmd)} was killed by {run.signal} (it crashed), so there is no "
            f"completed save to judge. Its stderr ends:\n{stderr}"
        )
    if run.returncode != 0:
        obs.close()
        raise AssertionError(
            f"crash_points.subprocess: {list(cmd)} exited with status {run.returncode} without a crash, so there "
            f"is no completed save to judge. Its stderr ends:\n{stderr}"
        )
    late = [op for op in obs.late if op.path.startswith(top) or (op.dst or "").startswith(top)]
    if run.stragglers and not late:
        obs.close()
        raise AssertionError(
            f"crash_points.subprocess: {list(cmd)} returned while processes it started were still running "
            f"({', '.join(run.stragglers[:4])}; they were killed then). The save is complete when the command "
            "returns: if they were still saving, the state was not yet the new one (wait for them before exiting)."
        )
    if late:
        obs.close()
        raise AssertionError(
            f"crash_points.subprocess: {list(cmd)} returned while a process it started was still writing under "
            f"{top}: the save was not complete when the command said it was (a bug in the program: wait for the "
            f"writer before exiting). Still running when it returned: {', '.join(run.stragglers) or 'a child'}; "
            "what it wrote afterwards: " + "; ".join(_rel(op.describe(), top) for op in late[:8])
        )


def _reader(
    load: Callable[[], Any], before: Any, after: Any, isolate: bool, timeout: float | None
) -> StateReader:
    if isolate:
        return IsolatedReader(load, before, after, timeout=timeout)
    return InProcessReader(load, before, after)


def _expect_after(sim: CrashSimulator, reader: StateReader, after: Any) -> bool:
    """Learn what load() returns from the state the save left; True: probe the load before judging."""
    __tracebackhide__ = True
    sim.materialize(sim.final())
    got = reader.expect_after()
    if got.error is not None and after is UNSET:
        raise AssertionError(
            f"crash_points: load() fails even after save() completed without a crash: {got.describe()}. "
            "Fix the save or the load first."
        )
    return after is UNSET


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
        self.reports: list[Report] = []

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
        seed: int = 0,
        volatile: Sequence[str] = DEFAULT_VOLATILE,
        isolate: bool = True,
        load_timeout: float | None = None,
    ) -> Report:
        """Choose the crash states of ``save()`` and ``load()`` each one.

        ``before``: the value ``load()`` returns before the save (default: ``load()`` of the
        directory as it was; if it raises, e.g. FileNotFoundError, a crash state that raises
        the same exception type counts as "before"). ``after``: the value after (default:
        ``load()`` of the directory the save left). ``root``: the directory the save writes
        under (default: the test's ``tmp_path``). ``max_states`` caps the states loaded,
        spread over the whole save (chosen without building the others). ``seed`` drives the
        random part of the choice (``persistkit.testing.fs.states`` documents it).
        ``observe``: "auto" (default, or ``--persistkit-observe``), "syscalls" or "python".
        ``allow_outside``: glob patterns of files outside ``root`` the save may change unjudged.
        ``volatile``: name patterns of rebuildable indexes whose content is not state (default:
        SQLite's ``*-shm``); they are zero-filled in every crash state.
        ``isolate``: load each state in a worker process forked before the save (default), so a
        loader that crashes or hangs on a state is a verdict, not the end of the session
        (``persistkit.testing.readers``); False loads in this process. ``load_timeout``: seconds one
        load may take (default: ten times the slowest clean load, at least 10 s).
        Raises AssertionError naming the first violating state, the operations that made it
        and a ``Fix:`` line, or ``NotJudgeable`` (an AssertionError) when the observer did not
        see the whole save. Afterwards the root is exactly as the save left it.
        """
        __tracebackhide__ = True
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        observer = choose(observe)
        top = self._top(root)
        reader = _reader(load, before, after, isolate, load_timeout)
        try:
            initial = self._begin(top, reader)
            try:
                _, error, obs = observe_save(save, top, observer, volatile=volatile)
                if error is not None:
                    raise error
                return self._judge(obs, initial, reader, after, model, max_states, seed, allow_outside)
            finally:
                initial.close()
        finally:
            reader.close()

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
        seed: int = 0,
        volatile: Sequence[str] = DEFAULT_VOLATILE,
        isolate: bool = True,
        load_timeout: float | None = None,
    ) -> Report:
        """Run any program ``cmd`` (Python or not) under strace as the save, then judge it.

        The program must exit 0; every file operation it (and its children) makes
        under ``root`` is judged exactly as for an in-process save.
        """
        __tracebackhide__ = True
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        choose("syscalls")
        top = self._top(root)
        reader = _reader(load, before, after, isolate, load_timeout)
        initial = self._begin(top, reader)
        try:
            run, obs = observe_command(
                cmd, top, cwd=os.fspath(cwd) if cwd is not None else None, env=env, timeout=timeout,
                volatile=volatile,
            )  # fmt: skip
            _ended_well(cmd, run, obs, timeout, top)
            return self._judge(obs, initial, reader, after, model, max_states, seed, allow_outside)
        finally:
            initial.close()
            reader.close()

    @staticmethod
    def _begin(top: str, reader: StateReader) -> Snapshot:
        """The directory before the save, after learning what load() returns from it."""
        initial = Snapshot.take(top)
        reader.expect_before()
        if _changed(initial, scan(top)):
            initial.materialize(top)  # the load tidied up; the save starts from the real initial state
        return initial

    def _top(self, root: str | os.PathLike[str] | None) -> str:
        top = os.path.abspath(os.fspath(root)) if root is not None else self.root
        os.makedirs(top, exist_ok=True)
        return top

    def _judge(
        self,
        obs: Observation,
        initial: Snapshot,
        reader: StateReader,
        after: Any,
        model: Model,
        max_states: int | None,
        seed: int,
        allow_outside: Sequence[str],
    ) -> Report:
        __tracebackhide__ = True
        start = time.perf_counter()
        top = initial.root
        final = scan(top)
        fs_model = FsModel(initial, obs.ops, volatile=obs.volatile)
        fs_model.check_prefixes()
        check_explained("crash_points", obs, initial, final, fs_model, allow_outside=allow_outside)
        sim = CrashSimulator(initial, obs.ops, model=fs_model, seed=seed)
        report = Report(
            model, 0, [_rel(op.describe(), top) for op in sim.ops], observer=obs.observer, seed=seed
        )
        try:
            probing = _expect_after(sim, reader, after)
            current: list[CrashState] = []

            def relearn() -> None:
                sim.materialize(sim.initial())
                reader.expect_before()
                sim.materialize(sim.final())
                reader.expect_after()
                current[0].materialize()

            def read(state: CrashState) -> Verdict:
                current[:] = [state]
                state.materialize()
                return reader.read(state.complete, relearn)

            if probing:
                sim.materialize(sim.initial())
                reader.probe("initial")
                sim.materialize(sim.empty())
                reader.probe("empty")
            states = sim.states(model, max_states=max_states)
            judge_states(
                (judged(s, _rel(s.description, top), s.complete, s.losses) for s in states),
                read,
                report,
                label="crash_points",
                total=max_states,
            )
        finally:
            sim.close()
            obs.close()
        report.sampled = sim.stats.sampled
        report.infeasible = sim.stats.infeasible
        report.candidates = sim.stats.candidates
        report.per_op = sim.stats.per_op
        report.per_class = sim.stats.per_class
        report.load_seconds = reader.load_seconds
        report.bytes_materialized = sim.bytes_materialized
        report.seconds = time.perf_counter() - start
        self.reports.append(report)
        self.recorder.add_run(
            "crash_points", states=report.states, violations=len(report.violations), model=model
        )
        if report.violations:
            raise AssertionError(self._message(report, top, sim))
        return report

    @staticmethod
    def _message(report: Report, top: str, sim: CrashSimulator) -> str:
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
        lines.append(f"Fix: {fix_hint(first.losses, sim.ops, root=top, model=report.model)}")
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
            initial.close()
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
