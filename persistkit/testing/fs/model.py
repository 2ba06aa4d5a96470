"""The file-system model: what an operation log did, inode by inode and page by page.

``FsModel(before, ops)`` replays the log on a model of the name space (paths
bound to inodes, so hard links share one, a renamed directory carries its
entries, and a directory fsync covers the directory it was opened on, not
whatever later sits at its path) and records, per file inode, every change of
its bytes (``DataOp``: the byte range and where its bytes come from) with the
size after it, and every durability point: fsync/fdatasync of an inode (a
whole file, or the range of an O_SYNC write), fsync of a directory inode,
sync()/syncfs().

Bytes are never held in memory. A byte range of a file at any moment of the
save is a list of ``Extent`` s: (start, end, source kind, source, offset),
where the source is the observer's spool, the pre-save copy of the file
(``Snapshot``), the file the save left (for writes whose bytes the tracer did
not print, when no later operation overwrote them), or zeros.

What cannot be modelled is listed in ``unmodelled`` and never guessed: a file
that existed outside the root before the save and was moved in, writes through
a descriptor no recorded operation opened, written bytes that were neither
captured nor left in the final file.

``crash points`` (``persistkit.testing.fs.states``) and the materializer
(``persistkit.testing.fs.materialize``) work from this model.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from persistkit.testing.fs.ops import NAMESPACE_KINDS, Op, OpKind, Spool
from persistkit.testing.fs.snapshot import Entry, Snapshot

__all__ = [
    "PAGE",
    "SRC_FINAL",
    "SRC_PRISTINE",
    "SRC_SPOOL",
    "SRC_ZERO",
    "DataOp",
    "Extent",
    "FsModel",
    "Inode",
    "MetaOp",
    "overlay",
]

PAGE = 4096
ROOT_ID = 0
EXTERNAL_ID = -1  # any directory outside the root that the log did not create: taken to exist

SRC_ZERO, SRC_SPOOL, SRC_PRISTINE, SRC_FINAL = 0, 1, 2, 3
# (start, end, source kind, source, source offset): bytes [start, end) of a file come from the source
# at source offset + (position - start). Source: a Spool, or an inode id (pre-save copy / final file).
Extent = tuple[int, int, int, object, int]

_BIG_PAGES = 64  # a data op spanning more pages than this is indexed by range, not page by page


def overlay(extents: list[Extent], new: Extent, starts: list[int] | None = None) -> None:
    """Lay ``new`` over the sorted, contiguous ``extents`` (in place; ``starts``: their starts, kept in step)."""
    start, end = new[0], new[1]
    if start >= end:
        return
    if starts is None:
        starts = [e[0] for e in extents]
    i = max(bisect.bisect_right(starts, start) - 1, 0)
    if i < len(extents) and extents[i][1] <= start:
        i += 1
    j = bisect.bisect_left(starts, end)
    pieces: list[Extent] = []
    if i < j and extents[i][0] < start:
        s, _e, kind, src, off = extents[i]
        pieces.append((s, start, kind, src, off))
    pieces.append(new)
    if i < j and extents[j - 1][1] > end:
        s, e, kind, src, off = extents[j - 1]
        pieces.append((end, e, kind, src, off + (end - s)))
    extents[i:j] = pieces
    starts[i:j] = [p[0] for p in pieces]


@dataclass(slots=True)
class DataOp:
    """One change of a file's bytes: ``position`` in the log; [start, end) from ``sources``."""

    position: int
    start: int
    end: int
    sources: tuple[Extent, ...]
    size_after: int
    op: Op
    cut: bool = False  # the observer did not capture the bytes: resolved against the final file


