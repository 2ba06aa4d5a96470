"""``resume_points``: crash a training run at every operation of every checkpoint save, resume it, compare.

The pipeline is ``crash_points``' (observe -> operation log -> crash states -> judge), over a
whole training run instead of one save:

1. The job runs once to the end as the **reference**, observed with the syscall observer.
   Its progress lines (``persistkit.testing.training`` documents the protocol) are written
   to a file *it* opens, so each ``STEP n`` line is an operation in the same log as its
   file operations: the operations under the directory between two steps are one
   **checkpoint save**.
2. For each save, the crash states of its window of the log (``CrashSimulator`` with
   ``within=``): process kills after every operation and during large writes, and
   power-loss states before each durability point and at the end of the save, each losing
   whatever had not been made durable since the run began.
3. Each state is built in the directory itself (only what differs is rewritten; what a
   resume changed is undone before the next state), then the job is **resumed** with the
   same command, isolated and under a timeout enforced from outside, and run to the end.
4. The resume is judged against the reference, in this order:

   ``HARD_FAIL``          the resume crashed, timed out, or its final weights cannot be read
   ``SILENT_DIVERGENCE``  it finished, but its final weights differ (bit-exact, or beyond
                          ``tolerance``)
   ``LOST_WORK``          it started from an older step than the newest checkpoint that is
                          complete in the crash state (a checkpoint was there; it was not used)
   ``DUPLICATED_WORK``    it started before a checkpoint the run had already saved (the save
                          had returned) and which the crash destroyed, or it counted a step
                          twice
   ``pass``               none of these

A checkpoint is *complete* in a state when every file its save left holds the bytes it held
when the save ended; its step is the step a resume from the state right after the save
reports (those states are resumed first). The first run is a control: a resume from the
directory as it was before the run must reproduce the reference, else the job is not
deterministic and no verdict is given (``TrainingNotReproducible``).

Every failing verdict carries its crash state (description and losses), a ``Fix:`` line
and, for the first state of each failing verdict, a shrunk standalone repro folder: the
script, the crash state's directory (without the files the failure does not need) and a
README with the command that reproduces it.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import functools
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.snapshot import Snapshot, scan
from persistkit.testing.fs.states import CrashSimulator, Loss, Plan
from persistkit.testing.judge import choose as spread
from persistkit.testing.judge import fix_hint
from persistkit.testing.observe import (
    DEFAULT_VOLATILE,
    NotJudgeable,
    check_explained,
    observe_command,
    observe_save,
)
from persistkit.testing.report import RECORDER, Recorder
from persistkit.testing.training import (
    Protocol,
    RunOutput,
    Training,
    exit_text,
    fresh_interpreter,
    parse_output,
    preload,
    run_job,
    thread_settings,
    weights_difference,
)

__all__ = [
    "FAILURES",
    "VERDICTS",
    "ResumePoints",
    "ResumeRun",
    "ResumeReport",
    "Save",
    "StateResult",
    "TrainingNotReproducible",
    "scratch_root",
]

PASS, HARD_FAIL, SILENT_DIVERGENCE, LOST_WORK, DUPLICATED_WORK = (
    "pass", "HARD_FAIL", "SILENT_DIVERGENCE", "LOST_WORK", "DUPLICATED_WORK",
)  # fmt: skip
VERDICTS = (PASS, HARD_FAIL, SILENT_DIVERGENCE, LOST_WORK, DUPLICATED_WORK)
FAILURES = VERDICTS[1:]
Model = Literal["process", "power-loss"]
MODELS: tuple[Model, ...] = ("process", "power-loss")


class TrainingNotReproducible(AssertionError):
    """Two runs of the job from the same directory differ, so no resume can be judged by its weights."""


@dataclass
class Save:
    """One checkpoint save of the reference run: operations ``ops[start:end]``, after step ``step``."""

    index: int
    start: int
    end: int
    step: int  # the step a resume from the state right after it reports (else: steps printed before it)
    files: dict[str, str]  # relative path -> digest of what it held when the save ended
    calibrated: bool = False

    def describe(self) -> str:
        names = ", ".join(sorted(self.files)[:4]) + (" ..." if len(self.files) > 4 else "")
        return f"save #{self.index} after step {self.step} (ops #{self.start}-#{self.end - 1}: {names or 'no files left'})"


@dataclass
class StateResult:
    """One crash state and how its resume went."""

    model: str
    description: str
    losses: tuple[Loss, ...]
    save: int
    verdict: str
    detail: str
    fix: str
    resumed_from: int | None
    newest_complete: int
    committed: int
    weights_diff: float | None
    seconds: float
    output_tail: str = ""
    repro: str | None = None
    plan: Plan | None = field(default=None, repr=False)

    def describe(self, root: str = "") -> str:
        losses = "; ".join(loss.describe(root) for loss in self.losses[:4])
        text = f"[{self.verdict}] {self.model}: {self.description}"
        if losses and losses not in self.description:
            text += f" (lost: {losses})"
        return (
            text
            + f"\n    {self.detail}\n    Fix: {self.fix}"
            + (f"\n    repro: {self.repro}" if self.repro else "")
        )


@dataclass
class ResumeReport:
    """What one ``resume_points`` run explored and found."""

    command: str
    root: str
    saves: list[Save]
    results: list[StateResult] = field(default_factory=list)
    reference_steps: int = 0
    reference_seconds: float = 0.0
    seconds: float = 0.0
    candidates: int = 0
    sampled: bool = False
    warm: bool = True
    operations: int = 0
    repros: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def states(self) -> int:
        return len(self.results)

    def counts(self, model: str | None = None) -> Counter[str]:
        return Counter(r.verdict for r in self.results if model is None or r.model == model)

    @property
    def failures(self) -> list[StateResult]:
        return [r for r in self.results if r.verdict != PASS]

    @property
    def kinds(self) -> set[str]:
        """The failing verdicts found."""
        return {r.verdict for r in self.failures}

    def table(self) -> str:
        """The verdict table: one row per crash model, one column per verdict."""
        head = "| model | states | " + " | ".join(VERDICTS) + " |"
        lines = [head, "|---|---|" + "---|" * len(VERDICTS)]
        for model in MODELS:
            c = self.counts(model)
            n = sum(c.values())
            if n:
                lines.append(f"| {model} | {n} | " + " | ".join(str(c.get(v, 0)) for v in VERDICTS) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        c = self.counts()
        found = ", ".join(f"{v} {c[v]}" for v in FAILURES if c.get(v)) or "no failures"
        return (
            f"resume_points: {self.states} crash states of {len(self.saves)} checkpoint saves "
            f"({self.operations} operations observed; {self.candidates} candidates"
            f"{', sampled' if self.sampled else ''}) resumed in {self.seconds:.1f} s "
            f"({'warm' if self.warm else 'cold'} starts): {c.get(PASS, 0)} pass, {found}"
        )

    def message(self) -> str:
        lines = [self.summary(), f"command: {self.command}", self.table(), "Checkpoint saves:"]
        lines += [f"  {s.describe()}" for s in self.saves]
        lines += [f"Note: {n}" for n in self.notes]
        firsts: dict[str, StateResult] = {}
        for r in sorted(self.failures, key=lambda r: r.repro is None):  # the state with a repro folder first
            firsts.setdefault(r.verdict, r)
        for verdict in FAILURES:
            first = firsts.get(verdict)
            if first is not None:
                r = first
                lines.append(f"First {verdict} ({self.counts()[verdict]} states):")
                lines.append("  " + r.describe(self.root).replace("\n", "\n  "))
                if r.output_tail:
                    lines.append("    resume output ends:\n      " + r.output_tail.replace("\n", "\n      "))
        return "\n".join(lines)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return _digest(f.read())
    except OSError:
        return None


@dataclass
class _Reference:
    output: RunOutput
    weights: Any
    markers: list[tuple[int, int]]  # (log position after the line was written, step)
    seconds: float


@contextlib.contextmanager
def scratch_root() -> Iterator[str]:
    """A temporary directory for a run started outside pytest (``persistkit check --train``), removed after."""
    path = tempfile.mkdtemp(prefix="persistkit-train-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ResumePoints:
    """The ``resume_points`` fixture (and ``persistkit check --train``).

    Example::

        def test_training_resumes(resume_points):
            report = resume_points(["python", "train.py", "--out", "{dir}"], weights="final.pt")
            assert report.states > 10
    """

    def __init__(self, root: str | os.PathLike[str], *, recorder: Recorder = RECORDER,
                 repro_dir: str | os.PathLike[str] | None = None) -> None:  # fmt: skip
        self.root = os.path.abspath(os.fspath(root))
        self.recorder = recorder
        self.repro_dir = os.fspath(repro_dir) if repro_dir is not None else None
        self.reports: list[ResumeReport] = []

    def __call__(
        self,
        train: Sequence[str] | str | Callable[[Path], Any],
        *,
        weights: str | Callable[[Path], Any] | None = None,
        tolerance: float = 0.0,
        root: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        models: Sequence[Model] = MODELS,
        max_states: int | None = None,
        checkpoints: Sequence[str] = (),
        timeout: float | None = None,
        step_pattern: str | None = None,
        resume_pattern: str | None = None,
        warm: bool = True,
        repro_dir: str | os.PathLike[str] | None = None,
        shrink: int = 8,
        seed: int = 0,
        allow_outside: Sequence[str] = (),
        volatile: Sequence[str] = DEFAULT_VOLATILE,
        check: bool = True,
    ) -> ResumeReport:
        """Run ``train`` to the end, then crash it at every operation of every checkpoint save and resume.

        ``train``: argv (``{dir}`` is replaced by the directory), a shell-like string, or a
        callable ``train(dir)`` (which may return its final weights). ``weights``: where the
        final weights are: a file under the directory, a callable ``weights(dir)``, or None
        (the ``WEIGHTS`` line, or the callable's return value). ``tolerance``: the largest
        acceptable absolute difference of any weight (0: bit-exact). ``root``: the directory
        the job checkpoints into (default: a fresh ``run`` directory beside the fixture's
        root); anything in it before the run (a model to fine-tune) is the initial state.
        ``models``: "process" (kills, torn large writes) and/or "power-loss".
        ``max_states``: a cap on the crash states resumed, spread over the whole run.
        ``checkpoints``: glob patterns (relative paths or names) of the checkpoint files;
        other files do not make a save and do not count in "complete" (default: every file).
        ``timeout``: seconds per resume (default: 4x the reference run, at least 60).
        ``warm``: resume Python scripts by forking a process that imported their modules.
        ``repro_dir``: where failing states' repro folders go; ``shrink``: resumes spent on
        shrinking each one. ``check``: raise AssertionError when any state fails.
        """
        __tracebackhide__ = True
        start = time.perf_counter()
        bad = [m for m in models if m not in MODELS]
        if bad or not models:
            raise ValueError(f"models must be some of {MODELS}, not {list(models)!r}")
        if tolerance < 0 or tolerance != tolerance:
            raise ValueError(f"tolerance must be 0 or more, not {tolerance!r}")
        calls = len(self.reports) + 1
        default = os.path.join(
            self.root, "run" if calls == 1 else f"run-{calls}"
        )  # each call a fresh directory
        top = os.path.abspath(os.fspath(root)) if root is not None else default
        os.makedirs(top, exist_ok=True)
        training = Training.of(
            train, top, cwd=os.fspath(cwd) if cwd is not None else None, env=env, weights=weights, warm=warm
        )
        protocol = Protocol.of(step_pattern, resume_pattern)
        scratch = tempfile.mkdtemp(prefix="persistkit-resume-")
        try:
            run = ResumeRun(self, training, protocol, top, scratch, tolerance, list(models), max_states, tuple(checkpoints),
                       timeout, os.fspath(repro_dir) if repro_dir is not None else self.repro_dir, shrink, seed, tuple(allow_outside), tuple(volatile))  # fmt: skip
            report = run.go()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        report.seconds = time.perf_counter() - start
        self.reports.append(report)
        self.recorder.add_run("resume_points", states=report.states, violations=len(report.failures))
        if check and report.failures:
            raise AssertionError(report.message())
        return report


class ResumeRun:
    """One resume_points run (the state it needs between steps)."""

    def __init__(self, owner: ResumePoints, training: Training, protocol: Protocol, root: str, scratch: str,
                 tolerance: float, models: list[Model], max_states: int | None, checkpoints: tuple[str, ...],
                 timeout: float | None, repro_dir: str | None, shrink: int, seed: int,
                 allow_outside: tuple[str, ...], volatile: tuple[str, ...]) -> None:  # fmt: skip
        self.owner = owner
        self.training = training
        self.protocol = protocol
        self.root = root
        self.scratch = scratch
        self.output = os.path.join(scratch, "output")
        self.tolerance = tolerance
        self.models = models
        self.max_states = max_states
        self.checkpoints = checkpoints
        self.timeout = timeout
        self.repro_dir = repro_dir
        self.shrink = shrink
        self.seed = seed
        self.allow_outside = (
            *allow_outside,
            os.path.join(scratch, "*"),
            os.path.join(os.path.realpath(scratch), "*"),
            "/dev/shm/sem.*",  # noqa: S108 - POSIX semaphores (multiprocessing, joblib): not training state
        )
        self.volatile = volatile
        self.learned = False

    # -- 1. the reference run ----------------------------------------------------------------
    def observe(self, initial: Snapshot) -> tuple[_Reference, Any]:
        from persistkit.testing.isolate import run_isolated

        t0 = time.perf_counter()
        training = self.training
        if training.command is not None:
            run, obs = observe_command(
                training.traced_argv(self.output), self.root, cwd=training.cwd, env=training.env,
                timeout=self.timeout or 3600.0, volatile=self.volatile,
            )  # fmt: skip
            weights: Any = None
            ok = run.returncode == 0 and not run.timed_out
            if run.timed_out:
                outcome_text = f"did not finish within {self.timeout or 3600.0:g} s"
            elif run.signal is not None:
                outcome_text = f"was killed by {run.signal}"
            else:
                outcome_text = exit_text(run.returncode if run.returncode is not None else 1)
        else:
            result, error, obs = observe_save(
                lambda: run_isolated(lambda: run_job(training, self.output, False), timeout=self.timeout or 3600.0),
                self.root, "syscalls", volatile=self.volatile,
            )  # fmt: skip
            if error is not None:
                raise error
            ok = result.kind == "returned" and result.value["exit"] == 0
            outcome_text = result.describe() if result.kind != "returned" else exit_text(result.value["exit"])
            weights = result.value.get("weights") if ok else None
        seconds = time.perf_counter() - t0
        text = self._read_output()
        if not ok:
            obs.close()
            raise AssertionError(
                f"resume_points: the reference run of {training.describe()} {outcome_text} without any crash, so there "
                f"is nothing to resume. Its output ends:\n{_tail(text)}"
            )
        output = parse_output(text, self.protocol)
        markers = self._markers(obs.ops)
        return _Reference(output, weights, markers, seconds), obs

    def _read_output(self) -> str:
        try:
            with open(self.output, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _markers(self, ops: Sequence[Any]) -> list[tuple[int, int]]:
        """(position after it, step) of each STEP line, read off the writes to the output file."""
        names = {self.output, os.path.realpath(self.output)}
        buf = b""
        out: list[tuple[int, int]] = []
        for op in ops:
            if op.kind != "write" or op.path not in names:
                continue
            buf += op.data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                step = self.protocol.line_step(line.decode("utf-8", "replace"))
                if step is not None:
                    out.append((op.index + 1, step))
        return out

    # -- 2. the saves ------------------------------------------------------------------------
    def saves(self, model: FsModel, sim: CrashSimulator, markers: list[tuple[int, int]]) -> list[Save]:
        positions = [pos for pos, _ in markers]
        by_segment: dict[int, list[int]] = {}
        for pos, keep in enumerate(model.relevant):
            op = model.ops[pos]
            if not keep or not self._is_checkpoint(model, op):
                continue
            by_segment.setdefault(bisect.bisect_right(positions, pos), []).append(pos)
        saves: list[Save] = []
        for segment, where in sorted(by_segment.items()):
            start, end = where[0], where[-1] + 1
            step = markers[segment - 1][1] if segment else 0
            touched = set()
            for pos in where:
                op = model.ops[pos]
                for p in (op.path, op.dst):
                    if p and model.inside(p) and p != self.root:
                        touched.add(model.rel(p))
            contents = sim.materializer().contents(Plan(end))
            files = {
                rel: _digest(data) for rel, data in contents.items() if rel in touched and self._matches(rel)
            }
            saves.append(Save(len(saves) + 1, start, end, step, files))
        if not self.checkpoints:
            _keep_numbered(saves)
        return saves

    def _matches(self, rel: str) -> bool:
        if not self.checkpoints:
            return True
        return any(
            fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(os.path.basename(rel), pat)
            for pat in self.checkpoints
        )

    def _is_checkpoint(self, model: FsModel, op: Any) -> bool:
        if not self.checkpoints:
            return True
        paths = [p for p in (op.path, op.dst) if p and model.inside(p) and p != self.root]
        return any(self._matches(model.rel(p)) for p in paths)

    # -- 3. states and resumes ---------------------------------------------------------------
    def go(self) -> ResumeReport:
        initial = Snapshot.take(self.root)
        try:
            return self._go(initial)
        finally:
            initial.close()

    def _go(self, initial: Snapshot) -> ResumeReport:
        reference, obs = self.observe(initial)
        fs_model = FsModel(initial, obs.ops, volatile=obs.volatile)
        sim = CrashSimulator(initial, obs.ops, model=fs_model, seed=self.seed)
        try:
            fs_model.check_prefixes()
            check_explained("resume_points", obs, initial, scan(self.root), fs_model,
                            allow_outside=self.allow_outside)  # fmt: skip
            self.reference = reference
            self.reference_weights = self._reference_weights(reference)
            saves = self.saves(fs_model, sim, reference.markers)
            if not saves:
                raise NotJudgeable(
                    f"resume_points: no verdict, because the reference run of {self.training.describe()} wrote no "
                    f"checkpoint under {self.root}"
                    + (f" matching {list(self.checkpoints)}" if self.checkpoints else "")
                    + ": point {dir} (or root=) at the directory it checkpoints into."
                )
            report = ResumeReport(self.training.describe(), self.root, saves, operations=sum(fs_model.relevant),
                                  reference_steps=max(reference.output.steps, default=0),
                                  reference_seconds=reference.seconds)  # fmt: skip
            self.report = report
            self.sim = sim
            self.saves_ = saves
            self._resume_all(sim, saves, report)
        finally:
            sim.close()
            obs.close()
        return report

    def _reference_weights(self, ref: _Reference) -> Any:
        if self.training.weights is not None:
            from persistkit.testing.isolate import run_isolated
            from persistkit.testing.training import read_weights

            training = self.training
            got = run_isolated(lambda: read_weights(training, None), timeout=120.0)
            if got.kind != "returned":
                raise AssertionError(
                    f"resume_points: the final weights of the reference run cannot be read ({got.describe()}); "
                    f"weights={self.training.weights!r} must name a file under the directory or a callable that "
                    "reads them."
                )
            return got.value
        if ref.weights is not None:
            return ref.weights
        if ref.output.weights_line is not None:
            return ref.output.weights_line
        raise ValueError(
            f"resume_points: the reference run of {self.training.describe()} did not say what its final weights are: "
            "print 'WEIGHTS <digest>' at the end (persistkit.testing.training.report_weights), or pass weights= "
            "(a file under the directory such as 'final.pt', or a callable weights(dir))."
        )

    def _candidates(self, saves: list[Save]) -> list[tuple[Model, Any, int]]:
        windows = [(s.start, s.end) for s in saves]
        starts = [s.start for s in saves]
        out: list[tuple[Model, Any, int]] = []
        for model in self.models:
            for c in self.sim.candidates(model, within=windows):
                save = max(bisect.bisect_right(starts, c.plan.k) - 1, 0)
                out.append((model, c, save))
        out.sort(key=lambda t: (t[1].plan.k, MODELS.index(t[0])))
        return out

    def _resume_all(self, sim: CrashSimulator, saves: list[Save], report: ResumeReport) -> None:
        from persistkit.testing.isolate import Worker

        cands = self._candidates(saves)
        timeout = self.timeout or max(60.0, 4 * self.reference.seconds)
        warm = self.training.warm and (
            self.training.function is not None or self.training.python_script() is not None
        )
        if warm:
            self.training.fresh = fresh_interpreter(self.training)
            preload(self.training.preload())
        # the job (callables included) reaches the worker through the fork, never as a pickle
        job = functools.partial(run_job, self.training)

        def new_worker() -> Worker:
            self.training.threads = thread_settings()  # read here, before the fork, from this process
            return Worker(job, timeout=timeout)

        self.new_worker = new_worker
        self.worker = new_worker()
        self.limit = timeout
        self.warm_times: list[float] = []
        try:
            warm = self._control(sim, warm)
            report.warm = warm
            self.warm = warm
            seen: set[object] = set()
            # calibration: the state right after each save, resumed first (it tells the save's step)
            ends = {s.end: s for s in saves}
            first = [t for t in cands if t[0] == "process" and not t[1].losses and t[1].plan.k in ends]
            rest = []
            for t in cands:  # distinct states only, so that a cap counts states, not duplicates
                key = (sim.materializer().key(t[1].plan), self._committed(saves, t[1], t[0]))
                if key[0] is None or key in seen:
                    continue
                seen.add(key)
                if t not in first:
                    rest.append(t)
            report.candidates = len(first) + len(rest)
            seen.clear()
            budget = None if self.max_states is None else max(self.max_states - len(first), 0)
            if budget is not None and len(rest) > budget:
                report.sampled = True
                rest = [rest[i] for i in spread(len(rest), budget)] if budget else []
            for model, c, index in first + rest:
                key = (sim.materializer().key(c.plan), self._committed(saves, c, model))
                if key[0] is None or key in seen:
                    continue
                seen.add(key)
                result = self._judge(model, c, index, saves)
                report.results.append(result)
                if model == "process" and not c.losses and c.plan.k in ends:
                    save = ends[c.plan.k]
                    if result.verdict != HARD_FAIL and result.resumed_from is not None:
                        save.step = result.resumed_from
                        save.calibrated = True
            self._write_repros(report)
        finally:
            self.worker.close()

    def _control(self, sim: CrashSimulator, warm: bool) -> bool:
        """Resume from the directory as it was before the run: it must reproduce the reference."""
        sim.materialize(sim.initial())
        got, out = self._resume(warm)
        problem = self._divergence(got, out)
        if problem is None and warm and self.learned:
            # the first warm run taught the worker what to import: the warm start that every state will
            # get is the one to check
            sim.materialize(sim.initial())
            got, out = self._resume(warm)
            problem = self._divergence(got, out)
            if problem is not None:
                self.report.notes.append(
                    f"resumes forked from a process that had imported the job's modules did not reproduce the "
                    f"reference ({problem}): every state was resumed cold"
                )
        if problem is None:
            return warm
        if warm:
            sim.materialize(sim.initial())
            got, out = self._resume(False)
            if self._divergence(got, out) is None:
                return False
        raise TrainingNotReproducible(
            f"resume_points: a second run of {self.training.describe()} from the same directory does not reproduce "
            f"the first ({problem}), so a resume cannot be judged by its weights. Seed every random generator "
            "(torch.manual_seed, numpy, random, the environment), use deterministic algorithms, or pass "
            f"tolerance= for float noise. Its output ends:\n{out.tail()}"
        )

    def _resume(self, warm: bool) -> tuple[dict[str, Any], RunOutput]:
        limit = self.limit
        if warm and self.warm_times:  # a warm resume that takes 10x the slowest so far is stuck, not slow
            limit = min(limit, max(10.0, 10 * max(self.warm_times)))
        outcome = self.worker.run((self.output, warm), timeout=limit)
        text = self._read_output()
        out = parse_output(text, self.protocol)
        if outcome.kind != "returned":
            return {"error": outcome.describe(), "anomaly": True}, out
        value: dict[str, Any] = outcome.value
        if value["exit"] < 0:
            value["anomaly"] = True  # killed by a signal: confirmed by another run before it is a verdict
        elif warm and self.learned:
            self.warm_times.append(outcome.seconds)
        if warm and value.get("modules") and not self.learned:
            # import what the job imported here, then fork a new worker: every later resume starts
            # warm (imports in this process, not in the worker's runner, whose threads would retire it)
            self.learned = True
            preload(value["modules"])
            self.worker.close()
            self.worker = self.new_worker()
        if value["exit"] != 0:
            return {"error": exit_text(value["exit"]), "anomaly": value.get("anomaly", False)}, out
        return value, out

    def _divergence(self, got: dict[str, Any], out: RunOutput) -> str | None:
        """None when the resume ended with the reference's weights, else why it did not (or could not)."""
        if "error" in got:
            return f"it {got['error']}"
        if "weights_error" in got:
            return f"its final weights cannot be read: {got['weights_error']}"
        weights = got.get("weights")
        if weights is None and self.training.weights is None:
            weights = out.weights_line
            if weights is None:
                return "it printed no WEIGHTS line"
        problem, self._last_diff = weights_difference(self.reference_weights, weights, self.tolerance)
        return problem

    # -- judging one state -------------------------------------------------------------------
    def _committed(self, saves: list[Save], c: Any, model: str) -> int:
        """The step of the newest save that had returned when the crash came (0: none)."""
        torn = model == "process" and any(loss.how == "torn" for loss in c.losses)
        issued = c.plan.k + (0.5 if torn else 0.0)
        done = [s.step for s in saves if s.end < issued]
        return max(done, default=0)

    def _newest_complete(self, saves: list[Save]) -> int:
        cache: dict[str, str | None] = {}
        best = 0
        for s in saves:
            if not s.files:
                continue
            ok = True
            for rel, digest in s.files.items():
                if rel not in cache:
                    cache[rel] = _file_digest(os.path.join(self.root, rel))
                if cache[rel] != digest:
                    ok = False
                    break
            if ok:
                best = max(best, s.step)
        return best

    def _judge(self, model: Model, c: Any, index: int, saves: list[Save]) -> StateResult:
        t0 = time.perf_counter()
        self.sim.materialize(c.plan)
        newest = self._newest_complete(saves)
        committed = self._committed(saves, c, model)
        got, out = self._resume(self.warm)
        if self.warm and got.get("anomaly"):
            self._last_anomaly = got
            got, out = self._confirm(c)
        return self._verdict(model, c, index, got, out, newest, committed, time.perf_counter() - t0)

    def _confirm(self, c: Any) -> tuple[dict[str, Any], RunOutput]:
        """A warm resume hung or died by a signal (a fork can inherit a lock some thread of this process
        held): the state is resumed again, cold. If only the warm run failed, the rest of the run is
        cold; either way the verdict is the cold run's."""
        got: dict[str, Any] = dict(self._last_anomaly)
        self.sim.materialize(c.plan)
        cold, cold_out = self._resume(False)
        if not cold.get("anomaly"):
            self.warm = self.report.warm = False
            self.report.notes.append(
                f"a warm resume of '{self._where(c)}' failed ({got['error']}) where "
                "a cold one did not: every later state was resumed cold"
            )
        return cold, cold_out

    def _verdict(self, model: Model, c: Any, index: int, got: dict[str, Any], out: RunOutput, newest: int,
                 committed: int, seconds: float) -> StateResult:  # fmt: skip
        save = self.saves_[index] if self.saves_ else None
        where = save.describe() if save else "the run"
        losses = tuple(c.losses)
        hint = fix_hint(losses, self.sim.ops, root=self.root, model=model) if losses else ""
        started = out.started_at
        if started is None and not out.steps:
            started = self.report.reference_steps if "error" not in got else None
        self._last_diff = None
        diverged = self._divergence(got, out)
        if "error" in got or "weights_error" in got or (diverged and diverged.startswith("it printed no")):
            verdict = HARD_FAIL
            detail = f"the resume {diverged[3:] if diverged and diverged.startswith('it ') else diverged}"
            last = next((ln.strip() for ln in reversed(out.text.splitlines()) if ln.strip()), "")
            if last and "error" in got:
                detail += f": {last[:300]}"
            fix = (
                f"the directory a crash during {where} leaves cannot be resumed: make each checkpoint appear "
                "all at once (write a temp file, fsync it, os.replace() it in, fsync the directory), publish any "
                "'latest' marker after the data, and have the resume skip a checkpoint that does not load"
                + (f". Here: {hint}" if hint else "")
            )
        elif diverged:
            verdict = SILENT_DIVERGENCE
            detail = f"the resume (from step {started}) finished without an error, but {diverged}"
            fix = (
                "the resume loaded a checkpoint that is not one the run saved (a torn or mixed file) without noticing: "
                "verify a checksum when loading, and publish checkpoints with an atomic, synced rename"
                + (f". Here: {hint}" if hint else "")
            )
        elif started is not None and started < newest:
            verdict = LOST_WORK
            detail = (
                f"the resume started from step {started}, but the checkpoint of step {newest} was complete in this "
                f"state: {newest - started} steps redone"
            )
            fix = (
                "resume from the newest complete checkpoint: pick it by what is on disk (the newest one that loads), "
                "not by a marker or an index that may lag behind the data"
            )
        elif (started is not None and started < committed) or out.repeated:
            verdict = DUPLICATED_WORK
            if out.repeated:
                detail = f"the resume counted steps {out.repeated[:6]} twice"
            else:
                detail = (
                    f"the run had saved the checkpoint of step {committed} before the crash, but the resume started "
                    f"from step {started}: steps {started + 1 if started is not None else 0}-{committed} ran twice"
                )
            if hint:
                fix = (
                    f"the checkpoint of step {committed} had been saved but did not survive the power loss: make "
                    "each save durable before training goes on (write a temp file, fsync it, os.replace() it in, "
                    f"fsync the directory). Here: {hint}"
                )
            else:
                fix = (
                    "a later save destroyed the checkpoint the run had already saved: never write over the only "
                    "checkpoint in place; write the new one beside it and swap with os.replace()"
                )
        else:
            verdict = PASS
            detail = f"resumed from step {started}, same final weights"
            fix = ""
        return StateResult(
            model, self._where(c), losses, index + 1, verdict, detail, fix, started, newest, committed,
            self._last_diff, seconds, out.tail() if verdict != PASS else "", plan=c.plan,
        )  # fmt: skip

    def _where(self, c: Any) -> str:
        """The state's description, with a crash point named by the run's last file operation under the
        directory (not by the next progress line the job printed)."""
        text = _rel(c.summary, self.root)
        model = self.sim.model
        k = c.plan.k
        if text.startswith("power loss before ") and k < len(model.ops) and not model.relevant[k]:
            old = "power loss before " + _rel(model.ops[k].describe(), self.root)
            last = next((p for p in range(k - 1, -1, -1) if model.relevant[p]), None)
            if text.startswith(old) and last is not None:
                text = "power loss after " + _rel(model.ops[last].describe(), self.root) + text[len(old) :]
        return text

    # -- 4. repro folders --------------------------------------------------------------------
    def _write_repros(self, report: ResumeReport) -> None:
        if not report.failures or self.repro_dir is None:
            return
        from persistkit.testing.resume_repro import write_repro

        firsts: dict[str, StateResult] = {}
        for r in sorted(report.failures, key=lambda r: (len(r.losses), r.seconds)):
            firsts.setdefault(r.verdict, r)
        for verdict in FAILURES:
            first = firsts.get(verdict)
            if first is not None:
                r = first
                r.repro = write_repro(
                    self, r, os.path.join(self.repro_dir, f"{verdict.lower()}-save{r.save}")
                )
                report.repros.append(r.repro)

    def rerun(self, result: StateResult, drop: Sequence[str]) -> str:
        """The verdict of ``result``'s state with the files ``drop`` removed (for shrinking)."""
        assert result.plan is not None
        self.sim.materialize(result.plan)
        for rel in drop:
            full = os.path.join(self.root, rel)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(full)
        newest = self._newest_complete(self.saves_)
        got, out = self._resume(self.warm)
        fake = _Cand(result.plan, result.losses, result.description)
        again = self._verdict(result.model, fake, result.save - 1, got, out, newest, result.committed, 0.0)  # type: ignore[arg-type]
        return again.verdict


@dataclass
class _Cand:
    plan: Plan
    losses: tuple[Loss, ...]
    summary: str


def _keep_numbered(saves: list[Save]) -> None:
    """Where a save left files named by a number no other save wrote (``ckpt-10.pt``,
    ``epoch=0-step=10.ckpt``, ``checkpoint-10/``), those are its checkpoint; files every save
    rewrites (a ``latest`` marker, a log) then do not decide whether it is complete. A save that
    left no such file (one ``ckpt.pt`` rewritten each time) keeps all its files."""
    owners = Counter(rel for s in saves for rel in s.files)
    for s in saves:
        numbered = {rel: d for rel, d in s.files.items() if owners[rel] == 1 and _NUMBER.search(rel)}
        if numbered:
            s.files = numbered


_NUMBER = re.compile(r"\d+")


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
