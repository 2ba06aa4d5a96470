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
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import datetime as dt
import errno as _errno
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import signal
import stat as _stat
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from persistkit import naming, shutdown
from persistkit.errors import (
    FormatError,
    IntegrityError,
    PersistIOError,
    PersistkitError,
    UnsafeArchiveError,
    describe_errno,
)
from persistkit.io import DirectoryLock, atomic_write, atomic_writer, current_fs
from persistkit.io.zipio import ZIP_DAMAGE_OR_IO
from persistkit.policy.retention import Decision, Item, KeepLast, Policy, decide

__all__ = [
    "DEFAULT_EXCLUDE",
    "ArchiveReport",
    "Archiver",
    "RestoreLimits",
    "VerifyReport",
    "backup_before_overwrite",
    "cleanup_stale_restores",
    "restore",
    "training_session",
]

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


class Archiver:
    """Archives a training workspace; see the module docstring for the layout."""

    def __init__(
        self,
        root: str | os.PathLike[str] = ".",
        *,
        sources: Sequence[str] = ("logs", "models", "config"),
        root_patterns: Sequence[str] = ("*.pth", "*.pkl"),
        archive_dir: str = "archives",
        keep: int | Policy = 5,
        prefix: str = "training_backup",
        progress: bool | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        lock_timeout: float = 300.0,
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.sources = tuple(sources)
        self.root_patterns = tuple(root_patterns)
        self.archive_dir = self.root / archive_dir
        self.policy: Policy = KeepLast(keep) if isinstance(keep, int) else keep
        self.prefix = prefix
        self.progress = progress
        self.exclude = tuple(exclude)
        self.lock_timeout = lock_timeout
        self._name_re = re.compile(rf"^{re.escape(prefix)}_(\d{{8}}_\d{{6}})(?:_(\d+))?\.zip$")
        self.last_verified: Path | None = None

    # -- create -------------------------------------------------------------------
    def _check_root(self) -> None:
        fs = current_fs()
        after = "Check the workspace root you gave; nothing was archived."
        with _os_errors("archive workspace", self.root, after):
            st = fs.stat(self.root)
        if not _stat.S_ISDIR(st.st_mode):
            raise PersistIOError(
                f"archive workspace failed on {str(self.root)!r}: it is a file, not a directory. {after}",
                errno=_errno.ENOTDIR,
                path=self.root,
                operation="archive workspace",
            )

    @contextlib.contextmanager
    def _writer(self, after: str) -> Iterator[None]:
        """The archive directory's writer lock (the one state stores use), held across create/prune."""
        with _os_errors("create archive directory", self.archive_dir, after):
            current_fs().makedirs(self.archive_dir)
        lock = DirectoryLock(self.archive_dir, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except PersistIOError as err:
            cause = err.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, PersistkitError):
                raise _os_error("lock archive directory", self.archive_dir, cause, after) from cause
            raise
        try:
            yield
        finally:
            lock.release()

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.exclude)

    def _target(self) -> Path:
        # Unique across processes and monotonic, even after pruning (persistkit.naming).
        return self.archive_dir / naming.allocate(self.archive_dir, naming.Stamped(f"{self.prefix}_", ".zip"))

    def _entries(self, report: ArchiveReport) -> Iterator[tuple[str, Path, os.stat_result]]:
        """(archive name, source path, lstat) for everything to archive, never following symlinks."""
        fs = current_fs()
        archive_dir = os.path.abspath(self.archive_dir)
        for source in self.sources:
            top = self.root / source
            if not fs.exists(top):
                report.skipped_sources.append(source)
                continue
            for dirpath, _dirnames, filenames in fs.walk(top):
                if os.path.abspath(dirpath).startswith(archive_dir):
                    continue
                rel_dir = os.path.relpath(dirpath, self.root)
                yield rel_dir + "/", Path(dirpath), fs.stat(dirpath, follow_symlinks=False)
                for name in filenames:
                    full = Path(dirpath) / name
                    if self._excluded(name):
                        report.excluded.append(f"{rel_dir}/{name}")
                        continue
                    yield f"{rel_dir}/{name}", full, fs.stat(full, follow_symlinks=False)
        for name in sorted(fs.listdir(self.root)):
            full = self.root / name
            if any(fnmatch.fnmatch(name, p) for p in self.root_patterns) and fs.is_file(full):
                if self._excluded(name):
                    report.excluded.append(name)
                    continue
                yield f"root_checkpoints/{name}", full, fs.stat(full, follow_symlinks=False)

    def create(self) -> Path:
        """Write a new archive, verify it, then prune old ones; returns its path."""
        return self.create_report().path

    def create_report(self) -> ArchiveReport:
        """``create()`` with the details: counts, skipped sources, excluded and changed files, pruned."""
        self._check_root()
        after = "Nothing was archived; older archives are untouched."
        with self._writer(after):
            with _os_errors("create archive in", self.archive_dir, after):
                target = self._target()
            try:
                return self._create_locked(target)
            except PersistIOError as err:
                cause = err.__cause__
                if (
                    err.path == str(target)
                    and isinstance(cause, OSError)
                    and not isinstance(cause, PersistkitError)
                ):
                    raise _os_error("write archive", target, cause, after) from cause
                raise

    def _create_locked(self, target: Path) -> ArchiveReport:
        report = ArchiveReport(target)
        files: list[dict[str, Any]] = []
        after = "Nothing was archived; older archives are untouched."
        with _os_errors("read workspace", self.root, after, exact=True):
            entries = list(self._entries(report))
        _refuse_case_twins([name for name, _, _ in entries], self.root)
        total = sum(st.st_size for _, _, st in entries if _stat.S_ISREG(st.st_mode))
        with (
            self._progress(total) as advance,
            atomic_writer(target) as out,
            zipfile.ZipFile(out, "w", allowZip64=True) as zf,  # type: ignore[call-overload]
        ):
            for name, path, st in entries:
                files.append(self._add(zf, name, path, st, report, advance))
            manifest = {
                "format": FORMAT,
                "created": _utcnow().isoformat(),
                "source_root": str(self.root),
                "skipped_sources": report.skipped_sources,
                "changed_while_archiving": report.changed_while_archiving,
                "excluded_patterns": list(self.exclude),
                "excluded": report.excluded,
                "files": files,
            }
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        verified = self.verify(target)
        if not verified.ok:
            raise IntegrityError(
                f"{target}: the archive just written does not verify ({'; '.join(verified.problems[:3])}); "
                "old archives were kept. Check the disk.",
                path=target,
            )
        self.last_verified = target
        try:
            decisions = self._prune_locked(dry_run=False, policy=None)
        except PersistIOError as err:
            raise PersistIOError(
                f"{target} was written and verified, but pruning old archives failed: {err}",
                errno=err.errno,
                path=err.path,
                operation=err.operation,
            ) from err
        report.pruned = [d.item.id for d in decisions if not d.keep]
        return report

    @contextlib.contextmanager
    def _progress(self, total: int) -> Iterator[Any]:
        show = self.progress if self.progress is not None else (total > 64 * 1024**2 and _is_tty())
        if not show:
            yield lambda n: None
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress(
            "archiving", BarColumn(), DownloadColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            task = bar.add_task("archive", total=total)
            yield lambda n: bar.advance(task, n)

    def _add(
        self,
        zf: zipfile.ZipFile,
        name: str,
        path: Path,
        st: os.stat_result,
        report: ArchiveReport,
        advance: Any,
    ) -> dict[str, Any]:
        fs = current_fs()
        mtime = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
        date_time = (max(mtime.year, 1980), mtime.month, mtime.day, mtime.hour, mtime.minute, mtime.second)
        if _stat.S_ISDIR(st.st_mode):
            info = zipfile.ZipInfo(name, date_time)
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
            report.directories += 1
            return {"path": name, "kind": "dir"}
        if _stat.S_ISLNK(st.st_mode):
            with _os_errors("read for archiving", path, "No partial archive was left behind."):
                target = fs.readlink(path)
            resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
            if os.path.isabs(target) or resolved.startswith(".."):
                # Pointing outside the workspace: noted in the manifest, never followed, and not
                # stored as a link (a restore must never create one that escapes its target).
                report.symlinks += 1
                return {"path": name, "kind": "external-symlink", "target": target}
            info = zipfile.ZipInfo(name, date_time)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target.encode())  # recorded, never followed
            report.symlinks += 1
            return {"path": name, "kind": "symlink", "target": target}
        if not _stat.S_ISREG(st.st_mode):
            report.changed_while_archiving.append(f"{name} (not a regular file: skipped)")
            return {"path": name, "kind": "skipped"}
        info = zipfile.ZipInfo(name, date_time)
        info.external_attr = (st.st_mode & 0o777 | 0o100000) << 16
        info.file_size = st.st_size
        with _os_errors("read for archiving", path, "No partial archive was left behind."):
            info.compress_type = self._compression(path, st)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            info._compresslevel = 1  # type: ignore[attr-defined]  # fast: archives are about safety, not ratio
        digest = hashlib.sha256()
        size = 0
        try:
            big = st.st_size > (1 << 31)
            # a member of the zip stream that atomic_writer is writing, not a file
            with fs.open_read(path) as src, zf.open(info, "w", force_zip64=big) as dst:  # io-ok
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                    advance(len(chunk))
        except PermissionError as err:
            raise PersistIOError(
                f"cannot read {path} ({err.strerror}); fix its permissions or move it out of "
                f"{self.root}, then archive again. No partial archive was left behind.",
                errno=err.errno,
                path=path,
                operation="archive",
            ) from err
        except OSError as err:
            raise _os_error("read for archiving", path, err, "No partial archive was left behind.") from err
        with _os_errors("read for archiving", path, "No partial archive was left behind."):
            after = fs.stat(path, follow_symlinks=False)
        changed = after.st_size != size or after.st_mtime_ns != st.st_mtime_ns
        if changed:
            report.changed_while_archiving.append(name)
        report.files += 1
        report.bytes += size
        return {"path": name, "kind": "file", "size": size, "sha256": digest.hexdigest(), "changed": changed}

    def _compression(self, path: Path, st: os.stat_result) -> int:
        if path.suffix.lower() in STORED_SUFFIXES or st.st_size == 0:
            return zipfile.ZIP_STORED
        if st.st_size < 4096:
            return zipfile.ZIP_DEFLATED
        with current_fs().open_read(path) as f:
            sample = f.read(64 * 1024)
        # Data that does not shrink by 10% in a fast sample is stored (random floats, encrypted blobs).
        return (
            zipfile.ZIP_DEFLATED if len(zlib.compress(sample, 1)) < 0.9 * len(sample) else zipfile.ZIP_STORED
        )

    # -- list / verify -----------------------------------------------------------------
    def list(self) -> builtins.list[Path]:
        """Archives persistkit made here, oldest first."""
        fs = current_fs()
        if not fs.is_dir(self.archive_dir):
            return []
        with _os_errors("list archives in", self.archive_dir):
            names = [n for n in fs.listdir(self.archive_dir) if self._name_re.match(n)]
        return [self.archive_dir / n for n in sorted(names, key=self._sort_key)]

    def _sort_key(self, name: str) -> tuple[str, int]:
        m = self._name_re.match(name)
        assert m is not None
        return m[1], int(m[2] or 0)

    def verify(self, path: str | os.PathLike[str]) -> VerifyReport:
        """Check the archive the way ``restore`` does and report every problem instead of stopping.

        Names, links, sizes and the compression ratio are checked first; then every member's
        kind, size and sha256 against ``MANIFEST.json``. The work is bounded by the archive's size.
        """
        return _verify(Path(path), RestoreLimits())

    # -- retention -------------------------------------------------------------------------
    def prune(self, *, dry_run: bool = False, policy: Policy | None = None) -> builtins.list[Decision]:
        """Apply the retention policy; with ``dry_run`` only explain. Never touches foreign files.

        Holds the archive directory's writer lock, so it never races a ``create()`` elsewhere.
        """
        if dry_run or not current_fs().is_dir(self.archive_dir):
            return self._prune_locked(dry_run=dry_run, policy=policy)
        with self._writer("Nothing was removed."):
            return self._prune_locked(dry_run=False, policy=policy)

    def _prune_locked(self, *, dry_run: bool, policy: Policy | None) -> builtins.list[Decision]:
        items = []
        for path in self.list():
            pinned = ""
            if _is_restoring(path):
                pinned = "being restored from"
            elif path == self.last_verified:
                pinned = "the archive just verified"
            items.append(Item(path.name, _archive_time(path, self._name_re), pinned))
        decisions = decide(policy or self.policy, items)
        if not dry_run:
            fs = current_fs()
            for d in decisions:
                if d.keep:
                    continue
                target = self.archive_dir / d.item.id
                if not self._made_by_persistkit(target):
                    log.warning("not removing %s: it has no persistkit manifest", target)
                    continue
                try:
                    fs.unlink(target)
                except FileNotFoundError:
                    continue  # already gone: what pruning wanted
                except OSError as err:
                    raise _os_error(
                        "remove old archive", target, err, "Newer archives are untouched."
                    ) from err
            with _os_errors("fsync archive directory", self.archive_dir):
                if fs.is_dir(self.archive_dir):
                    fs.fsync_dir(self.archive_dir)
        return decisions

    def _made_by_persistkit(self, path: Path) -> bool:
        """Whether ``path`` holds a persistkit manifest; never raises, whatever the file holds."""
        try:
            with current_fs().open_read(path) as raw, zipfile.ZipFile(raw) as zf:
                info = zf.getinfo(MANIFEST)
                if info.file_size > _MAX_MANIFEST_BYTES or info.flag_bits & 0x1:
                    return False
                doc, problem = _parse_manifest(_read_capped(zf, info, _MAX_MANIFEST_BYTES))
        except ZIP_DAMAGE_OR_IO:
            return False
        return not problem and isinstance(doc, dict) and doc.get("format") == FORMAT

    # -- restore -----------------------------------------------------------------------------
    def restore(
        self,
        path: str | os.PathLike[str],
        into: str | os.PathLike[str],
        *,
        limits: RestoreLimits | None = None,
    ) -> Path:
        return restore(path, into, limits=limits)

    # -- workspace ----------------------------------------------------------------------------
    def prepare_workspace(self, *, verified: str | os.PathLike[str] | None = None) -> Path | None:
        """After a verified archive: move the session's logs aside and recreate clean directories.

        Nothing is deleted: ``logs/`` is renamed to ``logs_backup_<UTC ts>/``.
        """
        archive = Path(verified) if verified is not None else self.last_verified
        if archive is None or not self.verify(archive).ok:
            raise IntegrityError(
                f"{self.root}: prepare_workspace() needs a verified archive first; call create().",
                path=self.root,
            )
        fs = current_fs()
        moved = None
        logs = self.root / "logs"
        with _os_errors("prepare workspace", self.root, "The verified archive is intact."):
            if fs.is_dir(logs) and fs.listdir(logs):
                moved = self.root / f"logs_backup_{_utcnow().strftime('%Y%m%d_%H%M%S_%f')}"
                fs.replace(logs, moved)
                fs.fsync_dir(self.root)
            for sub in ("logs", "logs/trades", "logs/tensorboard", "models/checkpoints"):
                fs.makedirs(self.root / sub)
        return moved