@dataclass
class Inode:
    id: int
    kind: str  # "file", "dir", "symlink", "fifo"
    initial: str | None = None  # its path relative to the root before the save (content in the snapshot)
    initial_size: int = 0
    created: int = -1  # position of the operation that made it (-1: it existed before the save)
    unknown: bool = False  # existed outside the root before the save: its content is unknown
    target: str = ""
    base_mode: int = 0o644
    modes: list[tuple[int, int]] = field(default_factory=list)  # (position, mode) of each chmod
    datas: list[DataOp] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # datas[i].position, for bisect
    small: dict[int, list[int]] = field(default_factory=dict)  # page -> indexes into datas
    big: list[int] = field(default_factory=list)  # indexes into datas of ops spanning many pages
    fsyncs: list[int] = field(default_factory=list)  # positions of full fsyncs of this file
    range_syncs: list[tuple[int, int, int]] = field(default_factory=list)  # (position, start, end)
    dir_syncs: list[int] = field(default_factory=list)  # for a directory: positions of its fsyncs
    failed_syncs: list[int] = field(default_factory=list)  # positions of fsyncs that returned an error
    volatile: bool = False  # a rebuildable index (SQLite -shm): content is not state

    def size_at(self, bound: int) -> int:
        """The file's size with every data op before position ``bound`` applied."""
        i = bisect.bisect_left(self.positions, bound)
        return self.datas[i - 1].size_after if i else self.initial_size

    def mode_at(self, bound: int) -> int:
        mode = self.base_mode
        for pos, m in self.modes:
            if pos < bound:
                mode = m
        return mode


@dataclass(slots=True)
class MetaOp:
    """A change of the name space at ``position``; durable once every directory in ``dirs`` is fsynced."""

    position: int
    kind: OpKind
    path: str  # absolute
    dst: str = ""
    inode: int = 0  # the inode the entry names (rename/link/unlink: the source's)
    dirs: tuple[int, ...] = ()
    op: Op | None = None


