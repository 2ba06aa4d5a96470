"""Which directory states a crash during a save can leave, chosen at the kernel's grain.

Two models, after ALICE (OSDI'14), CrashMonkey, LazyFS and FoundationDB's simulator:

``process`` (SIGKILL): the page cache survives. A crash after operation k shows
exactly the first k operations; a single write larger than a page can also be
torn at a page boundary (the kernel copies it page by page and a fatal signal
stops the copy), so the file holds its first pages only.

``power-loss``: what had not been made durable may be lost, in any order:

* a file's unsynced data is kept page by page: any subset of its dirty pages
  may have reached the disk, each in any version it had since the last fsync
  (writeback can run between two writes), and the file size may or may not
  have been extended (pages past the old end then read as zeros, as with
  delayed allocation);
* a directory operation (create, rename, link, unlink, mkdir, rmdir, symlink,
  mkfifo) persists once the directory it changed (the inode, not the path) is
  fsynced, or after sync()/syncfs(); before that it may be reverted, in any
  combination the name space allows;
* fsync/fdatasync of a file make its data and size durable; an O_SYNC write
  makes its own range durable.

The state space at page grain is far too large to enumerate, so it is chosen,
and this is the choice (each state is built by changing only what differs from
the state before it, see ``persistkit.testing.fs.materialize``):

1. Crash points. Process model: every operation boundary. Power loss: just
   before every durability point (fsync, fdatasync, fsync of a directory,
   sync, syncfs, an O_SYNC write) and after the last operation: the set of
   states a crash can leave only grows between two durability points, so the
   point just before the next one covers those in between.
2. At each power-loss crash point: everything persisted; nothing unsynced
   persisted; and the in-order prefixes of the unsynced operations (writeback
   in issue order, ALICE's prefix pass).
3. A *unit* is a run of pages of one file with the same unsynced writers (a
   page written by many small writes is one unit; the inside of one large
   write is one unit). For every unit and every unsynced directory operation,
   at the last crash point before it becomes durable: the state that keeps
   everything but it, and the state that keeps only it (a header that reached
   the disk before the record it counts). For units of several pages, the
   same for their first, last and inside pages (page classes), with the size
   extended or not; for units written several times, the page as it was after
   an earlier write (an intermediate version).
4. Exhaustive where small: when at most ``exhaustive`` units and directory
   operations are pending at a crash point, every subset.
5. Seeded random subsets beyond that: ``random_per_point`` per crash point,
   drawn with ``seed``.

Every state is named by what it lost (``Loss``: which operation, how), so a
failure message and its ``Fix:`` line come from data. ``CrashSimulator``
enumerates lazily: ``max_states`` picks states spread over the whole save
without building the others, and ``coverage()`` says what was explored (per
operation and per page class) and what was not.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from persistkit.testing.fs.model import PAGE, FsModel, Inode, MetaOp
from persistkit.testing.fs.ops import Op, OpKind
from persistkit.testing.fs.snapshot import Snapshot

if TYPE_CHECKING:
    from persistkit.testing.fs.materialize import Materializer

__all__ = ["CrashSimulator", "CrashState", "Loss", "Plan", "Stats"]

Model = Literal["process", "power-loss"]
Windows = Sequence[tuple[int, int]]  # (start, end) positions of saves inside a longer log
LATEST, DURABLE = "latest", "durable"
_KEEP_LOSSES = 8  # a state names at most this many of the operations it lost (the first ones)


@dataclass(frozen=True, slots=True)
class Loss:
    """One way a crash state differs from "every operation issued so far took effect".

    ``how``: "reverted" (a directory operation undone), "lost" (a write never reached
    the disk), "torn" (only part of it did), "zeroed" (the size grew, the data did not),
    "early" (this write reached the disk while earlier unsynced ones did not),
    "stale" (a page reached the disk as an earlier write left it).
    """

    how: str
    op: Op
    detail: str = ""

    def describe(self, root: str = "") -> str:
        text = self.op.describe()
        if root:
            text = text.replace(root + os.sep, "").replace(root, ".")
        words = {
            "reverted": f"reverted {text}",
            "lost": f"lost {text}",
            "torn": f"{text} torn",
            "zeroed": f"{text} left as zeros",
            "early": f"only {text} reached the disk",
            "stale": f"{text} reached the disk only in part",
        }
        base = words.get(self.how, f"{self.how} {text}")
        return f"{base} ({self.detail})" if self.detail else base


@dataclass(frozen=True, slots=True)
class Plan:
    """How to build one state from the model (see module doc).

    ``k``: operations issued; ``meta``: positions of persisted directory operations
    (None: all before k); ``default``: data of every file as issued (``LATEST``) or
    as last made durable (``DURABLE``); ``runs``: (inode, first page, end page,
    bound) overrides, a bound being "data ops before this position applied";
    ``sizes``: (inode, size) overrides.
    """

    k: int
    meta: frozenset[int] | None = None
    default: str = LATEST
    runs: tuple[tuple[int, int, int, int], ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    hidden: frozenset[int] = frozenset()  # inodes left out (a probe: "the files the save wrote are gone")
    upto: int | None = None  # with LATEST: data ops from this position on lost (writeback in issue order)
    dropped: frozenset[int] = frozenset()  # data ops whose pages the kernel dropped (a failed fsync)


@dataclass(frozen=True)
class CrashState:
    """A state a crash can leave. ``complete``: the save had returned (only the new state is right)."""

    after: int
    model: str
    complete: bool
    description: str
    losses: tuple[Loss, ...]
    plan: Plan
    sim: CrashSimulator = field(repr=False, compare=False)
    classes: tuple[str, ...] = ()

    def materialize(self, root: str | os.PathLike[str] | None = None) -> str:
        """Make ``root`` (default: the save's root) hold exactly this state."""
        return self.sim.materialize(self, root)

    def files(self) -> dict[str, bytes]:
        """Path (relative) -> content of every regular file in this state (reads; for tests)."""
        return self.sim.materializer().contents(self.plan)

    def entries(self) -> dict[str, str]:
        """Path (relative) -> kind of every entry in this state."""
        return self.sim.materializer().kinds(self.plan)


@dataclass
class Stats:
    states: int = 0
    duplicates: int = 0
    infeasible: int = 0
    sampled: bool = False
    prefixes: int = 0
    candidates: int = 0
    per_op: Counter[str] = field(default_factory=Counter)
    per_class: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        extra = f", {self.infeasible} infeasible combinations skipped" if self.infeasible else ""
        return f"{self.states} distinct states{extra}{' (sampled)' if self.sampled else ''}"


@dataclass(frozen=True)
class _Unit:
    inode: int
    lo: int  # first page
    hi: int  # end page (exclusive)
    writers: tuple[int, ...]  # positions of the pending data ops, in order

    @property
    def key(self) -> tuple[int, int, int, tuple[int, ...]]:
        return (self.inode, self.lo, self.hi, self.writers)


@dataclass
class _Candidate:
    plan: Plan
    losses: tuple[Loss, ...]
    summary: str
    classes: tuple[str, ...] = ()


class CrashSimulator:
    """The crash states of the operation log ``ops`` applied to the ``before`` snapshot.

    ``model``: an ``FsModel`` already built from them (else one is built).
    ``seed``/``random_per_point``/``exhaustive``: the sampling choices of the module doc.
    """

    def __init__(
        self,
        before: Snapshot,
        ops: Sequence[Op],
        *,
        model: FsModel | None = None,
        seed: int = 0,
        random_per_point: int = 4,
        exhaustive: int = 4,
        max_tears_per_write: int = 4,
        volatile: Sequence[str] = (),
    ) -> None:
        self.before = before
        self.root = before.root
        self.model = model if model is not None else FsModel(before, ops, volatile=volatile)
        self.ops = [op for op, keep in zip(self.model.ops, self.model.relevant, strict=True) if keep]
        self.unmodelled = self.model.unmodelled
        self.seed = seed
        self.random_per_point = random_per_point
        self.exhaustive = exhaustive
        self.max_tears = max_tears_per_write
        self.stats = Stats()
        self._materializer: Materializer | None = None
        self._relevant_positions = [i for i, keep in enumerate(self.model.relevant) if keep]
        self._shown_index = {p: i for i, p in enumerate(self._relevant_positions)}

    # -- the public walk -------------------------------------------------------------------
    def candidates(self, model: Model = "power-loss", *, within: Windows | None = None) -> list[_Candidate]:
        """The candidate states of ``model``; ``within``: only those of these windows of the log.

        A window ``(start, end)`` is a save inside a longer log (one checkpoint save of a whole
        training run): positions ``start``..``end`` of ``model.ops`` (the save's operations are
        ``ops[start:end]``). The process model then crashes only at its operation boundaries;
        power loss only just before its durability points and at ``end`` (the save returned),
        each state still losing whatever was unsynced since the log began.
        """
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        if within is not None and any(not 0 <= s <= e <= len(self.model.ops) for s, e in within):
            raise ValueError(f"windows must lie within 0..{len(self.model.ops)}: {list(within)}")
        return self._process(within) if model == "process" else self._power_loss(within)

    def states(
        self, model: Model = "power-loss", *, max_states: int | None = None, within: Windows | None = None
    ) -> Iterator[CrashState]:
        """Yield distinct crash states (all of them, or ``max_states`` spread over the save).

        ``within``: only the states of these windows of the log (see ``candidates``).
        """
        cands = self.candidates(model, within=within)
        self.stats = Stats(candidates=len(cands))
        chosen: Sequence[int] = range(len(cands))
        if max_states is not None and len(cands) > max_states:
            self.stats.sampled = True
            step = (len(cands) - 1) / max(max_states - 1, 1)
            chosen = sorted({round(i * step) for i in range(max_states)})
        seen: set[object] = set()
        n = len(self.model.ops)
        for i in chosen:
            c = cands[i]
            key = self.materializer().key(c.plan)
            if key is None:
                self.stats.infeasible += 1
                continue
            complete = c.plan.k >= n
            if (key, complete) in seen:
                self.stats.duplicates += 1
                continue
            seen.add((key, complete))
            self.stats.states += 1
            for loss in c.losses[:1]:
                self.stats.per_op[loss.op.describe()] += 1
            for cls in c.classes:
                self.stats.per_class[cls] += 1
            yield CrashState(c.plan.k, model, complete, c.summary, c.losses, c.plan, self, c.classes)

    def final(self) -> Plan:
        """The plan of the directory once every operation happened."""
        return Plan(len(self.model.ops))

    def initial(self) -> Plan:
        return Plan(0)

    def empty(self) -> Plan:
        """The root with nothing in it: a load that still returns a saved value answers from elsewhere."""
        return Plan(len(self.model.ops), hidden=frozenset(self.model.inodes))

    def power_cut(self) -> CrashState:
        """The state a power cut right after the last operation leaves when nothing unsynced reached the disk.

        Of all the states the cut can leave this one loses the most; ``lifecycle``'s
        ``model="power-loss"`` restarts the program from it after each kill.
        """
        n = len(self.model.ops)
        # unsynced directory operations are dropped, latest first, unless a kept one needs them
        # (a rename made durable by its directory's fsync implies its source's creation persisted)
        kept = {m.position for m in self.model.metas}
        for m in reversed(self._pending_meta(n)):
            if self.model.namespace(n, kept - {m.position}) is not None:
                kept.discard(m.position)
        metas = frozenset(m.position for m in self.model.metas) - kept
        pending = sorted({p for u in self._pending_units(n) for p in u.writers} | metas)
        ops = self.model.ops
        losses = tuple(Loss("reverted" if p in metas else "lost", ops[p]) for p in pending)
        durable_meta = frozenset(kept)
        text = f"power loss {self._where(n, 'power-loss')}: nothing unsynced persisted"
        if losses:
            text += f" ({_listing(losses, self.root)})"
        return CrashState(n, "power-loss", True, text, losses, Plan(n, durable_meta, DURABLE), self)

    def names_a_failed_dir_sync_left(self, max_states: int = 8) -> list[CrashState]:
        """Power losses after a directory fsync that failed, when the save went on as if it worked.

        The names that fsync was to make durable (a journal's creation, a rename) are lost,
        while everything issued after it reached the disk: the state a save that ignored the
        error (SQLite's journal directory, by design) must still survive. Crash points are
        spread over the operations after each failed directory fsync, up to ``max_states``.
        """
        model, ops, n = self.model, self.model.ops, len(self.model.ops)
        out: list[CrashState] = []
        for f, op in enumerate(ops):
            if op.kind != OpKind.FSYNC_FAILED or not self._is_dir_sync(op):
                continue
            points = list(range(f + 1, n + 1))
            if len(points) > max_states:
                step = (len(points) - 1) / max(max_states - 1, 1)
                points = [points[round(i * step)] for i in range(max_states)]
            for k in points:
                lost = [m for m in model.metas if m.position < f and not model.durable_meta(m, k)]
                if not lost:
                    continue
                kept = frozenset(m.position for m in model.metas if m.position < k) - {
                    m.position for m in lost
                }
                if model.namespace(k, kept) is None:
                    continue
                losses = tuple(Loss("reverted", m.op) for m in lost if m.op is not None)
                text = (
                    f"power loss {self._where(k, 'power-loss')}: the directory fsync #{f} failed, so "
                    f"{_listing(losses, self.root)} did not persist, while everything after it did"
                )
                out.append(CrashState(k, "power-loss", k >= n, text, losses, Plan(k, kept), self))
        return out

    def _is_dir_sync(self, op: Op) -> bool:
        inode = self.model.handles.get(op.handle) if op.handle is not None else None
        return inode is None or self.model.inodes[inode].kind == "dir"

    def leave(self, state: CrashState | Plan) -> None:
        """Make the root hold ``state`` for good (the program restarts from it), and drop the copies.

        The state is built in a directory beside the root (the build reads what the save left
        in the root), then swapped in entry by entry.
        """
        import shutil
        import tempfile

        plan = state.plan if isinstance(state, CrashState) else state
        parent = os.path.dirname(self.root)
        scratch = tempfile.mkdtemp(prefix=".persistkit-cut-", dir=parent)
        try:
            self.materializer().apply(plan, scratch)
            self.close()
            for name in os.listdir(self.root):
                full = os.path.join(self.root, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
            for name in os.listdir(scratch):
                os.rename(os.path.join(scratch, name), os.path.join(self.root, name))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def bytes_materialized(self) -> int:
        """Bytes written so far to build states (what was unchanged was linked or left in place)."""
        return self._materializer.bytes_written if self._materializer is not None else 0

    def materializer(self) -> Materializer:
        from persistkit.testing.fs.materialize import Materializer

        if self._materializer is None:
            self._materializer = Materializer(self.model)
        return self._materializer

    def materialize(self, state: CrashState | Plan, root: str | os.PathLike[str] | None = None) -> str:
        plan = state.plan if isinstance(state, CrashState) else state
        return self.materializer().apply(plan, None if root is None else os.fspath(root))

    def close(self) -> None:
        """Put the root back as the save left it and drop the verifier's copies."""
        if self._materializer is not None:
            self.materializer().close()

    # -- descriptions ----------------------------------------------------------------------
    def _where(self, k: int, model: Model) -> str:
        ops = self.model.ops
        rel = [p for p in self._relevant_positions if p < k]
        if not rel:
            return "before the first operation"
        text = ops[rel[-1]].describe().replace(self.root + os.sep, "").replace(self.root, ".")
        if model == "power-loss" and k < len(ops):
            nxt = ops[k].describe().replace(self.root + os.sep, "").replace(self.root, ".")
            return f"after {text}, before {nxt}"
        return f"after {text}"

    # -- the process model -----------------------------------------------------------------
    def _process(self, within: Windows | None = None) -> list[_Candidate]:
        out: list[_Candidate] = []
        points = [0] + [p + 1 for p in self._relevant_positions]
        if within is not None:
            points = [k for k in points if any(s <= k <= e for s, e in within)]
        rng = random.Random(self.seed)
        for k in points:
            if k:
                out += self._torn(k - 1, rng)  # the write at k-1 stopped part way, then the state after it
            out.append(_Candidate(Plan(k), (), f"process crash {self._where(k, 'process')}"))
        return out

    def _torn(self, p: int, rng: random.Random) -> list[_Candidate]:
        """A SIGKILL during the write at position ``p``: only its first pages were copied."""
        out: list[_Candidate] = []
        op = self.model.ops[p]
        if op.kind == OpKind.WRITE and op.length > PAGE and (node := self._inode_of_write(p)) is not None:
            first = op.offset // PAGE + 1
            last = (op.offset + op.length - 1) // PAGE
            cuts = sorted({first, last, (first + last) // 2} | {rng.randint(first, last) for _ in range(2)})
            cuts = [c for c in cuts if first <= c <= last][: self.max_tears]
            before, end = node.size_at(p), op.offset + op.length
            for cut in cuts:
                kept = cut * PAGE - op.offset
                size = max(before, min(end, cut * PAGE)) if end > before else before
                plan = Plan(p, runs=((node.id, op.offset // PAGE, cut, p + 1),), sizes=((node.id, size),))
                loss = Loss("torn", op, f"the kill came after {kept} of {op.length} bytes")
                out.append(
                    _Candidate(
                        plan, (loss,), f"process killed during {loss.describe(self.root)}", ("torn write",)
                    )
                )
        return out

    def _inode_of_write(self, position: int) -> Inode | None:
        owner = self.model.data_owner.get(position)
        return self.model.inodes[owner] if owner is not None else None

    # -- the power-loss model --------------------------------------------------------------
    def _points(self, within: Windows | None = None) -> list[int]:
        n = len(self.model.ops)
        if within is not None:
            syncs = {p for p in self.model.sync_positions() if any(s <= p < e for s, e in within)}
            return sorted(p for p in syncs | {e for _, e in within} if p > 0)
        pts = sorted(set(self.model.sync_positions()) | {n})
        return [p for p in pts if p > 0] or [n]

    def _files(self) -> list[Inode]:
        return [
            node for node in self.model.inodes.values()
            if node.kind == "file" and node.datas and not node.volatile and node.id in self.model._ever_inside
        ]  # fmt: skip

    def _pending_units(self, k: int) -> list[_Unit]:
        """Units (runs of pages with the same unsynced writers) of every file at crash point k."""
        units: list[_Unit] = []
        for node in self._files():
            durable = self.model.last_sync(node.id, k)
            lo_i = bisect.bisect_left(node.positions, durable)
            hi_i = bisect.bisect_left(node.positions, k)
            pend = [d for d in node.datas[lo_i:hi_i] if self.model.relevant[d.position]]
            if not pend:
                continue
            # an O_SYNC write makes the pages it covers durable as they were then (the kernel writes
            # whole pages): a writer of a page is pending only if no such sync came after it
            synced = [(pos, s // PAGE, -(-e // PAGE)) for pos, s, e in node.range_syncs if durable <= pos < k]
            starts: dict[int, list[int]] = {}
            ends: dict[int, list[int]] = {}
            for d in pend:
                first, end = d.start // PAGE, max(d.start, d.end - 1) // PAGE + 1
                for a, b in _minus(first, end, [(lo, hi) for pos, lo, hi in synced if pos > d.position]):
                    starts.setdefault(a, []).append(d.position)
                    ends.setdefault(b, []).append(d.position)
            active: set[int] = set()
            edges = sorted(set(starts) | set(ends))
            prev: _Unit | None = None
            for lo, hi in itertools.pairwise(edges):
                active.difference_update(ends.get(lo, ()))
                active.update(starts.get(lo, ()))
                if not active:
                    prev = None
                    continue
                writers = tuple(sorted(active))
                if prev is not None and prev.writers == writers and prev.hi == lo:
                    prev = _Unit(node.id, prev.lo, hi, writers)
                    units[-1] = prev
                else:
                    prev = _Unit(node.id, lo, hi, writers)
                    units.append(prev)
        return units

    def _pending_meta(self, k: int) -> list[MetaOp]:
        return [
            m for m in self.model.metas
            if m.position < k and self.model.relevant[m.position] and not self.model.durable_meta(m, k)
        ]  # fmt: skip

    def _power_loss(self, within: Windows | None = None) -> list[_Candidate]:
        """Candidates crash point by crash point; within one, those with the same data default
        together, so that moving from one state to the next rewrites few pages."""
        out: list[_Candidate] = []
        for group in itertools.groupby(self._power_loss_unsorted(within), key=lambda c: c.plan.k):
            cands = list(group[1])
            head, rest = cands[:1], cands[1:]
            out += head + sorted(rest, key=lambda c: (c.plan.default != LATEST, c.plan.upto is None))
        return out

    def _power_loss_unsorted(self, within: Windows | None = None) -> list[_Candidate]:
        model = self.model
        points = self._points(within)
        units_at = {k: self._pending_units(k) for k in points}
        meta_at = {k: self._pending_meta(k) for k in points}
        # each unit / meta op gets its own variants at the last crash point where it is pending
        last_unit: dict[tuple[int, int, int, tuple[int, ...]], int] = {}
        last_meta: dict[int, int] = {}
        for k in points:
            for u in units_at[k]:
                last_unit[u.key] = k
            for m in meta_at[k]:
                last_meta[m.position] = k
        rng = random.Random(self.seed)
        out: list[_Candidate] = []
        ops = model.ops
        for k in points:
            units, metas = units_at[k], meta_at[k]
            where = self._where(k, "power-loss")
            pending_ops = sorted({p for u in units for p in u.writers} | {m.position for m in metas})
            meta_pos = frozenset(m.position for m in metas)
            durable_meta = frozenset(m.position for m in model.metas if m.position < k) - meta_pos

            def lost(positions: Sequence[int], meta_pos: frozenset[int] = meta_pos) -> tuple[Loss, ...]:
                return tuple(Loss("reverted" if p in meta_pos else "lost", ops[p]) for p in positions)

            out.append(
                _Candidate(Plan(k), (), f"power loss {where}: everything written so far reached the disk")
            )
            if not pending_ops:
                continue
            none = lost(pending_ops[:_KEEP_LOSSES])
            out.append(
                _Candidate(
                    Plan(k, durable_meta, DURABLE),
                    none,
                    f"power loss {where}: nothing unsynced persisted ({_listing(none, self.root)})",
                )
            )
            # in-order prefixes of the pending operations (writeback in issue order), cut where a
            # unit or a directory operation begins
            cuts = sorted(
                {m.position for m in metas if last_meta.get(m.position) == k}
                | {u.writers[0] for u in units if last_unit.get(u.key) == k}
            )
            for p in cuts:
                kept_meta = durable_meta | {m for m in meta_pos if m < p}
                later = [q for q in pending_ops if q >= p]
                losses = tuple(
                    Loss("reverted", ops[q]) if q in meta_pos else Loss(self._data_loss(q, k), ops[q])
                    for q in later[:_KEEP_LOSSES]
                )  # fmt: skip
                text = (
                    _listing(losses, self.root) if len(later) == 1
                    else f"the {len(later)} unsynced operations from #{ops[p].index} on lost ({_listing(losses, self.root)})"
                )  # fmt: skip
                out.append(
                    _Candidate(Plan(k, kept_meta, LATEST, upto=p), losses, f"power loss {where}: {text}")
                )
            # each directory operation alone
            for m in metas:
                if last_meta.get(m.position) != k:
                    continue
                keep = durable_meta | (meta_pos - {m.position})
                loss = (Loss("reverted", ops[m.position]),)
                out.append(
                    _Candidate(Plan(k, keep), loss, f"power loss {where}: {loss[0].describe(self.root)}")
                )
                only = durable_meta | {m.position}
                out.append(
                    _Candidate(Plan(k, only, DURABLE), lost([q for q in pending_ops if q != m.position][:_KEEP_LOSSES]),
                               f"power loss {where}: of the unsynced operations only {ops[m.position].describe()} persisted",
                               ("only this",))
                )  # fmt: skip
            # each unit alone, and its page classes
            for u in units:
                if last_unit.get(u.key) != k:
                    continue
                out += self._unit_variants(u, k, where, durable_meta, meta_pos, pending_ops, rng)
            # exhaustive where small
            pieces: list[tuple[str, Any]] = [("meta", m) for m in metas] + [("unit", u) for u in units]
            if 1 < len(pieces) <= self.exhaustive and any(
                (t == "meta" and last_meta.get(x.position) == k)
                or (t == "unit" and last_unit.get(x.key) == k)
                for t, x in pieces
            ):
                for r in range(1, len(pieces)):
                    for combo in itertools.combinations(range(len(pieces)), r):
                        out.append(self._combination(k, where, pieces, set(combo), durable_meta, pending_ops))
            # seeded random subsets
            for _ in range(self.random_per_point if len(pieces) > self.exhaustive else 0):
                keep_set = {i for i in range(len(pieces)) if rng.random() < 0.5}
                out.append(self._combination(k, where, pieces, keep_set, durable_meta, pending_ops, "random"))
        return out

    def _data_loss(self, position: int, k: int) -> str:
        """ "zeroed" when a lost write lies past the durable end of a file that still grew, else "lost"."""
        owner = self.model.data_owner.get(position)
        if owner is None:
            return "lost"
        node = self.model.inodes[owner]
        durable = node.size_at(self.model.last_sync(owner, k))
        op = self.model.ops[position]
        return "zeroed" if op.offset + op.length > durable and node.size_at(k) > durable else "lost"

    def _bound_before(self, u: _Unit, position: int) -> int:
        """The bound of ``u``'s pages with its writers from ``position`` on lost."""
        earlier = [w for w in u.writers if w < position]
        return earlier[-1] + 1 if earlier else self.model.last_sync(u.inode, u.writers[0] + 1)

    def _unit_run(self, u: _Unit, bound: int) -> tuple[int, int, int, int]:
        return (u.inode, u.lo, u.hi, bound)

    def _combination(
        self, k: int, where: str, pieces: list[tuple[str, Any]], keep: set[int], durable_meta: frozenset[int],
        pending_ops: list[int], label: str = "subset",
    ) -> _Candidate:  # fmt: skip
        kept_meta = set(durable_meta)
        runs: list[tuple[int, int, int, int]] = []
        lost_positions: list[int] = []
        for i, (t, x) in enumerate(pieces):
            if t == "meta":
                assert isinstance(x, MetaOp)
                if i in keep:
                    kept_meta.add(x.position)
                else:
                    lost_positions.append(x.position)
            else:
                assert isinstance(x, _Unit)
                if i not in keep:
                    runs.append(self._unit_run(x, self._bound_before(x, x.writers[0])))
                    lost_positions.extend(x.writers)
        meta_pos = {x.position for t, x in pieces if t == "meta"}
        ops = self.model.ops
        losses = tuple(
            Loss("reverted" if p in meta_pos else "lost", ops[p])
            for p in sorted(set(lost_positions))[:_KEEP_LOSSES]
        )
        text = _listing(losses, self.root)
        return _Candidate(Plan(k, frozenset(kept_meta), LATEST, tuple(runs)), losses,
                          f"power loss {where}: {text}", (label,))  # fmt: skip

    def _unit_variants(
        self, u: _Unit, k: int, where: str, durable_meta: frozenset[int], meta_pos: frozenset[int],
        pending_ops: list[int], rng: random.Random,
    ) -> list[_Candidate]:  # fmt: skip
        model = self.model
        node = model.inodes[u.inode]
        ops = model.ops
        first_op = ops[u.writers[0]]
        durable = model.last_sync(u.inode, k)
        durable_size = node.size_at(durable)
        latest_size = node.size_at(k)
        all_meta = durable_meta | meta_pos
        out: list[_Candidate] = []
        span = f"pages {u.lo}-{u.hi - 1}" if u.hi - u.lo > 1 else f"page {u.lo}"
        before = self._bound_before(u, u.writers[0])
        grows = latest_size > durable_size and u.hi * PAGE > durable_size
        # past the old end of file, a lost page of an extended file reads as zeros (delayed allocation)
        losses = tuple(
            Loss("zeroed" if grows and ops[w].offset + ops[w].length > durable_size else "lost", ops[w], span)
            for w in u.writers
        )
        # everything but this unit (size extended: its pages read as zeros past the old end)
        out.append(
            _Candidate(Plan(k, all_meta, LATEST, ((u.inode, u.lo, u.hi, before),)), losses,
                       f"power loss {where}: {losses[0].describe(self.root)}",
                       ("whole unit",))
        )  # fmt: skip
        if grows:
            cut = max(durable_size, min(latest_size, u.lo * PAGE))
            out.append(
                _Candidate(Plan(k, all_meta, LATEST, ((u.inode, u.lo, u.hi, before),), ((u.inode, cut),)),
                           (Loss("lost", first_op, f"{span}, file cut at {cut} B"), *losses[1:]),
                           f"power loss {where}: {losses[0].describe(self.root)} (file cut at {cut} B)", ("whole unit", "size"))
            )  # fmt: skip
        # only this unit reached the disk (everything else unsynced lost)
        mine = set(u.writers)
        others = list(
            itertools.islice((p for p in pending_ops if p not in mine and p not in meta_pos), _KEEP_LOSSES)
        )
        only_size = max(durable_size, min(latest_size, u.hi * PAGE)) if grows else None
        out.append(
            _Candidate(
                Plan(k, all_meta, DURABLE, ((u.inode, u.lo, u.hi, k),), ((u.inode, only_size),) if only_size else ()),
                (Loss("early", ops[u.writers[-1]], span), *tuple(Loss("lost", ops[p]) for p in others)),
                f"power loss {where}: of the unsynced data only {ops[u.writers[-1]].describe()} ({span}) reached the disk",
                ("only this",),
            )
        )  # fmt: skip
        # an intermediate version of a page written several times
        if len(u.writers) > 1:
            picks = {u.writers[len(u.writers) // 2]} | {rng.choice(u.writers[:-1])}
            for w in sorted(picks):
                later = [x for x in u.writers if x > w]
                out.append(
                    _Candidate(Plan(k, all_meta, LATEST, ((u.inode, u.lo, u.hi, w + 1),)),
                               tuple(Loss("stale", ops[x], f"{span} as after #{ops[w].index}") for x in later),
                               f"power loss {where}: {span} of {self._shown(first_op.path)} reached the disk as it was after {ops[w].describe()}",
                               ("intermediate",))
                )  # fmt: skip
        # page classes of a unit spanning several pages
        if u.hi - u.lo >= 2:
            classes: list[tuple[str, tuple[tuple[int, int], ...]]] = [
                ("first page", ((u.lo, u.lo + 1),)),
                ("last page", ((u.hi - 1, u.hi),)),
            ]
            if u.hi - u.lo >= 3:
                classes.append(("inside pages", ((u.lo + 1, u.hi - 1),)))
                pick = rng.randrange(u.lo + 1, u.hi - 1)
                classes.append(("a random page", ((pick, pick + 1),)))
            for name, ranges in classes:
                runs = tuple((u.inode, lo, hi, before) for lo, hi in ranges)
                loss = Loss("torn", ops[u.writers[-1]], f"{name} of {span} lost")
                out.append(
                    _Candidate(Plan(k, all_meta, LATEST, runs), (loss,),
                               f"power loss {where}: {loss.describe(self.root)}", (name,))
                )  # fmt: skip
            # only the first page of the unit reached the disk (a torn large write, cut short)
            loss = Loss("torn", ops[u.writers[-1]], f"only the first page of {span} reached the disk")
            cut_size = max(durable_size, min(latest_size, (u.lo + 1) * PAGE)) if grows else None
            out.append(
                _Candidate(Plan(k, all_meta, LATEST, ((u.inode, u.lo + 1, u.hi, before),),
                                ((u.inode, cut_size),) if cut_size else ()),
                           (loss,), f"power loss {where}: {loss.describe(self.root)}", ("first page only",))
            )  # fmt: skip
        return out

    def _shown(self, path: str) -> str:
        return path.replace(self.root + os.sep, "").replace(self.root, ".")


def _listing(losses: Sequence[Loss], root: str, limit: int = 4) -> str:
    text = "; ".join(loss.describe(root) for loss in losses[:limit])
    return text + (f"; and {len(losses) - limit} more" if len(losses) > limit else "")


def _minus(lo: int, hi: int, cuts: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Page range [lo, hi) without the ranges in ``cuts``."""
    pieces = [(lo, hi)]
    for clo, chi in cuts:
        nxt = []
        for a, b in pieces:
            if chi <= a or clo >= b:
                nxt.append((a, b))
                continue
            if a < clo:
                nxt.append((a, clo))
            if chi < b:
                nxt.append((chi, b))
        pieces = nxt
    return pieces
