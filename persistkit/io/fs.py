"""PersistFS: the replaceable I/O layer every persistkit byte goes through.

Only this package opens, writes, fsyncs, renames or unlinks files. Routing all
of it through one small interface is what lets the verifier record every
operation, enumerate crash states and inject faults (SQLite's VFS and LevelDB's
``Env`` follow the same idea).

Writes use raw file descriptors so that each ``write`` call the caller makes is
one recorded operation with a known offset; there is no hidden buffering
between persistkit and the kernel.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import stat as _stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from persistkit.errors import PersistIOError, PersistkitError, describe_errno

__all__ = [
    "DelegatingFS",
    "FileHandle",
    "LocalFS",
    "PersistFS",
    "current_fs",
    "describe_file_type",
    "io_error",
    "io_errors",
    "use_fs",
]

PathLike = str | os.PathLike[str]


@dataclass(eq=False)
class FileHandle:
    """An open file for writing. ``offset`` is where the next write lands."""

    path: str
    fd: int
    offset: int = 0
    closed: bool = False
    failed_fsync: bool = False

    def __repr__(self) -> str:
        return f"FileHandle({self.path!r}, offset={self.offset})"


def describe_file_type(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a character device``, ...: what a non-regular file is, for messages."""
    kinds = (
        (_stat.S_ISDIR, "a directory"),
        (_stat.S_ISFIFO, "a FIFO (named pipe)"),
        (_stat.S_ISCHR, "a character device"),
        (_stat.S_ISBLK, "a block device"),
        (_stat.S_ISSOCK, "a socket"),
        (_stat.S_ISLNK, "a symbolic link"),
        (_stat.S_ISREG, "a regular file"),
    )
    return next((what for test, what in kinds if test(mode)), "a special file")


# Operations that only look: a failure there changed nothing.
_LOOKS = ("open", "read", "inspect", "list", "stat", "archive (read)", "archive workspace")
# Steps of an atomic replacement before the rename: the target is still the previous copy.
_REPLACES = ("create temp file for", "write", "fsync", "close", "replace", "write checkpoint")


def _kind(op: str) -> str:
    if op.startswith(_LOOKS):
        return "look"
    if op in _REPLACES:
        return "replace"
    if op.startswith(("create directory", "lock")) or (
        op.startswith("create ") and op.endswith(" directory")
    ):
        return "prepare"
    if op.startswith(("delete", "remove", "quarantine")):
        return "delete"
    return "other"


NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096

# Advice that depends on the errno alone; ENOENT, EEXIST/ENOTDIR and EACCES/EPERM also depend on the
# kind of operation (see _advice).
_ERRNO_ADVICE = {
    _errno.EISDIR: "It is a directory: pass the path of a file.",
    _errno.ENAMETOOLONG: (
        f"The name is too long for the filesystem (at most {NAME_MAX_BYTES} bytes per name, "
        f"{PATH_MAX_BYTES} per path): choose a shorter name or directory."
    ),
    _errno.EROFS: "The filesystem is read-only: remount it read-write, or choose another location.",
    _errno.ENOSPC: "The disk is full: free space on that filesystem (or use one with room), then retry.",
    _errno.EDQUOT: "Your disk quota is used up: free space or raise the quota, then retry.",
    _errno.EFBIG: "The file is larger than this filesystem or process allows (ulimit -f): use another location.",
    _errno.ELOOP: (
        "A symbolic link is in the way (persistkit does not follow links here), or the path loops "
        "through links: point at the real file."
    ),
    _errno.EIO: "The device reported an I/O error: check the disk (dmesg, SMART) before trusting it again.",
    _errno.EAGAIN: "The operation was interrupted or would block: retry.",
    _errno.EINTR: "The operation was interrupted or would block: retry.",
    _errno.EMFILE: "The process has too many open files: close some, or raise the limit (ulimit -n), then retry.",
    _errno.ENFILE: "The system has too many open files: retry later, or raise fs.file-max.",
    _errno.EXDEV: "The paths are on different filesystems: choose a target on the same filesystem.",
    _errno.ENOTEMPTY: "The directory is not empty: choose a new directory, or empty it first.",
}


