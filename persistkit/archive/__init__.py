"""Training archives: timestamped zips of a training workspace, with retention and safe restore.

An archive is an ordinary zip (``unzip -l`` lists it) named
``<archive_dir>/<prefix>_YYYYMMDD_HHMMSS.zip`` (UTC), holding ``logs/``,
``models/``, ``config/``, ``root_checkpoints/`` (root files matching the
patterns) and ``MANIFEST.json``: every entry's path, kind, size and sha256,
when the archive was made, from which root, what was skipped, and which key
and lock files were left out (``*.key`` beside an encrypted bundle would undo
its encryption; see ``Archiver(exclude=...)``).

It is written through ``persistkit.io`` (temp file in the same directory,
fsync, rename, directory fsync) under the archive directory's writer lock,
verified, and only then are old archives pruned. ``verify()`` and ``restore()``
share one checker: restore refuses whatever verify would report (anything that
could escape the target, alone or through other links, exhaust the disk, or
differ from the manifest), then extracts into a temp directory and renames it
into place. Every OS failure is a ``PersistIOError`` naming the file, with
advice that fits its errno.

The package, along its seams: ``base`` (format names, reports, limits, OS errors with
advice), ``archiver`` (``Archiver``), ``checker`` (the one checker), ``restore``
(security-critical, its own module), ``remote`` (off-site copies: push proven end-to-end,
remote retention, pull, restore from a URL), ``backups`` (``backup_before_overwrite``) and
``session`` (``training_session``). ``persistkit.archive`` re-exports every public name.
"""

from persistkit.archive.archiver import Archiver as Archiver
from persistkit.archive.backups import backup_before_overwrite as backup_before_overwrite
from persistkit.archive.base import ARCHIVE_MANIFEST as ARCHIVE_MANIFEST
from persistkit.archive.base import CHUNK as CHUNK
from persistkit.archive.base import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from persistkit.archive.base import FORMAT as FORMAT
from persistkit.archive.base import STORED_SUFFIXES as STORED_SUFFIXES
from persistkit.archive.base import ArchiveReport as ArchiveReport
from persistkit.archive.base import RestoreLimits as RestoreLimits
from persistkit.archive.base import VerifyReport as VerifyReport
from persistkit.archive.remote import PushReport as PushReport
from persistkit.archive.remote import RemoteArchive as RemoteArchive
from persistkit.archive.remote import RemoteArchives as RemoteArchives
from persistkit.archive.remote import restore_url as restore_url
from persistkit.archive.restore import cleanup_stale_restores as cleanup_stale_restores
from persistkit.archive.restore import restore as restore
from persistkit.archive.session import TrainingSession as TrainingSession
from persistkit.archive.session import training_session as training_session

__all__ = [
    "DEFAULT_EXCLUDE",
    "ArchiveReport",
    "Archiver",
    "PushReport",
    "RemoteArchive",
    "RemoteArchives",
    "RestoreLimits",
    "VerifyReport",
    "backup_before_overwrite",
    "cleanup_stale_restores",
    "restore",
    "restore_url",
    "training_session",
]
