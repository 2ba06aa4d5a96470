"""Who calls the user's ``load()`` on each crash state, and how its answer is classified.

Every fixture that judges states (``crash_points`` and its ``.subprocess``
form) reads them through a ``StateReader``:

``IsolatedReader`` (the default)
    A worker process (``persistkit.testing.isolate.Worker``) is forked *before
    the save runs* and calls ``load()`` for every state. What it read is
    compared with the state before and after the save inside the worker, and
    only the verdict comes back. So a loader that segfaults, aborts, raises
    SIGBUS or never returns on a damaged state becomes a verdict naming the
    signal or the timeout (enforced from outside), never the end of the test
    session; and nothing the save did to the test process's memory (a cache it
    updated) can make a state look right. A cache built inside the worker is
    caught too: a mutable value returned again as the very same object by a
    later load of a different state is reported, never judged.
``InProcessReader`` (``isolate=False``)
    ``load()`` runs in the test process, as before persistkit 0.2: for code that
    cannot run in a forked child (a CUDA context, a mock patched at test time).

Both run two probes before the first state: the directory as it was before the
save must load the old value (else the load is not reading the directory), and
when the old and new values are equal, an empty directory must not load them
too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from persistkit.testing.judge import UNSET, Outcome, Verdict, outcome
from persistkit.testing.observe import NotJudgeable

__all__ = ["InProcessReader", "IsolatedReader", "StateReader"]

_PROBE_INITIAL = (
    "crash_points: no verdict, because load() returned the new state from the directory as it was before the "
    "save: it does not read what the save wrote (an in-process cache? a path outside root?), so no crash "
    "state can be judged by it."
)
_PROBE_EMPTY = (
    "crash_points: no verdict, because load() returned the same value before the save, after it, and from an "
    "empty directory: it does not read the directory (an in-process cache? a path outside root?), so no "
    "crash state can be judged by it."
)
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset, range)


class StateReader(Protocol):
    def expect_before(self) -> Outcome: ...
    def expect_after(self) -> Outcome: ...
    def probe(self, which: str) -> None: ...
    def read(self, complete: bool, relearn: Callable[[], None]) -> Verdict: ...
    def close(self) -> None: ...

    load_seconds: float


def classify(got: Outcome, before: Outcome, after: Outcome, complete: bool) -> Verdict:
    """ "new" if ``got`` is the state after the save, "old" the one before (only while it ran), else "bad"."""
    if got.same_as(after):
        return Verdict("new", got)
    if not complete and got.same_as(before):
        return Verdict("old", got)
    if complete:
        detail = got.difference(after, "vs the state after the save")
    else:
        detail = (
            got.difference(before, "vs the state before the save")
            + "\n    "
            + got.difference(after, "vs the state after the save")
        )
    return Verdict("bad", got, detail)


class _Judge:
    """The reading logic both readers share; in the isolated reader it lives in the worker."""

    def __init__(
        self,
        load: Callable[[], Any],
        given_before: Any,
        given_after: Any,
        accept: Callable[[Any], bool] | None = None,
    ) -> None:
        self.load = load
        self.accept = accept
        self.given_before, self.given_after = given_before, given_after
        self.before: Outcome | None = None
        self.after: Outcome | None = None
        self.last: Any = (
            None  # the mutable value the previous load returned (kept alive for the identity check)
        )
        self.load_seconds = 0.0

    def _load(self) -> Outcome:
        start = time.perf_counter()
        try:
            return outcome(self.load)
        finally:
            self.load_seconds += time.perf_counter() - start

    def expect_before(self) -> Outcome:
        self.before = self._load() if self.given_before is None else Outcome(value=self.given_before)
        return self.before

    def expect_after(self) -> Outcome:
        self.after = self._load() if self.given_after is UNSET else Outcome(value=self.given_after)
        return self.after

    def probe(self, which: str) -> str | None:
        """None when the probe passed, else why no verdict can be given."""
        assert self.before is not None and self.after is not None
        got = self._load()
        if which == "initial" and got.same_as(self.after) and not self.before.same_as(self.after):
            return _PROBE_INITIAL
        if (
            which == "empty"
            and got.error is None
            and got.same_as(self.after)
            and self.before.same_as(self.after)
        ):
            return _PROBE_EMPTY
        return None

    def check(self) -> tuple[bool, str]:
        """Load, and ask ``accept`` (disk_faults' ``after_retry``) whether the value is acceptable."""
        got = self._load()
        ok = got.error is None and self.accept is not None and bool(self.accept(got.value))
        return ok, got.describe()

    def read(self, complete: bool) -> tuple[str, str, str, str | None, float]:
        """(kind, what load() did, detail, cached, seconds load() took) for the state in the root now.

        kind "forgot": this process is a fresh worker (the last one died) that has not
        learned the states before and after the save yet.
        """
        if self.before is None or self.after is None:
            return "forgot", "", "", None, 0.0
        start = self.load_seconds
        got = self._load()
        took = self.load_seconds - start
        cached = None
        value = got.value
        if got.error is None and not isinstance(value, _IMMUTABLE):
            if value is self.last:
                cached = (
                    "load() returned the very same object as for the previous crash state (a cache inside the "
                    f"loader: {type(value).__name__} at {id(value):#x}), so it did not read this state"
                )
            self.last = value
        verdict = classify(got, self.before, self.after, complete)
        if verdict.kind != "bad":
            return verdict.kind, "", "", cached, took  # the state before or after: nothing to describe
        return verdict.kind, got.describe(), verdict.detail, cached, took


class InProcessReader:
    """``load()`` in the test process (``isolate=False``)."""

    def __init__(self, load: Callable[[], Any], before: Any, after: Any) -> None:
        self.judge = _Judge(load, before, after)
        self.load_seconds = 0.0  # spent in load() on crash states

    def expect_before(self) -> Outcome:
        return self.judge.expect_before()

    def expect_after(self) -> Outcome:
        return self.judge.expect_after()

    def probe(self, which: str) -> None:
        problem = self.judge.probe(which)
        if problem:
            raise NotJudgeable(problem)

    def read(self, complete: bool, relearn: Callable[[], None]) -> Verdict:
        kind, text, detail, cached, took = self.judge.read(complete)
        self.load_seconds += took
        if cached:
            raise NotJudgeable(f"crash_points: no verdict, because {cached}.")
        return Verdict(kind, Outcome(text=text), detail)

    def close(self) -> None:
        return None


@dataclass
class _Expected:
    text: str
    error: bool


class IsolatedReader:
    """``load()`` in a worker process forked before the save (see the module doc).

    ``timeout``: seconds one load may take (None: ten times the slowest of the
    before/after loads, at least 10 s), enforced by killing the worker.
    """

    def __init__(
        self,
        load: Callable[[], Any],
        before: Any,
        after: Any,
        *,
        timeout: float | None = None,
        fixture: str = "crash_points",
        check: Callable[[Any], bool] | None = None,
    ) -> None:
        from persistkit.testing.isolate import Worker

        judge = _Judge(load, before, after, check)
        self.fixture = fixture

        def serve(method: str, *args: Any) -> Any:
            if method == "read":
                return judge.read(*args)
            if method == "probe":
                return judge.probe(*args)
            if method == "check":
                return judge.check()
            got = judge.expect_before() if method == "before" else judge.expect_after()
            return (got.describe(), got.error is not None, judge.load_seconds)

        self.worker = Worker(serve, timeout=timeout or 600.0)
        self.fixed_timeout = timeout
        self.timeout = timeout or 600.0
        self.before: _Expected | None = None
        self.after: _Expected | None = None
        self.restarts = 0
        self._rebuild: Callable[[], None] | None = None
        self.load_seconds = 0.0  # spent in load() on crash states, measured in the worker

    def _call(self, *args: Any) -> Any:
        from persistkit.testing.isolate import Outcome as Isolated

        result: Isolated = self.worker.run(args, timeout=self.timeout)
        if result.kind == "returned":
            return result.value
        raise _WorkerEnded(result)

    def _expect(self, which: str) -> Outcome:
        try:
            text, error, seconds = self._call(which)
        except _WorkerEnded as ended:
            return Outcome(text=_ended(ended.result, which), error=_LoaderDied(ended.result.describe()))
        if self.fixed_timeout is None:
            self.timeout = max(10.0, 10 * seconds)
        expected = _Expected(text, error)
        if which == "before":
            self.before = expected
        else:
            self.after = expected
        return Outcome(text=text, error=_Described(text) if error else None)

    def expect_before(self) -> Outcome:
        return self._expect("before")

    def expect_after(self) -> Outcome:
        return self._expect("after")

    def before_text(self) -> str:
        return self.before.text if self.before is not None else "unknown"

    def after_text(self) -> str:
        return self.after.text if self.after is not None else "unknown"

    def check(self) -> tuple[bool, str]:
        """Load the root now and apply the ``check`` predicate: (accepted, what load() did)."""
        try:
            ok, text = self._call("check")
        except _WorkerEnded as ended:
            return False, _ended(ended.result, "the load")
        return bool(ok), str(text)

    def probe(self, which: str) -> None:
        try:
            problem = self._call("probe", which)
        except _WorkerEnded as ended:
            raise NotJudgeable(
                f"{self.fixture}: no verdict, because load() {_ended(ended.result, 'a probe')} on the "
                f"{which} directory"
            ) from None
        if problem:
            raise NotJudgeable(problem)

    def read(self, complete: bool, relearn: Callable[[], None]) -> Verdict:
        """Load the state in the root now. ``relearn()`` rebuilds the states before and after the save,
        tells a fresh worker what they load, and rebuilds the state being read (after a worker died)."""
        for _ in range(2):
            try:
                kind, text, detail, cached, took = self._call("read", complete)
                self.load_seconds += took
            except _WorkerEnded as ended:
                self.restarts += 1
                return Verdict("bad", Outcome(text=_ended(ended.result, "the load")), ended.result.describe())
            if kind != "forgot":
                break
            relearn()
        else:
            raise NotJudgeable(
                f"{self.fixture}: no verdict, because the worker process that loads states kept dying"
            )
        if cached:
            raise NotJudgeable(f"{self.fixture}: no verdict, because {cached}.")
        return Verdict(kind, Outcome(text=text), detail)

    def close(self) -> None:
        self.worker.close()


class _WorkerEnded(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__(result.describe())
        self.result = result


class _Described(Exception):
    """An exception raised in the worker, known by its description."""


class _LoaderDied(Exception):
    """load() killed its process, or ran past its timeout."""


def _ended(result: Any, what: str) -> str:
    if result.kind == "killed":
        return f"was killed by {result.signal} ({what} crashed the process)"
    if result.kind == "timeout":
        return f"did not return within {result.timeout:.0f} s and was killed ({what} hung)"
    if result.kind == "exited":
        return f"ended the process with exit status {result.exit_status}"
    return f"ended as {result.kind}"
