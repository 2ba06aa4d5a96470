"""Enumerate every state a directory can be left in by a crash during a save.

Input: a snapshot of the directory before the save and the operation log a
``RecordingFS`` captured while the save ran. Output: every distinct directory
state a crash could leave, under one of two models.

``process`` (kill -9): the page cache survives, so a crash after operation k
shows exactly the first k operations. One state per prefix.

``power-loss`` (ALICE, OSDI'14; LevelDB FaultInjectionTestEnv): for each
prefix k, what the disk holds is weaker than what the process saw:

* file data written after that file's last fsync may be lost, persist whole,
  or persist torn at block (4 KiB) boundaries: either cut short, or with the
  file already extended and the unwritten blocks reading as zeros (delayed
  allocation). Pending writes of one file persist in order.
* a directory operation (create, rename, unlink, mkdir, rmdir, symlink) not
  followed by an fsync of its directory may be reverted. Small sets of pending
  directory operations are enumerated as all subsets; larger ones as every
  in-order prefix plus every single omission (ALICE's ordering pass).

Combinations that cannot happen (a rename whose source was never created) are
skipped and counted; identical states are reported once. ``Stats`` says how
many states were explored, how many were infeasible, and whether any dimension
was sampled rather than exhausted.

Files made outside the root and then renamed or linked into it (a temp file in
``/tmp``, say) are followed from their creation. What cannot be modelled (a
file that existed outside the root before the save and is moved in, a write to
a file the log never opened) is listed in ``unmodelled``, never guessed.

One module (over 500 lines) on purpose: the analysis pass and the enumeration
share one model of inodes, pending operations and durability points, and
splitting them would spread that model over private names of two modules.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat as _stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from persistkit.testing.fs.recordfs import Op

__all__ = ["CrashSimulator", "CrashState", "Entry", "Snapshot", "Stats"]

Model = Literal["process", "power-loss"]


@dataclass(frozen=True)
class Entry:
    """One directory entry: ``kind`` is "file", "dir" or "symlink"."""

    kind: str
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The contents of a directory tree, keyed by path relative to ``root``."""

    root: str
    entries: dict[str, Entry]

    @classmethod
    def take(cls, root: str | os.PathLike[str]) -> Snapshot:
        top = os.path.abspath(os.fspath(root))
        entries: dict[str, Entry] = {}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            rel_dir = os.path.relpath(dirpath, top)
            for name in list(dirnames):
                full = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if os.path.islink(full):
                    entries[rel] = Entry("symlink", target=os.readlink(full))
                    dirnames.remove(name)
                else:
                    entries[rel] = Entry("dir")
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                st = os.lstat(full)
                if _stat.S_ISLNK(st.st_mode):
                    entries[rel] = Entry("symlink", target=os.readlink(full))
                elif _stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        entries[rel] = Entry("file", f.read())
        return cls(top, entries)

    def files(self) -> dict[str, bytes]:
        return {p: e.data for p, e in self.entries.items() if e.kind == "file"}

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for path in sorted(self.entries):
            e = self.entries[path]
            h.update(f"{path}\0{e.kind}\0{e.target}\0{len(e.data)}\0".encode())
            h.update(e.data)
        return h.hexdigest()

    def materialize(self, root: str | os.PathLike[str] | None = None) -> str:
        """Make ``root`` (default: the snapshot's own root) hold exactly this state."""
        top = os.path.abspath(os.fspath(root if root is not None else self.root))
        os.makedirs(top, exist_ok=True)
        for name in os.listdir(top):
            full = os.path.join(top, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        for path in sorted(self.entries, key=lambda p: p.count(os.sep)):
            e = self.entries[path]
            full = os.path.join(top, path)
            if e.kind == "dir":
                os.makedirs(full, exist_ok=True)
            elif e.kind == "symlink":
                os.symlink(e.target, full)
            else:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(e.data)
        return top

    def diff(self, other: Snapshot) -> list[str]:
        """Human-readable differences, for failure messages."""
        out: list[str] = []
        for path in sorted(set(self.entries) | set(other.entries)):
            a, b = self.entries.get(path), other.entries.get(path)
            if a == b:
                continue
            if a is None:
                out.append(f"+ {path}")
            elif b is None:
                out.append(f"- {path}")
            else:
                out.append(f"~ {path} ({a.kind} {len(a.data)} B -> {b.kind} {len(b.data)} B)")
        return out


@dataclass(frozen=True)
class CrashState:
    """A directory state a crash could leave.

    ``after``: how many logged operations had been issued. ``complete``: the
    save had returned (every operation issued), so only the new state is
    acceptable. ``description`` says what was lost or torn.
    """

    after: int
    model: str
    complete: bool
    description: str
    snapshot: Snapshot

    def materialize(self, root: str | os.PathLike[str] | None = None) -> str:
        return self.snapshot.materialize(root)


@dataclass
class Stats:
    states: int = 0
    duplicates: int = 0
    infeasible: int = 0
    sampled: bool = False
    prefixes: int = 0

    def describe(self) -> str:
        extra = f", {self.infeasible} infeasible combinations skipped" if self.infeasible else ""
        return f"{self.states} distinct states{extra}{' (sampled)' if self.sampled else ''}"


# -- the analysed log ---------------------------------------------------------


@dataclass
class _Meta:
    index: int
    kind: str  # create, rename, link, unlink, mkdir, rmdir, symlink
    path: str
    dst: str = ""
    inode: int = 0
    target: str = ""
    dirs: tuple[str, ...] = ()


@dataclass
class _Data:
    index: int
    inode: int
    kind: str  # write, truncate
    offset: int = 0
    data: bytes = b""
    size: int = 0


@dataclass
class _Analysis:
    metas: list[_Meta] = field(default_factory=list)
    datas: list[_Data] = field(default_factory=list)
    fsyncs: dict[int, list[int]] = field(default_factory=dict)  # inode -> op indexes
    dir_syncs: dict[str, list[int]] = field(default_factory=dict)  # rel dir -> op indexes
    sync_alls: list[int] = field(default_factory=list)  # sync()/syncfs(): everything durable


def _parent(rel: str) -> str:
    parent = os.path.dirname(rel)
    return parent if parent else "."


class CrashSimulator:
    """Enumerates crash states for ``ops`` applied to the ``before`` snapshot."""

    def __init__(
        self,
        before: Snapshot,
        ops: Sequence[Op],
        *,
        block_size: int = 4096,
        max_tears_per_write: int = 16,
        max_combinations: int = 4096,
        exhaustive_meta_limit: int = 6,
    ) -> None:
        self.before = before
        self.root = before.root
        self.unmodelled: list[str] = []
        self.ops = self._relevant(ops)
        self.block_size = block_size
        self.max_tears = max_tears_per_write
        self.max_combinations = max_combinations
        self.exhaustive_meta_limit = exhaustive_meta_limit
        self.stats = Stats()
        self._analysis = self._analyse()

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _rel(self, path: str) -> str:
        return os.path.normpath(os.path.relpath(path, self.root))

    def _relevant(self, ops: Sequence[Op]) -> list[Op]:
        """Ops under the root, plus those making a file outside it that is later moved or linked in."""
        names: dict[str, set[int]] = {}  # outside path -> handles that opened it
        needed: set[int] = set()
        for op in ops:
            if op.kind in ("create", "open_append", "open_existing") and op.handle is not None:
                names.setdefault(op.path, set()).add(op.handle)
            elif op.kind in ("replace", "link") and op.dst:
                if not self._inside(op.path) and self._inside(op.dst):
                    needed |= names.get(op.path, set())
                if op.kind == "replace":
                    for p in [p for p in names if p == op.path or p.startswith(op.path + os.sep)]:
                        names.setdefault(op.dst + p[len(op.path) :], set()).update(names.pop(p))
        return [
            op
            for op in ops
            if self._inside(op.path)
            or (op.dst is not None and op.kind != "symlink" and self._inside(op.dst))
            or (op.handle is not None and op.handle in needed)
            or op.kind == "sync_all"
        ]

    # -- pass 1: what each operation did, in terms of inodes ----------------
    def _analyse(self) -> _Analysis:
        a = _Analysis()
        self._outside_unknown: set[str] = set()
        ns: dict[str, int | str] = {}  # rel -> inode id (files) or "dir"/"symlink"
        inode_ids = itertools.count(1)
        for path, entry in self.before.entries.items():
            ns[path] = next(inode_ids) if entry.kind == "file" else entry.kind
        self._initial_inodes = {p: i for p, i in ns.items() if isinstance(i, int)}
        handles: dict[int, int] = {}
        for pos, op in enumerate(self.ops):
            rel = self._rel(op.path)
            if op.kind in ("create", "open_append", "open_existing"):
                existing = ns.get(rel)
                if isinstance(existing, int):
                    handles[op.handle or 0] = existing
                    if op.kind == "create" and op.truncate:
                        a.datas.append(_Data(pos, existing, "truncate", size=0))
                else:
                    if op.kind == "open_existing" and not (op.truncate or rel.startswith("..")):
                        self.unmodelled.append(
                            f"{rel}: reopened during the save, but it was not in the directory before the "
                            "save and no recorded operation created it"
                        )
                    elif op.kind == "open_existing":
                        self._outside_unknown.add(rel)
                    inode = next(inode_ids)
                    ns[rel] = inode
                    handles[op.handle or 0] = inode
                    a.metas.append(_Meta(pos, "create", rel, inode=inode, dirs=(_parent(rel),)))
            elif op.kind in ("write", "truncate", "fsync") and (op.handle or 0) not in handles:
                self.unmodelled.append(
                    f"{rel}: {op.kind} through a file the recorded operations never opened"
                )
            elif op.kind == "write":
                a.datas.append(_Data(pos, handles[op.handle or 0], "write", offset=op.offset, data=op.data))
            elif op.kind == "truncate":
                a.datas.append(_Data(pos, handles[op.handle or 0], "truncate", size=op.size))
            elif op.kind == "fsync":
                a.fsyncs.setdefault(handles[op.handle or 0], []).append(pos)
            elif op.kind == "sync_all":
                a.sync_alls.append(pos)
            elif op.kind == "link":
                dst = self._rel(op.dst or "")
                if rel not in ns and not rel.startswith("..") and not dst.startswith(".."):
                    self.unmodelled.append(f"{dst}: linked from {rel}, which no recorded operation created")
                elif (rel in self._outside_unknown or rel not in ns) and not dst.startswith(".."):
                    self.unmodelled.append(
                        f"{dst}: linked from {op.path}, a file outside the root that existed before the save "
                        "(its contents then are unknown)"
                    )
                linked = ns.get(rel)
                if rel in ns:
                    ns[dst] = ns[rel]
                a.metas.append(
                    _Meta(pos, "link", rel, dst=dst, inode=linked if isinstance(linked, int) else 0,
                          dirs=(_parent(dst),))
                )  # fmt: skip
            elif op.kind == "replace":
                dst = self._rel(op.dst or "")
                if rel not in ns and not rel.startswith("..") and not dst.startswith(".."):
                    self.unmodelled.append(f"{dst}: renamed from {rel}, which no recorded operation created")
                elif (rel in self._outside_unknown or rel not in ns) and not dst.startswith(".."):
                    self.unmodelled.append(
                        f"{dst}: renamed from {op.path}, a file outside the root that existed before the save "
                        "(its contents then are unknown)"
                    )
                source = ns.get(rel)
                moved = {p: v for p, v in ns.items() if p == rel or p.startswith(rel + os.sep)}
                for p in moved:
                    del ns[p]
                for p in [p for p in ns if p == dst or p.startswith(dst + os.sep)]:
                    del ns[p]
                for p, v in moved.items():
                    ns[dst + p[len(rel) :]] = v
                # A rename is one journal transaction on ext4/xfs: syncing the directory that gains
                # the name makes the whole move durable (requiring both would fail correct saves
                # that move a file in from a scratch directory and sync the target directory).
                a.metas.append(
                    _Meta(pos, "rename", rel, dst=dst, inode=source if isinstance(source, int) else 0,
                          dirs=(_parent(dst),))
                )  # fmt: skip
            elif op.kind == "unlink":
                ns.pop(rel, None)
                a.metas.append(_Meta(pos, "unlink", rel, dirs=(_parent(rel),)))
            elif op.kind == "mkdir":
                ns[rel] = "dir"
                a.metas.append(_Meta(pos, "mkdir", rel, dirs=(_parent(rel),)))
            elif op.kind == "rmdir":
                ns.pop(rel, None)
                a.metas.append(_Meta(pos, "rmdir", rel, dirs=(_parent(rel),)))
            elif op.kind == "symlink":
                ns[rel] = "symlink"
                a.metas.append(_Meta(pos, "symlink", rel, target=op.dst or "", dirs=(_parent(rel),)))
            elif op.kind == "fsync_dir":
                a.dir_syncs.setdefault(rel, []).append(pos)
        return a

    # -- pass 2: enumerate ----------------------------------------------------
    def states(self, model: Model = "power-loss") -> Iterator[CrashState]:
        """Yield every distinct crash state, prefix by prefix."""
        if model not in ("process", "power-loss"):
            raise ValueError(f"model must be 'process' or 'power-loss', not {model!r}")
        self.stats = Stats()
        seen: set[tuple[str, bool]] = set()
        n = len(self.ops)
        for k in range(n + 1):
            self.stats.prefixes += 1
            for state in self._states_at(k, model):
                key = (state.snapshot.fingerprint(), state.complete)
                if key in seen:
                    self.stats.duplicates += 1
                    continue
                seen.add(key)
                self.stats.states += 1
                yield state

    def _durable_meta(self, meta: _Meta, k: int) -> bool:
        if any(meta.index < s < k for s in self._analysis.sync_alls):
            return True
        return all(any(meta.index < s < k for s in self._analysis.dir_syncs.get(d, ())) for d in meta.dirs)

    def _sync_point(self, inode: int, k: int) -> int:
        """Index of the last fsync of ``inode`` (or sync of everything) before k (-1 if none)."""
        syncs = [s for s in self._analysis.fsyncs.get(inode, ()) if s < k]
        syncs += [s for s in self._analysis.sync_alls if s < k]
        return max(syncs) if syncs else -1

    def _meta_choices(self, pending: list[_Meta]) -> Iterator[tuple[frozenset[int], str]]:
        """Sets of pending meta-op indexes that persist, with a description."""
        idx = [m.index for m in pending]
        if len(idx) <= self.exhaustive_meta_limit:
            for r in range(len(idx), -1, -1):
                for subset in itertools.combinations(idx, r):
                    dropped = [i for i in idx if i not in subset]
                    yield frozenset(subset), self._describe_dropped(dropped)
            return
        self.stats.sampled = True
        yielded: set[frozenset[int]] = set()
        for j in range(len(idx), -1, -1):
            keep = frozenset(idx[:j])
            if keep not in yielded:
                yielded.add(keep)
                yield keep, self._describe_dropped(idx[j:])
        for i in idx:
            keep = frozenset(x for x in idx if x != i)
            if keep not in yielded:
                yielded.add(keep)
                yield keep, self._describe_dropped([i])

    def _describe_dropped(self, dropped: Iterable[int]) -> str:
        parts = [f"reverted {self.ops[i].describe()}" for i in dropped]
        return "; ".join(parts)

    def _data_options(self, inode: int, k: int) -> list[tuple[tuple[int, int, str], str]]:
        """Per-inode options: (number of pending ops kept, bytes of the next op, tear mode)."""
        sync = self._sync_point(inode, k)
        pending = [d for d in self._analysis.datas if d.inode == inode and sync < d.index < k]
        options: list[tuple[tuple[int, int, str], str]] = [((len(pending), 0, "none"), "")]
        for j in range(len(pending) - 1, -1, -1):
            d = pending[j]
            label = self.ops[d.index].describe()
            options.append(((j, 0, "none"), f"lost {label}"))
            if d.kind != "write":
                continue
            tears = self._tear_points(d)
            options.append(((j, 0, "zero"), f"{label} left as zeros"))
            for t in tears:
                options.append(((j, t, "cut"), f"{label} torn after {t} B"))
                options.append(((j, t, "zero"), f"{label} torn after {t} B, rest zeros"))
        return options

    def _tear_points(self, d: _Data) -> list[int]:
        bs = self.block_size
        start, end = d.offset, d.offset + len(d.data)
        first = (start // bs + 1) * bs
        points = [b - start for b in range(first, end, bs)]
        if len(points) > self.max_tears:
            self.stats.sampled = True
            step = (len(points) - 1) / (self.max_tears - 1)
            points = sorted({points[round(i * step)] for i in range(self.max_tears)})
        return points

    def _states_at(self, k: int, model: Model) -> Iterator[CrashState]:
        complete = k == len(self.ops)
        metas = [m for m in self._analysis.metas if m.index < k]
        where = f"after {self.ops[k - 1].describe()}" if k else "before the first operation"
        if model == "process":
            snap = self._build(k, frozenset(m.index for m in metas), {})
            if snap is not None:
                yield CrashState(k, model, complete, f"process crash {where}", snap)
            return
        pending = [m for m in metas if not self._durable_meta(m, k)]
        durable = frozenset(m.index for m in metas if self._durable_meta(m, k))
        for keep, meta_desc in self._meta_choices(pending):
            persisted = durable | keep
            inodes = self._live_inodes(k, persisted)
            if inodes is None:
                self.stats.infeasible += 1
                continue
            per_inode = [(i, self._data_options(i, k)) for i in sorted(inodes)]
            per_inode = [(i, opts) for i, opts in per_inode if len(opts) > 1]
            for combo in self._combinations(per_inode):
                choice = {i: opt[0] for i, opt in combo}
                desc = "; ".join(x for x in [meta_desc, *(opt[1] for _, opt in combo)] if x)
                snap = self._build(k, persisted, choice)
                if snap is None:
                    self.stats.infeasible += 1
                    continue
                yield CrashState(
                    k, model, complete, f"power loss {where}" + (f": {desc}" if desc else ""), snap
                )

    def _combinations(
        self, per_inode: list[tuple[int, list[tuple[tuple[int, int, str], str]]]]
    ) -> Iterator[list[tuple[int, tuple[tuple[int, int, str], str]]]]:
        total = 1
        for _, opts in per_inode:
            total *= len(opts)
        if total <= self.max_combinations:
            for product in itertools.product(*[[(i, o) for o in opts] for i, opts in per_inode]):
                yield list(product)
            return
        # Too many to take the product: vary one file at a time while the others
        # are all-persisted, then all-lost (LevelDB resets one file at a time too).
        self.stats.sampled = True
        for baseline in (0, 1):
            base = [(i, opts[0] if baseline == 0 else opts[1]) for i, opts in per_inode]
            for pos, (i, opts) in enumerate(per_inode):
                for o in opts:
                    combo = list(base)
                    combo[pos] = (i, o)
                    yield combo

    def _namespace(self, k: int, persisted: frozenset[int]) -> dict[str, int | Entry] | None:
        ns: dict[str, int | Entry] = {}
        for path, entry in self.before.entries.items():
            ns[path] = self._initial_inodes[path] if entry.kind == "file" else entry
        for m in self._analysis.metas:
            if m.index >= k or m.index not in persisted:
                continue
            if not _is_dir(ns, _parent(m.path)):
                # Its directory's own creation was lost: whatever happened inside it
                # is unreachable after the crash (it would end up in lost+found).
                continue
            if m.kind == "create":
                ns[m.path] = m.inode
            elif m.kind == "mkdir":
                ns[m.path] = Entry("dir")
            elif m.kind == "symlink":
                ns[m.path] = Entry("symlink", target=m.target)
            elif m.kind == "link":
                if m.path not in ns or (m.inode and ns[m.path] != m.inode):
                    return None  # the link cannot persist without its source
                if _is_dir(ns, _parent(m.dst)):
                    ns[m.dst] = ns[m.path]
            elif m.kind in ("unlink", "rmdir"):
                if m.path not in ns:
                    return None
                if m.kind == "rmdir" and any(p.startswith(m.path + os.sep) for p in ns):
                    return None
                del ns[m.path]
            elif m.kind == "rename":
                if m.path not in ns or (m.inode and ns[m.path] != m.inode):
                    # the rename cannot persist without its source's creation: a name that still
                    # points at another file (an unlink and re-create of it reverted) is not the source
                    return None
                moved = {p: v for p, v in ns.items() if p == m.path or p.startswith(m.path + os.sep)}
                for p in moved:
                    del ns[p]
                if not _is_dir(ns, _parent(m.dst)):
                    continue
                for p in [p for p in ns if p == m.dst or p.startswith(m.dst + os.sep)]:
                    del ns[p]
                for p, v in moved.items():
                    ns[m.dst + p[len(m.path) :]] = v
        return ns

    def final(self) -> Snapshot | None:
        """The directory once every operation happened (the process model after the last op)."""
        return self._build(len(self.ops), frozenset(m.index for m in self._analysis.metas), {})

    def _live_inodes(self, k: int, persisted: frozenset[int]) -> set[int] | None:
        ns = self._namespace(k, persisted)
        if ns is None:
            return None
        return {v for p, v in ns.items() if isinstance(v, int) and not p.startswith("..")}

    def _content(self, inode: int, k: int, choice: tuple[int, int, str] | None) -> bytes:
        base = b""
        for path, ino in self._initial_inodes.items():
            if ino == inode:
                base = self.before.entries[path].data
        buf = bytearray(base)
        sync = self._sync_point(inode, k)
        datas = [d for d in self._analysis.datas if d.inode == inode and d.index < k]
        synced = [d for d in datas if d.index < sync]
        pending = [d for d in datas if d.index > sync]
        keep, tear, mode = choice if choice is not None else (len(pending), 0, "none")
        for d in synced + pending[:keep]:
            _apply(buf, d, len(d.data))
        if mode != "none" and keep < len(pending):
            d = pending[keep]
            if mode == "zero":
                end = d.offset + len(d.data)
                if len(buf) < end:
                    buf.extend(b"\0" * (end - len(buf)))
            _apply(buf, d, tear)
        return bytes(buf)

    def _build(
        self, k: int, persisted: frozenset[int], choice: dict[int, tuple[int, int, str]]
    ) -> Snapshot | None:
        ns = self._namespace(k, persisted)
        if ns is None:
            return None
        entries: dict[str, Entry] = {}
        for path, v in ns.items():
            if path.startswith(".."):
                continue  # outside the root: followed only for what is moved in
            if isinstance(v, Entry):
                entries[path] = v
            else:
                entries[path] = Entry("file", self._content(v, k, choice.get(v)))
        return Snapshot(self.root, entries)


def _is_dir(ns: dict[str, int | Entry], rel: str) -> bool:
    # Directories outside the root are taken to exist: only files moved in from them matter.
    return rel == "." or rel.startswith("..") or ns.get(rel) == Entry("dir")


def _apply(buf: bytearray, d: _Data, length: int) -> None:
    if d.kind == "truncate":
        if d.size > len(buf):
            buf.extend(b"\0" * (d.size - len(buf)))  # ftruncate/fallocate extend with zeros
        else:
            del buf[d.size :]
        return
    data = d.data[:length]
    end = d.offset + len(data)
    if len(buf) < d.offset:
        buf.extend(b"\0" * (d.offset - len(buf)))
    buf[d.offset : end] = data
