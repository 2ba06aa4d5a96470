"""All-or-nothing file replacement.

The sequence is the one every durable store uses: write a uniquely named temp
file in the target's own directory, fsync it, ``os.replace`` it over the
target, then fsync the directory so the rename itself survives power loss.
A crash at any point leaves either the old file or the new one.

Temp files are named ``.<target>.pk-tmp-<pid>-<random>`` so that a writer that
died mid-save can be recognised; the next atomic write into that directory
removes temps whose writer is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from persistkit.errors import PersistIOError
from persistkit.io.fs import FileHandle, PathLike, current_fs, io_error

__all__ = [
    "AtomicWriter",
    "TEMP_MARKER",
    "atomic_write",
    "atomic_writer",
    "cleanup_stale_temps",
    "is_temp_name",
    "temp_name_for",
]

TEMP_MARKER = ".pk-tmp-"
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.pk-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{12})$")

# Temps this process is writing right now; never cleaned up under a live writer.
_active: set[str] = set()
_active_lock = threading.Lock()


def temp_name_for(target: str) -> str:
    return f".{target}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def cleanup_stale_temps(directory: PathLike) -> list[str]:
    """Remove temp files left by writers that are gone; return their names.

    A temp is stale when its writer pid is dead, or when it is this process's
    pid but no live ``atomic_write`` owns it (a simulated or caught crash).
    """
    fs = current_fs()
    directory = os.path.abspath(os.fspath(directory))
    removed: list[str] = []
    try:
        names = fs.listdir(directory)
    except OSError:
        return removed
    me = os.getpid()
    for name in names:
        match = _TEMP_RE.match(name)
        if match is None:
            continue
        full = os.path.join(directory, name)
        pid = int(match["pid"])
        with _active_lock:
            active = full in _active
        if active or (pid != me and _pid_alive(pid)):
            continue
        try:
            fs.unlink(full)
        except OSError:
            continue  # someone else cleaned it, or it is not ours to remove
        removed.append(name)
    return removed


class AtomicWriter:
    """The handle ``atomic_writer`` yields: ``write`` as often as needed."""

    def __init__(self, handle: FileHandle, target: str) -> None:
        self._handle = handle
        self.target = target
        self.bytes_written = 0

    @property
    def temp_path(self) -> str:
        return self._handle.path

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            current_fs().write(self._handle, data)
        except OSError as err:
            raise io_error("write", self.target, err) from err
        n = memoryview(data).nbytes
        self.bytes_written += n
        return n

    # Enough of the file protocol for streaming writers such as zipfile (not seekable).
    def tell(self) -> int:
        return self.bytes_written

    def flush(self) -> None:
        """Nothing is buffered here; durability comes from the fsync at commit."""


@contextlib.contextmanager
def atomic_writer(
    path: PathLike,
    *,
    mode: int = 0o644,
    durable: bool = True,
    cleanup: bool = True,
) -> Iterator[AtomicWriter]:
    """Context manager: write the new content, and it replaces ``path`` on exit.

    With ``durable=False`` the fsyncs are skipped (for advisory files such as
    lock owner notes); the replace is still atomic against process crashes.
    On any error the temp file is removed and ``PersistIOError`` names the
    target path and errno. If the block raises, ``path`` is left untouched.
    """
    fs = current_fs()
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    if cleanup:
        cleanup_stale_temps(directory)
    temp = os.path.join(directory, temp_name_for(name))
    with _active_lock:
        _active.add(temp)
    handle: FileHandle | None = None
    try:
        try:
            handle = fs.create(temp, mode=mode, exclusive=True)
        except OSError as err:
            raise io_error("create temp file for", target, err) from err
        writer = AtomicWriter(handle, target)
        yield writer
        try:
            if durable:
                fs.fsync(handle)
        except OSError as err:
            # Never retry: a failed fsync may have dropped the data (fsyncgate).
            raise io_error("fsync", target, err) from err
        try:
            fs.close(handle)
        except OSError as err:
            raise io_error("close", target, err) from err
        try:
            fs.replace(temp, target)
        except OSError as err:
            raise io_error("replace", target, err) from err
        with _active_lock:
            _active.discard(temp)
        if durable:
            try:
                fs.fsync_dir(directory)
            except OSError as err:
                raise PersistIOError(
                    f"fsync of directory {directory!r} failed after {target!r} was replaced: "
                    f"the new content is in place but may not survive power loss "
                    f"({err.strerror}). Save again once the filesystem is healthy.",
                    errno=err.errno,
                    path=target,
                    operation="fsync_dir",
                ) from err
    except BaseException:
        _abandon(handle, temp)
        raise
    finally:
        with _active_lock:
            _active.discard(temp)


def _abandon(handle: FileHandle | None, temp: str) -> None:
    fs = current_fs()
    if handle is not None and not handle.closed:
        with contextlib.suppress(OSError):
            fs.close(handle)
    with contextlib.suppress(OSError):
        if fs.exists(temp):
            fs.unlink(temp)


def atomic_write(
    path: PathLike,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o644,
    durable: bool = True,
) -> Path:
    """Replace ``path`` with ``data`` all-or-nothing; durable when it returns."""
    with atomic_writer(path, mode=mode, durable=durable) as writer:
        writer.write(data)
    return Path(os.path.abspath(os.fspath(path)))
