"""STORAGE: the only layer that opens, writes, fsyncs, renames or unlinks files."""

from persistkit.io.atomic import atomic_write, atomic_writer, cleanup_stale_temps
from persistkit.io.fs import FileHandle, LocalFS, PersistFS, current_fs, use_fs
from persistkit.io.lock import DirectoryLock

__all__ = [
    "DirectoryLock",
    "FileHandle",
    "LocalFS",
    "PersistFS",
    "atomic_write",
    "atomic_writer",
    "cleanup_stale_temps",
    "current_fs",
    "use_fs",
]
