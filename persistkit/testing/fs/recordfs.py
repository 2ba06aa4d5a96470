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
from typing import TypeVar

from persistkit.io.fs import FileHandle, LocalFS, PersistFS
from persistkit.testing.fs.ops import Op, OpKind, Spool
from persistkit.testing.fs.testfs import HINT_OPS, HookedFS, Mutation

T = TypeVar("T")

__all__ = ["Op", "RecordingFS"]


class RecordingFS(HookedFS):
    """Wraps ``inner`` (default: the local filesystem) and records ``ops``.

    Every operation of ``MUTATING_OPS`` is logged once it succeeded, except the
    hints (``HINT_OPS``: ``start_writeback``), which change nothing a crash can
    observe; the crash simulator treats their data as not yet durable, which is
    the pessimistic reading.
    """

    def __init__(self, inner: PersistFS | None = None, *, spool: Spool | None = None) -> None:
        super().__init__(inner if inner is not None else LocalFS())
        self.ops: list[Op] = []
        self._spool = spool
        self._ids = itertools.count(1)
        self._handle_ids: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------
    @property
    def spool(self) -> Spool:
        """Where the bytes of recorded writes are kept (on disk, not in memory)."""
        if self._spool is None:
            self._spool = Spool()
        return self._spool

    @property
    def spool_if_any(self) -> Spool | None:
        return self._spool

    def record(
        self,
        kind: str,
        path: str,
        *,
        handle: int | None = None,
        dst: str | None = None,
        offset: int = 0,
        data: bytes | bytearray | memoryview = b"",
        size: int = 0,
        truncate: bool = False,
        mode: int | None = None,
    ) -> None:
        """Append one operation to ``ops`` (the interceptor logs user code's operations here too)."""
        op_kind = OpKind(kind)
        length = memoryview(data).nbytes if op_kind == OpKind.WRITE else 0
        ref = self.spool.append(data) if length else None
        with self._lock:
            self.ops.append(
                Op(len(self.ops), op_kind, path, handle, dst, offset, length, ref, size, truncate, mode,
                   thread=threading.current_thread().name)
            )  # fmt: skip

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
        else:  # replace, link, unlink, mkdir, rmdir, symlink, fsync_dir
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
                data = memoryview(m.data).cast("B")[:written]
                self.record("write", handle.path, handle=self._hid(handle), offset=start, data=data)
