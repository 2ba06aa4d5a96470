"""What every archive module shares: the format's names and limits, the reports, and OS errors with advice."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno as _errno
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from persistkit.errors import (
    PersistIOError,
    PersistkitError,
    describe_errno,
)
from persistkit.io import current_fs
from persistkit.io.atomic import pid_alive

if TYPE_CHECKING:
    from persistkit.archive.remote import PushReport

log = logging.getLogger("persistkit")

MANIFEST = "MANIFEST.json"
FORMAT = "persistkit-archive/1"
CHUNK = 1 << 20
# Already-compressed formats are stored as they are: deflating them costs time and saves nothing.
STORED_SUFFIXES = frozenset(
    [
        ".zip",
        ".models",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".lz4",
        ".7z",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".mp4",
        ".pth",
        ".pt",
        ".npz",
        ".safetensors",
        ".parquet",
        ".h5",
        ".keras",
        ".whl",
        ".jar",
    ]
)
# Key files undo the encryption of the bundles beside them; lock files belong to live writers.
DEFAULT_EXCLUDE = ("*.key", ".persistkit.lock", ".persistkit.lock.*")
_RESTORING: set[str] = set()  # archives being restored from in this process
_RESTORING_LOCK = threading.Lock()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class ArchiveReport:
    path: Path
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped_sources: list[str] = field(default_factory=list)
    changed_while_archiving: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # key and lock files left out (see Archiver.exclude)
    pruned: list[str] = field(default_factory=list)
    remote: PushReport | None = None  # with Archiver(remote=...): the push, its proof and remote retention


@dataclass
class VerifyReport:
    path: Path
    checked: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RestoreLimits:
    """Caps on the work an untrusted archive may cause.

    Declared sizes are only trusted as an upper bound (zipfile never returns more than a
    member declares): together they may not exceed ``max_ratio`` times the archive's own
    size, nor ``max_total_bytes``. Each member's expansion is measured again while streaming.
    """

    max_entries: int = 100_000
    max_total_bytes: int = 50 * 1024**3
    max_ratio: float = 200.0  # uncompressed / compressed bytes of one entry


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _is_restoring(path: Path) -> bool:
    with _RESTORING_LOCK:
        if str(path) in _RESTORING:
            return True
    marker = Path(f"{path}.restoring")
    fs = current_fs()
    if not fs.exists(marker):
        return False
    try:
        pid = int(fs.read_bytes(marker).split()[0])
    except (ValueError, IndexError, OSError):
        return False
    return pid_alive(pid)


# -- errors with advice that fits ---------------------------------------------------------------

_ADVICE = {
    _errno.ENOSPC: "the disk is full: free space on that filesystem (or use one with room), then retry",
    _errno.EDQUOT: "your disk quota is used up: free space or raise the quota, then retry",
    _errno.ENOENT: "it does not exist: check the path",
    _errno.ENOTDIR: "part of that path is a file, not a directory: check the path",
    _errno.EISDIR: "it is a directory where a file was expected: check the path",
    _errno.EEXIST: "something already exists there: choose another path",
    _errno.EACCES: "permission denied: fix the permissions, or run as a user who may write there",
    _errno.EPERM: "the operation is not permitted there: fix the permissions or choose another path",
    _errno.EROFS: "the filesystem is mounted read-only: remount it read-write or choose another location",
    _errno.EIO: "the device reported an I/O error: check the disk (dmesg, SMART) before retrying",
    _errno.ENAMETOOLONG: "a name in that path is too long for the filesystem: choose a shorter path",
    _errno.ELOOP: "that path loops through symlinks: check the path",
    _errno.EMFILE: "the process has too many open files: close some or raise the limit (ulimit -n)",
    _errno.ENFILE: "the system has too many open files: retry later or raise fs.file-max",
    _errno.EXDEV: "the paths are on different filesystems: choose a target on the same filesystem",
    _errno.ENOTEMPTY: "the directory is not empty: choose a new directory",
    _errno.EFBIG: "the file is larger than this filesystem or process allows (ulimit -f): use another location",
}


def _os_error(op: str, path: str | os.PathLike[str], err: OSError, after: str = "") -> PersistIOError:
    """A PersistIOError naming ``path`` with advice chosen by the errno, not one-size-fits-all."""
    advice = _ADVICE.get(err.errno or -1, "see the error above and retry once it is fixed")
    message = f"{op} failed on {os.fspath(path)!r}: {describe_errno(err.errno)}; {advice}."
    if after:
        message += f" {after}"
    wrapped = PersistIOError(message, errno=err.errno, path=path, operation=op)
    wrapped.__cause__ = err
    return wrapped


@contextlib.contextmanager
def _os_errors(
    op: str, path: str | os.PathLike[str], after: str = "", *, exact: bool = False
) -> Iterator[None]:
    """OSError -> PersistIOError naming ``path`` (with ``exact``: the file the OS named, if any)."""
    try:
        yield
    except PersistkitError:
        raise
    except OSError as err:
        named = err.filename if exact and isinstance(err.filename, str) else path
        raise _os_error(op, named, err, after) from err
