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
from dataclasses import dataclass, field

from persistkit.io.fs import DelegatingFS, FileHandle, PathLike, PersistFS

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
class FaultFS(DelegatingFS):
    """Wraps ``inner`` and injects ``fault``; ``fired`` tells whether it hit."""

    inner: PersistFS
    fault: Fault | None = None
    counter: int = 0
    fired: int = 0
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clear(self) -> None:
        """Remove the fault: later operations succeed ("the fault clears")."""
        self.fault = None

    def _check(self, kind: str, path: str) -> int | None:
        """Count this operation; return the errno to fail with, if any."""
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

    @staticmethod
    def _raise(code: int, path: str) -> None:
        raise InjectedFault(code, os.strerror(code), path)

    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        code = self._check("create", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        return self.inner.create(path, mode=mode, exclusive=exclusive)

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        code = self._check("open_append", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        return self.inner.open_append(path, mode=mode)

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        code = self._check("write", handle.path)
        if code is not None:
            fault = self.fault
            view = memoryview(data).cast("B")
            if fault is not None and fault.short_write and view.nbytes > 1:
                self.inner.write(handle, view[: view.nbytes // 2])
            self._raise(code, handle.path)
        self.inner.write(handle, data)

    def fsync(self, handle: FileHandle) -> None:
        code = self._check("fsync", handle.path)
        if code is not None:
            handle.failed_fsync = True
            self._raise(code, handle.path)
        self.inner.fsync(handle)

    def close(self, handle: FileHandle) -> None:
        code = self._check("close", handle.path)
        # close(2) releases the descriptor even when it reports an error.
        self.inner.close(handle)
        if code is not None:
            self._raise(code, handle.path)

    def truncate(self, handle: FileHandle, size: int) -> None:
        code = self._check("truncate", handle.path)
        if code is not None:
            self._raise(code, handle.path)
        self.inner.truncate(handle, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        code = self._check("replace", os.fspath(dst))
        if code is not None:
            self._raise(code, os.fspath(dst))
        self.inner.replace(src, dst)

    def unlink(self, path: PathLike) -> None:
        code = self._check("unlink", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        self.inner.unlink(path)

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        code = self._check("mkdir", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        self.inner.mkdir(path, mode=mode)

    def rmdir(self, path: PathLike) -> None:
        code = self._check("rmdir", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        self.inner.rmdir(path)

    def symlink(self, target: str, path: PathLike) -> None:
        code = self._check("symlink", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        self.inner.symlink(target, path)

    def fsync_dir(self, path: PathLike) -> None:
        code = self._check("fsync_dir", os.fspath(path))
        if code is not None:
            self._raise(code, os.fspath(path))
        self.inner.fsync_dir(path)
