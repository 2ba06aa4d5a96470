"""The one mutation hook every test file system is built on.

The verifier's file systems (``RecordingFS``, ``FaultFS``, ``GuardFS``,
``MeasuringFS``) each wrap another ``PersistFS`` and care about the operations
that change what is on disk. They used to list those operations by hand, and
a list that missed one (``start_writeback``) meant that operation was never
fault-injected or guarded. Here the list is declared once, ``MUTATING_OPS``,
checked against ``PersistFS`` itself by a test (tests/testing/test_testfs.py):
every public method of ``PersistFS`` is a mutation, a read, or a convenience
built on the primitives, so a new method cannot go unclassified.

``HookedFS`` routes every mutating primitive through ``on_mutation(m, call)``
and every read through ``on_read(op, path, call)``: ``call()`` performs the
operation on the inner file system. A subclass overrides the hook, not the
methods::

    class Counting(HookedFS):
        def on_mutation(self, m, call):
            self.count[m.op] += 1
            return call()

The conveniences of ``PersistFS`` (``makedirs``, ``exists``...) are not
overridden: they run on this file system's primitives, so their mutations
pass the hook one ``mkdir`` / ``fsync_dir`` at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, TypeVar

from persistkit.io.fs import DelegatingFS, FileHandle, PathLike

__all__ = [
    "CONVENIENCE_OPS",
    "HINT_OPS",
    "MUTATING_OPS",
    "READ_OPS",
    "HookedFS",
    "Mutation",
]

T = TypeVar("T")

# Every PersistFS primitive that changes what is on disk, in the order PersistFS declares them.
MUTATING_OPS: Final = (
    "create",
    "open_append",
    "write",
    "fsync",
    "start_writeback",
    "close",
    "truncate",
    "replace",
    "link",
    "unlink",
    "mkdir",
    "rmdir",
    "symlink",
    "fsync_dir",
)
# Mutations that promise nothing a crash could observe (a write-back hint): they can fail, and the
# failure must reach the caller (fsyncgate), but a durability model need not replay them.
HINT_OPS: Final = frozenset({"start_writeback"})
# Primitives that only look.
READ_OPS: Final = ("read_bytes", "open_read", "listdir", "stat", "readlink")
# Built by PersistFS on the primitives above; a HookedFS must not override them, so their
# mutations (makedirs: mkdir, fsync_dir) reach the hook one primitive at a time.
CONVENIENCE_OPS: Final = ("exists", "is_dir", "is_file", "makedirs", "walk")


@dataclass(frozen=True)
class Mutation:
    """One mutating call, about to be made on the inner file system.

    ``path``: the file or directory it changes, absolute (``replace``: the source;
    ``symlink``: the new link). ``handle``: the open file, for handle operations.
    ``dst``: the rename destination, or the target a symlink points at (as given).
    ``data``: what a ``write`` writes. ``size``: a ``truncate`` length.
    ``exclusive``: whether ``create`` refuses an existing file (False: truncates it).
    """

    op: str
    path: str
    handle: FileHandle | None = None
    dst: str | None = None
    data: bytes | bytearray | memoryview | None = None
    size: int = 0
    exclusive: bool = True

    @property
    def target(self) -> str:
        """The path an error is reported on: the destination of a rename, else ``path``."""
        return self.dst if self.op in ("replace", "link") and self.dst is not None else self.path


def _abs(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


class HookedFS(DelegatingFS):
    """Forwards to ``inner``; every mutation passes ``on_mutation`` and every read ``on_read``."""

    def on_mutation(self, m: Mutation, call: Callable[[], T]) -> T:
        """Perform ``call()`` (the operation ``m`` on ``inner``); override to act around it."""
        return call()

    def on_read(self, op: str, path: str, call: Callable[[], T]) -> T:
        """Perform ``call()`` (the read ``op`` of ``path`` on ``inner``); override to act around it."""
        return call()

    # -- writing -----------------------------------------------------------
    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        m = Mutation("create", _abs(path), exclusive=exclusive)
        return self.on_mutation(m, lambda: self.inner.create(path, mode=mode, exclusive=exclusive))

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        return self.on_mutation(
            Mutation("open_append", _abs(path)), lambda: self.inner.open_append(path, mode=mode)
        )

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        m = Mutation("write", handle.path, handle=handle, data=data)
        self.on_mutation(m, lambda: self.inner.write(handle, data))

    def fsync(self, handle: FileHandle) -> None:
        self.on_mutation(Mutation("fsync", handle.path, handle=handle), lambda: self.inner.fsync(handle))

    def start_writeback(self, handle: FileHandle) -> None:
        self.on_mutation(
            Mutation("start_writeback", handle.path, handle=handle),
            lambda: self.inner.start_writeback(handle),
        )

    def close(self, handle: FileHandle) -> None:
        self.on_mutation(Mutation("close", handle.path, handle=handle), lambda: self.inner.close(handle))

    def truncate(self, handle: FileHandle, size: int) -> None:
        m = Mutation("truncate", handle.path, handle=handle, size=size)
        self.on_mutation(m, lambda: self.inner.truncate(handle, size))

    # -- namespace ---------------------------------------------------------
    def replace(self, src: PathLike, dst: PathLike) -> None:
        m = Mutation("replace", _abs(src), dst=_abs(dst))
        self.on_mutation(m, lambda: self.inner.replace(src, dst))

    def link(self, src: PathLike, dst: PathLike) -> None:
        m = Mutation("link", _abs(src), dst=_abs(dst))
        self.on_mutation(m, lambda: self.inner.link(src, dst))

    def unlink(self, path: PathLike) -> None:
        self.on_mutation(Mutation("unlink", _abs(path)), lambda: self.inner.unlink(path))

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        self.on_mutation(Mutation("mkdir", _abs(path)), lambda: self.inner.mkdir(path, mode=mode))

    def rmdir(self, path: PathLike) -> None:
        self.on_mutation(Mutation("rmdir", _abs(path)), lambda: self.inner.rmdir(path))

    def symlink(self, target: str, path: PathLike) -> None:
        m = Mutation("symlink", _abs(path), dst=target)
        self.on_mutation(m, lambda: self.inner.symlink(target, path))

    def fsync_dir(self, path: PathLike) -> None:
        self.on_mutation(Mutation("fsync_dir", _abs(path)), lambda: self.inner.fsync_dir(path))

    # -- reading -----------------------------------------------------------
    def read_bytes(self, path: PathLike) -> bytes:
        return self.on_read("read_bytes", _abs(path), lambda: self.inner.read_bytes(path))

    def open_read(self, path: PathLike) -> BinaryIO:
        return self.on_read("open_read", _abs(path), lambda: self.inner.open_read(path))

    def listdir(self, path: PathLike) -> list[str]:
        return self.on_read("listdir", _abs(path), lambda: self.inner.listdir(path))

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        return self.on_read(
            "stat", _abs(path), lambda: self.inner.stat(path, follow_symlinks=follow_symlinks)
        )

    def readlink(self, path: PathLike) -> str:
        return self.on_read("readlink", _abs(path), lambda: self.inner.readlink(path))