def _refuse_case_twins(names: builtins.list[str], root: Path) -> None:
    """Two names that differ only in case make an archive restore must refuse: say so before writing it."""
    seen: dict[str, str] = {}
    for name in names:
        twin = seen.setdefault(name.rstrip("/").lower(), name)
        if twin != name:
            raise UnsafeArchiveError(
                f"{root}: {twin!r} and {name!r} differ only in case; restore refuses such archives because "
                "they would overwrite each other on case-insensitive disks (macOS, Windows). Rename one, "
                "then archive again. Nothing was archived.",
                path=root,
                member=name,
            )


def _archive_time(path: Path, name_re: re.Pattern[str]) -> dt.datetime:
    m = name_re.match(path.name)
    assert m is not None
    t = dt.datetime.strptime(m[1], "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
    return t + dt.timedelta(microseconds=int(m[2] or 0))


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
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, OSError):
        return False
    return True


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


# -- the one checker: verify() reports its problems, restore() refuses on them ----------------------

_MAX_MANIFEST_BYTES = 64 << 20  # ~250 bytes an entry: room for RestoreLimits.max_entries and more
_MAX_LINK_BYTES = 4096  # PATH_MAX: a longer "link target" is not one
_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit
_ALLOWANCE = 1 << 20  # bytes any member may expand to before the ratio is enforced
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("file", "dir", "symlink", "external-symlink", "skipped")
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_RESTORED = "Nothing was restored."


