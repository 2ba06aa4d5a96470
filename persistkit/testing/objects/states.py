"""Crash states of a bucket, judged by the same loop as files (``persistkit.testing.judge``).

The crash model for object stores: a crash leaves the objects that were there
before plus any prefix of the completed PUTs and DELETEs; an upload that never
completed is invisible. ``object_crash_states(initial, log)`` yields those
states; ``object_crash_points(save, check, url=...)`` records ``save()``
against the real store, checks the recording explains the bucket it left, then
runs ``check()`` in every crash state (served from memory) and fails naming the
first bad state, the operation that made it, and a "Fix:" line. Observing no
operation is an error (``NotJudgeable``), never a pass.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from persistkit.testing.judge import Outcome, Report, Verdict, choose, fix_hint, judge_states, judged
from persistkit.testing.objects.log import DELETE, ObjectLog, ObjectOp, record_objects
from persistkit.testing.objects.memory import ObjectSpace, serve_objects, snapshot_objects
from persistkit.testing.observe import NotJudgeable
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["ObjectCrashReport", "ObjectCrashState", "object_crash_points", "object_crash_states"]

# One report type for every storage: this is the bucket's view of it (``model="object-store"``).
ObjectCrashReport = Report


@dataclass(frozen=True)
class ObjectCrashState:
    """The bucket a crash can leave: the initial objects plus the first ``applied`` completed mutations."""

    applied: int
    objects: Mapping[str, bytes]
    last: ObjectOp | None  # the last mutation applied (None: nothing yet)
    next: ObjectOp | None  # the first mutation not applied (None: the save's end state)

    def describe(self) -> str:
        after = "before any PUT or DELETE" if self.last is None else f"after {self.last.describe()}"
        pending = f", before {self.next.describe()}" if self.next is not None else " (the end state)"
        return f"state {self.applied}: {after}{pending}"

    def serve(self) -> contextlib.AbstractContextManager[ObjectSpace]:
        """Serve this state to every object store created inside the block (see ``serve_objects``)."""
        return serve_objects(dict(self.objects))


def object_crash_states(
    initial: Mapping[str, bytes], log: ObjectLog | Sequence[ObjectOp]
) -> Iterator[ObjectCrashState]:
    """Every crash state of the recorded operations: ``initial`` + each prefix of the completed mutations.

    Reads, create-only PUTs that found the name taken and swaps that lost
    their race changed nothing and add no state. Uploads that raised were
    never logged: they are invisible.
    """
    mutations = [op for op in (log.ops if isinstance(log, ObjectLog) else log) if op.mutation]
    objects = dict(initial)
    yield ObjectCrashState(0, dict(objects), None, mutations[0] if mutations else None)
    for i, op in enumerate(mutations):
        if op.kind == DELETE:
            objects.pop(op.url, None)
        else:
            assert op.data is not None
            objects[op.url] = op.data
        following = mutations[i + 1] if i + 1 < len(mutations) else None
        yield ObjectCrashState(i + 1, dict(objects), op, following)


def _within(url: str, objects: Mapping[str, bytes]) -> dict[str, bytes]:
    base = url.rstrip("/") + "/"
    return {k: v for k, v in objects.items() if k.startswith(base)}


def object_crash_points(
    save: Callable[[], Any],
    check: Callable[[], Any],
    *,
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    max_states: int | None = None,
    recorder: Recorder = RECORDER,
) -> Report:
    """Run ``save()`` against the store at ``url`` recording it, then ``check()`` in every crash state.

    Crash states follow the object-store model (see the module docstring);
    each one is served from memory to every store created inside ``check()``,
    which raises (an AssertionError, a persistkit error...) when the state is
    unacceptable. Stores must be created inside ``save()`` and ``check()``: a
    store made before is not routed through the hook. ``max_states`` samples
    evenly, always keeping the first and the last.

    Raises ``NotJudgeable`` when nothing was observed or the recording does not
    explain what the bucket holds after the save (never a pass), and
    AssertionError naming the first violating state, the operation log and a
    "Fix:" line.
    """
    __tracebackhide__ = True
    start = time.perf_counter()
    initial = snapshot_objects(url, storage_options=storage_options)
    with record_objects() as log:
        save()
    ops = log.ops
    if not ops:
        raise NotJudgeable(
            f"object_crash_points observed no object-store operation during save() under {url}: no verdict. "
            "Fix: make save() write through persistkit (ModelStore('s3://...'), remote_store()) and create the "
            "store inside save(); a store created before is not routed through the recording hook."
        )
    mutations = [op for op in ops if op.mutation]
    if not mutations:
        raise NotJudgeable(
            f"object_crash_points observed {len(ops)} read(s) and no completed PUT or DELETE during save() under "
            f"{url}: there is no crash state to check, so no verdict. Fix: check that save() really saves (and "
            "through persistkit's object-store layer)."
        )
    states = list(object_crash_states(initial, ops))
    actual = snapshot_objects(url, storage_options=storage_options)
    replayed = _within(url, states[-1].objects)
    if actual != replayed:
        unexplained = sorted(set(actual) ^ set(replayed)) or sorted(
            k for k in actual if actual[k] != replayed.get(k)
        )
        raise NotJudgeable(
            f"object_crash_points: the recorded operations do not explain what {url} holds after save() "
            f"(first difference: {unexplained[0]}): something wrote there without going through persistkit's "
            "object-store layer, or a store was created before the recording started. No verdict. "
            f"Operations seen: {len(ops)}."
        )
    chosen = choose(len(states), max_states)
    report = Report(
        "object-store",
        0,
        [op.describe() for op in ops],
        url=url,
        mutations=len(mutations),
        sampled=len(chosen) < len(states),
        candidates=len(states),
    )

    def trial(state: ObjectCrashState) -> Verdict:
        with state.serve():
            try:
                check()
            except Exception as err:
                got = Outcome(error=err)
                return Verdict("bad", got, f"check() {got.describe()}")
        return Verdict("new", Outcome(value=None))

    judge_states(
        (
            judged(
                states[i],
                states[i].describe(),
                states[i].next is None,
                (states[i].last,) if states[i].last else (),
            )
            for i in chosen
        ),
        trial,
        report,
        label="object_crash_points",
        total=len(chosen),
    )
    report.seconds = time.perf_counter() - start
    recorder.add_run("object_crash_points", states=report.states, violations=len(report.violations))
    if report.violations:
        first = report.violations[0]
        log_lines = "\n".join(f"  {line}" for line in report.operations[:60])
        raise AssertionError(
            f"object_crash_points: {report.summary()}.\n"
            f"First violating crash state: {first.description}: check() {first.got.describe()}\n"
            f"Fix: {fix_hint(first.losses, model='object-store')}\n"
            f"Operations recorded during save():\n{log_lines}"
        )
    return report
