"""A PersistFS that performs every operation on an inner PersistFS and logs it.

The log, with the data of every write, is what ``persistkit.io.crash``
replays to enumerate crash states, and what fsync-count tests read.
Only operations that succeeded are logged: a failed one did not happen.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from dataclasses import dataclass, field

from persistkit.io.fs import DelegatingFS, FileHandle, PathLike, PersistFS

__all__ = ["Op", "RecordingFS"]

# Operation kinds that change what is on disk (the rest are reads).
MUTATING = frozenset(
    {
        "create",
        "open_append",
        "write",
        "fsync",
        "close",
        "truncate",
        "replace",
        "unlink",
        "mkdir",
        "rmdir",
        "symlink",
        "fsync_dir",
    }
)


@dataclass(frozen=True)
class Op:
    """One recorded file operation.

    ``handle`` identifies the open file for create/open_append/write/fsync/
    close/truncate; ``path`` is the file or directory; ``dst`` the rename
    target; ``offset``/``data`` the write; ``size`` a truncate length.
    """

    index: int
    kind: str
    path: str
    handle: int | None = None
    dst: str | None = None
    offset: int = 0
    data: bytes = b""
    size: int = 0
    truncate: bool = False
    thread: str = field(default="", compare=False)

    def describe(self) -> str:
        name = self.path
        if self.kind == "write":
            return f"#{self.index} write {name} [{self.offset}:{self.offset + len(self.data)}]"
        if self.kind == "replace":
            return f"#{self.index} replace {name} -> {self.dst}"
        if self.kind == "truncate":
            return f"#{self.index} truncate {name} to {self.size}"
        if self.kind == "symlink":
            return f"#{self.index} symlink {name} -> {self.dst}"
        return f"#{self.index} {self.kind} {name}"


class RecordingFS(DelegatingFS):
    """Wraps ``inner`` (default: the local filesystem) and records ``ops``."""

    def __init__(self, inner: PersistFS | None = None) -> None:
        from persistkit.io.fs import LocalFS

        super().__init__(inner if inner is not None else LocalFS())
        self.ops: list[Op] = []
        self._ids = itertools.count(1)
        self._handle_ids: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------
    def _log(
        self,
        kind: str,
        path: str,
        *,
        handle: int | None = None,
        dst: str | None = None,
        offset: int = 0,
        data: bytes = b"",
        size: int = 0,
        truncate: bool = False,
    ) -> None:
        with self._lock:
            self.ops.append(
                Op(
                    len(self.ops),
                    kind,
                    path,
                    handle,
                    dst,
                    offset,
                    data,
                    size,
                    truncate,
                    thread=threading.current_thread().name,
                )
            )

    def _hid(self, handle: FileHandle) -> int:
        hid = self._handle_ids.get(id(handle))
        if hid is None:
            # A file opened before recording started (e.g. a journal kept open): note it, so
            # the crash simulator knows which file later writes go to.
            hid = next(self._ids)
            self._handle_ids[id(handle)] = hid
            self._log("open_existing", handle.path, handle=hid)
        return hid

    def counts(self) -> Counter[str]:
        """How many operations of each kind were recorded."""
        return Counter(op.kind for op in self.ops)

    def clear(self) -> None:
        with self._lock:
            self.ops.clear()

    # -- writing -----------------------------------------------------------
    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        handle = self.inner.create(path, mode=mode, exclusive=exclusive)
        hid = next(self._ids)
        self._handle_ids[id(handle)] = hid
        self._log("create", handle.path, handle=hid, truncate=not exclusive)
        return handle

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        handle = self.inner.open_append(path, mode=mode)
        hid = next(self._ids)
        self._handle_ids[id(handle)] = hid
        self._log("open_append", handle.path, handle=hid)
        return handle

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        start = handle.offset
        try:
            self.inner.write(handle, data)
        finally:
            # Log what actually reached the file, even when the write failed part-way.
            written = handle.offset - start
            if written:
                self._log(
                    "write",
                    handle.path,
                    handle=self._hid(handle),
                    offset=start,
                    data=bytes(memoryview(data).cast("B")[:written]),
                )

    def fsync(self, handle: FileHandle) -> None:
        self.inner.fsync(handle)
        self._log("fsync", handle.path, handle=self._hid(handle))

    def close(self, handle: FileHandle) -> None:
        self.inner.close(handle)
        self._log("close", handle.path, handle=self._hid(handle))

    def truncate(self, handle: FileHandle, size: int) -> None:
        self.inner.truncate(handle, size)
        self._log("truncate", handle.path, handle=self._hid(handle), size=size)

    # -- namespace ---------------------------------------------------------
    def replace(self, src: PathLike, dst: PathLike) -> None:
        self.inner.replace(src, dst)
        self._log("replace", os.path.abspath(os.fspath(src)), dst=os.path.abspath(os.fspath(dst)))

    def unlink(self, path: PathLike) -> None:
        self.inner.unlink(path)
        self._log("unlink", os.path.abspath(os.fspath(path)))

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        self.inner.mkdir(path, mode=mode)
        self._log("mkdir", os.path.abspath(os.fspath(path)))

    def rmdir(self, path: PathLike) -> None:
        self.inner.rmdir(path)
        self._log("rmdir", os.path.abspath(os.fspath(path)))

    def symlink(self, target: str, path: PathLike) -> None:
        self.inner.symlink(target, path)
        self._log("symlink", os.path.abspath(os.fspath(path)), dst=target)

    def fsync_dir(self, path: PathLike) -> None:
        self.inner.fsync_dir(path)
        self._log("fsync_dir", os.path.abspath(os.fspath(path)))