@dataclass(frozen=True)
class _Problem:
    message: str  # without the archive's path; restore() prefixes it
    member: str | None = None
    error: type[PersistkitError] = IntegrityError


@dataclass
class _Member:
    info: zipfile.ZipInfo
    rel: str  # normalised relative path
    kind: str  # what the zip itself says: "file", "dir" or "symlink"
    target: str = ""  # a symlink's target, read while planning


@dataclass
class _Plan:
    members: builtins.list[_Member] = field(default_factory=builtins.list)
    problems: builtins.list[_Problem] = field(default_factory=builtins.list)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # the manifest, by normalised path
    readable: bool = True  # False: over a budget, so member data is not decompressed at all

    def unsafe(self, message: str, member: str | None = None) -> None:
        self.problems.append(_Problem(message, member, UnsafeArchiveError))

    def damaged(self, message: str, member: str | None = None) -> None:
        self.problems.append(_Problem(message, member, IntegrityError))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _check_name(name: str, seen: set[str]) -> str:
    """The normalised relative path of a member, or raise UnsafeArchiveError."""
    problem = naming.entry_path_problem(name)
    if problem:
        raise UnsafeArchiveError(f"member name {name!r} {problem}", member=name)
    norm = _norm(name)
    key = norm.lower()
    if key in seen:
        raise UnsafeArchiveError(f"member name {name!r} appears twice (or differs only in case)", member=name)
    seen.add(key)
    return norm


