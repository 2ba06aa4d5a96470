"""Archives off-site: push, check end-to-end, prune, pull and restore from an object store.

Layout under the remote URL (``s3://bucket/archives``), one flat prefix:

- ``<name>.zip``: the archive, uploaded create-only (``ObjectStore.put_file_new``), so a name is
  never overwritten, and an upload killed half-way leaves nothing visible;
- ``<name>.zip.json``: its record (sha256, size, the digest of its ``MANIFEST.json``, file count),
  created once the upload is complete; from then on downloads are checked against it
  (the same ``<object>.json`` record rule as a remote ModelStore's versions);
- ``<name>.zip.verified.json``: written only after the remote copy was downloaded again,
  its sha256 found equal to the local archive's, and the archive checker run on that copy
  against its manifest. Only archives with this marker count for remote retention, so
  ``remote_keep=N`` means N copies proven readable, never N uploads of unknown state.

A failed push raises before any retention runs: nothing remote or local is deleted, and the
local archive stays where it is, to be pushed again. Remote retention goes through
``persistkit.policy.retention.decide`` like every other pruner; a victim's marker and record
go first (it stops counting), its data last.

Restoring from a URL downloads the archive (streamed, checked against its record's sha256)
into a temp file beside the target, then runs the one restore path (``archive.restore``) on it:
the same zip-slip, bomb and link checks as a local restore.
"""

from __future__ import annotations

import builtins
import contextlib
import errno as _errno
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistkit.archive.base import ARCHIVE_MANIFEST as MANIFEST
from persistkit.archive.base import RestoreLimits, VerifyReport, log, utcnow
from persistkit.archive.checker import MAX_MANIFEST_BYTES, read_capped, verify_archive
from persistkit.errors import IntegrityError, PersistIOError, PersistkitError, UnsafeArchiveError
from persistkit.io import current_fs
from persistkit.io.atomic import claim, sweep_dead_writers
from persistkit.io.documents import Fields, read_document
from persistkit.io.fs import io_errors
from persistkit.io.objects import RECORD_SUFFIX, Record, parse_record, rename_paths
from persistkit.io.zipio import ZIP_DAMAGE_OR_IO
from persistkit.naming import scratch_name
from persistkit.policy.retention import Decision, Item, Policy, decide
from persistkit.progress import transfer

if TYPE_CHECKING:
    from persistkit.io.objects import ObjectStore
    from persistkit.naming import Stamped

__all__ = [
    "RECORD_FORMAT",
    "PushReport",
    "RemoteArchive",
    "RemoteArchives",
    "download_checked",
    "open_store",
    "read_record",
    "restore_url",
    "split_url",
]

RECORD_FORMAT = "persistkit.remote-archive"
VERIFIED_SUFFIX = ".verified.json"
# Record formats whose sha256/size persistkit checks downloads against (archives here, ModelStore versions).
KNOWN_RECORDS = (RECORD_FORMAT, "persistkit.remote-version")


