"""What a directory tree holds, and a private place beside it for the verifier's own copies.

``Snapshot.take(root)`` records every entry under ``root`` with its kind, mode,
size, inode and times (files, directories, symlinks, FIFOs). File contents are
not held in memory: they are copied once into a ``Workshop``, a hidden
directory beside the root on the same file system (reflinked where the file
system can, copied in the kernel otherwise), so that the state before a save
can be rebuilt after the save changed or removed the originals.
``Snapshot.materialize()`` puts a directory back to exactly the snapshot,
leaving every entry that did not change alone (same inode).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import hashlib
import itertools
import os
import shutil
import stat as _stat
import tempfile
import weakref
from dataclasses import dataclass

from persistkit.testing.fs.ops import copy_range

__all__ = ["Entry", "Snapshot", "Workshop", "clone_file"]

_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, xfs, bcachefs)


def clone_file(src: str, dst: str, *, mode: int = 0o600) -> None:
    """Make ``dst`` a copy of ``src``: a reflink where the file system has them, else a kernel copy."""
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            try:
                fcntl.ioctl(fd_out, _FICLONE, fd_in)
                return
            except OSError as err:
                if err.errno not in (
                    _errno.EOPNOTSUPP,
                    _errno.EXDEV,
                    _errno.EINVAL,
                    _errno.ENOTTY,
                    _errno.EPERM,
                ):
                    raise
            size = os.fstat(fd_in).st_size
            copy_range(fd_in, 0, fd_out, 0, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


class Workshop:
    """A private directory on the same file system as ``root`` (hidden beside it when it can be).

    Same file system matters: hard links and renames between the workshop and the
    root keep inodes, which is how a crash-state run leaves the root exactly as
    the save left it. When the root's parent is not writable the workshop falls
    back to the system temp directory and ``same_fs`` is False.
    """

    def __init__(self, root: str) -> None:
        root = os.path.abspath(root)
        parent, name = os.path.split(root)
        try:
            self.dir = tempfile.mkdtemp(prefix=f".persistkit-{name[:40]}-", dir=parent)
        except OSError:
            self.dir = tempfile.mkdtemp(prefix="persistkit-work-")
        try:
            self.same_fs = os.stat(self.dir).st_dev == os.stat(root).st_dev
        except OSError:
            self.same_fs = False
        self._ids = itertools.count(1)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def new_path(self, area: str, hint: str = "") -> str:
        """A fresh, unused path in the sub-directory ``area``."""
        folder = os.path.join(self.dir, area)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{next(self._ids)}{hint}")

    def close(self) -> None:
        self._finalizer()


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: ``kind`` is "file", "dir", "symlink", "fifo" or "other"."""

    kind: str
    mode: int = 0o644
    size: int = 0
    target: str = ""
    ino: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1

    @classmethod
    def of(cls, st: os.stat_result, target: str = "") -> Entry:
        m = st.st_mode
        kind = (
            "file" if _stat.S_ISREG(m) else "dir" if _stat.S_ISDIR(m) else "symlink" if _stat.S_ISLNK(m)
            else "fifo" if _stat.S_ISFIFO(m) else "other"
        )  # fmt: skip
        return cls(kind, _stat.S_IMODE(m), st.st_size if kind == "file" else 0, target, st.st_ino,
                   st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)  # fmt: skip

    def unchanged(self, other: Entry) -> bool:
        """Same inode, never modified since (ctime moves on every change, and cannot be set back)."""
        return (self.kind, self.ino, self.ctime_ns, self.size, self.mode, self.target) == (
            other.kind, other.ino, other.ctime_ns, other.size, other.mode, other.target
        )  # fmt: skip


def scan(root: str) -> dict[str, Entry]:
    """Every entry under ``root`` (relative, normalised paths), symlinks not followed."""
    entries: dict[str, Entry] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            it = os.scandir(full_dir)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for de in it:
                rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                target = os.readlink(de.path) if _stat.S_ISLNK(st.st_mode) else ""
                e = Entry.of(st, target)
                entries[rel] = e
                if e.kind == "dir":
                    stack.append(rel)
    return entries


