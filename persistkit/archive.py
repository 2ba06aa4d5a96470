"""Training archives: timestamped zips of a training workspace, with retention and safe restore.

An archive is an ordinary zip (``unzip -l`` lists it) named
``<archive_dir>/<prefix>_YYYYMMDD_HHMMSS.zip`` (UTC), holding ``logs/``,
``models/``, ``config/``, ``root_checkpoints/`` (root files matching the
patterns) and ``MANIFEST.json``: every entry's path, kind, size and sha256,
when the archive was made, from which root, and what was skipped.

It is written through ``persistkit.io`` (temp file in the same directory,
fsync, rename, directory fsync), verified, and only then are old archives
pruned. Restores reject anything that could escape the target or exhaust the
disk, extract into a temp directory and rename it into place.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
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

from persistkit import naming
from persistkit.errors import IntegrityError, PersistIOError, UnsafeArchiveError
from persistkit.io import atomic_write, atomic_writer, current_fs
from persistkit.io.fs import io_error
from persistkit.policy.retention import Decision, Item, KeepLast, Policy, decide

__all__ = [
    "ArchiveReport",
    "Archiver",
    "RestoreLimits",
    "VerifyReport",
    "backup_before_overwrite",
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
    """Caps enforced while streaming an untrusted archive, not trusted from its headers."""

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
    ) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.sources = tuple(sources)
        self.root_patterns = tuple(root_patterns)
        self.archive_dir = self.root / archive_dir
        self.policy: Policy = KeepLast(keep) if isinstance(keep, int) else keep
        self.prefix = prefix
        self.progress = progress
        self._name_re = re.compile(rf"^{re.escape(prefix)}_(\d{{8}}_\d{{6}})(?:_(\d+))?\.zip$")
        self.last_verified: Path | None = None

    # -- create -------------------------------------------------------------------
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
                    yield f"{rel_dir}/{name}", full, fs.stat(full, follow_symlinks=False)
        for name in sorted(fs.listdir(self.root)):
            full = self.root / name
            if any(fnmatch.fnmatch(name, p) for p in self.root_patterns) and fs.is_file(full):
                yield f"root_checkpoints/{name}", full, fs.stat(full, follow_symlinks=False)

    def create(self) -> Path:
        """Write a new archive, verify it, then prune old ones; returns its path."""
        return self.create_report().path

    def create_report(self) -> ArchiveReport:
        target = self._target()
        report = ArchiveReport(target)
        files: list[dict[str, Any]] = []
        entries = list(self._entries(report))
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
        report.pruned = [d.item.id for d in self.prune() if not d.keep]
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
            raise io_error("archive (read)", path, err) from err
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
        names = [n for n in fs.listdir(self.archive_dir) if self._name_re.match(n)]
        return [self.archive_dir / n for n in sorted(names, key=self._sort_key)]

    def _sort_key(self, name: str) -> tuple[str, int]:
        m = self._name_re.match(name)
        assert m is not None
        return m[1], int(m[2] or 0)

    def verify(self, path: str | os.PathLike[str]) -> VerifyReport:
        """Recompute every member's sha256 against the manifest; report each mismatch."""
        path = Path(path)
        problems: list[str] = []
        checked = 0
        try:
            with current_fs().open_read(path) as raw, zipfile.ZipFile(raw) as zf:
                try:
                    manifest = json.loads(zf.read(MANIFEST))
                except KeyError:
                    return VerifyReport(path, 0, [f"{MANIFEST} is missing: not a persistkit archive"])
                listed = {e["path"] for e in manifest.get("files", [])}
                for name in zf.namelist():
                    if name != MANIFEST and name not in listed:
                        problems.append(f"{name}: in the zip but not in the manifest")
                for entry in manifest.get("files", []):
                    if entry.get("kind") not in ("file", "symlink"):
                        continue
                    checked += 1
                    problem = _check_member(zf, entry)
                    if problem:
                        problems.append(problem)
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, zlib.error, NotImplementedError) as err:
            problems.append(f"not a readable zip: {err}")
        except OSError as err:
            raise io_error("read archive", path, err) from err
        return VerifyReport(path, checked, problems)

    # -- retention -------------------------------------------------------------------------
    def prune(self, *, dry_run: bool = False, policy: Policy | None = None) -> builtins.list[Decision]:
        """Apply the retention policy; with ``dry_run`` only explain. Never touches foreign files."""
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
                except OSError as err:
                    raise io_error("remove old archive", target, err) from err
            fs.fsync_dir(self.archive_dir) if fs.is_dir(self.archive_dir) else None
        return decisions

    def _made_by_persistkit(self, path: Path) -> bool:
        try:
            with current_fs().open_read(path) as raw, zipfile.ZipFile(raw) as zf:
                return json.loads(zf.read(MANIFEST)).get("format") == FORMAT  # type: ignore[no-any-return]
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError, zlib.error, NotImplementedError):
            return False

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
        if fs.is_dir(logs) and fs.listdir(logs):
            moved = self.root / f"logs_backup_{_utcnow().strftime('%Y%m%d_%H%M%S_%f')}"
            fs.replace(logs, moved)
            fs.fsync_dir(self.root)
        for sub in ("logs", "logs/trades", "logs/tensorboard", "models/checkpoints"):
            fs.makedirs(self.root / sub)
        return moved