def _kind_of(info: zipfile.ZipInfo, plan: _Plan) -> str | None:
    """The kind the zip stores, from its mode bits and name; None (and a problem) if it cannot be one."""
    name = info.orig_filename
    mode = info.external_attr >> 16
    kind_bits = _stat.S_IFMT(mode)
    if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode) or _stat.S_ISFIFO(mode) or _stat.S_ISSOCK(mode):
        plan.unsafe(f"member {name!r} is a device or special file", name)
        return None
    if name.endswith("/"):
        if kind_bits not in (0, _stat.S_IFDIR):
            plan.damaged(
                f"{name}: its name says directory but its mode says otherwise (a changed mode byte)", name
            )
            return None
        return "dir"
    if kind_bits == _stat.S_IFDIR:
        return "dir"
    if kind_bits == _stat.S_IFLNK:
        return "symlink"
    if kind_bits in (0, _stat.S_IFREG):
        return "file"
    plan.unsafe(f"member {name!r} has an unknown file type {kind_bits:o}", name)
    return None


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """At most ``cap`` + 1 bytes of a member: callers treat a longer result as over the cap."""
    with zf.open(info) as f:
        return f.read(cap + 1)


def _read_problem(err: BaseException, what: str, src: Path) -> str:
    """The problem text for an exception raised while reading member data, or re-raise a real I/O error."""
    # EINVAL: zipfile seeking to a negative offset, from damaged headers; other errnos are the disk's
    if isinstance(err, OSError) and not isinstance(err, PersistkitError) and err.errno != _errno.EINVAL:
        raise _os_error("read archive", src, err) from err
    return f"{what} is damaged ({type(err).__name__}: {err})"


def _plan(zf: zipfile.ZipFile, src: Path, archive_size: int, limits: RestoreLimits) -> _Plan:
    """Everything that can be checked without decompressing file data; cost bounded by the archive."""
    plan = _Plan()
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        plan.unsafe(f"{len(infos)} entries, over the limit of {limits.max_entries}")
        plan.readable = False
        return plan
    spans = sorted(
        (i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size, i)
        for i in infos
    )
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            plan.unsafe(
                f"members {a.filename!r} and {b.filename!r} overlap in the file (a zip bomb trick)",
                b.filename,
            )
            plan.readable = False
    seen: set[str] = set()
    declared = 0
    for info in infos:
        name = info.orig_filename  # zipfile cuts names at a NUL byte; the original is what the archive claims
        try:
            rel = _check_name(name, seen)
        except UnsafeArchiveError as err:
            plan.unsafe(err.message, name)
            continue
        if info.header_offset < 0 or info.header_offset + 30 > archive_size:
            plan.damaged(f"{name}: its local header lies outside the file (damaged)", name)
            continue
        if info.flag_bits & 0x1:
            plan.unsafe(f"member {name!r} is zip-encrypted; persistkit never writes encrypted members", name)
            continue
        kind = _kind_of(info, plan)
        if kind is None:
            continue
        declared += info.file_size
        if info.file_size > _ALLOWANCE and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            plan.unsafe(
                f"member {name!r} claims to expand {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(over {limits.max_ratio:.0f}x): a zip bomb",
                name,
            )
            plan.readable = False
        plan.members.append(_Member(info, rel, kind))
    budget = _budget(archive_size, limits)
    if declared > budget:
        plan.unsafe(
            f"its members claim {declared} bytes uncompressed, more than the {budget} bytes allowed for an "
            f"archive of {archive_size} bytes ({limits.max_ratio:.0f}x, at most {limits.max_total_bytes}): "
            "refusing to fill the disk"
        )
        plan.readable = False
    _plan_links(zf, src, plan)
    _plan_manifest(zf, src, plan)
    return plan


