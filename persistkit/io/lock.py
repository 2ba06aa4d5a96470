"""One writer per store or archive directory.

The lock is an OS advisory lock (``flock`` through the filelock library), so it
is released by the kernel when its holder dies, even by SIGKILL: a crashed bot
never leaves a stale lock behind. The holder's pid is written next to the lock
so that the second writer's error can say who holds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from types import TracebackType

from filelock import FileLock, Timeout

from persistkit.errors import LockedError
from persistkit.io.atomic import atomic_write
from persistkit.io.fs import PathLike, current_fs, io_error

__all__ = ["DirectoryLock", "LOCK_NAME"]

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