class FsModel:
    """The operation log ``ops`` replayed on the directory ``before`` describes (see module doc)."""

    def __init__(self, before: Snapshot, ops: Sequence[Op], *, volatile: Sequence[str] = ()) -> None:
        self.before = before
        self.root = before.root
        self.ops = list(ops)
        self.volatile = tuple(volatile)
        self.unmodelled: list[str] = []
        self.inodes: dict[int, Inode] = {ROOT_ID: Inode(ROOT_ID, "dir")}
        self.metas: list[MetaOp] = []
        self.sync_alls: list[int] = []
        self.handles: dict[int, int] = {}
        self.data_owner: dict[int, int] = {}  # position of a data op -> its inode
        self.initial_ns: dict[str, int] = {self.root: ROOT_ID}
        self._next_id = 1
        by_ino: dict[int, int] = {}
        for rel, e in sorted(before.entries.items()):
            full = os.path.join(self.root, rel)
            if e.kind == "file" and e.ino in by_ino:
                self.initial_ns[full] = by_ino[e.ino]  # a hard link: the same inode
                continue
            inode = self._new(e.kind if e.kind != "other" else "fifo", created=-1)
            inode.initial = rel
            inode.initial_size = e.size if e.kind == "file" else 0
            inode.target = e.target
            inode.base_mode = e.mode
            inode.volatile = self._is_volatile(full)
            if e.kind == "file":
                by_ino[e.ino] = inode.id
            self.initial_ns[full] = inode.id
        self.ns: dict[str, int] = dict(self.initial_ns)
        self.relevant: list[bool] = [False] * len(self.ops)
        self._ever_inside: set[int] = {i for p, i in self.initial_ns.items() if self.inside(p)}
        for pos, op in enumerate(self.ops):
            self._replay(pos, op)
        self.final_ns: dict[str, int] = dict(self.ns)
        self._mark_relevant()
        self._resolve_cut_writes()

    # -- helpers ----------------------------------------------------------------------------
    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def rel(self, path: str) -> str:
        return os.path.normpath(os.path.relpath(path, self.root))

    def _is_volatile(self, path: str) -> bool:
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(path, pat) for pat in self.volatile)

    def _new(self, kind: str, *, created: int) -> Inode:
        inode = Inode(self._next_id, kind, created=created)
        self._next_id += 1
        self.inodes[inode.id] = inode
        return inode

    def _parent(self, path: str) -> int:
        parent = os.path.dirname(path)
        found = self.ns.get(parent)
        if found is not None:
            return found
        return ROOT_ID if parent == self.root else EXTERNAL_ID

    def _meta(self, pos: int, op: Op, kind: OpKind, path: str, *, dst: str = "", inode: int = 0,
              dirs: tuple[int, ...] = ()) -> None:  # fmt: skip
        self.metas.append(MetaOp(pos, kind, path, dst, inode, dirs, op))

    def _note(self, text: str) -> None:
        if text not in self.unmodelled:
            self.unmodelled.append(text)

    def _shown(self, path: str) -> str:
        return self.rel(path) if self.inside(path) else path

    # -- pass 1: replay ---------------------------------------------------------------------
    def _replay(self, pos: int, op: Op) -> None:
        kind = op.kind
        path = op.path
        if kind in (OpKind.CREATE, OpKind.OPEN_APPEND, OpKind.OPEN_EXISTING):
            self._open(pos, op)
        elif kind in (OpKind.WRITE, OpKind.TRUNCATE, OpKind.FSYNC, OpKind.FSYNC_FAILED):
            inode = self.handles.get(op.handle) if op.handle is not None else None
            if inode is None:
                if kind == OpKind.FSYNC_FAILED:
                    return  # a directory's failed fsync: it made nothing durable, and nothing else happened
                if self.inside(path):
                    self._note(
                        f"{self.rel(path)}: {kind.value} through a file the recorded operations never opened"
                    )
                return
            node = self.inodes.get(inode)
            if node is None:
                return
            if kind == OpKind.FSYNC_FAILED:
                node.failed_syncs.append(pos)
            elif kind == OpKind.FSYNC:
                if node.kind == "dir":
                    node.dir_syncs.append(pos)
                elif op.length:
                    node.range_syncs.append((pos, op.offset, op.offset + op.length))
                else:
                    node.fsyncs.append(pos)
            elif node.kind == "file":
                self._data(pos, op, node)
        elif kind == OpKind.FSYNC_DIR:
            inode = self.ns.get(path, ROOT_ID if path == self.root else None)
            if inode is not None and inode in self.inodes and self.inodes[inode].kind == "dir":
                self.inodes[inode].dir_syncs.append(pos)
        elif kind == OpKind.SYNC_ALL:
            self.sync_alls.append(pos)
        elif kind == OpKind.CLOSE:
            return
        elif kind in (OpKind.REPLACE, OpKind.LINK):
            self._move(pos, op)
        elif kind in (OpKind.UNLINK, OpKind.RMDIR):
            inode = self.ns.pop(path, None)
            if kind == OpKind.RMDIR:
                for p in [p for p in self.ns if p.startswith(path + os.sep)]:
                    del self.ns[p]
            self._meta(pos, op, kind, path, inode=inode or 0, dirs=(self._parent(path),))
        elif kind in (OpKind.MKDIR, OpKind.SYMLINK, OpKind.MKFIFO):
            node = self._new(
                {OpKind.MKDIR: "dir", OpKind.SYMLINK: "symlink", OpKind.MKFIFO: "fifo"}[kind], created=pos
            )
            if kind == OpKind.SYMLINK:
                node.target = op.dst or ""
                node.base_mode = 0o777
            else:
                node.base_mode = (
                    op.mode if op.mode is not None else (0o755 if kind == OpKind.MKDIR else 0o644)
                )
            self.ns[path] = node.id
            if self.inside(path):
                self._ever_inside.add(node.id)
            self._meta(pos, op, kind, path, inode=node.id, dirs=(self._parent(path),))
        elif kind == OpKind.CHMOD:
            inode = self.handles.get(op.handle) if op.handle is not None else self.ns.get(path)
            if inode is not None and inode in self.inodes and op.mode is not None:
                self.inodes[inode].modes.append((pos, op.mode))

    def _open(self, pos: int, op: Op) -> None:
        path = op.path
        existing = self.ns.get(path)
        node = self.inodes.get(existing) if existing is not None else None
        if node is not None and node.kind == "file":
            if op.handle is not None:
                self.handles[op.handle] = node.id
            if op.kind == OpKind.CREATE and op.truncate:
                self._truncate_to(pos, op, node, 0)
            return
        if node is not None:
            if self.inside(path):
                self._note(f"{self.rel(path)}: opened for writing, but it is a {node.kind}")
            return
        if op.kind == OpKind.OPEN_EXISTING and not op.truncate:
            if self.inside(path):
                self._note(
                    f"{self.rel(path)}: reopened during the save, but it was not in the directory before the "
                    "save and no recorded operation created it"
                )
                return
            node = self._new("file", created=-1)
            node.unknown = True
        else:
            node = self._new("file", created=pos)
            node.base_mode = op.mode if op.mode is not None else 0o644
            self._meta(pos, op, OpKind.CREATE, path, inode=node.id, dirs=(self._parent(path),))
        node.volatile = self._is_volatile(path)
        self.ns[path] = node.id
        if self.inside(path):
            self._ever_inside.add(node.id)
        if op.handle is not None:
            self.handles[op.handle] = node.id

    def _add_data(self, node: Inode, d: DataOp) -> None:
        self.data_owner[d.position] = node.id
        i = len(node.datas)
        node.datas.append(d)
        node.positions.append(d.position)
        first, last = d.start // PAGE, max(d.start, d.end - 1) // PAGE
        if last - first > _BIG_PAGES:
            node.big.append(i)
        else:
            for page in range(first, last + 1):
                node.small.setdefault(page, []).append(i)

    def _truncate_to(self, pos: int, op: Op, node: Inode, size: int) -> None:
        old = node.size_at(pos + 1)
        sources: tuple[Extent, ...] = ((size, old, SRC_ZERO, None, 0),) if old > size else ()
        self._add_data(node, DataOp(pos, min(size, old), max(size, old), sources, size, op))

    def _data(self, pos: int, op: Op, node: Inode) -> None:
        if op.kind == OpKind.TRUNCATE:
            self._truncate_to(pos, op, node, op.size)
            return
        if op.length <= 0:
            return
        start, end = op.offset, op.offset + op.length
        size = max(node.size_at(pos + 1), end)
        if op.ref is not None:
            sources: tuple[Extent, ...] = ((start, end, SRC_SPOOL, op.ref.spool, op.ref.offset),)
            self._add_data(node, DataOp(pos, start, end, sources, size, op))
        else:
            self._add_data(node, DataOp(pos, start, end, (), size, op, cut=True))

    def _move(self, pos: int, op: Op) -> None:
        src, dst = op.path, op.dst or ""
        source = self.ns.get(src)
        if source is None or (self.inodes[source].unknown and self.inside(dst)):
            if self.inside(dst) or self.inside(src):
                what = "renamed" if op.kind == OpKind.REPLACE else "linked"
                if source is None and (self.inside(src) or os.path.dirname(src) in self.ns):
                    self._note(
                        f"{self._shown(dst)}: {what} from {self._shown(src)}, which no recorded operation created"
                    )
                else:
                    self._note(
                        f"{self._shown(dst)}: {what} from {src}, a file outside the root that existed before the "
                        "save (its contents then are unknown)"
                    )
            if source is None:
                return
        if op.kind == OpKind.LINK:
            self.ns[dst] = source
        else:
            moved = {p: v for p, v in self.ns.items() if p == src or p.startswith(src + os.sep)}
            for p in moved:
                del self.ns[p]
            for p in [p for p in self.ns if p == dst or p.startswith(dst + os.sep)]:
                del self.ns[p]
            for p, v in moved.items():
                self.ns[dst + p[len(src) :]] = v
        if self.inside(dst):
            self._ever_inside.update(v for p, v in self.ns.items() if p == dst or p.startswith(dst + os.sep))
        # A rename is one journal transaction on ext4/xfs: syncing the directory that gains the
        # name makes the whole move durable (requiring both would fail correct saves that move a
        # file in from a scratch directory and sync the target directory).
        self._meta(pos, op, op.kind, src, dst=dst, inode=source, dirs=(self._parent(dst),))

    # -- pass 2: what matters to the root ----------------------------------------------------
    def _mark_relevant(self) -> None:
        """An operation matters if it touches the root or an inode that is ever inside it."""
        handles_relevant = {h for h, i in self.handles.items() if i in self._ever_inside}
        for pos, op in enumerate(self.ops):
            self.relevant[pos] = (
                op.kind == OpKind.SYNC_ALL
                or self.inside(op.path)
                or (op.dst is not None and op.kind != OpKind.SYMLINK and self.inside(op.dst))
                or (op.handle is not None and op.handle in handles_relevant)
            )

    def _resolve_cut_writes(self) -> None:
        """Writes whose bytes were not captured take them from the final file, if no later op hides them."""
        final_paths: dict[int, str] = {}
        for p, i in self.final_ns.items():
            if i not in final_paths or (self.inside(p) and not self.inside(final_paths[i])):
                final_paths[i] = p
        self.final_paths = final_paths
        for node in self.inodes.values():
            for idx, d in enumerate(node.datas):
                if not d.cut:
                    continue
                later = [o for o in self.overlapping(node, d.start, d.end) if o > idx]
                where = self._shown(final_paths.get(node.id, d.op.path))
                if node.id not in final_paths or later:
                    if node.id in self._ever_inside:
                        why = "the file is gone after the save" if node.id not in final_paths else (
                            "later operations overwrote them")  # fmt: skip
                        self._note(
                            f"{where}: a {d.end - d.start}-byte write whose bytes the tracer did not capture in full, "
                            f"and {why}, so states that hold them cannot be rebuilt"
                        )
                    continue
                d.sources = ((d.start, d.end, SRC_FINAL, node.id, d.start),)

    def check_prefixes(self) -> None:
        """The bytes a tracer printed of a cut write must be what the final file holds there."""
        for node in self.inodes.values():
            for d in node.datas:
                if not d.cut or not d.op.prefix or not d.sources:
                    continue
                path = self.final_paths[node.id]
                try:
                    with open(path, "rb") as f:
                        f.seek(d.start)
                        got = f.read(len(d.op.prefix))
                except OSError:
                    got = b""
                if got != d.op.prefix:
                    self._note(
                        f"{self._shown(path)}: holds other bytes at {d.start} than the save wrote there "
                        "(something the observer did not see changed it)"
                    )

    # -- queries -----------------------------------------------------------------------------
    def overlapping(self, node: Inode, start: int, end: int) -> list[int]:
        """Indexes into ``node.datas`` of data ops overlapping [start, end), in log order."""
        if end <= start:
            return []
        first, last = start // PAGE, (end - 1) // PAGE
        found: set[int] = set()
        if last - first < len(node.small):
            for page in range(first, last + 1):
                found.update(node.small.get(page, ()))
        else:
            for page, idxs in node.small.items():
                if first <= page <= last:
                    found.update(idxs)
        found.update(node.big)
        return sorted(i for i in found if node.datas[i].start < end and node.datas[i].end > start)

    def extents(
        self, inode: int, start: int, end: int, bound: int, skip: frozenset[int] = frozenset()
    ) -> list[Extent]:
        """Where bytes [start, end) of ``inode`` come from, with every data op before ``bound`` applied
        (but those at the positions in ``skip``: bytes the kernel dropped)."""
        node = self.inodes[inode]
        out: list[Extent] = []
        if end <= start:
            return out
        if node.initial is not None and node.initial_size > start and not node.unknown:
            out.append((start, min(end, node.initial_size), SRC_PRISTINE, inode, start))
            if end > node.initial_size:
                out.append((node.initial_size, end, SRC_ZERO, None, 0))
        else:
            out.append((start, end, SRC_ZERO, None, 0))
        starts = [e[0] for e in out]
        for i in self.overlapping(node, start, end):
            d = node.datas[i]
            if d.position >= bound:
                break
            if d.position in skip:
                continue
            for s, e, kind, src, off in d.sources:
                cs, ce = max(s, start), min(e, end)
                if cs < ce:
                    overlay(out, (cs, ce, kind, src, off + (cs - s)), starts)
        return out

    def pages_touched(self, inode: int, lo: int, hi: int) -> set[int]:
        """Pages of ``inode`` changed by data ops at positions in [lo, hi)."""
        node = self.inodes[inode]
        pages: set[int] = set()
        i = bisect.bisect_left(node.positions, lo)
        while i < len(node.datas) and node.datas[i].position < hi:
            d = node.datas[i]
            pages.update(range(d.start // PAGE, max(d.start, d.end - 1) // PAGE + 1))
            i += 1
        return pages

    def last_sync(self, inode: int, k: int) -> int:
        """The durable bound of a file at crash point ``k``: data ops before it survive power loss."""
        node = self.inodes[inode]
        i = bisect.bisect_left(node.fsyncs, k)
        own = node.fsyncs[i - 1] if i else -1
        j = bisect.bisect_left(self.sync_alls, k)
        every = self.sync_alls[j - 1] if j else -1
        return max(own, every, 0)

    def durable_meta(self, meta: MetaOp, k: int) -> bool:
        j = bisect.bisect_right(self.sync_alls, meta.position)
        if j < len(self.sync_alls) and self.sync_alls[j] < k:
            return True
        for d in meta.dirs:
            node = self.inodes.get(d)
            if node is None:
                return False
            i = bisect.bisect_right(node.dir_syncs, meta.position)
            if not (i < len(node.dir_syncs) and node.dir_syncs[i] < k):
                return False
        return bool(meta.dirs)

    def dropped_by_failed_fsyncs(self) -> frozenset[int]:
        """Data ops whose pages a failed fsync may have dropped (fsyncgate, Linux >= 4.13).

        After fsync fails, the kernel marks the file's dirty pages clean: what they held is
        gone from the page cache once evicted, although a later fsync succeeds. Those are the
        writes between the file's last successful sync and each failed one.
        """
        out: set[int] = set()
        for node in self.inodes.values():
            for f in node.failed_syncs:
                since = self.last_sync(node.id, f)
                out.update(d.position for d in node.datas if since <= d.position < f)
        return frozenset(out)

    def sync_positions(self) -> list[int]:
        """Positions of every relevant durability point (fsync of any kind, sync)."""
        out: set[int] = {p for p in self.sync_alls if self.relevant[p]}
        for node in self.inodes.values():
            for p in node.fsyncs + node.dir_syncs + [r[0] for r in node.range_syncs]:
                if self.relevant[p]:
                    out.add(p)
        return sorted(out)

    def namespace(self, k: int, persisted: Iterable[int] | None = None) -> dict[str, int] | None:
        """Paths (absolute) -> inode after the meta ops before ``k`` that persisted (None: all of them).

        Returns None when the chosen set cannot happen (a rename whose source never persisted).
        """
        ns = dict(self.initial_ns)
        keep = None if persisted is None else set(persisted)
        for m in self.metas:
            if m.position >= k:
                break
            if keep is not None and m.position not in keep:
                continue
            if not _apply_meta(ns, m, self.inodes, self.root):
                return None
        return ns

    def entries_of(self, ns: dict[str, int]) -> dict[str, int]:
        """The part of a name space inside the root, keyed by relative path."""
        return {self.rel(p): i for p, i in ns.items() if p != self.root and self.inside(p)}

    def explain(self, after: dict[str, Entry]) -> list[str]:
        """How the directory the save left differs from what the log says it did (empty: explained)."""
        out: list[str] = []
        model = self.entries_of(self.final_ns)
        for rel in sorted(set(model) | set(after)):
            m, a = model.get(rel), after.get(rel)
            node = self.inodes.get(m) if m is not None else None
            if node is None and a is not None:
                out.append(f"+ {rel} (not made by any observed operation)")
                continue
            if node is not None and a is None:
                out.append(f"- {rel} (observed operations leave it there)")
                continue
            assert node is not None and a is not None
            if node.kind != a.kind and not (node.kind == "fifo" and a.kind == "other"):
                out.append(f"~ {rel} (the operations make a {node.kind}, it is a {a.kind})")
            elif node.kind == "file" and not node.volatile and node.size_at(len(self.ops)) != a.size:
                out.append(f"~ {rel} ({node.size_at(len(self.ops))} B by the operations, {a.size} B on disk)")
            elif node.kind == "symlink" and node.target != a.target:
                out.append(f"~ {rel} (points at {a.target}, the operations say {node.target})")
            elif node.created < 0 and node.initial == rel and not node.datas and not node.volatile:
                b = self.before.entries.get(rel)
                if b is not None and a.kind == "file" and not _same_file(self.before, rel, b, a):
                    out.append(f"~ {rel} (changed, but no observed operation wrote it)")
        # hard links: paths of one model inode must share one inode on disk
        groups: dict[int, list[str]] = {}
        for rel, i in model.items():
            groups.setdefault(i, []).append(rel)
        for paths in groups.values():
            if len(paths) > 1 and all(p in after for p in paths) and len({after[p].ino for p in paths}) != 1:
                out.append(f"~ {', '.join(paths)} (one file by the operations, separate files on disk)")
        return out

    def verify_content(self) -> list[str]:
        """Files whose bytes on disk differ from what the recorded writes put there (empty: all match)."""
        out: list[str] = []
        n = len(self.ops)
        seen: set[int] = set()
        for path, inode in sorted(self.final_ns.items()):
            node = self.inodes.get(inode)
            if node is None or node.kind != "file" or node.volatile or inode in seen or not self.inside(path):
                continue
            seen.add(inode)
            if not node.datas or node.unknown:
                continue
            size = node.size_at(n)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                for s, e, kind, src, off in self.extents(inode, 0, size, n):
                    if kind == SRC_FINAL:
                        continue
                    if not _same_bytes(fd, s, e, kind, src, off, self):
                        out.append(
                            f"~ {self.rel(path)} (bytes {s}-{e} are not what the observed writes put there)"
                        )
                        break
            finally:
                os.close(fd)
        return out


def _same_file(before: Snapshot, rel: str, b: Entry, a: Entry) -> bool:
    """An untouched file: the same inode and size, and the same bytes (the time alone can move:
    fallocate(KEEP_SIZE), utimensat and mapped stores change it without a write)."""
    if (a.ino, a.size) != (b.ino, b.size):
        return False
    if a.mtime_ns == b.mtime_ns:
        return True
    copy = before.copy_of(rel)
    if copy is None:
        return True  # taken without content: nothing to compare against
    with open(copy, "rb") as x, open(os.path.join(before.root, rel), "rb") as y:
        while True:
            cx, cy = x.read(1 << 20), y.read(1 << 20)
            if cx != cy:
                return False
            if not cx:
                return True


def _same_bytes(fd: int, s: int, e: int, kind: int, src: object, off: int, model: FsModel) -> bool:
    pos = s
    src_fd = -1
    if kind == SRC_PRISTINE:
        rel = model.inodes[src].initial  # type: ignore[index]
        copy = model.before.copy_of(rel) if rel is not None else None
        if copy is None:
            return True  # taken without content: nothing to compare against
        src_fd = os.open(copy, os.O_RDONLY)
    try:
        while pos < e:
            n = min(e - pos, 1 << 20)
            got = os.pread(fd, n, pos)
            if kind == SRC_ZERO:
                want = bytes(n)
            elif kind == SRC_SPOOL:
                assert isinstance(src, Spool)
                want = src.read(off + (pos - s), n)
            else:
                want = os.pread(src_fd, n, off + (pos - s))
            if got != want:
                return False
            pos += n
        return True
    finally:
        if src_fd >= 0:
            os.close(src_fd)


def _is_dir(ns: dict[str, int], inodes: dict[int, Inode], path: str, root: str) -> bool:
    if path == root:
        return True
    if not (path.startswith(root + os.sep)):
        return True  # directories outside the root are taken to exist
    i = ns.get(path)
    return i is not None and i in inodes and inodes[i].kind == "dir"


def _apply_meta(ns: dict[str, int], m: MetaOp, inodes: dict[int, Inode], root: str) -> bool:
    """Apply one persisted meta op to ``ns``; False when it cannot have persisted."""
    kind = m.kind
    target = m.dst if kind in (OpKind.REPLACE, OpKind.LINK) else m.path
    if not _is_dir(ns, inodes, os.path.dirname(target), root):
        if kind == OpKind.REPLACE and m.path in ns and ns[m.path] == m.inode:
            del ns[m.path]  # moved into a directory whose creation was lost: gone (lost+found)
        return True
    if kind in (OpKind.CREATE, OpKind.MKDIR, OpKind.SYMLINK, OpKind.MKFIFO):
        ns[m.path] = m.inode
    elif kind in (OpKind.UNLINK, OpKind.RMDIR):
        if m.path not in ns:
            return False
        if kind == OpKind.RMDIR and any(p.startswith(m.path + os.sep) for p in ns):
            return False
        del ns[m.path]
    elif kind == OpKind.LINK:
        if ns.get(m.path) != m.inode:
            return False
        ns[m.dst] = m.inode
    elif kind == OpKind.REPLACE:
        if ns.get(m.path) != m.inode:
            # the rename cannot persist without its source's creation: a name that still points at
            # another file (an unlink and re-create of it reverted) is not the source
            return False
        src, dst = m.path, m.dst
        there = ns.get(dst)
        if there is not None and there != m.inode:
            src_dir = inodes[m.inode].kind == "dir" if m.inode in inodes else False
            dst_dir = inodes[there].kind == "dir" if there in inodes else False
            if src_dir != dst_dir:
                return False  # rename(2): EISDIR / ENOTDIR, it cannot have happened
            if dst_dir and any(p.startswith(dst + os.sep) for p in ns):
                return False  # rename(2): ENOTEMPTY
        moved = {p: v for p, v in ns.items() if p == src or p.startswith(src + os.sep)}
        for p in moved:
            del ns[p]
        for p in [p for p in ns if p == dst or p.startswith(dst + os.sep)]:
            del ns[p]
        for p, v in moved.items():
            ns[dst + p[len(src) :]] = v
    return True


def spools_of(model: FsModel) -> set[Spool]:
    """The spools a model's extents read from (kept alive as long as the states need them)."""
    out: set[Spool] = set()
    for node in model.inodes.values():
        for d in node.datas:
            for ext in d.sources:
                if ext[2] == SRC_SPOOL and isinstance(ext[3], Spool):
                    out.add(ext[3])
    return out


__all__ += ["NAMESPACE_KINDS", "spools_of"]
