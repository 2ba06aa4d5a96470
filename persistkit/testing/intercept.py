"""Route plain-Python file writes of the code under test into the verifier's operation log.

persistkit's own writes go through ``persistkit.io`` and are recorded by a
``RecordingFS``. User code writes with ``open()``, ``os.*``, ``pathlib``,
``shutil`` or ``numpy.save``; the ``Interceptor`` patches those at the
Python level, *only for paths under one directory*, and appends what they
did to the same ordered log (the ``persistkit.io.recording.Op`` format), so
``CrashSimulator`` replays persistkit's and the user's operations together.
The same hook lets ``disk_faults`` fail the Nth operation of either kind and
``crash_points.concurrent`` interleave writers one operation at a time.

What is patched while an ``Interceptor`` is active (other paths pass straight through):

* ``builtins.open`` / ``io.open`` (hence ``pathlib.Path.open/write_bytes/write_text``,
  ``os.fdopen``, ``tempfile``, ``numpy.save``, ``json.dump`` into a file, ...);
  a write-mode open returns a file object that records each write's offset and
  data, and ``os.fsync(f.fileno())`` on it is recorded too;
* ``os.open/write/pwrite/fsync/fdatasync/close/ftruncate/truncate/replace/rename/
  unlink/remove/mkdir/rmdir/symlink`` (hence ``os.makedirs``, ``shutil.move``,
  ``shutil.rmtree``, ``tempfile.mkstemp``);
* ``shutil.copyfile`` loses its ``sendfile`` fast path, so its data is written
  through the recorded file objects.

Not covered (document it in your test): writes made by C extensions directly
(``torch.save(path)``, ``h5py``), ``mmap`` and ``os.sendfile``.

Calls made *by* ``persistkit.io`` are never recorded twice: the ``GuardFS``
wrapper marks the thread as "inside persistkit io" for the duration of each
primitive, and calls whose caller frames belong to ``persistkit.io`` or to the
``filelock`` library (directory locks are not state) pass through.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import itertools
import os
import shutil
import stat as _stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO

from persistkit.io.fs import FileHandle, PathLike, PersistFS
from persistkit.io.recording import RecordingFS

__all__ = ["REAL", "GuardFS", "Interceptor", "inside_persistkit_io", "real_open"]

# The genuine functions, captured before anything is patched; the verifier's own
# file work (snapshots, corrupt copies) always uses these.
REAL: dict[str, Any] = {
    name: getattr(os, name)
    for name in (
        "open",
        "write",
        "pwrite",
        "read",
        "fsync",
        "fdatasync",
        "close",
        "ftruncate",
        "truncate",
        "replace",
        "rename",
        "unlink",
        "remove",
        "mkdir",
        "rmdir",
        "symlink",
        "lseek",
        "fstat",
    )
}
real_open = builtins.open
_SKIP_MODULES = ("persistkit.io", "filelock")

_local = threading.local()

Hook = Callable[[str, str], None]


def inside_persistkit_io() -> bool:
    return getattr(_local, "depth", 0) > 0


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


class GuardFS(PersistFS):
    """Delegates to ``inner``, marking the thread as inside persistkit io meanwhile.

    ``before(kind, path)``, when given, runs before every mutating primitive (the
    scheduling hook of ``crash_points.concurrent``).
    """

    def __init__(self, inner: PersistFS, *, before: Hook | None = None) -> None:
        self.inner = inner
        self.before = before

    def _pre(self, kind: str, path: PathLike) -> None:
        if self.before is not None:
            self.before(kind, os.path.abspath(os.fspath(path)))

    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        self._pre("create", path)
        with _guarded():
            return self.inner.create(path, mode=mode, exclusive=exclusive)

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        self._pre("open_append", path)
        with _guarded():
            return self.inner.open_append(path, mode=mode)

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        self._pre("write", handle.path)
        with _guarded():
            self.inner.write(handle, data)

    def fsync(self, handle: FileHandle) -> None:
        self._pre("fsync", handle.path)
        with _guarded():
            self.inner.fsync(handle)

    def close(self, handle: FileHandle) -> None:
        self._pre("close", handle.path)
        with _guarded():
            self.inner.close(handle)

    def truncate(self, handle: FileHandle, size: int) -> None:
        self._pre("truncate", handle.path)
        with _guarded():
            self.inner.truncate(handle, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        self._pre("replace", dst)
        with _guarded():
            self.inner.replace(src, dst)

    def unlink(self, path: PathLike) -> None:
        self._pre("unlink", path)
        with _guarded():
            self.inner.unlink(path)

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        self._pre("mkdir", path)
        with _guarded():
            self.inner.mkdir(path, mode=mode)

    def rmdir(self, path: PathLike) -> None:
        self._pre("rmdir", path)
        with _guarded():
            self.inner.rmdir(path)

    def symlink(self, target: str, path: PathLike) -> None:
        self._pre("symlink", path)
        with _guarded():
            self.inner.symlink(target, path)

    def fsync_dir(self, path: PathLike) -> None:
        self._pre("fsync_dir", path)
        with _guarded():
            self.inner.fsync_dir(path)

    def read_bytes(self, path: PathLike) -> bytes:
        with _guarded():
            return self.inner.read_bytes(path)

    def open_read(self, path: PathLike) -> BinaryIO:
        with _guarded():
            return self.inner.open_read(path)

    def listdir(self, path: PathLike) -> list[str]:
        with _guarded():
            return self.inner.listdir(path)

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        with _guarded():
            return self.inner.stat(path, follow_symlinks=follow_symlinks)

    def readlink(self, path: PathLike) -> str:
        with _guarded():
            return self.inner.readlink(path)


@dataclass
class _Tracked:
    path: str
    is_dir: bool
    append: bool
    hid: int | None = None
    ino: tuple[int, int] = (0, 0)


class _OpLog:
    """Appends to a RecordingFS's log so persistkit's and the user's operations share one order."""

    def __init__(self, rec: RecordingFS | None) -> None:
        self.rec = rec
        self._ids = itertools.count(1_000_000)  # never collides with the RecordingFS's own handle ids

    def new_handle(self) -> int:
        return next(self._ids)

    def record(self, kind: str, path: str, **kw: Any) -> None:
        if self.rec is not None:
            self.rec._log(kind, path, **kw)