def _advice(op: str, path: str, code: int | None) -> str:
    """What to do about ``code`` during ``op`` on ``path``: one sentence per errno and kind of operation."""
    kind = _kind(op)
    parent = os.path.dirname(path.rstrip(os.sep)) or os.sep
    if code == _errno.ENOENT:
        if kind == "look":
            return "It does not exist: check the path (or restore the file from a backup)."
        if kind == "delete":
            return "It is already gone."
        return f"The directory {parent!r} does not exist: create it first, or fix the path."
    if code == _errno.EEXIST and kind != "prepare":  # an exclusive create, mkdir or symlink
        return "Something already exists there: move it away, or choose another path."
    if code in (_errno.EEXIST, _errno.ENOTDIR):  # makedirs says EEXIST when a file is in the way
        return (
            "A file is in the way where a directory is needed (the path or one of its parents is a file): "
            "move that file away, or choose another path."
        )
    if code in (_errno.EACCES, _errno.EPERM):
        where = "it" if kind == "look" else f"{parent!r}"
        return f"Permission denied: give this user access to {where} (chmod/chown), or choose another path."
    return _ERRNO_ADVICE.get(code or -1, "Fix the cause above, then retry.")


_PREPOSITIONS = frozenset({"at", "beside", "for", "from", "in", "into", "of", "on", "to"})

_CONSEQUENCE = {
    "look": "Nothing was changed.",
    "replace": "The previous copy is untouched.",
    "prepare": "Nothing was written.",
    "delete": "Nothing else was deleted.",
    "other": "",
}


def io_error(op: str, path: PathLike, err: OSError, after: str = "") -> PersistIOError:
    """Wrap an OSError into a PersistIOError naming the path and errno, with advice that fits both.

    ``after`` says what the failure left behind, where the caller knows better than the kind of
    operation does ("Nothing was restored."); it replaces the default consequence sentence.
    """
    where = os.fspath(path)
    consequence = after or _CONSEQUENCE[_kind(op)]
    if op == "create temp file for" and not after:  # the target may not exist yet: no previous copy
        consequence = "Nothing was written; a previous copy, if any, is untouched."
    # "create temp file for" + path reads as a phrase: put the path right after it
    head = f"{op} {where!r} failed" if op.rsplit(" ", 1)[-1] in _PREPOSITIONS else f"{op} failed on {where!r}"
    message = f"{head}: {describe_errno(err.errno)}. {_advice(op, where, err.errno)}"
    if consequence:
        message += f" {consequence}"
    wrapped = PersistIOError(message, errno=err.errno, path=path, operation=op)
    wrapped.__cause__ = err
    return wrapped


@contextlib.contextmanager
def io_errors(op: str, path: PathLike, after: str = "", *, exact: bool = False) -> Iterator[None]:
    """Turn an OSError raised inside the block into ``io_error(op, path, err, after)``.

    With ``exact``, the error names the file the OS named (``err.filename``) when there is one,
    e.g. the one unreadable file below a directory being walked. Typed persistkit errors pass.
    """
    try:
        yield
    except PersistkitError:
        raise
    except OSError as err:
        named = err.filename if exact and isinstance(err.filename, str) else path
        raise io_error(op, named, err, after) from err


