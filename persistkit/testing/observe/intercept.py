"""Route plain-Python file writes of the code under test into the verifier's operation log.

persistkit's own writes go through ``persistkit.io`` and are recorded by a
``RecordingFS``. User code writes with ``open()``, ``os.*``, ``pathlib``,
``shutil`` or ``numpy.save``; the ``Interceptor`` patches those at the
Python level, *only for paths under one directory*, and appends what they
did to the same ordered log (the ``persistkit.testing.fs.recordfs.Op`` format), so
``CrashSimulator`` replays persistkit's and the user's operations together.
The same hook lets ``disk_faults`` fail the Nth operation of either kind and
``crash_points.concurrent`` interleave writers one operation at a time.

What is patched while an ``Interceptor`` is active (other paths pass straight through):

* ``builtins.open`` / ``io.open`` (hence ``pathlib.Path.open/write_bytes/write_text``,
  ``os.fdopen``, ``tempfile.NamedTemporaryFile``, ``numpy.save``, ``json.dump`` into a
  file, ...), with or without ``opener=``. A write-mode open returns the genuine types
  (``io.BufferedWriter``, ``io.BufferedRandom``, ``io.TextIOWrapper``; unbuffered: an
  ``io.FileIO``) over a ``RecordedFileIO``, an ``io.FileIO`` subclass whose writes,
  truncations and close are recorded, so libraries that type-check the file object
  (stable-baselines3's ``model.save``) behave as they do untested;
* ``io.FileIO(...)`` itself (``isinstance(x, io.FileIO)`` keeps working for files
  opened before or outside interception);
* ``os.open/write/pwrite/fsync/fdatasync/close/ftruncate/truncate/replace/rename/
  unlink/remove/mkdir/rmdir/symlink/link`` (hence ``os.makedirs``, ``shutil.move``,
  ``shutil.rmtree``, ``tempfile.mkstemp``);
* references to those functions captured before interception began and held as
  module globals (``from os import fsync``, as atomicwrites does, or
  ``_replace = os.replace``): every loaded module's globals are scanned (once per
  module: a global bound after its module was first scanned is missed) and rebound
  while active; ``Interceptor.rebound`` lists them;
* ``shutil.copyfile`` loses its ``sendfile`` fast path, and numpy's ``isfileobj``
  answers False for a recorded file, so their data goes through recorded writes.

Not covered: writes made by C extensions directly (``torch.save(path)``, ``h5py``,
``safetensors``), ``ndarray.tofile`` on a file numpy opened itself, ``mmap``,
``os.sendfile``, other processes, and references captured anywhere but a module's
globals (closures, default arguments, class attributes, ``functools.partial``).
Missed writes, renames and unlinks change the directory in ways the recorded
operations do not reproduce, so ``observe.check_explained`` refuses a verdict.
A missed ``fsync`` changes no bytes and cannot be detected that way; its effect is
pessimistic: the crash simulator treats the data as never made durable and may
report a lost write that a real fsync prevented, never the reverse. Use
``observe="syscalls"`` for code of that kind.

Calls made *by* ``persistkit.io`` are never recorded twice: the ``GuardFS``
wrapper marks the thread as "inside persistkit io" for the duration of each
primitive, and calls whose caller frames belong to ``persistkit.io`` or to the
``filelock`` library (directory locks are not state) pass through.
"""

from __future__ import annotations

import abc
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
from typing import Any, TypeVar

from persistkit.io.fs import PathLike, PersistFS
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.fs.testfs import HookedFS, Mutation

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
        "link",
        "lseek",
        "fstat",
    )
}
real_open = builtins.open
_SKIP_MODULES = ("persistkit.io", "filelock")
_OWN = ("persistkit.testing",)
_NEVER_REBIND = frozenset({"os", "posix", "builtins", "io", "_pyio"})
_REAL_IDS = frozenset(id(f) for f in [*REAL.values(), real_open])
_scanned: dict[str, int] = {}  # module name -> id of the module object scanned (no reference kept)
_captures: dict[str, list[str]] = {}  # module name -> its globals bound to REAL functions

_local = threading.local()

Hook = Callable[[str, str], None]
T = TypeVar("T")


def inside_persistkit_io() -> bool:
    return getattr(_local, "depth", 0) > 0


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


