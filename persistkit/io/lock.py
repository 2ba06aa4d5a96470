"""One writer per store or archive directory.

The lock is an OS advisory lock (``flock`` through the filelock library), so it
is released by the kernel when its holder dies, even by SIGKILL: a crashed bot
never leaves a stale lock behind. The holder's pid is written next to the lock
so that the second writer's error can say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from types import TracebackType

from filelock import FileLock, Timeout

from persistkit.errors import LockedError
from persistkit.io.atomic import atomic_write
from persistkit.io.fs import PathLike, current_fs, io_error

__all__ = ["DirectoryLock", "LOCK_NAME", "PublishLock"]

LOCK_NAME = ".persistkit.lock"
OWNER_NAME = ".persistkit.lock.owner"


class DirectoryLock:
    """Exclusive writer lock for ``directory``; raises LockedError if held elsewhere.

    ``timeout`` is how long to wait for the holder to let go (0: fail at once).
    """

    def __init__(self, directory: PathLike, *, timeout: float = 0.0) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.timeout = timeout
        self._lock = FileLock(
            os.path.join(self.directory, LOCK_NAME), timeout=timeout, thread_local=False, is_singleton=False
        )

    @property
    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def holder_pid(self) -> int | None:
        """The pid recorded by the current holder, if it left one we can read."""
        try:
            text = current_fs().read_bytes(os.path.join(self.directory, OWNER_NAME)).decode()
            return int(text.split()[0])
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return None

    def acquire(self) -> DirectoryLock:
        fs = current_fs()
        try:
            fs.makedirs(self.directory)
        except OSError as err:
            raise io_error("create directory", self.directory, err) from err
        try:
            self._lock.acquire()
        except Timeout:
            pid = self.holder_pid()
            who = f"process {pid}" if pid is not None else "another process"
            raise LockedError(
                f"{self.directory!r} is locked for writing by {who}. Stop that writer, "
                "or open this directory read-only.",
                pid=pid,
                path=self.directory,
            ) from None
        except OSError as err:
            raise io_error("lock", self.directory, err) from err
        # Advisory note for the next contender's error message; not a durability concern.
        with contextlib.suppress(OSError):
            atomic_write(
                os.path.join(self.directory, OWNER_NAME),
                f"{os.getpid()} {socket.gethostname()}\n".encode(),
                durable=False,
            )
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class PublishLock:
    """Exclusive lock on a directory itself (``flock`` on the directory's descriptor); no lock file.

    It guards a step that must publish several files of one directory as a
    unit, such as a bundle and its new key file: two processes saving the same
    new bundle would otherwise each create a key, and the bundle that wins the
    rename need not be the one the surviving key opens. Creating no file keeps
    a failed save from leaving anything behind. Waits up to ``timeout`` seconds.
    """

    def __init__(self, directory: PathLike, *, timeout: float = 120.0) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> PublishLock:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise io_error("lock", self.directory, err) from err
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                        raise io_error("lock", self.directory, err) from err
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{self.directory!r}: another process has been saving into it for {self.timeout:g} s. "
                        "Wait for that save to finish, or stop that process.",
                        path=self.directory,
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> PublishLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
