"""Typed file operations: what the observers record and the crash model replays.

An ``Op`` is a value: its ``kind`` is an ``OpKind`` (a ``StrEnum``, so
``op.kind == "write"`` reads naturally), it names the file by path and, for
operations on an open file, by ``handle`` (one open file description: dup'ed
descriptors and forked children share it). A write carries its ``offset`` and
``length`` and a reference to its bytes, never the bytes themselves: the
observers spool written data to an unlinked temporary file (``Spool``), and
writes whose bytes the tracer did not print are resolved later against the
file the save left (``persistkit.testing.fs.model``). Memory therefore does not
grow with the size of a save.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import posix
import tempfile
import threading
import weakref
from dataclasses import dataclass, field

__all__ = ["DataRef", "Op", "OpKind", "Spool", "copy_range"]


class OpKind(enum.StrEnum):
    """What one operation did. The model (``fs.model``) gives each its meaning."""

    CREATE = (
        "create"  # a file created, or an existing one opened with O_TRUNC (``truncate``): binds ``handle``
    )
    OPEN_APPEND = "open_append"  # opened for appending, created if absent: binds ``handle``
    OPEN_EXISTING = (
        "open_existing"  # an existing file opened for writing (or first seen written): binds ``handle``
    )
    WRITE = "write"  # ``length`` bytes at ``offset`` through ``handle``; bytes in ``ref``
    TRUNCATE = "truncate"  # the file set to ``size`` bytes (ftruncate, truncate, fallocate extension)
    FSYNC = "fsync"  # the file's data and size durable; with ``length``: only [offset, offset+length)
    FSYNC_FAILED = "fsync_failed"  # an fsync/fdatasync that returned an error (fsyncgate; not durable)
    FSYNC_DIR = "fsync_dir"  # the entries of the directory now at ``path`` durable
    SYNC_ALL = "sync_all"  # sync()/syncfs() on the root's file system: everything durable
    CLOSE = "close"
    REPLACE = "replace"  # rename ``path`` to ``dst`` (replacing it)
    LINK = "link"  # ``dst`` becomes a second name of ``path``'s inode
    UNLINK = "unlink"
    MKDIR = "mkdir"
    RMDIR = "rmdir"
    SYMLINK = "symlink"  # ``path`` is the new link, ``dst`` its target as given
    MKFIFO = "mkfifo"
    CHMOD = "chmod"  # ``mode`` set on ``path`` (or on ``handle``'s file)


# Operations that change a directory's entries (made durable by an fsync of that directory).
NAMESPACE_KINDS = frozenset(
    {
        OpKind.CREATE,
        OpKind.REPLACE,
        OpKind.LINK,
        OpKind.UNLINK,
        OpKind.MKDIR,
        OpKind.RMDIR,
        OpKind.SYMLINK,
        OpKind.MKFIFO,
    }
)
OPENING_KINDS = frozenset({OpKind.CREATE, OpKind.OPEN_APPEND, OpKind.OPEN_EXISTING})


def copy_range(src: int, src_off: int, dst: int, dst_off: int, length: int) -> None:
    """Copy ``length`` bytes between descriptors, in the kernel where it can (no user-space buffer)."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src, dst, length - done, src_off + done, dst_off + done)
        except OSError as err:
            if err.errno not in (_errno.EXDEV, _errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.EPERM):
                raise
            break
        if n <= 0:
            break
        done += n
    while done < length:
        chunk = os.pread(src, min(length - done, 1 << 20), src_off + done)
        if not chunk:
            raise OSError(_errno.EIO, f"short read copying {length} bytes (source ended at {src_off + done})")
        os.pwrite(dst, chunk, dst_off + done)
        done += len(chunk)


class Spool:
    """Written bytes kept on disk, in an unlinked temporary file (gone when the spool is).

    It calls ``posix`` directly: the Python observer patches ``os`` while a save runs, and the
    verifier's own bookkeeping must neither be recorded nor keep the interceptor alive.
    """

    def __init__(self, directory: str | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="persistkit-spool-", dir=directory)
        posix.unlink(path)
        self.fd = fd
        self.size = 0
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, posix.close, fd)

    def append(self, data: bytes | bytearray | memoryview) -> DataRef:
        view = memoryview(data).cast("B")
        with self._lock:
            start = self.size
            self.size += view.nbytes
        written = 0
        while written < view.nbytes:
            written += posix.pwrite(self.fd, view[written:], start + written)
        return DataRef(self, start)

    def read(self, offset: int, length: int) -> bytes:
        chunks = []
        done = 0
        while done < length:
            chunk = posix.pread(self.fd, min(length - done, 1 << 24), offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._finalizer()


@dataclass(frozen=True, slots=True)
class DataRef:
    """Where a write's bytes are: ``offset`` in a ``Spool``."""

    spool: Spool
    offset: int

    def read(self, length: int, start: int = 0) -> bytes:
        return self.spool.read(self.offset + start, length)


@dataclass(frozen=True, slots=True)
class Op:
    """One recorded file operation (see ``OpKind``).

    ``ref`` holds a write's bytes (None: the observer saw the write but not all
    of its bytes; ``prefix`` then holds the first bytes it did see).
    ``syscall``/``tid`` say where a traced operation came from.
    """

    index: int
    kind: OpKind
    path: str
    handle: int | None = None
    dst: str | None = None
    offset: int = 0
    length: int = 0
    ref: DataRef | None = None
    size: int = 0
    truncate: bool = False
    mode: int | None = None
    prefix: bytes = b""
    thread: str = field(default="", compare=False)
    syscall: str = field(default="", compare=False)

    @property
    def data(self) -> bytes:
        """The bytes a write wrote (read back from the spool; b"" when they were not captured)."""
        if self.ref is None:
            return self.prefix
        return self.ref.read(self.length)

    def describe(self) -> str:
        name = self.path
        if self.kind == OpKind.WRITE:
            return f"#{self.index} write {name} [{self.offset}:{self.offset + self.length}]"
        if self.kind == OpKind.REPLACE:
            return f"#{self.index} replace {name} -> {self.dst}"
        if self.kind == OpKind.LINK:
            return f"#{self.index} link {name} -> {self.dst}"
        if self.kind == OpKind.TRUNCATE:
            return f"#{self.index} truncate {name} to {self.size}"
        if self.kind == OpKind.SYMLINK:
            return f"#{self.index} symlink {name} -> {self.dst}"
        if self.kind == OpKind.CHMOD:
            return f"#{self.index} chmod {name} {oct(self.mode or 0)}"
        if self.kind == OpKind.FSYNC and self.length:
            return f"#{self.index} fsync {name} [{self.offset}:{self.offset + self.length}] (O_SYNC write)"
        return f"#{self.index} {self.kind.value} {name}"