def _budget(archive_size: int, limits: RestoreLimits) -> int:
    return min(limits.max_total_bytes, max(int(limits.max_ratio * archive_size), _ALLOWANCE))


def _plan_links(zf: zipfile.ZipFile, src: Path, plan: _Plan) -> None:
    """Read every link target, then resolve each against all the links the archive would lay down."""
    if not plan.readable:
        return  # already refused as over a budget: read nothing more
    links: dict[str, _Member] = {}
    for m in plan.members:
        if m.kind != "symlink":
            continue
        name = m.info.orig_filename
        try:
            data = _read_capped(zf, m.info, _MAX_LINK_BYTES)
            if len(data) > _MAX_LINK_BYTES:
                raise ValueError(f"a link target over {_MAX_LINK_BYTES} bytes")
            m.target = data.decode("utf-8", "strict")
        except ZIP_DAMAGE_OR_IO as err:
            plan.unsafe(_read_problem(err, f"symlink member {name!r}", src), name)
            continue
        links[m.rel.lower()] = m
    exact = {m.rel: m.target for m in links.values()}
    folded = {key: m.target for key, m in links.items()}
    for m in plan.members:
        parts = m.rel.lower().split("/")
        below = next(
            ("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in links), None
        )
        if below is not None:
            plan.unsafe(
                f"member {m.info.filename!r} lies below the symlink {links[below].info.filename!r}: "
                "it would be written through the link",
                m.info.filename,
            )
    for m in links.values():
        # As a case-sensitive filesystem resolves it, and as a case-insensitive one does.
        reason = _escapes(m.rel, m.target, exact, fold=False) or _escapes(m.rel, m.target, folded, fold=True)
        if reason:
            plan.unsafe(f"symlink {m.info.filename!r} -> {m.target!r} {reason}", m.info.filename)


def _escapes(rel: str, target: str, links: dict[str, str], *, fold: bool) -> str:
    """Why the link at ``rel`` would lead outside the restore target once every link exists; '' if not.

    Resolution follows the other links the way the kernel would, so chains (a/b -> .., a/b/c -> ..)
    and links to links are judged together, whatever order they are laid down in.
    """
    if not target or "\x00" in target or target.startswith("/") or _DRIVE.match(target):
        return "points outside the restore target (absolute or empty)"
    # The link's own directory is resolved too: it may itself lie below other links.
    resolved: builtins.list[str] = []
    pending = collections.deque([*(rel.lower() if fold else rel).split("/")[:-1], *target.split("/")])
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return "points outside the restore target"
            resolved.pop()
            continue
        resolved.append(part.lower() if fold else part)
        link = links.get("/".join(resolved))
        if link is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return "is part of a loop of links"
            resolved.pop()
            if not link or link.startswith("/") or _DRIVE.match(link):
                return "points outside the restore target through another link"
            pending.extendleft(reversed(link.split("/")))
    return ""


def _plan_manifest(zf: zipfile.ZipFile, src: Path, plan: _Plan) -> None:
    by_rel = {m.rel: m for m in plan.members}
    manifest = by_rel.get(MANIFEST)
    if manifest is None:
        names = {m.rel for m in plan.members}
        if "manifest.json" in names and "manifest.auth" in names:
            plan.problems.append(
                _Problem(
                    "this is a persistkit model bundle, not a training archive; open it with "
                    "pk.load_bundle(), or check it with `persistkit verify`",
                    error=FormatError,
                )
            )
        else:
            plan.damaged(
                f"{MANIFEST} is missing: the archive is damaged or was not made by persistkit", MANIFEST
            )
        return
    if manifest.kind != "file":
        plan.damaged(f"{MANIFEST}: stored as a {manifest.kind}, not a file (a changed mode byte)", MANIFEST)
        return
    if manifest.info.file_size > _MAX_MANIFEST_BYTES:
        plan.unsafe(
            f"{MANIFEST} claims {manifest.info.file_size} bytes (over {_MAX_MANIFEST_BYTES})", MANIFEST
        )
        return
    if not plan.readable:
        return
    try:
        data = _read_capped(zf, manifest.info, _MAX_MANIFEST_BYTES)
    except ZIP_DAMAGE_OR_IO as err:
        plan.damaged(_read_problem(err, MANIFEST, src), MANIFEST)
        return
    if len(data) > _MAX_MANIFEST_BYTES:
        plan.unsafe(f"{MANIFEST} is over {_MAX_MANIFEST_BYTES} bytes", MANIFEST)
        return
    doc, problem = _parse_manifest(data)
    if problem:
        plan.damaged(problem, MANIFEST)
        return
    entries = _manifest_entries(doc, plan)
    if entries is None:
        return
    plan.entries = entries
    for m in plan.members:
        if m is manifest:
            continue
        name = m.info.orig_filename
        entry = entries.get(m.rel)  # exact: a name whose case changed is not the member the manifest lists
        if entry is None:
            plan.damaged(f"{name}: in the zip but not in the manifest", name)
        elif entry["kind"] in ("external-symlink", "skipped"):
            plan.damaged(f"{name}: in the zip, but the manifest says it was not stored", name)
        elif entry["kind"] != m.kind:
            plan.damaged(
                f"{name}: the zip stores a {m.kind} where the manifest lists a {entry['kind']} "
                "(a changed mode byte: damaged or altered)",
                name,
            )
        elif m.kind == "file" and m.info.file_size != entry["size"]:
            plan.damaged(f"{name}: size differs from the manifest (damaged or altered)", name)
        elif m.kind == "symlink" and m.target and m.target != entry["target"]:
            plan.damaged(f"{name}: symlink target differs from the manifest (damaged or altered)", name)
    present = {m.rel for m in plan.members}
    for key, entry in entries.items():
        if entry["kind"] in ("file", "dir", "symlink") and key not in present:
            plan.damaged(f"{entry['path']}: listed in the manifest but missing from the zip", entry["path"])


def _parse_manifest(data: bytes) -> tuple[Any, str]:
    try:
        return json.loads(data.decode("utf-8", "strict")), ""
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        return None, f"{MANIFEST} is not valid JSON ({type(err).__name__}): damaged or not persistkit's"


def _manifest_entries(doc: Any, plan: _Plan) -> dict[str, dict[str, Any]] | None:
    """The manifest's entries by normalised path; None if it is not a manifest at all."""
    if not isinstance(doc, dict):
        plan.damaged(f"{MANIFEST} is not a JSON object but {type(doc).__name__}", MANIFEST)
        return None
    if doc.get("format") != FORMAT:
        plan.damaged(f"{MANIFEST} has format {_short(doc.get('format'))}, not {FORMAT!r}", MANIFEST)
        return None
    files = doc.get("files")
    if not isinstance(files, builtins.list):
        plan.damaged(f"{MANIFEST}: 'files' is {type(files).__name__}, not a list", MANIFEST)
        return None
    entries: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(files):
        where = f"{MANIFEST} files[{i}]"
        if not isinstance(entry, dict):
            plan.damaged(f"{where} is {type(entry).__name__}, not an object", MANIFEST)
            continue
        path, kind = entry.get("path"), entry.get("kind")
        if not isinstance(path, str) or not _norm(path):
            plan.damaged(f"{where}: 'path' is {_short(path)}, not a member name", MANIFEST)
            continue
        if not isinstance(kind, str) or kind not in _KINDS:
            plan.damaged(f"{path}: the manifest gives it kind {_short(kind)}", path)
            continue
        if kind == "file":
            size, digest = entry.get("size"), entry.get("sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                plan.damaged(f"{path}: the manifest gives it size {_short(size)}", path)
                continue
            if not isinstance(digest, str) or not _HEX64.match(digest):
                plan.damaged(f"{path}: the manifest gives it sha256 {_short(digest)}", path)
                continue
        if kind in ("symlink", "external-symlink") and not isinstance(entry.get("target"), str):
            plan.damaged(f"{path}: the manifest gives it no link target", path)
            continue
        key = _norm(path)
        if key in entries:
            plan.damaged(f"{path}: listed twice in the manifest", path)
            continue
        entries[key] = entry
    return entries


def _check_content(
    zf: zipfile.ZipFile,
    m: _Member,
    plan: _Plan,
    src: Path,
    limits: RestoreLimits,
    sink: Any = None,
) -> _Problem | None:
    """Stream one regular member through sha256 (and ``sink``), measuring its expansion as it goes."""
    info = m.info
    name = info.orig_filename
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
                if size > _ALLOWANCE and size > limits.max_ratio * max(info.compress_size, 1):
                    return _Problem(
                        f"member {name!r} expands more than {limits.max_ratio:.0f}x "
                        "(measured while extracting): a zip bomb",
                        name,
                        UnsafeArchiveError,
                    )
                digest.update(chunk)
                if sink is not None:
                    sink(chunk)
    except PersistkitError:
        raise  # the sink's own, typed, I/O errors
    except ZIP_DAMAGE_OR_IO as err:
        # A method zipfile does not know is refused as unsafe; a bad CRC or stream is damage.
        error = UnsafeArchiveError if isinstance(err, NotImplementedError) else IntegrityError
        return _Problem(_read_problem(err, f"member {name!r}", src), name, error)
    entry = plan.entries.get(m.rel)
    if entry is None or entry["kind"] != "file":
        return None  # reported while planning
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        return _Problem(f"{name}: sha256 or size differs from the manifest (damaged or altered)", name)
    return None


@contextlib.contextmanager
def _open_zip(src: Path, problems: builtins.list[_Problem]) -> Iterator[tuple[zipfile.ZipFile | None, int]]:
    """The archive opened as a zip, with its size; (None, size) and a problem if it is not a readable zip."""
    fs = current_fs()
    with _os_errors("open archive", src):
        raw: BinaryIO = fs.open_read(src)
    with raw:
        try:
            size = os.fstat(raw.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            size = fs.stat(src).st_size
        try:
            zf = zipfile.ZipFile(raw)
        except ZIP_DAMAGE_OR_IO as err:
            problems.append(
                _Problem(
                    _read_problem(err, "the zip structure", src) + ": not a readable zip",
                    error=IntegrityError,
                )
            )
            yield None, size
            return
        with zf:
            yield zf, size


def _verify(path: Path, limits: RestoreLimits) -> VerifyReport:
    problems: builtins.list[_Problem] = []
    checked = 0
    with _open_zip(path, problems) as (zf, size):
        if zf is not None:
            plan = _plan(zf, path, size, limits)
            problems += plan.problems
            for m in plan.members:
                if m.kind == "symlink" and m.rel in plan.entries:
                    checked += 1
                if m.kind != "file" or m.rel == MANIFEST or not plan.readable:
                    continue
                checked += 1
                problem = _check_content(zf, m, plan, path, limits)
                if problem:
                    problems.append(problem)
    return VerifyReport(path, checked, [p.message for p in problems])


def _refuse(problems: builtins.list[_Problem], src: Path) -> None:
    if not problems:
        return
    order = (UnsafeArchiveError, FormatError, IntegrityError)
    first = min(problems, key=lambda p: order.index(p.error) if p.error in order else len(order))
    more = (
        f" (and {len(problems) - 1} more problems: `persistkit archive verify` lists them)"
        if len(problems) > 1
        else ""
    )
    if first.error is UnsafeArchiveError:
        advice = f"{_NOT_RESTORED} Do not trust this archive."
    elif first.error is FormatError:
        advice = _NOT_RESTORED
    else:
        advice = f"{_NOT_RESTORED} Restore from another archive; `persistkit archive verify` shows which are intact."
    raise first.error(f"{src}: {first.message}{more}. {advice}", path=src, member=first.member)


# -- safe restore ----------------------------------------------------------------------------------

_RESTORE_TEMP = re.compile(r"^\.(?P<into>.+)\.restore-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")
_ACTIVE_TEMPS: set[str] = set()  # restore temp directories this process is filling right now


def restore(
    path: str | os.PathLike[str], into: str | os.PathLike[str], *, limits: RestoreLimits | None = None
) -> Path:
    """Extract an archive safely into ``into`` (which must not exist yet); returns ``into``.

    First the archive is checked exactly as ``Archiver.verify`` checks it (names, links resolved
    together, special files, sizes and ratio, the manifest and every member's kind); any problem
    refuses the restore. Then everything is extracted into a temp directory beside ``into``, each
    member's sha256 is checked again as it streams, and the directory is renamed into place, so
    nothing is ever written outside it and a refused archive leaves nothing. Temp directories of
    restores whose process died are removed by the next restore into the same parent.
    """
    limits = limits or RestoreLimits()
    src = Path(os.path.abspath(os.fspath(path)))
    dest = Path(os.path.abspath(os.fspath(into)))
    fs = current_fs()
    with _os_errors("prepare restore target", dest, _NOT_RESTORED):
        if fs.exists(dest):
            raise PersistIOError(
                f"restore target {dest} already exists; choose a new directory.",
                errno=_errno.EEXIST,
                path=dest,
            )
        fs.makedirs(dest.parent)
    cleanup_stale_restores(dest.parent)
    temp = dest.parent / f".{dest.name}.restore-{os.getpid()}-{secrets.token_hex(4)}"
    marker = Path(f"{src}.restoring")
    with _RESTORING_LOCK:
        _RESTORING.add(str(src))
        _ACTIVE_TEMPS.add(str(temp))
    try:
        with contextlib.suppress(OSError):
            atomic_write(marker, f"{os.getpid()}\n".encode(), durable=False)
        with _os_errors("create restore directory", temp, _NOT_RESTORED):
            fs.mkdir(temp)
        try:
            _extract(src, temp, dest, limits)
            with _os_errors("move the restored files into place at", dest, _NOT_RESTORED):
                fs.fsync_dir(temp)
                fs.replace(temp, dest)
                fs.fsync_dir(dest.parent)
        except BaseException:
            _remove_tree(temp)
            raise
    finally:
        with _RESTORING_LOCK:
            _RESTORING.discard(str(src))
            _ACTIVE_TEMPS.discard(str(temp))
        with contextlib.suppress(OSError):
            fs.unlink(marker)
    return dest


def _extract(src: Path, temp: Path, dest: Path, limits: RestoreLimits) -> None:
    """Check, then extract into ``temp``; errors name where each member was going (under ``dest``)."""
    fs = current_fs()
    problems: builtins.list[_Problem] = []
    with _open_zip(src, problems) as (zf, size):
        if zf is None:
            _refuse(problems, src)
            return
        plan = _plan(zf, src, size, limits)
        _refuse(plan.problems, src)
        # Directories, then files, then links last: no byte is ever written after a link exists.
        for m in plan.members:
            if m.kind == "dir":
                with _os_errors("create directory", dest / m.rel, _NOT_RESTORED):
                    fs.makedirs(temp / m.rel, durable=False)
        for m in plan.members:
            if m.kind == "file" and m.rel != MANIFEST:
                problem = _extract_file(zf, m, plan, src, temp / m.rel, dest / m.rel, limits)
                if problem:
                    _refuse([problem], src)
        for m in plan.members:
            if m.kind == "symlink":
                with _os_errors("create symlink", dest / m.rel, _NOT_RESTORED):
                    fs.makedirs((temp / m.rel).parent, durable=False)
                    fs.symlink(m.target, temp / m.rel)


def _extract_file(
    zf: zipfile.ZipFile, m: _Member, plan: _Plan, src: Path, target: Path, shown: Path, limits: RestoreLimits
) -> _Problem | None:
    fs = current_fs()
    with _os_errors("create restored file", shown, _NOT_RESTORED):
        fs.makedirs(target.parent, durable=False)
        handle = fs.create(target, mode=0o644)
    try:

        def write(chunk: bytes) -> None:
            with _os_errors("write restored file", shown, _NOT_RESTORED):
                fs.write(handle, chunk)

        problem = _check_content(zf, m, plan, src, limits, write)
        if problem is None:
            with _os_errors("fsync restored file", shown, _NOT_RESTORED):
                fs.fsync(handle)
        return problem
    finally:
        with contextlib.suppress(OSError):
            fs.close(handle)


def cleanup_stale_restores(directory: str | os.PathLike[str]) -> builtins.list[str]:
    """Remove ``.<into>.restore-<pid>-*`` temp directories whose restoring process is gone; return their names.

    Like ``cleanup_stale_temps`` for atomic writes: a restore killed mid-way leaves its temp
    directory behind, and the next restore into the same parent directory removes it.
    """
    fs = current_fs()
    try:
        names = fs.listdir(directory)
    except OSError:
        return []
    removed = []
    me = os.getpid()
    for name in names:
        match = _RESTORE_TEMP.match(name)
        if match is None:
            continue
        full = os.path.join(os.path.abspath(os.fspath(directory)), name)
        pid = int(match["pid"])
        with _RESTORING_LOCK:
            active = full in _ACTIVE_TEMPS
        if active or (pid != me and _pid_alive(pid)):
            continue
        _remove_tree(Path(full))
        if not fs.exists(full):
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_tree(path: Path) -> None:
    fs = current_fs()
    with contextlib.suppress(OSError):
        for dirpath, dirnames, filenames in reversed(list(fs.walk(path))):
            for name in filenames:
                with contextlib.suppress(OSError):
                    fs.unlink(os.path.join(dirpath, name))
            for name in dirnames:
                full = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    if _stat.S_ISLNK(fs.stat(full, follow_symlinks=False).st_mode):
                        fs.unlink(full)  # a link to a directory: walk listed it as a directory
                    else:
                        fs.rmdir(full)
        fs.rmdir(path)


# -- versioned saves and sessions ----------------------------------------------------------------


def backup_before_overwrite(path: str | os.PathLike[str], *, keep: int = 5) -> Path | None:
    """Copy ``path`` (if it exists) into ``backups/`` beside it before the caller overwrites it.

    The copy is named ``<stem>_<YYYYMMDD_HHMMSS><suffix>`` (UTC) and written atomically; only
    the newest ``keep`` backups of that file are kept. Returns the backup's path, or None.
    """
    src = Path(os.path.abspath(os.fspath(path)))
    fs = current_fs()
    if not fs.is_file(src):
        return None
    backups = src.parent / "backups"
    family = naming.Stamped(f"{src.stem}_", src.suffix)
    target = backups / naming.allocate(backups, family)  # unique across processes, monotonic
    with fs.open_read(src) as f, atomic_writer(target) as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)
    items = []
    for name in fs.listdir(backups):
        when = family.time(name)
        if when is not None:
            items.append(Item(name, when, "the backup just made" if name == target.name else ""))
    for decision in decide(KeepLast(keep), items):
        if not decision.keep:
            fs.unlink(backups / decision.item.id)
    return target


@dataclass
class TrainingSession:
    root: Path
    archiver: Archiver | None
    initial_archive: Path | None = None
    final_archive: Path | None = None
    moved_logs: Path | None = None


def _unwind_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through training_session's finally


@contextlib.contextmanager
def training_session(
    root: str | os.PathLike[str] = ".", *, archive: bool = True, keep: int = 5, **archiver_kw: Any
) -> Iterator[TrainingSession]:
    """Archive and prepare the workspace on entry; archive the session on any exit.

    On exit (normal, exception, KeyboardInterrupt or SIGTERM) logs are flushed and
    the session's final archive is written. ``archive=False`` skips both, like
    the original training script's ``--no-archive``.
    """
    root_path = Path(os.path.abspath(os.fspath(root)))
    if not archive:
        yield TrainingSession(root_path, None)
        return
    archiver = Archiver(root_path, keep=keep, **archiver_kw)
    session = TrainingSession(root_path, archiver)
    session.initial_archive = archiver.create()
    session.moved_logs = archiver.prepare_workspace()
    try:
        with shutdown.handling((signal.SIGTERM,), _unwind_on_signal):
            yield session
    finally:
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        session.final_archive = archiver.create()
