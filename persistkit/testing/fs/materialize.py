"""Build crash states in the root, changing only what differs, and put the root back afterwards.

A crash state is a ``Plan`` over an ``FsModel`` (``persistkit.testing.fs.states``).
The ``Materializer`` builds plans in the save's own root, because the code
under test loads from there:

* entries the save never touched stay exactly where they are (same inode, same
  bytes), so a program under test that holds a database connection or a file
  descriptor keeps working;
* every file the save touched is played by the verifier's own copy of that
  inode, kept in the ``Workshop`` beside the root and hard-linked into place
  (a hard link in the model is a hard link here); moving from one state to the
  next rewrites only the pages whose content differs, so the cost of a state
  is the bytes it changes, not the size of the files;
* the files the save left are hard-linked into the workshop before the first
  state is built and never written, so ``restore()`` puts the root back as the
  save left it: the same inodes, bytes, modes, symlinks, FIFOs and times (a
  directory the save created comes back as a new directory with the same mode
  and time);
* what ``load()`` itself changes in a state (SQLite rolling back a hot
  journal, a store quarantining a file) is noticed through inotify (or a scan
  where inotify is unavailable) and undone before the next state: a copy it
  wrote is rebuilt, an untouched file it wrote is restored in place from the
  pre-save copy, anything it created is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import itertools
import os
import shutil
import stat as _stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from persistkit.testing.fs.model import PAGE, SRC_FINAL, SRC_PRISTINE, SRC_SPOOL, SRC_ZERO, FsModel, Inode
from persistkit.testing.fs.ops import Spool, copy_range
from persistkit.testing.fs.snapshot import Entry, Workshop, scan
from persistkit.testing.fs.states import DURABLE, Plan

__all__ = ["Materializer", "RestoreError"]

_ZEROS = bytes(1 << 20)


class RestoreError(RuntimeError):
    """The root could not be put back as the save left it (the message names what differs)."""


# Content of one file in one state: (default bound, ((first page, end page, bound), ...), size,
# positions of data ops whose pages were dropped).
Descriptor = tuple[int, tuple[tuple[int, int, int], ...], int, frozenset[int]]


@dataclass
class _Resolved:
    entries: dict[str, int]  # rel -> inode id
    files: dict[int, Descriptor]
    k: int


@dataclass
class _Placed:
    kind: str
    inode: int
    origin: str  # "final": an entry the save left, in place; "copy": the verifier's copy of the inode
    ino: int
    ctime_ns: int


class Materializer:
    """Builds plans of ``model`` into its root (or into an empty directory) and restores the root."""

    def __init__(self, model: FsModel) -> None:
        self.model = model
        self.root = model.root
        before = model.before
        self.workshop = before.workshop if before.workshop is not None else Workshop(self.root)
        self._owns_workshop = before.workshop is None
        self._fds: dict[str, int] = {}
        self.bytes_written = 0  # bytes written to build states (the rest was linked or left in place)
        self._copies: dict[int, str] = {}  # inode id -> its copy in the workshop
        self._copy_desc: dict[int, Descriptor | None] = {}  # what each copy holds now
        self._copy_mode: dict[int, int] = {}
        self._current: dict[str, _Placed] | None = None
        self._final: dict[str, Entry] = {}
        self._stash: dict[str, str] = {}  # rel -> a hard link of the entry the save left
        self._parked: dict[str, str] = {}  # rel -> where an entry the save left waits (renamed away)
        self._final_inode: dict[int, str] = {}  # inode id -> stash path of its final file
        self._watch: _Watcher | None = None
        self._untouched = {
            i for i, node in model.inodes.items()
            if node.created < 0 and not node.datas and not node.modes and node.initial is not None
        }  # fmt: skip
        self._mtimes = self._times()

    # -- planning ---------------------------------------------------------------------------
    def resolve(self, plan: Plan) -> _Resolved | None:
        model = self.model
        ns = model.namespace(plan.k, plan.meta)
        if ns is None:
            return None
        entries = model.entries_of(ns)
        if plan.hidden:
            gone = [rel for rel, i in entries.items() if i in plan.hidden]
            for rel in gone:
                for sub in [p for p in entries if p == rel or p.startswith(rel + os.sep)]:
                    entries.pop(sub, None)
        files: dict[int, Descriptor] = {}
        runs_by: dict[int, list[tuple[int, int, int]]] = {}
        for inode, lo, hi, bound in plan.runs:
            runs_by.setdefault(inode, []).append((lo, hi, bound))
        sizes = dict(plan.sizes)
        for inode in set(entries.values()):
            node = model.inodes[inode]
            if node.kind != "file":
                continue
            if node.volatile:
                files[inode] = (0, (), node.size_at(plan.k), frozenset())
                continue
            if plan.default == DURABLE:
                base = model.last_sync(inode, plan.k)
                extra = [
                    ((s // PAGE), -(-e // PAGE), pos)
                    for pos, s, e in node.range_syncs
                    if base <= pos < plan.k
                ]
            elif plan.upto is not None:
                base = max(plan.upto, model.last_sync(inode, plan.k))
                extra = []
            else:
                base = plan.k
                extra = []
            runs = tuple(sorted(extra + runs_by.get(inode, [])))
            size = sizes.get(inode)
            if size is None:
                size = node.size_at(base)
                for _lo, hi, bound in runs:
                    if bound > base:
                        size = max(size, min(node.size_at(bound), hi * PAGE))
            mine = (
                frozenset(d.position for d in node.datas if d.position in plan.dropped)
                if plan.dropped
                else frozenset()
            )
            files[inode] = (base, runs, size, mine)
        return _Resolved(entries, files, plan.k)

    def key(self, plan: Plan) -> object | None:
        """A value equal for plans that build the same directory (None: the plan cannot happen)."""
        r = self.resolve(plan)
        if r is None:
            return None
        model = self.model
        files = []
        for inode, (base, runs, size, skip) in sorted(r.files.items()):
            node = model.inodes[inode]
            canon = _canon(node, base)
            kept = tuple((lo, hi, c) for lo, hi, b in runs if (c := _canon(node, b)) != canon)
            files.append((inode, size, canon, kept, skip))
        modes = tuple(sorted((i, model.inodes[i].mode_at(r.k)) for i in set(r.entries.values())))
        return (frozenset(r.entries.items()), tuple(files), modes)

    # -- building ---------------------------------------------------------------------------
    def apply(self, plan: Plan, root: str | None = None) -> str:
        """Make ``root`` (default: the save's root) hold exactly ``plan``'s state."""
        r = self.resolve(plan)
        if r is None:
            raise ValueError(f"{plan}: this combination of operations cannot persist together")
        if root is not None and os.path.abspath(root) != self.root:
            return self._build_fresh(r, os.path.abspath(root))
        self._start()
        self._reconcile()
        self._place(r)
        if self._watch is not None:
            self._watch.drain()
        return self.root

    def contents(self, plan: Plan) -> dict[str, bytes]:
        r = self.resolve(plan)
        if r is None:
            raise ValueError(f"{plan}: this combination of operations cannot persist together")
        out: dict[str, bytes] = {}
        for rel, inode in r.entries.items():
            if inode in r.files:
                out[rel] = self._read(inode, r.files[inode])
        return out

    def kinds(self, plan: Plan) -> dict[str, str]:
        r = self.resolve(plan)
        if r is None:
            raise ValueError(f"{plan}: this combination of operations cannot persist together")
        return {rel: self.model.inodes[i].kind for rel, i in r.entries.items()}

    def differs(self, a: Plan, b: Plan) -> list[str]:
        """Paths (relative) whose kind or bytes differ between two plans (bytes compared by digest)."""
        ra, rb = self.resolve(a), self.resolve(b)
        if ra is None or rb is None:
            return []
        out = []
        for rel in sorted(set(ra.entries) | set(rb.entries)):
            ia, ib = ra.entries.get(rel), rb.entries.get(rel)
            if ia is None or ib is None:
                out.append(rel)
                continue
            na, nb = self.model.inodes[ia], self.model.inodes[ib]
            if (
                na.kind != nb.kind
                or (na.kind == "symlink" and na.target != nb.target)
                or (na.kind == "file" and self._digest(ia, ra.files[ia]) != self._digest(ib, rb.files[ib]))
            ):
                out.append(rel)
        return out

    def _digest(self, inode: int, desc: Descriptor) -> str:
        import hashlib

        return hashlib.blake2b(self._read(inode, desc), digest_size=16).hexdigest()

    def changed(self) -> list[str]:
        """Paths (relative) that something other than the materializer changed since the last state."""
        if self._watch is None:
            return []
        return sorted(self._watch.peek())

    # -- the live root ----------------------------------------------------------------------
    def _start(self) -> None:
        if self._current is not None:
            return
        final = scan(self.root)
        self._final = final
        model = self.model
        final_entries = model.entries_of(model.final_ns)
        current: dict[str, _Placed] = {}
        for rel, e in final.items():
            inode = final_entries.get(rel, 0)
            current[rel] = _Placed(e.kind, inode, "final", e.ino, e.ctime_ns)
            if e.kind != "dir":
                stash = self.workshop.new_path("final")
                try:
                    os.link(os.path.join(self.root, rel), stash, follow_symlinks=False)
                except OSError:
                    # another file system (or no hard links): keep a copy instead; inodes then
                    # cannot come back, only the bytes
                    stash = self.workshop.new_path("final-copy")
                    _copy_entry(os.path.join(self.root, rel), stash, e)
                self._stash[rel] = stash
                if inode and e.kind == "file":
                    self._final_inode.setdefault(inode, stash)
        for inode, path in model.final_paths.items():
            if inode not in self._final_inode and model.inside(path):
                rel = model.rel(path)
                if rel in self._stash:
                    self._final_inode[inode] = self._stash[rel]
        self._current = current
        self._root_mtime = os.stat(self.root).st_mtime_ns
        self._watch = _Watcher.open(self.root)

    def _reconcile(self) -> None:
        """Undo what the last load() changed (or anything else did) before building the next state."""
        assert self._current is not None
        dirty: set[str] | None
        dirty = self._watch.take() if self._watch is not None else None
        now_scan = scan(self.root) if dirty is None or "" in dirty else None
        if now_scan is not None:
            dirty = set(now_scan) | set(self._current)
        assert dirty is not None
        for rel in sorted(dirty, key=lambda p: -p.count(os.sep)):
            if not rel:
                continue
            full = os.path.join(self.root, rel)
            placed = self._current.get(rel)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                st = None
            if placed is None:
                if st is not None:
                    _remove(full)
                continue
            if st is not None and st.st_ino == placed.ino and st.st_ctime_ns == placed.ctime_ns:
                continue
            if placed.origin == "final" and placed.kind == "file" and placed.inode in self._untouched:
                # a file the save never touched, changed by load(): its bytes back, in place
                if st is None or st.st_ino != placed.ino:
                    if st is not None:
                        _remove(full)
                    os.link(self._stash[rel], full)
                self._restore_untouched(rel, placed)
                continue
            # changed: forget what the copy held, and clear the entry so the next state rebuilds it
            if placed.origin == "copy" and placed.kind == "file":
                self._copy_desc[placed.inode] = None
            if placed.kind == "dir" and st is not None and _stat.S_ISDIR(st.st_mode):
                if st.st_ino == placed.ino:
                    placed.ctime_ns = st.st_ctime_ns
                    continue
                # another directory in its place (the old one renamed away, a new one made): what was
                # made in it before it could be watched is unknown, so it goes, with all placed under it
                _remove(full)
                for sub in [p for p in self._current if p == rel or p.startswith(rel + os.sep)]:
                    del self._current[sub]
                continue
            if st is not None:
                _remove(full)
            del self._current[rel]

    def _restore_untouched(self, rel: str, placed: _Placed) -> None:
        node = self.model.inodes[placed.inode]
        copy = self.model.before.copy_of(node.initial or rel)
        full = os.path.join(self.root, rel)
        if copy is None:
            raise RestoreError(f"{rel}: load() changed it and there is no pre-save copy to put back")
        fd = os.open(full, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, 0)
            copy_range(self._fd(copy), 0, fd, 0, node.initial_size)
        finally:
            os.close(fd)
        f = self._final.get(rel)
        if f is not None:
            os.chmod(full, f.mode)
            os.utime(full, ns=(f.mtime_ns, f.mtime_ns))
        st = os.lstat(full)
        placed.ino, placed.ctime_ns = st.st_ino, st.st_ctime_ns

    def _place(self, r: _Resolved) -> None:
        assert self._current is not None
        model = self.model
        current = self._current
        want: dict[str, int] = r.entries
        # 1. remove what the state does not have (deepest first)
        for rel in sorted(current, key=lambda p: -p.count(os.sep)):
            placed = current[rel]
            inode = want.get(rel)
            keep = inode is not None and self._fits(placed, inode)
            if keep:
                continue
            full = os.path.join(self.root, rel)
            if placed.origin == "final":
                # move the entry the save left out of the way, not unlink it: renaming it back later
                # keeps its dentry, so a descriptor the program holds still names it (/proc/PID/fd,
                # strace -y), instead of "<path> (deleted)"
                parked = self.workshop.new_path("parked")
                try:
                    os.rename(full, parked)
                    self._parked[rel] = parked
                except OSError:
                    _remove(full)
            elif placed.kind == "dir":
                _remove(full)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(full)
            del current[rel]
        # 2. create and update (shallowest first)
        for rel in sorted(want, key=lambda p: (p.count(os.sep), p)):
            inode = want[rel]
            node = model.inodes[inode]
            full = os.path.join(self.root, rel)
            have = current.get(rel)
            mode = node.mode_at(r.k)
            if node.kind == "dir":
                if have is None:
                    os.mkdir(full, 0o700)
                    os.chmod(full, mode)
                    self._record(rel, "dir", inode, "copy")
                    if self._watch is not None:
                        self._watch.add(full, rel)
                continue
            if node.kind == "symlink":
                if have is None:
                    os.symlink(node.target, full)
                    self._record(rel, "symlink", inode, "copy")
                continue
            if node.kind == "fifo":
                if have is None:
                    os.mkfifo(full, mode)
                    os.chmod(full, mode)
                    self._record(rel, "fifo", inode, "copy")
                continue
            if have is not None and have.origin == "final":
                continue  # an untouched file, in place
            copy = self._copy(inode, r.files[inode], mode)
            if have is None:
                os.link(copy, full)
                self._record(rel, "file", inode, "copy")
            else:
                self._record(rel, "file", inode, "copy")
        # 3. times, for the entries this state placed
        for rel in want:
            placed = current[rel]
            if placed.origin == "copy":
                inode = placed.inode
                t = self._mtimes.get(inode)
                if t is not None:
                    with contextlib.suppress(OSError):
                        os.utime(os.path.join(self.root, rel), ns=(t, t), follow_symlinks=False)
                        st = os.lstat(os.path.join(self.root, rel))
                        placed.ctime_ns = st.st_ctime_ns
                        placed.ino = st.st_ino

    def _fits(self, placed: _Placed, inode: int) -> bool:
        """Whether the entry in place can play ``inode`` in the next state."""
        node = self.model.inodes[inode]
        if placed.kind != node.kind:
            return False
        if node.kind == "dir":
            return True
        if placed.origin == "final":
            return inode in self._untouched and placed.inode == inode
        return placed.inode == inode

    def _record(self, rel: str, kind: str, inode: int, origin: str) -> None:
        assert self._current is not None
        st = os.lstat(os.path.join(self.root, rel))
        self._current[rel] = _Placed(kind, inode, origin, st.st_ino, st.st_ctime_ns)

    def _copy(self, inode: int, desc: Descriptor, mode: int) -> str:
        """The verifier's copy of ``inode``, brought to ``desc`` by rewriting only what differs."""
        path = self._copies.get(inode)
        if path is None:
            path = self.workshop.new_path("states")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            self._copies[inode] = path
            self._copy_desc[inode] = None
        old = self._copy_desc.get(inode)
        if old != desc:
            fd = os.open(path, os.O_WRONLY)
            try:
                self._update(fd, inode, old, desc)
            finally:
                os.close(fd)
            self._copy_desc[inode] = desc
        if self._copy_mode.get(inode) != mode:
            os.chmod(path, mode)
            self._copy_mode[inode] = mode
        return path

    def _update(self, fd: int, inode: int, old: Descriptor | None, new: Descriptor) -> None:
        base, runs, size, skip = new
        if old is None:
            os.ftruncate(fd, 0)
            self._write_bounds(fd, inode, [(0, -(-size // PAGE), None)], new)
            os.ftruncate(fd, size)
            return
        o_base, o_runs, o_size, o_skip = old
        node = self.model.inodes[inode]
        pages = max(-(-size // PAGE), -(-o_size // PAGE))
        todo: list[tuple[int, int]] = []
        for lo, hi, b0, b1 in _segments(pages, o_base, o_runs, base, runs):
            if b0 == b1:
                continue
            todo += _touched(self.model, node, min(b0, b1), max(b0, b1), lo, hi)
        for d in node.datas:
            if d.position in (skip ^ o_skip):
                todo.append((d.start // PAGE, max(d.start, d.end - 1) // PAGE + 1))
        if size > o_size:
            todo.append((o_size // PAGE, -(-size // PAGE)))
        if size != o_size:
            os.ftruncate(fd, size)
        self._write_bounds(fd, inode, [(lo, hi, None) for lo, hi in _merge(todo)], new)

    def _write_bounds(
        self, fd: int, inode: int, regions: list[tuple[int, int, None]], desc: Descriptor
    ) -> None:
        base, runs, size, skip = desc
        node = self.model.inodes[inode]
        for lo, hi, _ in regions:
            for slo, shi, bound in _split(lo, hi, base, runs):
                a, b = slo * PAGE, min(shi * PAGE, size)
                if a >= b:
                    continue
                if node.volatile:
                    _write_zeros(fd, a, b - a)
                    continue
                for s, e, kind, src, off in self.model.extents(inode, a, b, bound, skip):
                    self._write_extent(fd, s, e, kind, src, off)

    def _write_extent(self, fd: int, s: int, e: int, kind: int, src: object, off: int) -> None:
        n = e - s
        if n <= 0:
            return
        if kind == SRC_ZERO:
            self.bytes_written += _write_zeros(fd, s, n)
            return
        self.bytes_written += n
        if kind == SRC_SPOOL:
            assert isinstance(src, Spool)
            copy_range(src.fd, off, fd, s, n)
        elif kind == SRC_PRISTINE:
            assert isinstance(src, int)
            rel = self.model.inodes[src].initial
            path = self.model.before.copy_of(rel) if rel is not None else None
            if path is None:
                raise RestoreError(f"{rel}: no pre-save copy of it to rebuild a crash state from")
            copy_range(self._fd(path), off, fd, s, n)
        elif kind == SRC_FINAL:
            assert isinstance(src, int)
            path = self._final_path(src)
            copy_range(self._fd(path), off, fd, s, n)

    def _final_path(self, inode: int) -> str:
        stash = self._final_inode.get(inode)
        if stash is not None:
            return stash
        path = self.model.final_paths.get(inode)
        if path is None:
            raise RestoreError(f"inode {inode}: the save left no file holding its bytes")
        return path

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            self._fds[path] = fd
        return fd

    def _read(self, inode: int, desc: Descriptor) -> bytes:
        base, runs, size, skip = desc
        node = self.model.inodes[inode]
        buf = bytearray(size)
        if node.volatile:
            return bytes(buf)
        for slo, shi, bound in _split(0, -(-size // PAGE), base, runs):
            a, b = slo * PAGE, min(shi * PAGE, size)
            for s, e, kind, src, off in self.model.extents(inode, a, b, bound, skip):
                if kind == SRC_ZERO:
                    continue
                if kind == SRC_SPOOL:
                    assert isinstance(src, Spool)
                    buf[s:e] = src.read(off, e - s)
                    continue
                if kind == SRC_PRISTINE:
                    rel = self.model.inodes[src].initial  # type: ignore[index]
                    path = self.model.before.copy_of(rel) if rel else None
                else:
                    ino = int(src)  # type: ignore[call-overload]
                    path = (
                        self._final_path(ino)
                        if self._current is not None
                        else self.model.final_paths.get(ino)
                    )
                if path is None:
                    raise RestoreError(f"inode {src}: no file holds its bytes")
                buf[s:e] = os.pread(self._fd(path), e - s, off)
        return bytes(buf)

    def _build_fresh(self, r: _Resolved, top: str) -> str:
        """Build the state from nothing into ``top`` (an empty or scratch directory)."""
        if os.path.lexists(top):
            for name in os.listdir(top):
                _remove(os.path.join(top, name))
        os.makedirs(top, exist_ok=True)
        model = self.model
        made: dict[int, str] = {}
        for rel in sorted(r.entries, key=lambda p: (p.count(os.sep), p)):
            inode = r.entries[rel]
            node = model.inodes[inode]
            full = os.path.join(top, rel)
            mode = node.mode_at(r.k)
            if node.kind == "dir":
                os.mkdir(full, 0o700)
            elif node.kind == "symlink":
                os.symlink(node.target, full)
                continue
            elif node.kind == "fifo":
                os.mkfifo(full, mode)
            elif inode in made:
                os.link(made[inode], full)
                continue
            else:
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    self._update(fd, inode, None, r.files[inode])
                finally:
                    os.close(fd)
                made[inode] = full
            os.chmod(full, mode)
            t = self._mtimes.get(inode)
            if t is not None:
                os.utime(full, ns=(t, t))
        return top

    def _times(self) -> dict[int, int]:
        """Modification times to give each inode: as the save left it, else as it was before."""
        model = self.model
        out: dict[int, int] = {}
        before = model.before.entries
        for rel, inode in model.entries_of(model.initial_ns).items():
            e = before.get(rel)
            if e is not None:
                out[inode] = e.mtime_ns
        for path, inode in model.final_ns.items():
            if model.inside(path) and path != self.root:
                with contextlib.suppress(OSError):
                    out[inode] = os.lstat(path).st_mtime_ns
        return out

    # -- putting the root back --------------------------------------------------------------
    def restore(self) -> None:
        """Put the root back exactly as the save left it (same inodes for everything but new directories)."""
        if self._current is None:
            return
        if self._watch is not None:
            self._watch.take()
        now = scan(self.root)
        final = self._final
        for rel in sorted(now, key=lambda p: -p.count(os.sep)):
            f, e = final.get(rel), now[rel]
            if f is not None and f.kind == e.kind and (f.kind == "dir" or f.ino == e.ino):
                continue
            _remove(os.path.join(self.root, rel))
        for rel in sorted(final, key=lambda p: (p.count(os.sep), p)):
            f = final[rel]
            full = os.path.join(self.root, rel)
            parked = self._parked.pop(rel, None)
            if parked is not None and not os.path.lexists(full):
                with contextlib.suppress(OSError):
                    os.rename(parked, full)  # the very entry (and dentry) the save left
            if os.path.lexists(full):
                continue
            if f.kind == "dir":
                os.mkdir(full, 0o700)
            else:
                stash = self._stash[rel]
                try:
                    os.link(stash, full, follow_symlinks=False)
                except OSError:
                    _copy_entry(stash, full, f)
        for rel in sorted(final, key=lambda p: -p.count(os.sep)):
            f = final[rel]
            full = os.path.join(self.root, rel)
            if f.kind == "symlink":
                continue
            with contextlib.suppress(OSError):
                if f.kind in ("dir", "file", "fifo"):
                    os.chmod(full, f.mode)
                os.utime(full, ns=(f.mtime_ns, f.mtime_ns), follow_symlinks=False)
        with contextlib.suppress(OSError):
            os.utime(self.root, ns=(self._root_mtime, self._root_mtime))
        self._current = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        problems = _differences(final, scan(self.root))
        if problems:
            raise RestoreError(
                f"crash states: the directory {self.root} could not be put back as the save left it: "
                + "; ".join(problems[:8])
            )

    def close(self) -> None:
        try:
            self.restore()
        finally:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            if self._owns_workshop:
                self.workshop.close()

    def __enter__(self) -> Materializer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _canon(node: Inode, bound: int) -> int:
    """The smallest bound with the same content: just after the last data op before ``bound``."""
    import bisect

    i = bisect.bisect_left(node.positions, bound)
    return node.positions[i - 1] + 1 if i else 0


def _split(lo: int, hi: int, base: int, runs: tuple[tuple[int, int, int], ...]) -> list[tuple[int, int, int]]:
    """Pages [lo, hi) cut where the runs change the bound: (first, end, bound) pieces."""
    out: list[tuple[int, int, int]] = []
    pos = lo
    for rlo, rhi, bound in sorted(runs):
        if rhi <= pos or rlo >= hi:
            continue
        if rlo > pos:
            out.append((pos, rlo, base))
        s, e = max(rlo, pos), min(rhi, hi)
        out.append((s, e, bound))
        pos = e
    if pos < hi:
        out.append((pos, hi, base))
    return out


def _segments(
    pages: int, b0: int, r0: tuple[tuple[int, int, int], ...], b1: int, r1: tuple[tuple[int, int, int], ...]
) -> list[tuple[int, int, int, int]]:
    """Page ranges with their (old bound, new bound)."""
    cuts = {0, pages}
    for lo, hi, _ in r0 + r1:
        cuts.update((min(lo, pages), min(hi, pages)))
    edges = sorted(cuts)
    out = []
    for lo, hi in itertools.pairwise(edges):
        if lo >= hi:
            continue
        out.append((lo, hi, _bound_of(lo, b0, r0), _bound_of(lo, b1, r1)))
    return out


def _bound_of(page: int, base: int, runs: tuple[tuple[int, int, int], ...]) -> int:
    for lo, hi, bound in runs:
        if lo <= page < hi:
            return bound
    return base


def _touched(
    model: FsModel, node: Inode, lo_pos: int, hi_pos: int, lo_page: int, hi_page: int
) -> list[tuple[int, int]]:
    """Page ranges within [lo_page, hi_page) written by data ops at positions in [lo_pos, hi_pos)."""
    import bisect

    out = []
    first = bisect.bisect_left(node.positions, lo_pos)
    last = bisect.bisect_left(node.positions, hi_pos)
    if last - first > 4 * (hi_page - lo_page) + 16:
        # few pages, many writes: ask the page index instead of walking the writes
        candidates: Iterable[int] = model.overlapping(node, lo_page * PAGE, hi_page * PAGE)
        candidates = [i for i in candidates if first <= i < last]
    else:
        candidates = range(first, last)
    for i in candidates:
        d = node.datas[i]
        a, b = d.start // PAGE, max(d.start, d.end - 1) // PAGE + 1
        a, b = max(a, lo_page), min(b, hi_page)
        if a < b:
            out.append((a, b))
    return out


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)
_PUNCH_AT_LEAST = 64 * 1024
_punch_state: list[Any] = []  # [fallocate] once loaded; [None] where it is unavailable


def _punch(fd: int, start: int, n: int) -> bool:
    """Make ``[start, start+n)`` read as zeros by deallocating it (no bytes written). False: not supported.

    By hand through ctypes because ``os.posix_fallocate`` takes no mode flags; a hole is what the
    lost data of a grown file reads as anyway, and punching costs nothing where writing 1 GiB of
    zeros costs seconds.
    """
    if not _punch_state:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.fallocate
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            fn.restype = ctypes.c_int
            _punch_state.append(fn)
        except (OSError, AttributeError):
            _punch_state.append(None)
    fn = _punch_state[0]
    if fn is None:
        return False
    if fn(fd, _PUNCH, start, n) == 0:
        return True
    if ctypes.get_errno() in (_errno.EOPNOTSUPP, _errno.ENOSYS):
        _punch_state[0] = None  # this file system cannot; write zeros from now on
    return False


def _write_zeros(fd: int, start: int, n: int) -> int:
    """Make the range read as zeros; the number of bytes actually written (0 when a hole was punched)."""
    if n >= _PUNCH_AT_LEAST and _punch(fd, start, n):
        return 0
    done = 0
    while done < n:
        chunk = min(n - done, len(_ZEROS))
        os.pwrite(fd, memoryview(_ZEROS)[:chunk], start + done)
        done += chunk
    return n


def _remove(full: str) -> None:
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if _stat.S_ISDIR(st.st_mode):
        shutil.rmtree(full, ignore_errors=True)
        if os.path.lexists(full):
            _make_writable(full)
            shutil.rmtree(full)
    else:
        os.unlink(full)


def _make_writable(top: str) -> None:
    for dirpath, dirs, _files in os.walk(top):
        for d in [dirpath, *[os.path.join(dirpath, x) for x in dirs]]:
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)


def _copy_entry(src: str, dst: str, e: Entry) -> None:
    if e.kind == "symlink":
        os.symlink(os.readlink(src), dst)
    elif e.kind == "fifo":
        os.mkfifo(dst, e.mode)
    elif e.kind == "file":
        shutil.copyfile(src, dst, follow_symlinks=False)
        os.chmod(dst, e.mode)


def _differences(want: dict[str, Entry], got: dict[str, Entry]) -> list[str]:
    out = []
    for rel in sorted(set(want) | set(got)):
        a, b = want.get(rel), got.get(rel)
        if a is None:
            out.append(f"{rel} is extra")
        elif b is None:
            out.append(f"{rel} is missing")
        elif (
            a.kind != b.kind
            or a.target != b.target
            or (a.kind != "dir" and a.ino != b.ino)
            or a.mode != b.mode
        ):
            out.append(f"{rel} differs")
    return out


# -- inotify ------------------------------------------------------------------------------------
# Hand-written over ctypes on purpose: three libc calls, and the verifier must not pull a
# dependency into every project that installs persistkit[testing].
_IN_MODIFY, _IN_ATTRIB, _IN_MOVED_FROM, _IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_IN_Q_OVERFLOW, _IN_ISDIR, _IN_IGNORED = 0x4000, 0x40000000, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")


class _Watcher:
    """Which paths under a root changed (inotify on every directory); "" in the result: rescan all."""

    def __init__(self, libc: ctypes.CDLL, fd: int, root: str) -> None:
        self.libc, self.fd, self.root = libc, fd, root
        self.wds: dict[int, str] = {}
        self.pending: set[str] = set()
        for dirpath, dirs, _files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            self.add(dirpath, "" if rel == "." else rel)
            del dirs[:0]

    @classmethod
    def open(cls, root: str) -> _Watcher | None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        return cls(libc, fd, root)

    def add(self, full: str, rel: str) -> None:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(full), _MASK)
        if wd < 0:
            self.pending.add("")  # could not watch: fall back to a full scan
            return
        self.wds[wd] = rel

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == _errno.EAGAIN:
                    return
                raise
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self.pending.add("")
                    continue
                if mask & _IN_IGNORED:
                    self.wds.pop(wd, None)
                    continue
                base = self.wds.get(wd)
                if base is None:
                    continue
                if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF):
                    self.pending.add(base)
                    continue
                rel = os.path.join(base, os.fsdecode(name)) if base else os.fsdecode(name)
                self.pending.add(rel)
                if mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                    self.add(os.path.join(self.root, rel), rel)

    def drain(self) -> None:
        """Forget the changes made so far (the materializer's own)."""
        self._read()
        self.pending = {""} if "" in self.pending else set()

    def peek(self) -> set[str]:
        self._read()
        return set(self.pending)

    def take(self) -> set[str]:
        self._read()
        out, self.pending = self.pending, set()
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
