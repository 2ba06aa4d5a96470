"""``lifecycle``: run a component through startup, work, shutdown and restart, in process and for real.

In process, ``lifecycle(factory, steps=N)`` starts the app, performs ``N``
steps, shuts it down, restarts it on the same directory and compares the
state before shutdown with the state after restart, for ``cycles`` rounds.

``lifecycle.subprocess(...)`` runs a real child process that follows a small
line protocol on stdout (the reference bot speaks it):

=====================  ================================================================
``READY ...``          startup finished (kill timing starts here)
``ACK <id> ...``       unit of work ``<id>`` is durable; it must survive any crash
``SAVED ... <digest>`` final save on SIGTERM done; ``<digest>`` fingerprints the state
``DONE <digest>``      normal exit; the restart command prints this after loading
=====================  ================================================================

* SIGTERM: the child is terminated after a few ACKs; it must exit within the
  grace period after printing ``SAVED``, and ``restart_cmd`` (which loads the
  state and exits, printing ``DONE <digest>``) must report the same digest.
* SIGKILL storm: the child is killed ``kills`` times at seeded random moments
  and restarted on the same directory each time. No ACK-ed id may be
  acknowledged again by a later run (lost work is redone under the same id),
  every restart must reach ``READY``, the final ``restart_cmd`` must succeed,
  and ``verify(state_dir, acks)``, when given, must accept the final state.

The minimum protocol is ``ACK <id>`` lines alone (``protocol="ack"``): an app
that resumes from its state directory and never acknowledges an id twice. Then
a run's first ``ACK`` stands in for ``READY`` (kills are timed from it), SIGTERM
only has to end the process within the grace period, and there is no restart
command; the storm still catches every acknowledged id that a restart had to
redo, and ``verify`` can check the final state.

A ``target="package.module:main"`` (called as ``main(argv)``) runs in a fork
server that imports ``preload`` modules once, so hundreds of kills of a
torch/sklearn app take seconds instead of minutes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from persistkit.testing.compare import first_difference, live_state
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["Ack", "Lifecycle", "LifecycleReport", "SubprocessReport"]


@dataclass(frozen=True)
class Ack:
    """One ``ACK <id> ...`` line: which run printed it, the id, and the rest of the fields."""

    run: int
    id: str
    fields: tuple[str, ...]


@dataclass
class LifecycleReport:
    cycles: int = 0
    steps: int = 0
    restarts: int = 0
    violations: list[str] = field(default_factory=list)
    model: str = "process"
    lost_steps: list[int] = field(default_factory=list)  # per power cut: steps the restart did not hold
    cuts: list[str] = field(default_factory=list)  # per power cut: what it dropped


@dataclass
class SubprocessReport:
    """Figures from ``lifecycle.subprocess``."""

    kills: int = 0
    runs: int = 0
    acks: int = 0
    sigterm_exit_seconds: float | None = None
    recovery_seconds: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    ack_log: list[Ack] = field(default_factory=list)
    model: str = "process"
    power_cuts: int = 0  # runs restarted from the state a power cut at the kill leaves

    def summary(self) -> str:
        rec = f", max READY after restart {max(self.recovery_seconds):.2f} s" if self.recovery_seconds else ""
        term = (
            f", SIGTERM exit {self.sigterm_exit_seconds:.2f} s"
            if self.sigterm_exit_seconds is not None
            else ""
        )
        cuts = f", {self.power_cuts} power cuts" if self.power_cuts else ""
        return f"{self.kills} SIGKILLs{cuts} over {self.runs} runs, {self.acks} ACKs{term}{rec}, {len(self.violations)} violations"


# -- in-process apps ---------------------------------------------------------------------------


class _App:
    """Adapts what a factory returns: an app with ``step()``/``store`` or a bare Persistent component."""

    def __init__(self, obj: Any, state_dir: str, store_kw: dict[str, Any]) -> None:
        self.obj = obj
        self.own_store: Any = None
        if getattr(obj, "store", None) is None and callable(getattr(obj, "state_dict", None)):
            from persistkit.state import StateStore

            self.own_store = StateStore(state_dir, **{"autosave_every": 0, **store_kw})
            self.own_store.register("component", obj)
            self.own_store.load()

    def step(self, i: int, operate: Callable[[Any, int], Any] | None) -> Any:
        if operate is not None:
            return operate(self.obj, i)
        if not callable(getattr(self.obj, "step", None)):
            raise TypeError(
                f"lifecycle: {type(self.obj).__name__} has no step(); pass operate=lambda app, i: ... to change it"
            )
        return self.obj.step()

    def snapshot(self, snapshot: Callable[[Any], Any] | None) -> Any:
        if snapshot is not None:
            return snapshot(self.obj)
        if callable(getattr(self.obj, "snapshot", None)):
            return self.obj.snapshot()
        if self.own_store is not None:
            return live_state(self.obj)
        store = self.obj.store
        return {name: live_state(component) for name, component in store.components.items()}

    def shutdown(self) -> None:
        if self.own_store is not None:
            self.own_store.close()
        elif callable(getattr(self.obj, "close", None)):
            self.obj.close()
        elif getattr(self.obj, "store", None) is not None:
            self.obj.store.close()


# -- child processes ------------------------------------------------------------------------------


class _Child:
    """A child speaking the line protocol: real Popen, or a fork-server child."""

    pid: int

    def line(self, timeout: float) -> str | None:
        raise NotImplementedError

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> tuple[int | None, list[str]]:
        """Exit code (None if still running after ``timeout``) and the lines that came meanwhile."""
        raise NotImplementedError

    def stderr_tail(self) -> str:
        return ""


class _PopenChild(_Child):
    """A real process. ``observe_root``: run it under strace, watching that directory (power-loss runs)."""

    def __init__(
        self,
        cmd: Sequence[str],
        env: dict[str, str] | None,
        observe_root: str | None = None,
        volatile: Sequence[str] | None = None,
    ) -> None:
        pipes: dict[str, Any] = {
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "text": True,
            "bufsize": 1,
        }
        self.observed: Any = None
        if observe_root is not None:
            from persistkit.testing.observe.observer import ObservedProcess

            more: dict[str, Any] = {} if volatile is None else {"volatile": tuple(volatile)}
            self.observed = ObservedProcess(cmd, observe_root, env=env, **more, **pipes)
            self.proc = self.observed.process.proc
        else:
            self.proc = subprocess.Popen(list(cmd), env=env, **pipes)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump_err, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str], out: queue.Queue[str | None]) -> None:
        for raw in stream:
            out.put(raw.rstrip("\n"))
        out.put(None)

    def _pump_err(self, stream: IO[str]) -> None:
        for raw in stream:
            self.err.append(raw)
            del self.err[:-40]

    def line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def send(self, sig: int) -> None:
        if self.observed is None:
            super().send(sig)
        elif sig == signal.SIGKILL:
            # stopped first, so that every operation that took effect is in the trace
            self.observed.process.stop_and_kill()
        else:
            self.observed.process.signal(sig)  # the program, not strace

    def wait(self, timeout: float) -> tuple[int | None, list[str]]:
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        rest: list[str] = []
        if code is not None:
            for t in self._threads:
                t.join(timeout=5)
            while True:
                try:
                    item = self.lines.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    rest.append(item)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            self.proc.stdout.close()
            self.proc.stderr.close()
        return code, rest

    def stderr_tail(self) -> str:
        return "".join(self.err[-10:]).strip()


class _ForkChild(_Child):
    def __init__(self, server: Any, target: str, argv: list[str]) -> None:
        self.server = server
        self.pid, self.early = server.run(target, argv)
        self.code: int | None = None  # set once reaped: a pid is waited for only once

    def line(self, timeout: float) -> str | None:
        if self.early:
            return str(self.early.pop(0))
        got = self.server.next_line(timeout=max(timeout, 0.0))
        return None if got is None else str(got)

    def _exited(self) -> bool:
        from persistkit.testing.forkserver import running

        return not running(self.pid)

    def wait(self, timeout: float) -> tuple[int | None, list[str]]:
        if self.code is not None:
            return self.code, []
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                return None, []
            time.sleep(0.01)
        code, rest = self.server.wait(self.pid)
        self.code = int(code)
        return self.code, [str(x) for x in rest]


# -- the fixture -------------------------------------------------------------------------------------


class Lifecycle:
    """The ``lifecycle`` fixture.

    Example::

        def test_counter_lifecycle(lifecycle):
            lifecycle(lambda state_dir: Counter(), steps=50, operate=lambda c, i: c.add(i))

        def test_bot_survives_signals(lifecycle, tmp_path):
            bot = [sys.executable, "-m", "persistkit.reference.bot", "--state-dir", "{state_dir}"]
            lifecycle.subprocess(bot + ["--steps", "100000"], restart_cmd=bot + ["--steps", "0"],
                                 state_dir=tmp_path / "bot", kills=10)
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        kills: int = 20,
        seed: int = 0,
        recorder: Recorder = RECORDER,
    ) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.kills = kills
        self.seed = seed
        self.recorder = recorder
        self._n = itertools.count()
        self._servers: dict[tuple[Any, ...], Any] = {}

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    # -- in process ------------------------------------------------------------------------
    def __call__(
        self,
        factory: Callable[[str], Any],
        *,
        steps: int,
        cycles: int = 2,
        operate: Callable[[Any, int], Any] | None = None,
        snapshot: Callable[[Any], Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        model: str = "process",
        max_lost_steps: int | None = None,
        observe: str | None = None,
        timeout: float = 300.0,
        **store_kw: Any,
    ) -> LifecycleReport:
        """Startup, ``steps`` operations, shutdown, restart and compare; ``cycles`` times.

        ``factory(state_dir)`` returns the app (anything with ``step()`` and a ``store`` or
        ``close()``, like ``make_bot``) or a bare Persistent component, which is then kept in a
        StateStore (``store_kw`` are its options). ``operate(app, i)`` replaces ``app.step()``;
        ``snapshot(app)`` replaces ``app.snapshot()``/``state_dict()`` for the comparison.

        ``model="power-loss"``: each cycle's steps run in a forked child, observed (``observe``:
        as for ``crash_points``), and end in a power cut instead of a shutdown: the child is
        abandoned and the directory is put in the state the cut leaves when nothing unsynced
        reached the disk. The restart must then hold the state the app had after some step (not
        a mix of two, and it must load), and with ``max_lost_steps`` no more than that many
        steps before the last. ``snapshot`` values must pickle (they come back from the child);
        ``timeout`` bounds each cycle's steps.
        """
        where = (
            os.fspath(state_dir)
            if state_dir is not None
            else os.path.join(self.workdir, f"app-{next(self._n)}")
        )
        if model not in ("process", "power-loss"):
            raise ValueError(f"lifecycle: model must be 'process' or 'power-loss', not {model!r}")
        if model == "power-loss":
            return self._power_cycles(
                factory, where, steps, cycles, operate, snapshot, store_kw, max_lost_steps, observe, timeout
            )
        report = LifecycleReport()
        app = _App(factory(where), where, store_kw)
        try:
            for cycle in range(1, cycles + 1):
                for i in range(steps):
                    app.step(i, operate)
                report.steps += steps
                expected = app.snapshot(snapshot)
                app.shutdown()
                app = _App(factory(where), where, store_kw)
                report.restarts += 1
                report.cycles = cycle
                got = app.snapshot(snapshot)
                problem = first_difference(expected, got, "state")
                if problem is not None:
                    report.violations.append(
                        f"after restart #{cycle} (having run {report.steps} steps) the state differs from the state "
                        f"at shutdown: {problem}"
                    )
                    break
        finally:
            with contextlib.suppress(Exception):
                app.shutdown()
        self.recorder.add_run(
            "lifecycle", restarts=report.restarts, steps=report.steps, violations=len(report.violations)
        )
        if report.violations:
            raise AssertionError("lifecycle: " + report.violations[0])
        return report

    def _power_cycles(
        self,
        factory: Callable[[str], Any],
        where: str,
        steps: int,
        cycles: int,
        operate: Callable[[Any, int], Any] | None,
        snapshot: Callable[[Any], Any] | None,
        store_kw: dict[str, Any],
        max_lost_steps: int | None,
        observe: str | None,
        timeout: float,
    ) -> LifecycleReport:
        __tracebackhide__ = True
        import pickle

        from persistkit.testing.isolate import Worker
        from persistkit.testing.observe.observer import NotJudgeable, choose

        os.makedirs(where, exist_ok=True)
        observer = choose(observe)
        report = LifecycleReport(model="power-loss")
        try:
            for cycle in range(1, cycles + 1):
                first = report.steps

                def work(first: int = first) -> tuple[list[bytes], str]:
                    return _steps_then_power_cut(
                        factory, where, store_kw, steps, first, operate, snapshot, observer
                    )

                with Worker(work, timeout=timeout, fresh=True) as worker:
                    done = worker.call()
                if done.raised_a("NotJudgeable"):
                    raise NotJudgeable(done.error_message)
                if not done.ok or not done.value_pickled:
                    report.violations.append(
                        f"cycle {cycle}: the steps before the power cut did not complete: {done.describe()}"
                        + (f"\n{done.traceback[-1500:]}" if done.traceback else "")
                    )
                    break
                blobs, cut = done.value
                report.steps += steps
                report.cuts.append(cut)
                states = [pickle.loads(b) for b in blobs]  # noqa: S301 - from our own forked child
                try:
                    app = _App(factory(where), where, store_kw)
                    got = app.snapshot(snapshot)
                except Exception as err:
                    report.violations.append(
                        f"after the power cut that ended cycle {cycle} ({cut}), the restart failed: "
                        f"{type(err).__name__}: {err}"
                    )
                    break
                report.restarts += 1
                report.cycles = cycle
                try:
                    held = [
                        j for j, state in enumerate(states) if first_difference(state, got, "state") is None
                    ]
                    if not held:
                        problem = first_difference(states[-1], got, "state")
                        report.violations.append(
                            f"after the power cut that ended cycle {cycle} ({cut}), the restarted state is none "
                            f"the app had after any of its {steps} steps (nor before them); against the last: "
                            f"{problem}. The state on disk mixes saves, or a save was torn"
                        )
                        break
                    lost = steps - max(held)
                    report.lost_steps.append(lost)
                    if max_lost_steps is not None and lost > max_lost_steps:
                        had = (
                            f"the state after step {first + max(held)}"
                            if max(held)
                            else "the state from before the cycle's first step"
                        )
                        every = (
                            "after every step"
                            if max_lost_steps == 0
                            else f"at least every {max_lost_steps + 1} steps"
                        )
                        report.violations.append(
                            f"after the power cut that ended cycle {cycle}, the restart holds {had}: {lost} steps "
                            f"lost, more than max_lost_steps={max_lost_steps} ({cut}). Fix: make the state durable "
                            f"(save, fsync the file, and fsync its directory after a rename) {every}"
                        )
                        break
                finally:
                    with contextlib.suppress(Exception):
                        app.shutdown()
        finally:
            self.recorder.add_run(
                "lifecycle", restarts=report.restarts, steps=report.steps, violations=len(report.violations)
            )
        if report.violations:
            raise AssertionError("lifecycle(model='power-loss'): " + report.violations[0])
        return report

    # -- real processes ----------------------------------------------------------------------
    def subprocess(
        self,
        cmd: Sequence[str] | None = None,
        *,
        state_dir: str | os.PathLike[str],
        restart_cmd: Sequence[str] | None = None,
        target: str | None = None,
        argv: Sequence[str] = (),
        restart_argv: Sequence[str] | None = None,
        preload: Sequence[str] = (),
        warm: Sequence[tuple[str, Sequence[str]]] = (),
        kills: int | None = None,
        seed: int | None = None,
        term_after_acks: int = 5,
        term_wait: float = 30.0,
        kill_window: tuple[float, float] = (0.02, 0.5),
        grace: float = 30.0,
        startup_timeout: float = 120.0,
        verify: Callable[[str, list[Ack]], Any] | None = None,
        sigterm: bool = True,
        env: dict[str, str] | None = None,
        protocol: str = "full",
        state_difference: Callable[[str, str], str | None] | None = None,
        model: str = "process",
        volatile: Sequence[str] | None = None,
    ) -> SubprocessReport:
        """SIGTERM and a seeded SIGKILL storm against a child process; see the module docstring.

        Give ``cmd`` and ``restart_cmd`` (argument lists; ``{state_dir}`` is substituted), or
        ``target="module:main"`` with ``argv``/``restart_argv`` and ``preload`` for a fork
        server (``warm``: ``("module:function", argv)`` calls it makes once, before forking, to
        load what the app imports lazily). ``kill_window``: seconds after ``READY`` within which
        each kill lands. SIGTERM is sent after ``term_after_acks`` ACK lines, or ``term_wait``
        seconds after ``READY`` if fewer came (pass ``term_after_acks=0`` for an app that prints
        no ACK). ``protocol``: "full" (READY/ACK/SAVED/DONE, with a restart command) or "ack"
        (ACK lines only; see the module docstring). ``state_difference(saved, restarted)``: given
        the digests of ``SAVED`` and of the restart's ``DONE`` when they differ, the first
        difference between the two states, or None when they are equal (a digest that depends
        on mapping order, say); without it, different digests are a violation.

        ``model``: "process" (a SIGKILL: the page cache survives, so whatever the program wrote
        is there at the restart) or "power-loss": each killed run runs under strace, and before
        the restart the state directory is put in the state a power cut at the kill leaves when
        nothing unsynced reached the disk (data written since the file's last fsync, and
        directory operations since its directory's last fsync, are dropped). An ``ACK`` printed
        before its fsync is then caught: the restart redoes the work under the same id.
        ``volatile``: glob patterns of files that are rebuildable indexes (default: SQLite's
        ``*-shm``), as for ``crash_points``.
        """
        __tracebackhide__ = True
        where = os.path.abspath(os.fspath(state_dir))
        os.makedirs(where, exist_ok=True)  # the program may expect it, as it would in production
        if protocol not in ("full", "ack"):
            raise ValueError(f"lifecycle.subprocess: protocol must be 'full' or 'ack', not {protocol!r}")
        minimal = protocol == "ack"
        if (cmd is None) == (target is None):
            raise ValueError("lifecycle.subprocess: pass either cmd=[...] or target='module:main'")
        if cmd is not None and restart_cmd is None and not minimal:
            raise ValueError(
                "lifecycle.subprocess: pass restart_cmd=[...], a command that loads the state and exits printing "
                "'DONE <digest>' (e.g. the same command with zero steps)"
            )
        if target is not None and restart_argv is None and not minimal:
            raise ValueError(
                "lifecycle.subprocess: pass restart_argv=[...] (loads the state, prints 'DONE <digest>')"
            )
        if model not in ("process", "power-loss"):
            raise ValueError(f"lifecycle.subprocess: model must be 'process' or 'power-loss', not {model!r}")
        power = model == "power-loss"
        if power:
            from persistkit.testing.observe.strace import ObserverUnavailable, ptrace_problem

            problem = ptrace_problem()
            if problem is not None:
                raise ObserverUnavailable(
                    f"lifecycle.subprocess(model='power-loss') watches each run with strace, which cannot run "
                    f"here: {problem}"
                )
        kills = self.kills if kills is None else kills
        rng = random.Random(self.seed if seed is None else seed)

        def fill(args: Sequence[str]) -> list[str]:
            return [a.replace("{state_dir}", where) for a in args]

        def start(restart: bool = False, observe: bool = False) -> _Child:
            if observe:  # a fork server's child cannot be traced from its start: run target as a program
                program = cmd if target is None else [sys.executable, "-c", _RUN_TARGET, target, *argv]
                return _PopenChild(fill(program), env, observe_root=where, volatile=volatile)  # type: ignore[arg-type]
            if target is not None:
                server = self._server(tuple(preload), env, tuple((s, tuple(a)) for s, a in warm))
                return _ForkChild(server, target, fill(restart_argv if restart else argv))  # type: ignore[arg-type]
            return _PopenChild(fill(restart_cmd if restart else cmd), env)  # type: ignore[arg-type]

        report = SubprocessReport(model=model)
        acked: dict[str, int] = {}
        cuts = _PowerCuts(where, report) if power else None

        def take(run: int, lines: list[str]) -> None:
            for line in lines:
                parts = line.split()
                if not parts or parts[0] != "ACK" or len(parts) < 2:
                    continue
                ack = Ack(run, parts[1], tuple(parts[2:]))
                report.acks += 1
                report.ack_log.append(ack)
                first = acked.get(ack.id)
                if first is not None and first != run:
                    cut = cuts.notes.get(first) if cuts is not None else None
                    report.violations.append(
                        f"ids must be unique; id {ack.id} was acknowledged twice, by run #{first} and again by "
                        f"run #{run} after a restart: the state that restart loaded did not hold the work "
                        f"acknowledged as {ack.id} (lost), or the app hands out ids that are not unique"
                        + (
                            f". Run #{first} ended in a power cut, and {cut}. Fix: print ACK only after the "
                            "fsync that makes the work durable (for a file replaced by rename: fsync the file "
                            "before the rename and its directory after it)"
                            if cut is not None
                            else ""
                        )
                    )
                elif first is not None:
                    report.violations.append(
                        f"ids must be unique; id {ack.id} was acknowledged twice within run #{run}"
                    )
                acked.setdefault(ack.id, run)

        run = 0
        try:
            if sigterm:
                run += 1
                self._sigterm(
                    start,
                    run,
                    report,
                    take,
                    term_after_acks,
                    term_wait,
                    grace,
                    startup_timeout,
                    minimal,
                    state_difference,
                    cuts,
                )
            for _ in range(kills):
                if report.violations:
                    break
                run += 1
                self._kill_once(
                    start, run, report, take, rng.uniform(*kill_window), startup_timeout, minimal, cuts
                )
            if not report.violations and not minimal:
                child = start(restart=True)
                code, lines = self._drain(child, startup_timeout)
                report.runs += 1
                if code != 0 or not any(ln.startswith("DONE") for ln in lines):
                    report.violations.append(
                        f"the final restart failed after {report.kills} kills: exit {code}, no DONE line"
                        + _tail(lines, child)
                    )
            if not report.violations and verify is not None:
                try:
                    verify(where, list(report.ack_log))
                except AssertionError as err:
                    report.violations.append(f"verify() rejected the state after {report.kills} kills: {err}")
        finally:
            self.recorder.add_run(
                "lifecycle.subprocess",
                kills=report.kills,
                acks=report.acks,
                violations=len(report.violations),
            )
        if report.violations:
            raise AssertionError(
                f"lifecycle.subprocess: {report.violations[0]}\n({report.summary()}; state dir {where})"
            )
        return report

    def _server(
        self,
        preload: tuple[str, ...],
        env: dict[str, str] | None,
        warm: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> Any:
        key = (preload, warm)
        server = self._servers.get(key)
        if server is None:
            from persistkit.testing.forkserver import ForkServer

            server = ForkServer(list(preload), env=env, warm=[(s, list(a)) for s, a in warm])
            self._servers[key] = server
        return server

    @staticmethod
    def _drain(child: _Child, timeout: float) -> tuple[int | None, list[str]]:
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        code: int | None = None
        while time.monotonic() < deadline:
            code, rest = child.wait(0.05)
            if code is not None:
                lines += rest
                break
            while (line := child.line(0)) is not None:
                lines.append(line)
        else:
            child.send(signal.SIGKILL)
            code, rest = child.wait(10)
            lines += rest
        while (line := child.line(0)) is not None:
            lines.append(line)
        return code, lines

    @staticmethod
    def _until_ready(child: _Child, timeout: float, lines: list[str], minimal: bool = False) -> float | None:
        """Wait for READY (an ACK-only app: its first ACK); seconds taken, or None if it ended or timed out.

        Kill moments are timed from here, from what the child printed, never from its start: on a
        loaded machine a start can take longer than any kill window.
        """
        marker = "ACK" if minimal else "READY"
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            line = child.line(0.05)
            if line is None:
                code, rest = child.wait(0)
                if code is not None:
                    lines += rest
                    return None
                continue
            lines.append(line)
            if line.startswith(marker):
                return time.monotonic() - start
        return None

    def _sigterm(
        self,
        start: Callable[..., _Child],
        run: int,
        report: SubprocessReport,
        take: Callable[[int, list[str]], None],
        after_acks: int,
        wait: float,
        grace: float,
        timeout: float,
        minimal: bool = False,
        state_difference: Callable[[str, str], str | None] | None = None,
        cuts: _PowerCuts | None = None,
    ) -> None:
        if cuts is not None:
            cuts.begin()
        try:
            self._sigterm_run(
                start, run, report, take, after_acks, wait, grace, timeout, minimal, state_difference, cuts
            )
        finally:
            if cuts is not None:
                cuts.end()

    def _sigterm_run(
        self,
        start: Callable[..., _Child],
        run: int,
        report: SubprocessReport,
        take: Callable[[int, list[str]], None],
        after_acks: int,
        wait: float,
        grace: float,
        timeout: float,
        minimal: bool,
        state_difference: Callable[[str, str], str | None] | None,
        cuts: _PowerCuts | None,
    ) -> None:
        child = start(observe=cuts is not None)
        report.runs += 1
        lines: list[str] = []
        if self._until_ready(child, timeout, lines, minimal) is None:
            _, rest = self._drain(child, 10)
            said = "an ACK" if minimal else "READY"
            report.violations.append(f"run #{run} never printed {said}" + _tail(lines + rest, child))
            return
        deadline = time.monotonic() + wait
        while sum(1 for ln in lines if ln.startswith("ACK")) < after_acks and time.monotonic() < deadline:
            line = child.line(0.05)
            if line is not None:
                lines.append(line)
            elif child.wait(0)[0] is not None:
                report.violations.append(
                    "SIGTERM: the child ended on its own before the signal could be sent; give it more work "
                    "(more steps)" + _tail(lines, child)
                )
                return
        child.send(signal.SIGTERM)
        sent = time.monotonic()
        code, rest = child.wait(grace)
        if code is None:
            child.send(signal.SIGKILL)
            child.wait(10)
            report.violations.append(f"SIGTERM: the child did not exit within the {grace:g} s grace period")
            return
        report.sigterm_exit_seconds = time.monotonic() - sent
        while (line := child.line(0)) is not None:
            rest.append(line)
        lines += rest
        take(run, lines)
        cut = "" if cuts is None else f" (a power cut followed its exit, and {cuts.cut(child, run)})"
        if minimal:
            return  # ACK-only: ending within the grace period is all SIGTERM asks
        saved = [ln for ln in lines if ln.startswith("SAVED")]
        if not saved:
            report.violations.append(
                f"SIGTERM: the child exited ({_exit(code)}) without printing 'SAVED ... <digest>': it did not save "
                "its state on SIGTERM" + _tail(lines, child)
            )
            return
        digest = saved[-1].split()[-1]
        check = start(restart=True)
        report.runs += 1
        code2, lines2 = self._drain(check, timeout)
        done = [ln for ln in lines2 if ln.startswith("DONE")]
        if code2 != 0 or not done:
            report.violations.append(
                f"SIGTERM: the restart failed ({_exit(code2)}){cut}" + _tail(lines2, check)
            )
        elif done[-1].split()[-1] != digest:
            restarted = done[-1].split()[-1]
            if state_difference is None:
                report.violations.append(
                    f"SIGTERM: the state after restart (digest {restarted}) differs from the state saved at the "
                    f"signal (digest {digest}){cut}: the final save did not capture the state at the signal, or "
                    "was not made durable before SAVED was printed, or the digest depends on something a restart "
                    "does not keep (mapping order, object ids); pass state_difference= to compare the states "
                    "themselves"
                )
                return
            problem = state_difference(digest, restarted)
            if problem is not None:
                report.violations.append(
                    f"SIGTERM: the state after restart differs from the state saved at the signal{cut}: {problem}. "
                    "The final save did not capture the state at the signal, was not durable when SAVED was "
                    "printed, or the load does not restore it"
                )

    def _kill_once(
        self,
        start: Callable[..., _Child],
        run: int,
        report: SubprocessReport,
        take: Callable[[int, list[str]], None],
        delay: float,
        timeout: float,
        minimal: bool = False,
        cuts: _PowerCuts | None = None,
    ) -> None:
        """One run killed ``delay`` s after READY; under ``cuts``, then a power cut."""
        if cuts is not None:
            cuts.begin()
        try:
            child = start(observe=cuts is not None)
            report.runs += 1
            lines: list[str] = []
            ready = self._until_ready(child, timeout, lines, minimal)
            if ready is None:
                _, rest = self._drain(child, 10)
                report.violations.append(
                    f"run #{run} never printed {'an ACK' if minimal else 'READY'} after a restart"
                    + _tail(lines + rest, child)
                )
                return
            self._kill(child, run, report, take, lines, ready, delay)
            if cuts is not None and not report.violations:
                cuts.cut(child, run)
        finally:
            if cuts is not None:
                cuts.end()

    @staticmethod
    def _kill(
        child: _Child,
        run: int,
        report: SubprocessReport,
        take: Callable[[int, list[str]], None],
        lines: list[str],
        ready: float,
        delay: float,
    ) -> None:
        report.recovery_seconds.append(ready)
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            line = child.line(left)
            if line is not None:
                lines.append(line)
        child.send(signal.SIGKILL)
        code, rest = child.wait(30)
        while (line := child.line(0)) is not None:
            rest.append(line)
        lines += rest
        if code == -signal.SIGKILL:
            report.kills += 1
        elif code != 0:
            report.violations.append(f"run #{run} failed on its own ({_exit(code)})" + _tail(lines, child))
        take(run, lines)


_ABANDONED: list[Any] = []  # apps a power cut ended: never closed, never collected (no finalizer may save)


def _steps_then_power_cut(
    factory: Callable[[str], Any],
    where: str,
    store_kw: dict[str, Any],
    steps: int,
    first: int,
    operate: Callable[[Any, int], Any] | None,
    snapshot: Callable[[Any], Any] | None,
    observer: str,
) -> tuple[list[bytes], str]:
    """In a forked child: start the app, run the steps observed, then cut the power (see ``_power_cut``).

    Returns the pickled state after startup and after each step, and what the cut dropped.
    """
    import pickle

    from persistkit.testing.fs.snapshot import Snapshot
    from persistkit.testing.observe.observer import observe_save

    before = Snapshot.take(where)
    states: list[bytes] = []

    def run() -> None:
        app = _App(factory(where), where, store_kw)
        _ABANDONED.append(app)
        states.append(pickle.dumps(app.snapshot(snapshot)))
        for i in range(steps):
            app.step(first + i, operate)
            states.append(pickle.dumps(app.snapshot(snapshot)))

    try:
        _, error, obs = observe_save(run, where, observer)
        if error is not None:
            obs.close()
            raise error
        return states, _cut(obs, before, "lifecycle(model='power-loss')")
    finally:
        before.close()


class _PowerCuts:
    """The power cuts of ``lifecycle.subprocess(model="power-loss")``: one after each traced run."""

    def __init__(self, root: str, report: SubprocessReport) -> None:
        self.root = root
        self.report = report
        self.notes: dict[int, str] = {}  # run -> what the cut after it dropped
        self.before: Any = None

    def begin(self) -> None:
        """Before a run: remember the directory (the cut keeps only what the run synced of its changes)."""
        from persistkit.testing.fs.snapshot import Snapshot

        self.before = Snapshot.take(self.root)

    def cut(self, child: _Child, run: int) -> str:
        note = _power_cut(child, self.before, run)
        self.notes[run] = note
        self.report.power_cuts += 1
        return note

    def end(self) -> None:
        if self.before is not None:
            self.before.close()
            self.before = None


# runs ``module:function`` as a program, as the fork server calls it: ``function(argv)``, its result the exit status
_RUN_TARGET = (
    "import importlib, sys; spec = sys.argv[1]; module, _, func = spec.partition(':'); "
    "sys.argv = [spec, *sys.argv[2:]]; sys.exit(int(getattr(importlib.import_module(module), func)(sys.argv[1:]) or 0))"
)


def _power_cut(child: _Child, before: Any, run: int) -> str:
    """After a traced run ended: the power cut (see ``_cut``)."""
    assert isinstance(child, _PopenChild) and child.observed is not None
    return _cut(child.observed.observation(), before, f"lifecycle.subprocess(model='power-loss'), run #{run}")


def _cut(obs: Any, before: Any, fixture: str) -> str:
    """Put the state directory in the state a power cut after ``obs`` leaves; say what it dropped.

    Raises NotJudgeable when the operations do not explain how the directory changed (a write
    through a shared mapping, a process strace did not start): the cut could not be modelled.
    """
    from persistkit.testing.fs import CrashSimulator
    from persistkit.testing.fs.model import FsModel
    from persistkit.testing.fs.snapshot import Snapshot, scan
    from persistkit.testing.observe.observer import check_explained

    try:
        root = before.root
        final = scan(root)
        if not obs.ops and not obs.blind and not before.diff(Snapshot(root, final)):
            return "it had changed nothing"
        model = FsModel(before, obs.ops, volatile=obs.volatile)
        model.check_prefixes()
        # only the state directory is cut: what the program changes elsewhere (a log, a semaphore in
        # /dev/shm) is not its state and stays as the page cache had it
        check_explained(fixture, obs, before, final, model, allow_outside=["*"])
        sim = CrashSimulator(before, obs.ops, model=model)
        state = sim.power_cut()
        sim.leave(state)
        if not state.losses:
            return "everything written had been synced"
        shown = "; ".join(loss.describe(root) for loss in state.losses[:4])
        more = f"; and {len(state.losses) - 4} more" if len(state.losses) > 4 else ""
        return f"the cut dropped what had not been synced: {shown}{more}"
    finally:
        obs.close()


def _exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _tail(lines: list[str], child: _Child) -> str:
    shown = "\n    ".join(lines[-6:])
    err = child.stderr_tail()
    out = f"\n  last lines:\n    {shown}" if lines else ""
    return out + (f"\n  stderr:\n    {err[-1500:]}" if err else "")