class PersistFS:
    """Every file operation persistkit performs.

    Subclasses override the primitive operations; the test file systems in
    ``persistkit.testing`` (``testfs.HookedFS`` and its subclasses) wrap another PersistFS. Primitives raise plain
    ``OSError`` with its errno; the callers in this package (``atomic_write``
    and friends) wrap that into ``PersistIOError`` with the path and what to do.
    """

    # -- writing -----------------------------------------------------------
    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        raise NotImplementedError

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        raise NotImplementedError

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at the handle's offset, looping on short writes."""
        raise NotImplementedError

    def fsync(self, handle: FileHandle) -> None:
        raise NotImplementedError

    def start_writeback(self, handle: FileHandle) -> None:
        """A hint: start writing the handle's dirty data to disk now, so the final fsync waits less.

        It promises nothing about durability (only ``fsync`` does), so wrappers
        that model durability (recording, crash simulation) need not see it.
        An OSError must still be reported: after a failed flush the kernel may
        drop the data and a later fsync can succeed (fsyncgate). Default: nothing.
        """

    def close(self, handle: FileHandle) -> None:
        raise NotImplementedError

    def truncate(self, handle: FileHandle, size: int) -> None:
        raise NotImplementedError

    # -- namespace ---------------------------------------------------------
    def replace(self, src: PathLike, dst: PathLike) -> None:
        raise NotImplementedError

    def unlink(self, path: PathLike) -> None:
        raise NotImplementedError

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        raise NotImplementedError

    def rmdir(self, path: PathLike) -> None:
        raise NotImplementedError

    def symlink(self, target: str, path: PathLike) -> None:
        raise NotImplementedError

    def fsync_dir(self, path: PathLike) -> None:
        raise NotImplementedError

    # -- reading -----------------------------------------------------------
    def read_bytes(self, path: PathLike) -> bytes:
        raise NotImplementedError

    def open_read(self, path: PathLike) -> BinaryIO:
        raise NotImplementedError

    def listdir(self, path: PathLike) -> list[str]:
        raise NotImplementedError

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        raise NotImplementedError

    def readlink(self, path: PathLike) -> str:
        raise NotImplementedError

    # -- conveniences built on the primitives ------------------------------
    def exists(self, path: PathLike) -> bool:
        try:
            self.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def is_dir(self, path: PathLike) -> bool:
        try:
            return _stat.S_ISDIR(self.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def is_file(self, path: PathLike) -> bool:
        try:
            return _stat.S_ISREG(self.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def makedirs(self, path: PathLike, *, mode: int = 0o755, durable: bool = True) -> None:
        """Create ``path`` and missing parents; with ``durable``, fsync each new entry's parent."""
        target = Path(os.path.abspath(os.fspath(path)))
        missing: list[Path] = []
        probe = target
        while not self.is_dir(probe):
            missing.append(probe)
            if probe.parent == probe:
                break
            probe = probe.parent
        for directory in reversed(missing):
            try:
                self.mkdir(directory, mode=mode)
            except FileExistsError:
                continue
            if durable:
                self.fsync_dir(directory.parent)

    def walk(self, top: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like os.walk without following symlinks: (dirpath, dirnames, filenames)."""
        top_s = os.path.abspath(os.fspath(top))
        dirs: list[str] = []
        files: list[str] = []
        for name in sorted(self.listdir(top_s)):
            st = self.stat(os.path.join(top_s, name), follow_symlinks=False)
            (dirs if _stat.S_ISDIR(st.st_mode) else files).append(name)
        yield top_s, dirs, files
        for name in dirs:
            yield from self.walk(os.path.join(top_s, name))


def _abs(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


class LocalFS(PersistFS):
    """The real local filesystem (POSIX)."""

    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        p = _abs(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        fd = os.open(p, flags, mode)
        return FileHandle(p, fd)

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        p = _abs(path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            raise
        return FileHandle(p, fd, offset=size)

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            # pwrite at our own offset: a short write just continues where it stopped.
            written = os.pwrite(handle.fd, view, handle.offset)
            if written <= 0:  # pragma: no cover - the kernel raises instead
                raise OSError(28, os.strerror(28), handle.path)
            handle.offset += written
            view = view[written:]

    def fsync(self, handle: FileHandle) -> None:
        _sync(os.fsync, handle)

    def start_writeback(self, handle: FileHandle) -> None:
        # fdatasync, because Python has no sync_file_range; it runs on persistkit's write-behind
        # thread while the caller keeps writing (see persistkit.io.atomic).
        _sync(os.fdatasync, handle)

    def close(self, handle: FileHandle) -> None:
        if not handle.closed:
            handle.closed = True
            os.close(handle.fd)

    def truncate(self, handle: FileHandle, size: int) -> None:
        os.ftruncate(handle.fd, size)
        handle.offset = min(handle.offset, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        os.replace(_abs(src), _abs(dst))

    def unlink(self, path: PathLike) -> None:
        os.unlink(_abs(path))

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        os.mkdir(_abs(path), mode)

    def rmdir(self, path: PathLike) -> None:
        os.rmdir(_abs(path))

    def symlink(self, target: str, path: PathLike) -> None:
        os.symlink(target, _abs(path))

    def fsync_dir(self, path: PathLike) -> None:
        fd = os.open(_abs(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as err:
            # Some filesystems cannot fsync a directory; there is nothing more to do there.
            if err.errno not in (22, 95):  # EINVAL, EOPNOTSUPP
                raise
        finally:
            os.close(fd)

    def read_bytes(self, path: PathLike) -> bytes:
        with open(_abs(path), "rb") as f:
            return f.read()

    def open_read(self, path: PathLike) -> BinaryIO:
        return open(_abs(path), "rb")

    def listdir(self, path: PathLike) -> list[str]:
        return os.listdir(_abs(path))

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(_abs(path), follow_symlinks=follow_symlinks)

    def readlink(self, path: PathLike) -> str:
        return os.readlink(_abs(path))


def _sync(call: Callable[[int], None], handle: FileHandle) -> None:
    try:
        call(handle.fd)
    except OSError:
        # After a failed fsync the kernel may have dropped the dirty pages and
        # marked them clean; a retry could "succeed" over lost data (fsyncgate).
        handle.failed_fsync = True
        raise


class DelegatingFS(PersistFS):
    """Forwards every operation to ``inner``.

    The verifier's wrappers (recording, faults, guards, budgets) derive from
    ``persistkit.testing.fs.testfs.HookedFS``, which routes every mutation through one hook.
    """

    def __init__(self, inner: PersistFS) -> None:
        self.inner = inner

    def create(self, path: PathLike, *, mode: int = 0o644, exclusive: bool = True) -> FileHandle:
        return self.inner.create(path, mode=mode, exclusive=exclusive)

    def open_append(self, path: PathLike, *, mode: int = 0o644) -> FileHandle:
        return self.inner.open_append(path, mode=mode)

    def write(self, handle: FileHandle, data: bytes | bytearray | memoryview) -> None:
        self.inner.write(handle, data)

    def fsync(self, handle: FileHandle) -> None:
        self.inner.fsync(handle)

    def start_writeback(self, handle: FileHandle) -> None:
        self.inner.start_writeback(handle)

    def close(self, handle: FileHandle) -> None:
        self.inner.close(handle)

    def truncate(self, handle: FileHandle, size: int) -> None:
        self.inner.truncate(handle, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        self.inner.replace(src, dst)

    def unlink(self, path: PathLike) -> None:
        self.inner.unlink(path)

    def mkdir(self, path: PathLike, *, mode: int = 0o755) -> None:
        self.inner.mkdir(path, mode=mode)

    def rmdir(self, path: PathLike) -> None:
        self.inner.rmdir(path)

    def symlink(self, target: str, path: PathLike) -> None:
        self.inner.symlink(target, path)

    def fsync_dir(self, path: PathLike) -> None:
        self.inner.fsync_dir(path)

    def read_bytes(self, path: PathLike) -> bytes:
        return self.inner.read_bytes(path)

    def open_read(self, path: PathLike) -> BinaryIO:
        return self.inner.open_read(path)

    def listdir(self, path: PathLike) -> list[str]:
        return self.inner.listdir(path)

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        return self.inner.stat(path, follow_symlinks=follow_symlinks)

    def readlink(self, path: PathLike) -> str:
        return self.inner.readlink(path)


_LOCAL = LocalFS()
_stack: list[PersistFS] = []
_stack_lock = threading.Lock()


def current_fs() -> PersistFS:
    """The PersistFS in effect: the innermost ``use_fs`` or the local filesystem.

    This is process-global rather than a context variable on purpose: autosave
    and signal-triggered saves run on other threads, and a crash test must see
    their operations too.
    """
    return _stack[-1] if _stack else _LOCAL


@contextlib.contextmanager
def use_fs(fs: PersistFS) -> Iterator[PersistFS]:
    """Route persistkit's file operations through ``fs`` inside the block."""
    with _stack_lock:
        _stack.append(fs)
    try:
        yield fs
    finally:
        with _stack_lock:
            _stack.remove(fs)