# -- URLs and stores --------------------------------------------------------------------------


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> ObjectStore:
    """``remote_store(url)``, with a URL that cannot name a bucket refused as a typed error naming it."""
    from persistkit.io.remote import is_url, remote_store

    protocol, _, rest = url.partition("://")
    if not is_url(url) or not rest.strip("/"):
        raise PersistIOError(
            f"{url!r} is not an object-store URL: write it as s3://BUCKET/PREFIX (or another fsspec URL "
            "such as gs://BUCKET/PREFIX). Nothing was read or written.",
            errno=_errno.EINVAL,
            path=url,
            operation="open remote store",
        )
    try:
        return remote_store(url.rstrip("/"), storage_options=storage_options)
    except ValueError as err:  # fsspec: an unknown protocol, a malformed bucket name
        if isinstance(err, PersistkitError):
            raise
        raise PersistIOError(
            f"{url!r} cannot be opened as an object store ({err}). Check the scheme ({protocol}://) and the "
            "bucket name, or install the fsspec backend for it. Nothing was read or written.",
            errno=_errno.EINVAL,
            path=url,
            operation="open remote store",
        ) from err


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/archives/x.zip`` -> (``s3://bucket/archives``, ``x.zip``); a bucket-level object too."""
    trimmed = url.rstrip("/")
    protocol, sep, rest = trimmed.partition("://")
    parent, _, name = rest.rpartition("/")
    if not sep or not parent or not name or name in (".", ".."):
        raise PersistIOError(
            f"{url!r} does not name an object: write it as s3://BUCKET/PREFIX/NAME. Nothing was read.",
            errno=_errno.EINVAL,
            path=url,
            operation="read",
        )
    return f"{protocol}://{parent}", name


def read_record(store: ObjectStore, key: str) -> Record | None:
    """The persistkit record ``<key>.json`` beside an object (sha256, size...), None if there is none.

    An unreadable record, or one without sha256 and size, is an ``IntegrityError`` naming it.
    """
    found = store.get_or_none(key + RECORD_SUFFIX)
    if found is None:
        return None
    return parse_record(store.url_of(key + RECORD_SUFFIX), found.data, KNOWN_RECORDS)


def download_checked(store: ObjectStore, key: str, local_path: str) -> Record | None:
    """Stream ``key`` into ``local_path``: checked against its record when there is one; returns the record.

    Without a record the bytes are written as they came (the caller checks them by content, as
    ``persistkit verify`` does); with one, a mismatch is an ``IntegrityError`` and nothing is kept.
    """
    record = read_record(store, key)
    if record is not None:
        store.download_verified(key, local_path, record.sha256, record.size)
        return record
    store.download(key, local_path)
    return None


def manifest_digest(path: Path) -> str:
    """The sha256 of an archive's ``MANIFEST.json``; an archive without a readable one is an IntegrityError."""
    problem: BaseException
    try:
        with current_fs().open_read(path) as raw, zipfile.ZipFile(raw) as zf:
            data = read_capped(zf, zf.getinfo(MANIFEST), MAX_MANIFEST_BYTES)
        return hashlib.sha256(data).hexdigest()
    except KeyError as err:
        problem = err
    except ZIP_DAMAGE_OR_IO as err:
        problem = err
    raise IntegrityError(
        f"{path}: its {MANIFEST} cannot be read ({type(problem).__name__}: {problem}); it is not an archive "
        "persistkit can push. Check it with `persistkit archive verify`.",
        path=path,
    ) from problem


# -- reports ----------------------------------------------------------------------------------


@dataclass
class PushReport:
    """One archive pushed: where, what was proven about the remote copy, and what retention did."""

    url: str
    name: str
    sha256: str
    size: int
    checked: int  # members of the downloaded copy checked against its manifest
    uploaded: bool  # False: the object was already there (an earlier push), and proven equal
    decisions: list[Decision] = field(default_factory=list)

    @property
    def pruned(self) -> list[str]:
        return [d.item.id for d in self.decisions if not d.keep]


@dataclass(frozen=True)
class RemoteArchive:
    """One archive in the remote listing, and how far its push got.

    ``state``: "verified" (record, and the remote copy was proven at push time), "unverified"
    (record, but the end-to-end check never finished: push it again), "incomplete" (data, no
    record: an interrupted push; it is never pruned), "record only" (its data is missing), or
    "not an archive name" (shaped like one, with an impossible date: ``problem`` says why; never
    counted or pruned).
    """

    name: str
    url: str
    state: str
    size: int | None = None
    sha256: str | None = None
    created: str | None = None
    verified: str | None = None  # when the remote copy was proven
    problem: str | None = None  # why a name shaped like an archive's is not one (it is left alone)


# -- the remote side of one archive directory ----------------------------------------------------


class RemoteArchives:
    """The archives under one remote URL, for the archive family ``names`` (``Archiver``'s)."""

    def __init__(
        self,
        url: str,
        *,
        names: Stamped,
        policy: Policy,
        scratch: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.progress = progress  # None: a bar for large transfers on a terminal (persistkit.progress)
        self.names = names
        self.policy = policy
        self.scratch = Path(os.path.abspath(os.fspath(scratch)))  # local directory for check downloads
        self.store = open_store(url, storage_options)
        self.url = self.store.url

    # -- push -----------------------------------------------------------------------------

    def push(self, local: str | os.PathLike[str], *, verified: VerifyReport | None = None) -> PushReport:
        """Upload ``local`` create-only, record it, prove the remote copy, then apply remote retention.

        ``verified``: the local verify already done (``create()`` passes it); otherwise it runs here.
        """
        from persistkit.io.remote import sha256_file

        path = Path(os.path.abspath(os.fspath(local)))
        name = path.name
        url = self.store.url_of(name)
        kept = f"The local archive {path} is intact; nothing was deleted, here or remotely."
        if verified is None:
            verified = verify_archive(path, RestoreLimits())
        if not verified.ok:
            raise IntegrityError(
                f"{path}: does not verify ({'; '.join(verified.problems[:3])}), so it was not pushed to "
                f"{url}. Check it with `persistkit archive verify`; push a good archive instead.",
                path=path,
            )
        with io_errors("read archive", path, "Nothing was pushed."):
            sha256, size = sha256_file(str(path))
        record = {
            "format": RECORD_FORMAT,
            "version": 1,
            "name": name,
            "sha256": sha256,
            "size": size,
            "manifest_sha256": manifest_digest(path),
            "files": verified.checked,
            "pushed": utcnow().isoformat(),
        }
        try:
            with transfer(f"pushing {name}", size, show=self.progress) as advance:
                uploaded = self.store.put_file_new(name, str(path), progress=advance)
            checked: int | None = None
            if not uploaded:
                # The name is taken: an earlier push of this archive (whose record may be missing), or
                # another machine's archive of the same name. Prove which before writing any record.
                existing = read_record(self.store, name)
                if existing is None:
                    checked = self._check_remote(name, record, path)
                elif (existing.sha256, existing.size) != (sha256, size):
                    raise IntegrityError(
                        f"{url}: already holds a different archive of that name (sha256 "
                        f"{existing.sha256[:16]}...; the local one is {sha256[:16]}...). Two workspaces push "
                        f"to the same prefix: give each its own remote URL. {kept}",
                        path=url,
                    )
            self._create_record(name, record)
            if checked is None:
                checked = self._check_remote(name, record, path)
            marker = {
                "format": RECORD_FORMAT + "-check",
                "version": 1,
                "name": name,
                "sha256": sha256,
                "checked": checked,
                "verified": utcnow().isoformat(),
            }
            self.store.put_new(name + VERIFIED_SUFFIX, json.dumps(marker, indent=1).encode())
        except PersistIOError as err:
            raise PersistIOError(
                f"{err.message} Pushing {path.name} to {self.url} did not finish. {kept} Push it again "
                f"later (`persistkit archive push --remote {self.url}`).",
                errno=err.errno,
                path=err.path,
                operation=err.operation,
            ) from err
        report = PushReport(url, name, sha256, size, checked, uploaded)
        try:
            report.decisions = self.prune(pinned=name)
        except PersistIOError as err:
            raise PersistIOError(
                f"{url} was pushed and its copy proven, but remote retention failed: {err.message} Run "
                f"`persistkit archive prune --remote {self.url}` once it is fixed.",
                errno=err.errno,
                path=err.path,
                operation=err.operation,
            ) from err
        return report

    def _create_record(self, name: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, indent=1).encode()
        if self.store.put_new(name + RECORD_SUFFIX, body):
            return
        existing = read_record(self.store, name)  # taken: ours from a retried request, or an earlier push
        if existing is None or (existing.sha256, existing.size) != (record["sha256"], record["size"]):
            url = self.store.url_of(name + RECORD_SUFFIX)
            raise IntegrityError(
                f"{url}: a record for another archive of that name already exists. Two workspaces push to "
                "the same prefix: give each its own remote URL. Nothing was deleted.",
                path=url,
            )

    def _check_remote(self, name: str, record: dict[str, Any], local: Path) -> int:
        """Download the remote copy, check its sha256 and run the archive checker on it; files checked."""
        url = self.store.url_of(name)
        after = (
            f"The local archive {local} is intact and nothing was deleted, here or remotely. Delete "
            f"{url} and {url}{RECORD_SUFFIX}, then push again."
        )
        with self._scratch_file(name, "remote-check") as copy:
            try:
                with transfer(f"checking {name}", record["size"], show=self.progress) as advance:
                    self.store.download_verified(
                        name, str(copy), record["sha256"], record["size"], progress=advance
                    )
            except IntegrityError as err:
                raise IntegrityError(
                    f"{url}: the remote copy does not match the local archive it was pushed from ({err}). "
                    f"{after}",
                    path=url,
                ) from err
            report = verify_archive(copy, RestoreLimits())
            if not report.ok or manifest_digest(copy) != record["manifest_sha256"]:
                problems = "; ".join(report.problems[:3]) or f"its {MANIFEST} differs from the record"
                raise IntegrityError(
                    f"{url}: the downloaded copy does not verify against its manifest ({problems}). {after}",
                    path=url,
                )
        return report.checked

    @contextlib.contextmanager
    def _scratch_file(self, name: str, kind: str, directory: Path | None = None) -> Iterator[Path]:
        fs = current_fs()
        directory = directory or self.scratch
        with io_errors("create scratch directory", directory, "Nothing was deleted."):
            fs.makedirs(directory)
        sweep_dead_writers(directory)
        path = directory / scratch_name(name, kind)
        with claim(path):
            try:
                yield path
            finally:
                try:
                    fs.unlink(path)
                except FileNotFoundError:
                    pass  # never made (the download failed before its rename), or already moved into place
                except OSError as err:
                    log.warning("could not remove the temp file %s: %s", path, err)

    # -- list / prune ---------------------------------------------------------------------------

    def list(self) -> builtins.list[RemoteArchive]:
        """Every ``*.zip`` under the URL with its record, oldest first (this family's stamps, then others).

        A name shaped like this family's whose stamp is no time (``..._20261399_000000.zip``) is listed
        with the state "not an archive name" and its ``problem``; retention never counts or removes it.
        """
        names = set(self.store.list(""))
        archives = {n for n in names if n.endswith(".zip")}
        archives |= {n[: -len(RECORD_SUFFIX)] for n in names if n.endswith(".zip" + RECORD_SUFFIX)}
        out = []
        for name in sorted(archives, key=self._order):
            problem = self.names.problem(name)
            record = read_record(self.store, name) if name + RECORD_SUFFIX in names else None
            marker = self._marker(name) if name + VERIFIED_SUFFIX in names else None
            if problem is not None:
                state = "not an archive name"
            elif name not in names:
                state = "record only"
            elif record is None:
                state = "incomplete"
            elif marker is None or marker[0] != record.sha256:
                state = "unverified"
            else:
                state = "verified"
            created = self.names.time(name)
            out.append(
                RemoteArchive(
                    name,
                    self.store.url_of(name),
                    state,
                    size=record.size if record else None,
                    sha256=record.sha256 if record else None,
                    created=created.isoformat() if created else None,
                    verified=marker[1] if marker else None,
                    problem=problem,
                )
            )
        return out

    def _order(self, name: str) -> tuple[int, tuple[str, int] | str]:
        parsed = self.names.parse(name)
        return (0, parsed) if parsed is not None else (1, name)

    def _marker(self, name: str) -> tuple[str, str] | None:
        """(sha256, when) the check marker says was proven; None if it is missing or proves nothing."""

        def parse(doc: Fields) -> tuple[str, str]:
            doc.one_of("format", [RECORD_FORMAT + "-check"])
            return doc.sha256("sha256"), str(doc.moment("verified"))

        try:
            found = read_document(self.store, name + VERIFIED_SUFFIX, parse, what="the check marker",
                                  advice="The archive counts as unverified; push it again.")  # fmt: skip
        except IntegrityError as err:
            log.warning("%s", err)  # an unreadable marker proves nothing: the archive counts as unverified
            return None
        return None if found is None else found[0]

    def prune(
        self, *, dry_run: bool = False, policy: Policy | None = None, pinned: str | None = None
    ) -> builtins.list[Decision]:
        """Apply retention to this family's verified remote archives; with ``dry_run`` only explain.

        Unverified and incomplete pushes are neither counted nor removed (``list()`` shows them).
        """
        items = []
        for entry in self.list():
            when = self.names.time(entry.name)
            if when is None or entry.state != "verified":
                continue
            items.append(Item(entry.name, when, "the archive just pushed" if entry.name == pinned else ""))
        decisions = decide(policy or self.policy, items)
        if not dry_run:
            for d in decisions:
                if not d.keep:
                    # marker and record first: from the first delete on it no longer counts as a copy
                    for key in (d.item.id + VERIFIED_SUFFIX, d.item.id + RECORD_SUFFIX, d.item.id):
                        self.store.delete(key)
                    log.info("pruned remote archive %s", self.store.url_of(d.item.id))
        return decisions

    # -- pull -----------------------------------------------------------------------------------

    def pull(self, name: str, archive_dir: str | os.PathLike[str]) -> Path:
        """Download ``name`` into ``archive_dir``: checked against its record, then verified; its path."""
        from persistkit.io.remote import sha256_file

        url = self.store.url_of(name)
        if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
            raise UnsafeArchiveError(
                f"{name!r} is not an archive name under {self.url}: give the name as `archive list --remote` "
                "shows it (no '/', not hidden). Nothing was downloaded.",
                path=url,
            )
        record = read_record(self.store, name)
        if record is None:
            raise IntegrityError(
                f"{url}: there is no persistkit record beside it ({url}{RECORD_SUFFIX}), so its bytes cannot "
                "be checked; nothing was downloaded. If its push was interrupted, push it again from the "
                "machine that made it.",
                path=url,
            )
        fs = current_fs()
        target = Path(os.path.abspath(os.fspath(archive_dir))) / name
        if fs.exists(target):
            with io_errors("read archive", target, "Nothing was downloaded."):
                same = sha256_file(str(target)) == (record.sha256, record.size)
            if same:
                return target
            raise PersistIOError(
                f"pull {url}: {target} already exists and holds a different archive; move it aside, then pull "
                "again. Nothing was downloaded.",
                errno=_errno.EEXIST,
                path=target,
                operation="pull",
            )
        with self._scratch_file(name, "pull", target.parent) as copy:
            with transfer(f"checking {name}", record.size, show=self.progress) as advance:
                self.store.download_verified(name, str(copy), record.sha256, record.size, progress=advance)
            report = verify_archive(copy, RestoreLimits())
            if not report.ok:
                raise IntegrityError(
                    f"{url}: matches its record but does not verify against its manifest "
                    f"({'; '.join(report.problems[:3])}); it was not kept. Pull another archive.",
                    path=url,
                )
            with io_errors("move the pulled archive into place at", target, "Nothing was kept."):
                fs.replace(copy, target)
                fs.fsync_dir(target.parent)
        return target


# -- restore from a URL -----------------------------------------------------------------------------


def restore_url(
    url: str,
    into: str | os.PathLike[str],
    *,
    limits: RestoreLimits | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Restore the archive at ``url`` into ``into``: download checked against its record, then ``restore``.

    The archive must have a persistkit record (``<url>.json``) whose sha256 and size the download
    matches; otherwise ``IntegrityError`` naming the URL, and nothing is restored.
    """
    from persistkit.archive.restore import restore

    parent, name = split_url(url)
    store = open_store(parent, storage_options)
    url = store.url_of(name)
    dest = Path(os.path.abspath(os.fspath(into)))
    fs = current_fs()
    if fs.exists(dest):
        raise PersistIOError(
            f"restore target {dest} already exists; choose a new directory. Nothing was downloaded.",
            errno=_errno.EEXIST,
            path=dest,
        )
    record = read_record(store, name)
    if record is None:
        raise IntegrityError(
            f"{url}: there is no persistkit record beside it ({url}{RECORD_SUFFIX}), so its bytes cannot be "
            "checked before they are restored; nothing was restored. Restore an archive pushed by persistkit "
            "(`persistkit archive list --remote URL`), or download it yourself and run `persistkit archive "
            "verify` on it first.",
            path=url,
        )
    with io_errors("prepare restore target", dest, "Nothing was restored."):
        fs.makedirs(dest.parent)
    sweep_dead_writers(dest.parent)
    temp = dest.parent / scratch_name(dest.name, "download", suffix=".zip")
    with claim(temp):
        try:
            store.download_verified(name, str(temp), record.sha256, record.size)
            try:
                return restore(temp, dest, limits=limits)
            except PersistkitError as err:
                name_url(err, str(temp), url)
                raise
        finally:
            with contextlib.suppress(OSError):
                fs.unlink(temp)


def name_url(err: PersistkitError, local: str, url: str) -> PersistkitError:
    """``err`` (same type, same attributes) with a downloaded temp copy's path replaced by its URL."""
    return rename_paths(err, {local: url})
