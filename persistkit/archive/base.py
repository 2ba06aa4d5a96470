"""What every archive module shares: the format's names and limits, and the reports.

OS errors become ``PersistIOError`` through ``persistkit.io.fs.io_error``/``io_errors`` (the one place
for advice that fits the errno), with an ``after=`` sentence saying what the archive step left behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from persistkit import naming
from persistkit.io import current_fs
from persistkit.io.atomic import pid_alive

if TYPE_CHECKING:
    from persistkit.archive.remote import PushReport

log = logging.getLogger("persistkit")

# A training archive's manifest (not a bundle's manifest.json, nor a state generation's MANIFEST).
ARCHIVE_MANIFEST = "MANIFEST.json"
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


def utcnow() -> dt.datetime:
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


def _is_restoring(path: Path) -> bool:
    with _RESTORING_LOCK:
        if str(path) in _RESTORING:
            return True
    marker = Path(naming.restoring_marker(path))
    fs = current_fs()
    if not fs.exists(marker):
        return False
    try:
        pid = int(fs.read_bytes(marker).split()[0])
    except (ValueError, IndexError, OSError):
        return False
    return pid_alive(pid)
