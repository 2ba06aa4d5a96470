"""The last stage of the pipeline: judge crash states, one verdict loop for files and buckets.

observe -> operation log -> crash states -> **judge**. Whatever the storage,
a crash state is built, the code under test reads it, and what it read is
classified: the state before the save ("old"), the state after it ("new"), or
neither (a ``Violation``). After ``save()`` returned only "new" is acceptable.

Everything that makes a verdict lives here: ``Outcome`` (what one read did),
``Violation`` (carrying the operations whose loss made its state, so that the
``Fix:`` line is read off data, not off message text), ``Report`` (one type,
with a ``model`` field: "process", "power-loss" or "object-store"),
``choose`` (spread a sample over the whole save) and ``judge_states`` (the
loop, with a progress line for long runs).
"""

from __future__ import annotations

import functools
import marshal
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from persistkit.testing.compare import first_difference

__all__ = [
    "UNSET",
    "Outcome",
    "Report",
    "Verdict",
    "Violation",
    "choose",
    "fix_hint",
    "judge_states",
    "left_running",
    "outcome",
]

S = TypeVar("S")


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Outcome:
    """What one ``load()`` call did: returned ``value``, or raised ``error``.

    An outcome produced in another process carries ``text`` (its description)
    instead of the value itself.
    """

    value: Any = None
    error: BaseException | None = None
    text: str | None = None

    def describe(self) -> str:
        if self.text is not None:
            return self.text
        if self.error is not None:
            return f"raised {type(self.error).__name__}: {str(self.error)[:300]}"
        text = repr(self.value)
        return f"returned {text if len(text) <= 200 else text[:197] + '...'}"

    @functools.cached_property
    def _marshalled(self) -> bytes | None:
        """The value as marshal bytes (format 2: no back-references), or None when it is not plain data."""
        if self.error is not None or self.text is not None:
            return None
        try:
            return marshal.dumps(self.value, 2)
        except (ValueError, TypeError):
            return None

    def same_as(self, other: Outcome) -> bool:
        if (self.error is None) != (other.error is None):
            return False
        if self.error is not None and other.error is not None:
            return type(self.error) is type(other.error)
        mine, theirs = self._marshalled, other._marshalled
        if mine is not None and mine == theirs:
            return True  # identical plain data, compared in C (a large JSON-like value costs ~1 ms)
        fast = plain_same(other.value, self.value)
        if fast is not None:
            return fast
        return first_difference(other.value, self.value) is None

    def difference(self, expected: Outcome, label: str) -> str:
        if expected.error is not None or self.error is not None:
            return f"{label}: expected load() to have {expected.describe()}, it {self.describe()}"
        return first_difference(expected.value, self.value, f"{label}: load()") or f"{label}: equal"


_PLAIN_SCALARS = (str, bytes, int, bool, type(None))


def plain_same(a: Any, b: Any) -> bool | None:
    """Equality of plain data (dicts, lists, tuples, str, bytes, numbers, None) in one tight loop.

    The same verdict as ``persistkit.testing.compare`` for those types (types must match, NaN
    equals NaN, -0.0 differs from 0.0, mapping order does not count), but far cheaper on the
    large JSON-like values a load returns: a crash-state run compares every state's value. None:
    something is not plain data, and the full comparator must decide.
    """
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        tx = type(x)
        if tx is dict:
            if type(y) is not dict or len(x) != len(y):
                return _plain_mismatch(x, y)
            pairs: Iterable[tuple[Any, Any]] = ((v, y[k]) if k in y else (v, _MISSING) for k, v in x.items())
        elif tx is list or tx is tuple:
            if type(y) is not tx or len(x) != len(y):
                return _plain_mismatch(x, y)
            pairs = zip(x, y, strict=True)
        else:
            pairs = ((x, y),)
        for v, w in pairs:
            if v is w:
                continue
            tv = type(v)
            if tv is not type(w):
                return _plain_mismatch(v, w)
            if tv in _PLAIN_SCALARS:
                if v != w:
                    return False
            elif tv is float:
                if v != w and not (v != v and w != w):
                    return False
                if v == 0.0 and math.copysign(1.0, v) != math.copysign(1.0, w):
                    return False
            elif tv is dict or tv is list or tv is tuple:
                stack.append((v, w))
            else:
                return None
    return True


_MISSING = object()


def _plain_mismatch(x: Any, y: Any) -> bool | None:
    """Different types or shapes: a difference if both sides are plain data, else undecided."""
    if y is _MISSING:
        return False
    return False if type(x) in _PLAIN_TYPES and type(y) in _PLAIN_TYPES else None


