"""``Archiver``: create, list, prune and verify the training archives of one workspace."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno as _errno
import fnmatch
import hashlib
import json
import os
import stat as _stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistkit import naming
from persistkit.archive.base import (
    ARCHIVE_MANIFEST,
    CHUNK,
    DEFAULT_EXCLUDE,
    FORMAT,
    STORED_SUFFIXES,
    ArchiveReport,
    RestoreLimits,
    VerifyReport,
    _is_restoring,
    log,
    utcnow,
)
from persistkit.archive.checker import MAX_MANIFEST_BYTES, parse_manifest, read_capped, verify_archive
from persistkit.archive.restore import restore
from persistkit.errors import (
    IntegrityError,
    PersistIOError,
    PersistkitError,
    UnsafeArchiveError,
)
from persistkit.io import DirectoryLock, atomic_writer, current_fs
from persistkit.io.fs import io_error, io_errors
from persistkit.io.names import allocate
from persistkit.io.zipio import ZIP_DAMAGE_OR_IO
from persistkit.policy.retention import Decision, Item, KeepLast, Policy, decide
from persistkit.progress import transfer

if TYPE_CHECKING:
    from persistkit.archive.remote import PushReport, RemoteArchive, RemoteArchives


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
        remote: str | None = None,
        remote_keep: int | Policy | None = None,
        storage_options: Mapping[str, Any] | None = None,
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
        self._names = naming.Stamped(f"{prefix}_", ".zip")
        self.last_verified: Path | None = None
        # Off-site copies (persistkit.archive.remote): each verified archive is pushed, proven, then pruned.
        self.remote = remote
        self.remote_policy: Policy = (
            self.policy
            if remote_keep is None
            else KeepLast(remote_keep)
            if isinstance(remote_keep, int)
            else remote_keep
        )
        self.storage_options = dict(storage_options or {})
        self._remote: RemoteArchives | None = None

    # -- create -------------------------------------------------------------------
    def _check_root(self) -> None:
        fs = current_fs()
        after = "Check the workspace root you gave; nothing was archived."
        with io_errors("archive workspace", self.root, after):
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
        with io_errors("create archive directory", self.archive_dir, after):
            current_fs().makedirs(self.archive_dir)
        lock = DirectoryLock(self.archive_dir, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except PersistIOError as err:
            cause = err.__cause__
            if isinstance(cause, OSError) and not isinstance(cause, PersistkitError):
                raise io_error("lock archive directory", self.archive_dir, cause, after) from cause
            raise
        try:
            yield
        finally:
            lock.release()

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in self.exclude)

    def _target(self) -> Path:
        # Unique across processes and monotonic, even after pruning (persistkit.naming).
        return self.archive_dir / allocate(self.archive_dir, self._names)

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
            with io_errors("create archive in", self.archive_dir, after):
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
                    raise io_error("write archive", target, cause, after) from cause
                raise

    def _create_locked(self, target: Path) -> ArchiveReport:
        report = ArchiveReport(target)
        files: list[dict[str, Any]] = []
        after = "Nothing was archived; older archives are untouched."
        with io_errors("read workspace", self.root, after, exact=True):
            entries = list(self._entries(report))
        _refuse_case_twins([name for name, _, _ in entries], self.root)
        total = sum(st.st_size for _, _, st in entries if _stat.S_ISREG(st.st_mode))
        with (
            transfer("archiving", total, show=self.progress) as advance,
            atomic_writer(target) as out,
            zipfile.ZipFile(out, "w", allowZip64=True) as zf,  # type: ignore[call-overload]
        ):
            for name, path, st in entries:
                files.append(self._add(zf, name, path, st, report, advance))
            manifest = {
                "format": FORMAT,
                "created": utcnow().isoformat(),
                "source_root": str(self.root),
                "skipped_sources": report.skipped_sources,
                "changed_while_archiving": report.changed_while_archiving,
                "excluded_patterns": list(self.exclude),
                "excluded": report.excluded,
                "files": files,
            }
            zf.writestr(ARCHIVE_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        verified = self.verify(target)
        if not verified.ok:
            raise IntegrityError(
                f"{target}: the archive just written does not verify ({'; '.join(verified.problems[:3])}); "
                "old archives were kept. Check the disk.",
                path=target,
            )
        self.last_verified = target
        if self.remote is not None:
            # before any local pruning: a push that fails leaves every local archive where it was
            report.remote = self.remote_archives().push(target, verified=verified)
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
            with io_errors("read for archiving", path, "No partial archive was left behind."):
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
        with io_errors("read for archiving", path, "No partial archive was left behind."):
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
            raise io_error("read for archiving", path, err, "No partial archive was left behind.") from err
        with io_errors("read for archiving", path, "No partial archive was left behind."):
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
        with io_errors("list archives in", self.archive_dir):
            names = [n for n in fs.listdir(self.archive_dir) if self._names.parse(n)]
        return [self.archive_dir / n for n in sorted(names, key=self._names.sort_key)]

    def verify(self, path: str | os.PathLike[str]) -> VerifyReport:
        """Check the archive the way ``restore`` does and report every problem instead of stopping.

        Names, links, sizes and the compression ratio are checked first; then every member's
        kind, size and sha256 against ``MANIFEST.json``. The work is bounded by the archive's size.
        """
        return verify_archive(Path(path), RestoreLimits())

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
            when = self._names.time(path.name)
            assert when is not None  # list() returns only names of this family
            items.append(Item(path.name, when, pinned))
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
                    raise io_error(
                        "remove old archive", target, err, "Newer archives are untouched."
                    ) from err
            with io_errors("fsync archive directory", self.archive_dir):
                if fs.is_dir(self.archive_dir):
                    fs.fsync_dir(self.archive_dir)
        return decisions

    def _made_by_persistkit(self, path: Path) -> bool:
        """Whether ``path`` holds a persistkit manifest; never raises, whatever the file holds."""
        try:
            with current_fs().open_read(path) as raw, zipfile.ZipFile(raw) as zf:
                info = zf.getinfo(ARCHIVE_MANIFEST)
                if info.file_size > MAX_MANIFEST_BYTES or info.flag_bits & 0x1:
                    return False
                doc, problem = parse_manifest(read_capped(zf, info, MAX_MANIFEST_BYTES))
        except ZIP_DAMAGE_OR_IO:
            return False
        return not problem and isinstance(doc, dict) and doc.get("format") == FORMAT

    # -- off-site copies (persistkit.archive.remote) ---------------------------------------------
    def remote_archives(self) -> RemoteArchives:
        """The archives under ``remote`` (opened once; the server is probed on first use)."""
        from persistkit.archive.remote import RemoteArchives

        if self.remote is None:
            raise ValueError(f"{self.root}: this Archiver has no remote=; pass remote='s3://bucket/archives'")
        if self._remote is None:
            self._remote = RemoteArchives(
                self.remote,
                names=self._names,
                policy=self.remote_policy,
                scratch=self.archive_dir,
                storage_options=self.storage_options,
                progress=self.progress,
            )
        return self._remote

    def push(self, path: str | os.PathLike[str] | None = None) -> PushReport:
        """Push a local archive (default: the newest) off-site: upload, prove the copy, remote retention."""
        if path is None:
            found = self.list()
            if not found:
                raise IntegrityError(
                    f"{self.archive_dir}: there is no archive to push; create one first (Archiver.create).",
                    path=self.archive_dir,
                )
            path = found[-1]
        # under the writer lock: a prune elsewhere must not remove the archive while it is read
        with self._writer("Nothing was pushed or deleted."):
            return self.remote_archives().push(path)

    def pull(self, name: str) -> Path:
        """Download the remote archive ``name`` into the archive directory, checked and verified."""
        with self._writer("Nothing was downloaded."):
            return self.remote_archives().pull(name, self.archive_dir)

    def list_remote(self) -> builtins.list[RemoteArchive]:
        """The remote archives, oldest first, each with its state (verified, unverified, incomplete...)."""
        return self.remote_archives().list()

    def prune_remote(self, *, dry_run: bool = False, policy: Policy | None = None) -> builtins.list[Decision]:
        """Apply ``remote_keep`` (or ``policy``) to the verified remote archives; ``dry_run`` only explains."""
        return self.remote_archives().prune(dry_run=dry_run, policy=policy)

    # -- restore -----------------------------------------------------------------------------
    def restore(
        self,
        path: str | os.PathLike[str],
        into: str | os.PathLike[str],
        *,
        limits: RestoreLimits | None = None,
    ) -> Path:
        """Restore a local archive, or one at a URL (downloaded and checked against its record first)."""
        from persistkit.io.remote import is_url

        if is_url(path):
            from persistkit.archive.remote import restore_url

            assert isinstance(path, str)
            return restore_url(path, into, limits=limits, storage_options=self.storage_options)
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
        with io_errors("prepare workspace", self.root, "The verified archive is intact."):
            if fs.is_dir(logs) and fs.listdir(logs):
                moved = self.root / f"logs_backup_{utcnow().strftime('%Y%m%d_%H%M%S_%f')}"
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
