"""Fault injection: make the Nth mutating file operation fail.

Modelled on SQLite's ioerr tests: number the operations a save performs, then
for every N make operation N fail with each errno, once (the fault clears) or
persistently (every operation from N on fails). A short write writes only the
first half of its data before failing, the way a filling disk tears a write.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from persistkit.io.fs import PersistFS
from persistkit.testing.fs.testfs import HookedFS, Mutation

T = TypeVar("T")

__all__ = ["FAULT_ERRNOS", "Fault", "FaultFS", "InjectedFault"]

FAULT_ERRNOS: dict[str, int] = {
    "ENOSPC": _errno.ENOSPC,
    "EIO": _errno.EIO,
    "EDQUOT": _errno.EDQUOT,
    "EROFS": _errno.EROFS,
}


class InjectedFault(OSError):
    """The OSError FaultFS raises; an ordinary OSError to the code under test."""


@dataclass(frozen=True)
class Fault:
    """Fail mutating operation number ``at`` (0-based) with ``errno``.

    ``persistent``: every later mutating operation fails too.
    ``short_write``: if the failing operation is a write, half its data lands first.
    ``kinds``: only count operations of these kinds (e.g. ``{"fsync"}``).
    """

    at: int
    errno: int = _errno.EIO
    persistent: bool = False
    short_write: bool = False
    kinds: frozenset[str] | None = None

    def describe(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        mode = "persistent" if self.persistent else "once"
        extra = ", short write" if self.short_write else ""
        return f"{name} at operation #{self.at} ({mode}{extra})"


@dataclass
class FaultFS(HookedFS):
    """Wraps ``inner`` and injects ``fault`` into its mutating operations; ``fired`` counts hits.

    Every operation in ``persistkit.testing.fs.testfs.MUTATING_OPS`` is counted and can
    fail, including the ``start_writeback`` hint (persistkit's write-behind thread runs
    it during large writes, so its place in the count depends on timing: target it with
    ``kinds={"start_writeback"}``). Reads are never failed.
    """

    inner: PersistFS
    fault: Fault | None = None
    counter: int = 0
    fired: int = 0
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        """Remove the fault: later operations succeed ("the fault clears")."""
        self.fault = None

    def due(self, kind: str, path: str) -> int | None:
        """Count operation ``kind`` on ``path``; return the errno it must fail with, if any.

        The one counter: the interceptor counts user code's operations here too, so
        persistkit's and the user's operations are numbered in one sequence.
        """
        with self._lock:
            fault = self.fault
            if fault is not None and fault.kinds is not None and kind not in fault.kinds:
                return None
            n = self.counter
            self.counter += 1
            self.log.append(f"#{n} {kind} {path}")
            if fault is None:
                return None
            if n == fault.at or (fault.persistent and n > fault.at):
                self.fired += 1
                return fault.errno
            return None

    def check(self, kind: str, path: str) -> None:
        """Count operation ``kind`` on ``path`` and raise ``InjectedFault`` if the fault is due."""
        code = self.due(kind, path)
        if code is not None:
            raise InjectedFault(code, os.strerror(code), path)

    def on_mutation(self, m: Mutation, call: Callable[[], T]) -> T:
        code = self.due(m.op, m.target)
        if code is None:
            return call()
        fault = self.fault
        if m.op == "close":
            call()  # close(2) releases the descriptor even when it reports an error
        elif m.op == "write" and fault is not None and fault.short_write:
            self._write_half(m)
        elif m.op in ("fsync", "start_writeback") and m.handle is not None:
            # After a failed flush the kernel may drop the dirty pages (fsyncgate): as LocalFS does.
            m.handle.failed_fsync = True
        raise InjectedFault(code, os.strerror(code), m.target)

    def _write_half(self, m: Mutation) -> None:
        """A torn write: the first half of the data lands, as when the disk fills mid-write."""
        if m.handle is None or m.data is None:
            return
        view = memoryview(m.data).cast("B")
        if view.nbytes > 1:
            self.inner.write(m.handle, view[: view.nbytes // 2])
