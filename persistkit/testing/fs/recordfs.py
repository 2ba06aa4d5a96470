"""A PersistFS that performs every operation on an inner PersistFS and logs it.

The log, with the data of every write, is what ``persistkit.testing.fs.crashsim``
replays to enumerate crash states, and what fsync-count tests read.
Only operations that succeeded are logged: a failed one did not happen.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from persistkit.io.fs import FileHandle, LocalFS, PersistFS
from persistkit.testing.fs.testfs import HINT_OPS, HookedFS, Mutation

T = TypeVar("T")

__all__ = ["Op", "RecordingFS"]


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


class RecordingFS(HookedFS):
    """Wraps ``inner`` (default: the local filesystem) and records ``ops``.

    Every operation of ``MUTATING_OPS`` is logged once it succeeded, except the
    hints (``HINT_OPS``: ``start_writeback``), which change nothing a crash can
    observe; the crash simulator treats their data as not yet durable, which is
    the pessimistic reading.
    """

    def __init__(self, inner: PersistFS | None = None) -> None:
        super().__init__(inner if inner is not None else LocalFS())
        self.ops: list[Op] = []
        self._ids = itertools.count(1)
        self._handle_ids: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------
    def record(
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
        """Append one operation to ``ops`` (the interceptor logs user code's operations here too)."""
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
            self.record("open_existing", handle.path, handle=hid)
        return hid

    def _new_hid(self, handle: FileHandle) -> int:
        hid = next(self._ids)
        self._handle_ids[id(handle)] = hid
        return hid

    def counts(self) -> Counter[str]:
        """How many operations of each kind were recorded."""
        return Counter(op.kind for op in self.ops)

    def clear(self) -> None:
        with self._lock:
            self.ops.clear()

    # -- the hook ------------------------------------------------------------
    def on_mutation(self, m: Mutation, call: Callable[[], T]) -> T:
        if m.op in HINT_OPS:
            return call()
        if m.op == "write":
            return self._write(m, call)
        result = call()  # only operations that succeeded are logged: a failed one did not happen
        if m.op in ("create", "open_append"):
            assert isinstance(result, FileHandle)
            truncate = m.op == "create" and not m.exclusive
            self.record(m.op, result.path, handle=self._new_hid(result), truncate=truncate)
        elif m.handle is not None:  # fsync, close, truncate
            self.record(m.op, m.handle.path, handle=self._hid(m.handle), size=m.size)
        else:  # replace, unlink, mkdir, rmdir, symlink, fsync_dir
            self.record(m.op, m.path, dst=m.dst)
        return result

    def _write(self, m: Mutation, call: Callable[[], T]) -> T:
        assert m.handle is not None and m.data is not None
        handle, start = m.handle, m.handle.offset
        try:
            return call()
        finally:
            # Log what actually reached the file, even when the write failed part-way.
            written = handle.offset - start
            if written:
                data = bytes(memoryview(m.data).cast("B")[:written])
                self.record("write", handle.path, handle=self._hid(handle), offset=start, data=data)