class GuardFS(HookedFS):
    """Delegates to ``inner``, marking the thread as inside persistkit io meanwhile.

    ``before(kind, path)``, when given, runs before every mutating primitive (the
    scheduling hook of ``crash_points.concurrent``), the ``start_writeback`` hint included.
    """

    def __init__(self, inner: PersistFS, *, before: Hook | None = None) -> None:
        super().__init__(inner)
        self.before = before

    def on_mutation(self, m: Mutation, call: Callable[[], T]) -> T:
        if self.before is not None:
            self.before(m.op, m.target)
        with _guarded():
            return call()

    def on_read(self, op: str, path: str, call: Callable[[], T]) -> T:
        with _guarded():
            return call()


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
            self.rec.record(kind, path, **kw)


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
        self.rebound: list[str] = []

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
            (os, "link", self._os_link),
            (io, "FileIO", _InterceptedFileIO),
        ]
        numpy_format = sys.modules.get("numpy.lib._format_impl")
        if numpy_format is not None and hasattr(numpy_format, "isfileobj"):
            # numpy writes straight to the descriptor of a real file object (ndarray.tofile);
            # make it use .write() on ours, where each write is recorded.
            patches.append((numpy_format, "isfileobj", _numpy_isfileobj(numpy_format.isfileobj)))
        replacements = {id(getattr(m, n)): v for m, n, v in patches if m in (os, builtins)}
        patches += self._captured_references(replacements)
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

    def _captured_references(self, replacements: dict[int, Any]) -> list[tuple[Any, str, Any]]:
        """Module globals bound to a real ``os``/``open`` function before interception began.

        ``from os import fsync`` (atomicwrites does this) or ``_replace = os.replace`` at
        import time would otherwise bypass the patches above; rebinding them while
        active turns them into observed calls. Their names are kept in ``rebound``.
        """
        found: list[tuple[Any, str, Any]] = []
        self.rebound = []
        for modname, module in list(sys.modules.items()):
            if module is None or modname in _NEVER_REBIND or modname.startswith(_SKIP_MODULES + _OWN):
                continue
            try:
                namespace = vars(module)
            except TypeError:
                continue
            if _scanned.get(modname) == id(module):
                names: list[str] = _captures.get(modname, [])
            else:
                # Scanned once per module (a full scan of every module costs ~50 ms per entry).
                _scanned[modname] = id(module)
                names = [
                    n for n, v in list(namespace.items()) if id(v) in _REAL_IDS and not n.startswith("__")
                ]
                if names:
                    _captures[modname] = names
                else:
                    _captures.pop(modname, None)
            for name in names:
                replacement = replacements.get(id(namespace.get(name)))
                if replacement is not None:
                    found.append((module, name, replacement))
                    self.rebound.append(f"{modname}.{name}")
        return found

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
            # where the directory is NOW (renamed since it was opened, or its old name reused by
            # another directory): the kernel's own answer, as strace's -y gives it
            try:
                where = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                where = t.path
            if not where.endswith(" (deleted)"):
                self.log.record("fsync_dir", where)
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

    def _os_link(
        self,
        src: Any,
        dst: Any,
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        s, d = self._resolve(src, src_dir_fd), self._resolve(dst, dst_dir_fd)
        kw = {"src_dir_fd": src_dir_fd, "dst_dir_fd": dst_dir_fd, "follow_symlinks": follow_symlinks}
        if not self._mine(d):
            REAL["link"](src, dst, **kw)
            return
        assert s is not None and d is not None
        self._before("link", d)
        REAL["link"](src, dst, **kw)
        self.log.record("link", s, dst=d)

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
        """``open()`` with the genuine result types, over a raw file that records its writes."""
        if not any(c in mode for c in "wax+"):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        if isinstance(file, int):
            if self._tracked_fd(file)[1] is None:
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        elif opener is None and not self._mine(self._resolve(file)):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        return self._build(file, mode, buffering, encoding, errors, newline, closefd, opener)

    def _opener(self, user_opener: Any) -> Callable[[str, int], int]:
        def opener(path: str, flags: int) -> int:
            if user_opener is None:
                p = self._resolve(path)
                assert p is not None
                return self._open_fd(p, flags, 0o666)
            fd = int(user_opener(path, flags))
            self._tracked_fd(fd)  # learn it if the user's opener bypassed the patched os.open
            return fd

        return opener

    def _build(
        self,
        file: Any,
        mode: str,
        buffering: int,
        encoding: str | None,
        errors: str | None,
        newline: str | None,
        closefd: bool,
        opener: Any,
    ) -> Any:
        # The steps of io.open (see _pyio.open), with RecordedFileIO as the raw file.
        if "b" in mode and (encoding is not None or errors is not None or newline is not None):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        binary = "b" in mode
        raw_mode = mode.replace("t", "").replace("b", "")
        raw = RecordedFileIO(
            file, raw_mode, closefd, opener=None if isinstance(file, int) else self._opener(opener)
        )
        raw._owner = self
        result: Any = raw
        try:
            line_buffering = False
            if buffering == 1 or (buffering < 0 and raw.isatty()):
                buffering = -1
                line_buffering = True
            if buffering < 0:
                buffering = io.DEFAULT_BUFFER_SIZE
                with contextlib.suppress(OSError):
                    blksize = REAL["fstat"](raw.fileno()).st_blksize
                    if blksize > 1:
                        buffering = blksize
            if buffering == 0:
                if binary:
                    return result
                raise ValueError("can't have unbuffered text I/O")
            buffered: io.BufferedRandom | io.BufferedWriter = (
                io.BufferedRandom(raw, buffering) if "+" in mode else io.BufferedWriter(raw, buffering)
            )
            result = buffered
            if binary:
                return result
            text = io.TextIOWrapper(buffered, io.text_encoding(encoding), errors, newline, line_buffering)
            result = text
            text.mode = mode  # type: ignore[misc]
            return result
        except BaseException:
            result.close()
            raise


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


class RecordedFileIO(io.FileIO):
    """A real ``io.FileIO`` whose writes, truncations and close are recorded.

    ``open()`` under the interceptor wraps one in the usual ``BufferedWriter`` /
    ``BufferedRandom`` / ``TextIOWrapper``, so ``isinstance`` checks (stable-baselines3's
    ``model.save``, numpy's) see the types they expect. Buffered writers call
    ``raw.write`` as a method, so every flush is a recorded write.
    """

    _owner: Interceptor | None = None

    def _tracked(self) -> tuple[Interceptor, _Tracked] | None:
        owner = self._owner
        if owner is None or self.closed or not owner.active:
            return None
        t = owner._tracked_fd(self.fileno())[1]
        return None if t is None or t.is_dir else (owner, t)

    def write(self, data: Any, /) -> int:
        found = self._tracked()
        if found is None:
            return super().write(data)
        owner, t = found
        return owner._write_at(self.fileno(), t, data, None)

    def truncate(self, size: int | None = None, /) -> int:
        found = self._tracked()
        if found is None:
            return super().truncate(size)
        if size is None:
            size = self.tell()
        found[0]._os_ftruncate(self.fileno(), size)
        return size

    def close(self) -> None:
        found = None if not self.closefd else self._tracked()
        if found is None:
            super().close()
            return
        owner, t = found
        fd = self.fileno()
        owner._fds.pop(fd, None)
        failure: OSError | None = None
        try:
            if t.hid is not None:
                owner._before("close", t.path)
        except OSError as err:
            failure = err
        super().close()
        if t.hid is not None:
            owner.log.record("close", t.path, handle=t.hid)
        if failure is not None:
            raise failure


RecordedFile = RecordedFileIO  # the former name

_REAL_FILEIO = io.FileIO


class _FileIOType(abc.ABCMeta):
    """``isinstance(x, io.FileIO)`` keeps its meaning while ``io.FileIO`` is patched."""

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _REAL_FILEIO)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _REAL_FILEIO)


class _InterceptedFileIO(RecordedFileIO, metaclass=_FileIOType):
    """What ``io.FileIO(...)`` makes while an Interceptor is active: a recorded raw file."""

    def __init__(self, file: Any, mode: str = "r", closefd: bool = True, opener: Any = None) -> None:
        owner = _active
        if owner is not None and owner.active and any(c in mode for c in "wax+"):
            if not isinstance(file, int) and (opener is not None or owner._mine(owner._resolve(file))):
                opener = owner._opener(opener)
            self._owner = owner
        super().__init__(file, mode, closefd, opener=opener)


def _numpy_isfileobj(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def isfileobj(f: Any) -> bool:
        raw = getattr(f, "raw", f)
        raw = getattr(raw, "raw", raw)
        if isinstance(raw, RecordedFileIO) and raw._tracked() is not None:
            return False
        return original(f)

    return isfileobj