_PLAIN_TYPES = frozenset({str, bytes, int, bool, type(None), float, dict, list, tuple})


def outcome(load: Callable[[], Any]) -> Outcome:
    """Call ``load`` and capture its value or exception."""
    try:
        return Outcome(value=load())
    except Exception as err:
        return Outcome(error=err)


@dataclass(frozen=True)
class Verdict:
    """How one crash state was read: ``kind`` is "old", "new" or "bad"."""

    kind: str
    got: Outcome
    detail: str = ""


@dataclass
class Violation:
    """A crash state whose read was neither acceptable state.

    ``losses``: what the state lost, first the loss that defines it (typed:
    ``persistkit.testing.fs.states.Loss`` or an object-store operation).
    """

    description: str
    complete: bool
    got: Outcome
    detail: str
    losses: tuple[Any, ...] = ()
    state: Any = None

    def describe(self) -> str:
        return f"{self.description}: load() {self.got.describe()}"


@dataclass
class Report:
    """What one run explored. ``violations`` is empty when the save passed."""

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
    candidates: int = 0
    seed: int = 0
    url: str = ""
    mutations: int = 0
    per_op: Counter[str] = field(default_factory=Counter)
    per_class: Counter[str] = field(default_factory=Counter)
    load_seconds: float = 0.0  # spent in load() on the crash states (the floor of any verifier's cost)
    bytes_materialized: int = 0  # bytes written to build the crash states

    def summary(self) -> str:
        if self.model == "object-store":
            return (
                f"{self.states} crash states (object store) of a save with {self.mutations} completed PUTs/DELETEs "
                f"and {len(self.operations) - self.mutations} other requests under {self.url}"
                f"{', sampled' if self.sampled else ''}: {len(self.violations)} violations"
            )
        skipped = f", {self.infeasible} infeasible combinations skipped" if self.infeasible else ""
        return (
            f"{self.states} crash states ({self.model}) of a {len(self.operations)}-operation save "
            f"(observed by {self.observer}{skipped}{', sampled' if self.sampled else ''}): "
            f"{self.old_states} load the old state, {self.new_states} the new, {len(self.violations)} violations"
        )

    def coverage(self) -> str:
        """What was explored (per operation and per page class) and what was not, with the seed."""
        lines = [f"explored {self.states} of {self.candidates} candidate states (seed {self.seed})"]
        if self.per_class:
            lines.append("by page class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())))
        if self.per_op:
            top = self.per_op.most_common(12)
            lines.append("by operation: " + "; ".join(f"{k}: {v}" for k, v in top))
        if self.sampled:
            lines.append(
                "not explored: the candidates between the sampled ones (max_states), and every other combination "
                "of unsynced pages and directory operations beyond the ones chosen (see persistkit.testing.fs.states)"
            )
        else:
            lines.append(
                "not explored: combinations of unsynced pages and directory operations beyond the chosen ones "
                "(see persistkit.testing.fs.states for the choice)"
            )
        return "\n".join(lines)


def choose(n: int, limit: int | None) -> list[int]:
    """Indexes of ``limit`` items spread evenly over ``n`` (first and last kept), or all of them."""
    if limit is None or n <= limit:
        return list(range(n))
    if limit < 2:
        return [n - 1]
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


class _Progress:
    """A one-line counter on the terminal (not in captured output) for runs longer than 2 s."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
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
        self.stream.write(f"\r  {self.label}: {states}{of} states loaded, {violations} violations ")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


@dataclass
class _Judged(Generic[S]):
    state: S
    description: str
    complete: bool
    losses: tuple[Any, ...]


def judge_states(
    states: Iterable[_Judged[S]],
    trial: Callable[[S], Verdict],
    report: Report,
    *,
    label: str,
    total: int | None = None,
) -> None:
    """The verdict loop: run ``trial`` on every state and count what it read into ``report``."""
    progress = _Progress(label, total)
    try:
        for item in states:
            report.states += 1
            progress.tick(report.states, len(report.violations))
            verdict = trial(item.state)
            if verdict.kind == "new":
                report.new_states += 1
            elif verdict.kind == "old":
                report.old_states += 1
            else:
                report.violations.append(
                    Violation(
                        item.description, item.complete, verdict.got, verdict.detail, item.losses, item.state
                    )
                )
    finally:
        progress.done()


def judged(state: S, description: str, complete: bool, losses: Sequence[Any] = ()) -> _Judged[S]:
    return _Judged(state, description, complete, tuple(losses))


def left_running(fixture: str, cmd: Sequence[str], names: Sequence[str]) -> str:
    """A program returned while processes it started were still running: its save was not done."""
    return (
        f"{fixture}: {list(cmd)} returned while processes it started were still running "
        f"({', '.join(names[:4])}; they were killed then). The save is complete when the command "
        "returns: if they were still saving, the state was not yet the new one (wait for them before exiting)."
    )


# -- Fix: lines, read off the typed losses -----------------------------------------------------


def _rel(text: str, root: str) -> str:
    return text.replace(root + os.sep, "").replace(root, ".") if root else text


def _reverted_hint(op: Any, root: str) -> str:
    from persistkit.testing.fs.ops import OpKind

    path, dst = _rel(op.path, root), _rel(op.dst or "", root)
    if op.kind == OpKind.REPLACE:
        return f"fsync the directory holding {dst} after os.replace(): until then a power loss can undo the rename"
    if op.kind == OpKind.UNLINK:
        return (
            f"fsync the directory after deleting {path}: until then a power loss can bring it back "
            "(for SQLite's rollback journal: PRAGMA synchronous=EXTRA)"
        )
    return f"fsync the directory after the {op.kind.value} of {path}: until then a power loss can undo it"


def fix_hint(
    losses: Sequence[Any], operations: Sequence[Any] = (), *, root: str = "", model: str = ""
) -> str:
    """One line saying what to change, from the loss that defines the first violating state."""
    from persistkit.testing.fs.ops import OpKind

    if not losses:
        if model == "object-store":
            return (
                "the bucket fails check() before the save changed anything: the check (or the initial bucket) is "
                "wrong, not the save"
            )
        return "make the save write a new file and publish it with one atomic, synced rename"
    first = losses[0]
    kind = getattr(first, "kind", None)
    if model == "object-store" or kind in ("delete", "put-new", "put-file-new", "swap"):
        url = getattr(first, "url", "")
        if kind == "delete":
            return (
                f"something still visible refers to {url} when it is deleted: remove or move what names an "
                "object (its pointer or record) first, and delete the data last"
            )
        return (
            f"{url} is visible before what it refers to: upload the data first, then its record, and make "
            "it visible last with one conditional PUT of a small pointer"
        )
    if first.how == "reverted":
        # A directory fsync after the last reverted operation in that directory keeps the earlier ones
        # there too (a rename and the create of the file it renames): name that one per directory (a
        # new directory's mkdir and a rename inside it need two fsyncs, of two directories).
        last: dict[str, Any] = {}
        for x in losses:
            if x.how == "reverted":
                where = os.path.dirname(x.op.dst if x.op.kind == OpKind.REPLACE and x.op.dst else x.op.path)
                if where not in last or x.op.index > last[where].op.index:
                    last[where] = x
        ops = sorted((x.op for x in last.values()), key=lambda o: o.index)
        return "; and ".join(_reverted_hint(o, root) for o in ops)
    how, op = first.how, first.op
    path = _rel(op.path, root)
    if how == "torn" and model == "process":
        return (
            f"a SIGKILL can stop a large write to {path} half way: write to a temp file, fsync it and os.replace() "
            "it over the target, so a reader never sees a partly written file"
        )
    if how in ("early", "stale"):
        return (
            f"the disk may write {path}'s pages in any order: fsync what a later write refers to (the records) "
            "before writing the part that refers to it (a header, a count, a pointer), or have the reader "
            "verify a checksum"
        )
    renamed = any(
        getattr(o, "kind", None) == OpKind.REPLACE and getattr(o, "path", None) == op.path for o in operations
    )
    if renamed:
        return f"fsync {path} (flush and os.fsync its descriptor) before renaming it over the target"
    rewritten = any(
        getattr(o, "kind", None) == OpKind.CREATE
        and getattr(o, "path", None) == op.path
        and getattr(o, "truncate", False)
        for o in operations
    )
    later = [
        o for o in operations
        if getattr(o, "kind", None) == OpKind.WRITE and getattr(o, "path", None) == op.path and o.index > op.index
    ]  # fmt: skip
    if later and not rewritten and op.kind == OpKind.WRITE:
        # an update in place (a log, a header and its records): the pages reach the disk in any order
        return (
            f"the disk may write {path}'s pages in any order: fsync what a later write refers to (the records) "
            "before writing the part that refers to it (a header, a count, a pointer), or have the reader "
            "verify a checksum"
        )
    return (
        f"write {path} to a temp file in the same directory, fsync it, os.replace() it over the target, "
        "then fsync the directory: a file rewritten in place can be left torn or empty"
    )