_active: Interceptor | None = None
_active_lock = threading.Lock()


def _aliases(replacement: dict[int, Any]) -> list[tuple[Any, str, Any]]:
    """Module globals that hold one of the patched functions under another name.

    Libraries capture ``os.fsync`` at import (atomicwrites: ``_proper_fsync = os.fsync``;
    ``from os import fsync``; tempfile's ``_io.open``); patching only ``os.fsync`` leaves them unseen,
    and an unseen fsync turns into a false power-loss violation, not a missing verdict.
    """
    out: list[tuple[Any, str, Any]] = []
    for modname, module in list(sys.modules.items()):
        if module is None or modname == "posix" or modname.partition(".")[0] == "persistkit":
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for name, value in items:
            if callable(value) and id(value) in replacement and not name.startswith("__"):
                out.append((module, name, replacement[id(value)]))
    return out


class Interceptor:
    """While active, plain-Python writes under ``root`` are recorded, gated and fault-injected.

    ``log``: the RecordingFS whose ``ops`` receive the user's operations.
    ``before``: called as ``before(kind, path)`` before every mutating operation under
    ``root``; it may raise an OSError (fault injection) or block (scheduling).
    ``ops`` counts the operations seen. Only one Interceptor is active at a time.

    Example::

        rec = RecordingFS()
        with use_fs(GuardFS(rec)), Interceptor(tmp_path, log=rec):
            save_with_plain_open(tmp_path / "model.json")
        print([op.describe() for op in rec.ops])
    """

    def __init__(self, root: PathLike, *, log: RecordingFS | None = None, before: Hook | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._real_root = os.path.realpath(self.root)
        self.log = _OpLog(log)
        self.before = before
        self.ops = 0
        self.active = False
        self._fds: dict[int, _Tracked] = {}
        self._lock = threading.Lock()
        self._saved: dict[tuple[Any, str], Any] = {}

    # -- activation -------------------------------------------------------------------
    def __enter__(self) -> Interceptor:
        global _active
        with _active_lock:
            if _active is not None:
                raise RuntimeError("another persistkit Interceptor is already active")
            _active = self
        patches: list[tuple[Any, str, Any]] = [
            (builtins, "open", self._open),
            (io, "open", self._open),
            (os, "open", self._os_open),
            (os, "write", self._os_write),
            (os, "pwrite", self._os_pwrite),
            (os, "fsync", self._os_fsync),
            (os, "fdatasync", self._os_fsync),
            (os, "close", self._os_close),
            (os, "ftruncate", self._os_ftruncate),
            (os, "truncate", self._os_truncate),
            (os, "replace", self._os_replace),
            (os, "rename", self._os_replace),
            (os, "unlink", self._os_unlink),
            (os, "remove", self._os_unlink),
            (os, "mkdir", self._os_mkdir),
            (os, "rmdir", self._os_rmdir),
            (os, "symlink", self._os_symlink),
        ]
        if hasattr(shutil, "_USE_CP_SENDFILE"):
            patches.append((shutil, "_USE_CP_SENDFILE", False))
        patched = {(id(m), n) for m, n, _ in patches}
        patches += [
            (m, n, v)
            for m, n, v in _aliases({id(getattr(m, n)): v for m, n, v in patches if m is not shutil})
            if (id(m), n) not in patched
        ]
        for module, name, value in patches:
            self._saved[(module, name)] = getattr(module, name)
            setattr(module, name, value)
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        self.active = False
        for (module, name), value in self._saved.items():
            setattr(module, name, value)
        self._saved.clear()
        with _active_lock:
            _active = None

    # -- helpers ------------------------------------------------------------------------
    def under(self, path: str) -> bool:
        return any(path == root or path.startswith(root + os.sep) for root in (self.root, self._real_root))

    def _resolve(self, path: Any, dir_fd: int | None = None) -> str | None:
        """The absolute path of a path argument, or None for a non-path (an fd)."""
        if isinstance(path, int):
            return None
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(p):
            try:
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                return None
            return os.path.normpath(os.path.join(base, p))
        return os.path.abspath(p)

    def _mine(self, path: str | None) -> bool:
        """Record this call? Only for paths under root, and never for persistkit io's own calls."""
        if path is None or not self.under(path) or inside_persistkit_io():
            return False
        frame: FrameType | None = sys._getframe(2)
        for _ in range(8):
            if frame is None:
                break
            name = frame.f_globals.get("__name__", "")
            if name.startswith(_SKIP_MODULES):
                return False
            frame = frame.f_back
        return True

    def _before(self, kind: str, path: str) -> None:
        self.ops += 1
        if self.before is not None:
            self.before(kind, path)

    def _hid(self, fd: int, t: _Tracked) -> int:
        if t.hid is None:
            t.hid = self.log.new_handle()
            self.log.record("open_existing", t.path, handle=t.hid)
        return t.hid

    def _track(self, fd: int, t: _Tracked) -> _Tracked:
        st = REAL["fstat"](fd)
        t.ino = (st.st_dev, st.st_ino)
        self._fds[fd] = t
        return t

    def _lookup(self, fd: int) -> _Tracked | None:
        """The tracked file behind ``fd``, if it is still the same open file.

        Descriptors closed behind our back (e.g. by a FileIO) can be reused by
        unrelated files; comparing the inode keeps those out of the log.
        """
        t = self._fds.get(fd)
        if t is None or not self.active or inside_persistkit_io():
            return None
        try:
            st = REAL["fstat"](fd)
        except OSError:
            self._fds.pop(fd, None)
            return None
        if (st.st_dev, st.st_ino) != t.ino:
            self._fds.pop(fd, None)
            return None
        return t

    def _tracked_fd(self, fd: Any) -> tuple[int, _Tracked | None]:
        if not isinstance(fd, int):
            fd = fd.fileno()
        t = self._lookup(fd)
        if t is None and self.active and not inside_persistkit_io():
            # An fd opened before interception began (or by an untracked opener): learn its path.
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return fd, None
            if path.endswith(" (deleted)") or not self.under(path):
                return fd, None
            try:
                mode = REAL["fstat"](fd).st_mode
            except OSError:
                return fd, None
            t = self._track(fd, _Tracked(path, _stat.S_ISDIR(mode), False))
        return fd, t

    # -- os.* -----------------------------------------------------------------------------
    def _os_open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        p = self._resolve(path, dir_fd)
        if not self._mine(p):
            return int(REAL["open"](path, flags, mode, dir_fd=dir_fd))
        assert p is not None
        return self._open_fd(p, flags, mode)

    def _open_fd(self, p: str, flags: int, mode: int) -> int:
        accmode = flags & os.O_ACCMODE
        writes = accmode in (os.O_WRONLY, os.O_RDWR) or flags & (os.O_CREAT | os.O_TRUNC)
        existed = os.path.lexists(p)
        if flags & os.O_DIRECTORY or (existed and os.path.isdir(p)):
            fd = int(REAL["open"](p, flags, mode))
            self._track(fd, _Tracked(p, True, False))
            return fd
        if not writes:
            fd = int(REAL["open"](p, flags, mode))
            self._track(fd, _Tracked(p, False, False))
            return fd
        creating = not existed and bool(flags & os.O_CREAT)
        truncating = existed and bool(flags & os.O_TRUNC)
        self._before("create" if creating or truncating else "open_append", p)
        fd = int(REAL["open"](p, flags, mode))
        t = self._track(fd, _Tracked(p, False, bool(flags & os.O_APPEND), self.log.new_handle()))
        assert t.hid is not None
        if creating or truncating:
            self.log.record("create", p, handle=t.hid, truncate=truncating)
        else:
            self.log.record("open_existing", p, handle=t.hid)
        return fd

    def _write_at(self, fd: int, t: _Tracked, data: Any, offset: int | None) -> int:
        view = memoryview(data).cast("B")
        if offset is None:
            offset = REAL["fstat"](fd).st_size if t.append else REAL["lseek"](fd, 0, os.SEEK_CUR)
            self._before("write", t.path)
            n = int(REAL["write"](fd, view))
        else:
            self._before("write", t.path)
            n = int(REAL["pwrite"](fd, view, offset))
        if n > 0:
            self.log.record("write", t.path, handle=self._hid(fd, t), offset=offset, data=bytes(view[:n]))
        return n

    def _os_write(self, fd: int, data: Any) -> int:
        t = self._lookup(fd)
        if t is None or t.is_dir:
            return int(REAL["write"](fd, data))
        return self._write_at(fd, t, data, None)

    def _os_pwrite(self, fd: int, data: Any, offset: int) -> int:
        t = self._lookup(fd)
        if t is None or t.is_dir:
            return int(REAL["pwrite"](fd, data, offset))
        return self._write_at(fd, t, data, offset)

    def _os_fsync(self, fd: Any) -> None:
        if inside_persistkit_io():
            REAL["fsync"](fd)
            return
        fd, t = self._tracked_fd(fd)
        if t is None:
            REAL["fsync"](fd)
            return
        self._before("fsync_dir" if t.is_dir else "fsync", t.path)
        REAL["fsync"](fd)
        if t.is_dir:
            self.log.record("fsync_dir", t.path)
        else:
            self.log.record("fsync", t.path, handle=self._hid(fd, t))

    def _os_close(self, fd: int) -> None:
        t = self._lookup(fd)
        self._fds.pop(fd, None)
        if t is None:
            REAL["close"](fd)
            return
        failure: OSError | None = None
        try:
            if t.hid is not None:
                self._before("close", t.path)
        except OSError as err:  # close(2) releases the descriptor even when it reports an error
            failure = err
        REAL["close"](fd)
        if t.hid is not None:
            self.log.record("close", t.path, handle=t.hid)
        if failure is not None:
            raise failure

    def _os_ftruncate(self, fd: int, length: int) -> None:
        t = self._lookup(fd)
        if t is None or t.is_dir:
            REAL["ftruncate"](fd, length)
            return
        self._before("truncate", t.path)
        REAL["ftruncate"](fd, length)
        self.log.record("truncate", t.path, handle=self._hid(fd, t), size=length)

    def _os_truncate(self, path: Any, length: int) -> None:
        if isinstance(path, int):
            self._os_ftruncate(path, length)
            return
        p = self._resolve(path)
        if not self._mine(p):
            REAL["truncate"](path, length)
            return
        assert p is not None
        self._before("truncate", p)
        REAL["truncate"](p, length)
        hid = self.log.new_handle()
        self.log.record("open_existing", p, handle=hid)
        self.log.record("truncate", p, handle=hid, size=length)
        self.log.record("close", p, handle=hid)

    def _os_replace(
        self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        s, d = self._resolve(src, src_dir_fd), self._resolve(dst, dst_dir_fd)
        if not (self._mine(s) or self._mine(d)):
            REAL["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        assert s is not None and d is not None
        self._before("replace", d)
        REAL["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        self.log.record("replace", s, dst=d)

    def _os_unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        p = self._resolve(path, dir_fd)
        if not self._mine(p):
            REAL["unlink"](path, dir_fd=dir_fd)
            return
        assert p is not None
        self._before("unlink", p)
        REAL["unlink"](path, dir_fd=dir_fd)
        self.log.record("unlink", p)

    def _os_mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        p = self._resolve(path, dir_fd)
        if not self._mine(p):
            REAL["mkdir"](path, mode, dir_fd=dir_fd)
            return
        assert p is not None
        self._before("mkdir", p)
        REAL["mkdir"](path, mode, dir_fd=dir_fd)
        self.log.record("mkdir", p)

    def _os_rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        p = self._resolve(path, dir_fd)
        if not self._mine(p):
            REAL["rmdir"](path, dir_fd=dir_fd)
            return
        assert p is not None
        self._before("rmdir", p)
        REAL["rmdir"](path, dir_fd=dir_fd)
        self.log.record("rmdir", p)

    def _os_symlink(
        self, src: Any, dst: Any, target_is_directory: bool = False, *, dir_fd: int | None = None
    ) -> None:
        p = self._resolve(dst, dir_fd)
        if not self._mine(p):
            REAL["symlink"](src, dst, target_is_directory, dir_fd=dir_fd)
            return
        assert p is not None
        self._before("symlink", p)
        REAL["symlink"](src, dst, target_is_directory, dir_fd=dir_fd)
        self.log.record("symlink", p, dst=os.fsdecode(src))

    # -- open() ------------------------------------------------------------------------------
    def _open(
        self,
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        closefd: bool = True,
        opener: Any = None,
    ) -> Any:
        writing = any(c in mode for c in "wax+")
        if not writing:
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        if opener is not None:
            # open() gets its fd from opener(name, flags) (tempfile.NamedTemporaryFile's does
            # os.open); under the root, the writes through that fd are recorded too.
            p = None if isinstance(file, int) else self._resolve(file)
            if not self._mine(p):
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            fd = opener(file, _flags_for(mode))
            t = self._lookup(fd)
            if t is None or t.is_dir:
                return real_open(fd, mode, buffering, encoding, errors, newline, True)
            closefd = True
        elif isinstance(file, int):
            t = self._lookup(file)
            if t is None or t.is_dir:
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            fd = file
        else:
            p = self._resolve(file)
            if not self._mine(p):
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            assert p is not None
            fd = self._open_fd(p, _flags_for(mode), 0o666)
            closefd = True
        raw = RecordedFile(self, fd, mode, name=file, closefd=closefd)
        if "b" in mode and "a" in mode:
            raw.seek(0, os.SEEK_END)
        if "b" in mode and buffering == 0:
            return raw
        # Buffered like the real open() (code checks isinstance(f, io.BufferedWriter): SB3's
        # save_to_zip_file refuses anything else), so writes are recorded as flushed.
        size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
        buffered: io.BufferedRandom | io.BufferedWriter = (
            io.BufferedRandom(raw, size) if "+" in mode else io.BufferedWriter(raw, size)
        )
        if "b" in mode:
            return buffered
        text = io.TextIOWrapper(
            buffered, encoding=io.text_encoding(encoding), errors=errors, newline=newline, write_through=False
        )
        text.mode = mode  # type: ignore[misc]
        if "a" in mode:
            text.seek(0, os.SEEK_END)
        return text


def _flags_for(mode: str) -> int:
    plus = "+" in mode
    flags = os.O_RDWR if plus else os.O_WRONLY
    if "w" in mode:
        flags |= os.O_CREAT | os.O_TRUNC
    elif "a" in mode:
        flags |= os.O_CREAT | os.O_APPEND
    elif "x" in mode:
        flags |= os.O_CREAT | os.O_EXCL
    elif "r" in mode:
        flags = os.O_RDWR
    return flags | os.O_CLOEXEC


class RecordedFile(io.RawIOBase):
    """An unbuffered binary file whose every write is one recorded operation.

    Deliberately not an ``io.FileIO``/``BufferedWriter``: libraries such as numpy
    write straight to the descriptor when they see one of those, bypassing the log.
    """

    def __init__(self, owner: Interceptor, fd: int, mode: str, *, name: Any, closefd: bool) -> None:
        super().__init__()
        self._owner = owner
        self._fd = fd
        self._closefd = closefd
        self.name = name
        self.mode = mode.replace("t", "")

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return "+" in self.mode or "r" in self.mode

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        data = REAL["read"](self._fd, len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        view = memoryview(data).cast("B")
        t = self._owner._lookup(self._fd)
        if t is None:  # the interceptor has ended; behave like a plain file
            total = 0
            while total < view.nbytes:
                total += int(REAL["write"](self._fd, view[total:]))
            return total
        total = 0
        while total < view.nbytes:
            n = self._owner._write_at(self._fd, t, view[total:], None)
            if n <= 0:  # pragma: no cover - the kernel raises instead
                break
            total += n
        return total

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        return int(REAL["lseek"](self._fd, pos, whence))

    def tell(self) -> int:
        return int(REAL["lseek"](self._fd, 0, os.SEEK_CUR))

    def truncate(self, size: int | None = None) -> int:
        if size is None:
            size = self.tell()
        self._owner._os_ftruncate(self._fd, size)
        return size

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            if self._closefd:
                self._owner._os_close(self._fd)