class Snapshot:
    """The entries under ``root`` and (when taken with ``content=True``) copies of its files."""

    def __init__(
        self,
        root: str,
        entries: dict[str, Entry],
        *,
        workshop: Workshop | None = None,
        copies: dict[int, str] | None = None,
        root_entry: Entry | None = None,
    ) -> None:
        self.root = root
        self.entries = entries
        self.workshop = workshop
        self.copies = copies or {}  # inode number -> path of its copy in the workshop
        self.root_entry = root_entry

    @classmethod
    def take(
        cls, root: str | os.PathLike[str], *, content: bool = True, workshop: Workshop | None = None
    ) -> Snapshot:
        top = os.path.abspath(os.fspath(root))
        entries = scan(top)
        try:
            root_entry: Entry | None = Entry.of(os.stat(top))
        except OSError:
            root_entry = None
        if not content:
            return cls(top, entries, root_entry=root_entry)
        ws = workshop if workshop is not None else Workshop(top)
        copies: dict[int, str] = {}
        for rel, e in entries.items():
            if e.kind != "file" or e.ino in copies:
                continue
            dst = ws.new_path("pristine")
            try:
                clone_file(os.path.join(top, rel), dst)
            except FileNotFoundError:
                continue
            copies[e.ino] = dst
        return cls(top, entries, workshop=ws, copies=copies, root_entry=root_entry)

    # -- reading --------------------------------------------------------------------------
    def copy_of(self, rel: str) -> str | None:
        e = self.entries.get(rel)
        return self.copies.get(e.ino) if e is not None and e.kind == "file" else None

    def content(self, rel: str) -> bytes:
        """The bytes file ``rel`` held when the snapshot was taken."""
        path = self.copy_of(rel)
        if path is None:
            raise KeyError(
                f"{rel}: no copy of it in this snapshot (not a regular file, or taken without content)"
            )
        with open(path, "rb") as f:
            return f.read()

    def files(self) -> dict[str, bytes]:
        return {p: self.content(p) for p, e in self.entries.items() if e.kind == "file" and self.copy_of(p)}

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for path in sorted(self.entries):
            e = self.entries[path]
            h.update(f"{path}\0{e.kind}\0{e.target}\0{e.mode}\0{e.size}\0".encode())
            if e.kind == "file" and self.copy_of(path):
                h.update(_digest(self.copy_of(path) or ""))
        return h.hexdigest()

    def diff(self, other: Snapshot) -> list[str]:
        """Human-readable differences of names, kinds, sizes and modes, for failure messages."""
        out: list[str] = []
        for path in sorted(set(self.entries) | set(other.entries)):
            a, b = self.entries.get(path), other.entries.get(path)
            if a is None:
                out.append(f"+ {path}")
            elif b is None:
                out.append(f"- {path}")
            elif (a.kind, a.size, a.target) != (b.kind, b.size, b.target):
                out.append(f"~ {path} ({a.kind} {a.size} B -> {b.kind} {b.size} B)")
            elif a.mode != b.mode:
                out.append(f"~ {path} (mode {oct(a.mode)} -> {oct(b.mode)})")
        return out

    # -- restoring ------------------------------------------------------------------------
    def materialize(self, root: str | os.PathLike[str] | None = None) -> str:
        """Make ``root`` (default: the snapshot's own) hold exactly this snapshot.

        Entries that did not change since the snapshot keep their inode; a file whose
        content changed in place gets its content back in place (same inode, so an
        open descriptor of the program under test stays valid).
        """
        top = os.path.abspath(os.fspath(root if root is not None else self.root))
        os.makedirs(top, exist_ok=True)
        same_tree = top == self.root
        now = scan(top)
        for rel in sorted(set(now) - set(self.entries), key=lambda p: -p.count(os.sep)):
            _remove(os.path.join(top, rel))
        for rel in sorted(self.entries, key=lambda p: p.count(os.sep)):
            e = self.entries[rel]
            full = os.path.join(top, rel)
            cur = now.get(rel)
            if same_tree and cur is not None and cur.unchanged(e):
                continue
            if cur is not None and (
                cur.kind != e.kind or (e.kind == "file" and cur.ino != e.ino and same_tree)
            ):
                _remove(full)
                cur = None
            if e.kind == "dir":
                if cur is None:
                    os.mkdir(full, 0o700)
            elif e.kind == "symlink":
                if cur is not None:
                    os.unlink(full)
                os.symlink(e.target, full)
                continue
            elif e.kind == "fifo":
                if cur is None:
                    os.mkfifo(full, e.mode)
            elif e.kind == "file":
                src = self.copies.get(e.ino)
                if src is None:
                    raise FileNotFoundError(f"{rel}: the snapshot holds no copy of its content")
                _restore_file(src, full, e.mode)
            else:
                continue
            os.chmod(full, e.mode)
            with contextlib.suppress(OSError):
                os.utime(full, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        if self.root_entry is not None:
            with contextlib.suppress(OSError):
                os.utime(top, ns=(self.root_entry.mtime_ns, self.root_entry.mtime_ns))
        return top

    def close(self) -> None:
        if self.workshop is not None:
            self.workshop.close()


def _digest(path: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _remove(full: str) -> None:
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(full)


def _restore_file(src: str, full: str, mode: int) -> None:
    """Write ``src``'s bytes into ``full`` in place (its inode kept), or create it."""
    fd_in = os.open(src, os.O_RDONLY)
    try:
        try:
            fd_out = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, mode)
        except PermissionError:
            os.chmod(full, 0o600)
            fd_out = os.open(full, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd_in).st_size
            os.ftruncate(fd_out, 0)
            copy_range(fd_in, 0, fd_out, 0, size)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