def _check_member(zf: zipfile.ZipFile, entry: dict[str, Any]) -> str:
    name = entry["path"]
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(name) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except KeyError:
        return f"{name}: listed in the manifest but missing from the zip"
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as err:
        return f"{name}: unreadable ({err})"
    if entry.get("kind") == "symlink":
        target = str(entry.get("target", "")).encode()
        if digest.digest() != hashlib.sha256(target).digest():
            return f"{name}: symlink target differs from the manifest (damaged or altered)"
        return ""
    if size != entry.get("size") or digest.hexdigest() != entry.get("sha256"):
        return f"{name}: sha256 or size differs from the manifest (damaged or altered)"
    return ""


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


# -- safe restore ----------------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_name(name: str, seen: set[str]) -> str:
    """The normalised relative path of a member, or raise UnsafeArchiveError."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"member name {name!r} contains a NUL byte", member=name)
    if "\\" in name:
        raise UnsafeArchiveError(f"member name {name!r} uses backslashes (a Windows path trick)", member=name)
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeArchiveError(f"member name {name!r} is absolute", member=name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member name {name!r} climbs out with '..'", member=name)
    norm = "/".join(parts)
    if not norm:
        raise UnsafeArchiveError(f"member name {name!r} is empty", member=name)
    key = norm.lower()
    if key in seen:
        raise UnsafeArchiveError(f"member name {name!r} appears twice (or differs only in case)", member=name)
    seen.add(key)
    return norm


def _check_overlaps(infos: list[zipfile.ZipInfo], source: str) -> None:
    spans = sorted(
        (i.header_offset, i.header_offset + 30 + len(i.filename.encode()) + i.compress_size, i) for i in infos
    )
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise UnsafeArchiveError(
                f"{source}: members {a.filename!r} and {b.filename!r} overlap in the file (a zip bomb trick)",
                path=source,
                member=b.filename,
            )


def restore(
    path: str | os.PathLike[str], into: str | os.PathLike[str], *, limits: RestoreLimits | None = None
) -> Path:
    """Extract an archive safely into ``into`` (which must not exist yet); returns ``into``.

    Rejects absolute paths, ``..``, drive letters, backslashes, NUL bytes, duplicate
    names, symlinks leaving the target and device files; caps entries, total
    bytes and the compression ratio measured while streaming. Everything is
    extracted into a temp directory beside ``into`` and renamed into place, so
    nothing is ever written outside it and a rejected archive leaves nothing.
    """
    limits = limits or RestoreLimits()
    src = Path(os.path.abspath(os.fspath(path)))
    dest = Path(os.path.abspath(os.fspath(into)))
    fs = current_fs()
    if fs.exists(dest):
        raise PersistIOError(f"restore target {dest} already exists; choose a new directory.", path=dest)
    fs.makedirs(dest.parent)
    temp = dest.parent / f".{dest.name}.restore-{secrets.token_hex(4)}"
    marker = Path(f"{src}.restoring")
    with _RESTORING_LOCK:
        _RESTORING.add(str(src))
    try:
        with contextlib.suppress(OSError):
            atomic_write(marker, f"{os.getpid()}\n".encode(), durable=False)
        fs.mkdir(temp)
        try:
            _extract(src, temp, limits)
            fs.fsync_dir(temp)
            fs.replace(temp, dest)
            fs.fsync_dir(dest.parent)
        except BaseException:
            _remove_tree(temp)
            raise
    finally:
        with _RESTORING_LOCK:
            _RESTORING.discard(str(src))
        with contextlib.suppress(OSError):
            fs.unlink(marker)
    return dest


def _extract(src: Path, temp: Path, limits: RestoreLimits) -> None:
    fs = current_fs()
    try:
        raw: BinaryIO = fs.open_read(src)
    except OSError as err:
        raise io_error("open archive", src, err) from err
    with raw, _zip(raw, src) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchiveError(
                f"{src}: {len(infos)} entries, over the limit of {limits.max_entries}", path=src
            )
        _check_overlaps(infos, str(src))
        seen: set[str] = set()
        total = 0
        for info in infos:
            # zipfile cuts names at a NUL byte; the original name is what the archive claims
            rel = _check_name(info.orig_filename, seen)
            mode = info.external_attr >> 16
            target = temp / rel
            if info.is_dir() or _stat.S_ISDIR(mode):
                fs.makedirs(target, durable=False)
                continue
            special = (
                _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode) or _stat.S_ISFIFO(mode) or _stat.S_ISSOCK(mode)
            )
            if special:
                raise UnsafeArchiveError(
                    f"{src}: member {info.filename!r} is a device or special file", member=info.filename
                )
            fs.makedirs(target.parent, durable=False)
            if _stat.S_ISLNK(mode):
                link = _read_link(zf, info, src)
                resolved = os.path.normpath(os.path.join(os.path.dirname(rel), link))
                if os.path.isabs(link) or resolved.startswith("..") or "\x00" in link:
                    raise UnsafeArchiveError(
                        f"{src}: symlink {info.filename!r} -> {link!r} points outside the restore target",
                        member=info.filename,
                    )
                fs.symlink(link, target)
                continue
            total = _stream_member(zf, info, target, total, limits, src)


_MAX_LINK_BYTES = 4096  # PATH_MAX: a longer "link target" is not one


def _read_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: Path) -> str:
    """A symlink member's target, read with a size cap (the member could claim to be a 1 GB link)."""
    try:
        with zf.open(info) as f:
            data = f.read(_MAX_LINK_BYTES + 1)
        if len(data) > _MAX_LINK_BYTES:
            raise ValueError(f"a link target over {_MAX_LINK_BYTES} bytes")
        return data.decode("utf-8", "strict")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        raise UnsafeArchiveError(
            f"{src}: symlink member {info.filename!r} is damaged ({err})", member=info.filename
        ) from err


def _stream_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, total: int, limits: RestoreLimits, src: Path
) -> int:
    fs = current_fs()
    handle = fs.create(target, mode=0o644)
    written = 0
    try:
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                written += len(chunk)
                total += len(chunk)
                if total > limits.max_total_bytes:
                    raise UnsafeArchiveError(
                        f"{src}: more than {limits.max_total_bytes} bytes uncompressed; refusing to fill the disk",
                        member=info.filename,
                    )
                if written > 1024 * 1024 and written > limits.max_ratio * max(info.compress_size, 1):
                    raise UnsafeArchiveError(
                        f"{src}: member {info.filename!r} expands more than {limits.max_ratio:.0f}x "
                        "(measured while extracting): a zip bomb",
                        member=info.filename,
                    )
                fs.write(handle, chunk)
        fs.fsync(handle)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise UnsafeArchiveError(
            f"{src}: member {info.filename!r} is damaged ({err})", member=info.filename
        ) from err
    finally:
        fs.close(handle)
    return total


@contextlib.contextmanager
def _zip(raw: BinaryIO, src: Path) -> Iterator[zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as err:
        raise UnsafeArchiveError(f"{src}: not a readable zip ({err})", path=src) from err
    with zf:
        yield zf


def _remove_tree(path: Path) -> None:
    fs = current_fs()
    with contextlib.suppress(OSError):
        for dirpath, dirnames, filenames in reversed(list(fs.walk(path))):
            for name in filenames:
                fs.unlink(os.path.join(dirpath, name))
            for name in dirnames:
                with contextlib.suppress(OSError):
                    fs.rmdir(os.path.join(dirpath, name))
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
    mine = sorted(
        (p for p in fs.listdir(backups) if family.parse(p) and p != target.name), key=family.sort_key
    )
    with fs.open_read(src) as f, atomic_writer(target) as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)
    mine = sorted([*mine, target.name], key=family.sort_key)
    for old in mine[: max(0, len(mine) - keep)]:
        fs.unlink(backups / old)
    return target


@dataclass
class TrainingSession:
    root: Path
    archiver: Archiver | None
    initial_archive: Path | None = None
    final_archive: Path | None = None
    moved_logs: Path | None = None


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
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)  # unwinds through the finally below

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield session
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        session.final_archive = archiver.create()
