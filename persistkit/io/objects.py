"""STORAGE: the object-store contract, and the one hook every object store passes through.

``ObjectStore`` is what persistkit asks of a bucket: create-only PUT
(``put_new``/``put_file_new``), compare-and-swap PUT (``swap``), ``delete``,
GETs with a size cap (``get(key, limit=)``), verified GETs and listings. ``swap_until`` is the one
compare-and-swap loop: it tells a lost race from a lost answer and from a server that lies. ``persistkit.io.remote.RemoteStore`` implements it
over fsspec; the test wrappers in ``persistkit.testing.objects`` (recording,
fault injection, an in-memory store for replaying crash states) wrap or
replace it.

Every store that ``persistkit.io.remote.remote_store()`` makes passes through
``wrap_store()``, which applies the functions installed with
``use_object_store()``. That is the object-store counterpart of ``use_fs``: the
one place where remote operations can be recorded, fault-injected or served
from memory, so crash states can be enumerated the way they are locally.

This module imports nothing heavy (no fsspec): ``import persistkit`` stays light.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from persistkit.errors import IntegrityError, PersistIOError, PersistkitError
from persistkit.io.documents import DOCUMENT_LIMIT, Fields, parse_document

__all__ = [
    "DOCUMENT_LIMIT",
    "DelegatingObjectStore",
    "Fetched",
    "Listed",
    "PendingUpload",
    "Progress",
    "Uploaded",
    "MAX_RECORD_BYTES",
    "ObjectStore",
    "RECORD_SUFFIX",
    "delegates_to",
    "digest_mismatch",
    "has_object_store_hooks",
    "parse_record",
    "rename_paths",
    "swap_until",
    "too_large",
    "use_object_store",
    "wrap_store",
]


@dataclass(frozen=True)
class Fetched:
    """One GET: the object's bytes and the etag of exactly those bytes (for a later ``swap``)."""

    data: bytes
    etag: str | None


Progress = Callable[[int], None]  # called with the number of bytes just transferred


@dataclass(frozen=True)
class Uploaded:
    """What a create-only upload made: the sha256 and size of the bytes sent (hashed as they were read)."""

    sha256: str
    size: int


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload started under the store's root and neither completed nor aborted."""

    key: str
    upload_id: str
    started: dt.datetime
    url: str  # the object's URL with ``?uploadId=...``: names this upload in reports


@dataclass(frozen=True)
class Listed:
    """One object of a listing: its name (relative to the listed prefix), etag, size and last change."""

    name: str
    etag: str
    size: int
    modified: dt.datetime


class ObjectStore(abc.ABC):
    """Objects under one URL (``s3://bucket/prefix``); keys are '/'-separated and relative to it.

    The guarantees callers build on: an object becomes visible whole or not at
    all (a PUT or multipart upload that did not complete is invisible); a
    create-only PUT never replaces an object; a ``swap`` replaces only the
    object whose etag the caller read; reads see every completed write.
    """

    url: str  # the root URL, no trailing '/'
    bucket: str

    def url_of(self, key: str) -> str:
        return f"{self.url}/{key}" if key else self.url

    # -- writing -------------------------------------------------------------

    @abc.abstractmethod
    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if no object has that name; False when the name was taken."""

    def put_file_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> bool:
        """Upload a local file to ``key``, create-only; False when the name was taken."""
        return self.upload_new(key, local_path, progress=progress) is not None

    @abc.abstractmethod
    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        """Upload ``local_path`` to ``key`` create-only, hashing what was sent; None when the name was taken.

        Visible whole or not at all: a multipart upload carries the condition on its completion.
        """

    @abc.abstractmethod
    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Replace ``key`` only if it still has ``etag`` (None: only if absent); the new etag, or None."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; an object already gone is fine."""

    # -- reading -------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        """The object's bytes and etag; a missing object raises PersistIOError (ENOENT).

        An object longer than ``limit`` bytes is refused (``too_large``) without reading the rest,
        and the request has a deadline that allows ``limit`` bytes over a slow link, so a body that
        never ends or trickles in cannot hold the caller. ``limit=None``: no cap (whole objects of
        any size, read for tests and tools; persistkit's own reads always pass a cap).
        """

    @abc.abstractmethod
    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        """Like ``get``, but None when there is no such object (a missing bucket still raises)."""

    @abc.abstractmethod
    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        """The object's bytes, checked against the sha256 recorded when persistkit wrote it.

        Read with the recorded ``size`` as its cap (``DOCUMENT_LIMIT`` without one).
        """

    @abc.abstractmethod
    def download_verified(
        self,
        key: str,
        local_path: str,
        sha256: str,
        size: int | None = None,
        *,
        progress: Progress | None = None,
        durable: bool = True,
    ) -> None:
        """Stream ``key`` into ``local_path`` atomically, checking its sha256 (nothing unverified is kept).

        ``durable=False`` skips the fsyncs, for caches whose every use checks the digest again.
        """

    def download(self, key: str, local_path: str) -> None:
        """Copy ``key`` into ``local_path`` atomically, with no digest to check it against.

        For objects persistkit holds no record of (``persistkit inspect URL`` of a foreign object); the
        caller checks the bytes by their own format. This default reads the object whole; RemoteStore
        streams it.
        """
        from persistkit.io.atomic import atomic_write

        atomic_write(local_path, self.get(key, limit=None).data)

    @abc.abstractmethod
    def check_digest(self, key: str, data: bytes, sha256: str, size: int | None) -> None:
        """Raise IntegrityError naming ``key`` unless ``data`` has this sha256 (and size)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """Names of the objects directly under ``prefix`` (no '/' in them); [] if there is none."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Names of the 'directories' (common prefixes) directly under ``prefix``."""

    @abc.abstractmethod
    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        """The objects directly under ``prefix`` sorting after ``start_after``, with etag, size and date."""

    @abc.abstractmethod
    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        """Multipart uploads under ``prefix`` neither completed nor aborted (invisible, but billed)."""

    @abc.abstractmethod
    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one pending multipart upload; one already gone is fine."""

    # -- errors and the start-up check ---------------------------------------

    @abc.abstractmethod
    def error(self, op: str, key: str, err: BaseException, *, attempts: int = 1) -> PersistIOError:
        """The PersistIOError for a failed ``op`` on ``key``: the URL, the cause, and what to do."""

    @abc.abstractmethod
    def check_conditional_writes(self) -> None:
        """Refuse a server that ignores If-None-Match / If-Match (it would silently overwrite).

        Called by the store itself before its first conditional write, never by a reader: reading
        needs no write rights (RemoteStore probes once per bucket and process).
        """

    # -- conveniences built on the contract ----------------------------------

    def walk(self, prefix: str = "") -> Iterator[str]:
        """Every object key under ``prefix``, depth first, sorted at each level."""
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        for name in sorted(self.list(prefix)):
            yield base + name
        for directory in sorted(self.list_dirs(prefix)):
            yield from self.walk(base + directory)


def digest_mismatch(
    url: str, actual: str, length: int, sha256: str, size: int | None
) -> IntegrityError | None:
    """The IntegrityError for bytes at ``url`` that do not match the recorded sha256/size, or None."""
    if actual == sha256 and (size is None or length == size):
        return None
    return IntegrityError(
        f"{url}: the downloaded object does not match what persistkit uploaded (sha256 {actual[:16]}..., "
        f"{length} bytes; expected {sha256[:16]}..., {size} bytes): it was changed or damaged in the "
        "store. Nothing was parsed or cached. Restore the object from a backup or a bucket version, or "
        "load an older version.",
        path=url,
    )


def too_large(url: str, limit: int) -> IntegrityError:
    """The error for an object longer than the ``limit`` a read allows (its rest is never read)."""
    return IntegrityError(
        f"{url}: the object is larger than {limit} bytes, more than persistkit reads for it (what persistkit "
        "writes there is far smaller, or its recorded size is smaller): it was replaced or damaged in the store. "
        "Nothing was parsed. Restore it from a backup or a bucket version.",
        path=url,
    )


RECORD_SUFFIX = ".json"  # ``<object>.json`` beside ``<object>``: its persistkit record (sha256, size, ...)
MAX_RECORD_BYTES = DOCUMENT_LIMIT  # a record is a few hundred bytes; anything far larger is not one


@dataclass(frozen=True)
class Record:
    """A persistkit record beside an uploaded object: its format, sha256 and size (checked), the rest raw."""

    format: str
    sha256: str
    size: int
    fields: Fields


def parse_record(url: str, data: bytes, formats: Sequence[str]) -> Record:
    """The record at ``url`` (JSON with ``format``, a hex ``sha256`` and an int ``size``), checked.

    The one reader of the records persistkit writes beside uploaded objects (model-store versions,
    archives), so every verified download trusts the same fields. Anything else is an IntegrityError
    naming the record.
    """
    of = url[: -len(RECORD_SUFFIX)] if url.endswith(RECORD_SUFFIX) else url

    def parse(doc: Fields) -> Record:
        return Record(doc.one_of("format", formats), doc.sha256("sha256"), doc.integer("size"), doc)

    if len(data) > MAX_RECORD_BYTES:
        raise too_large(url, MAX_RECORD_BYTES)
    return parse_document(
        url,
        data,
        parse,
        what=f"the record beside {of}",
        advice="That object cannot be checked. Restore the record from a backup or a bucket version, or "
        "upload the object again.",
    )


def rename_paths(err: PersistkitError, sources: Mapping[str, str]) -> PersistkitError:
    """``err`` (same object, same type) naming the bucket objects local copies came from, not the copies.

    ``sources`` maps a local path (a downloaded file, or a directory of them) to its object's URL. A
    temp copy is gone by the time the error is read; the object is what the user can look at.
    """
    for local in sorted(sources, key=len, reverse=True):
        err.message = err.message.replace(local, sources[local])
    err.args = (err.message, *err.args[1:])
    if err.path is not None:
        for local in sorted(sources, key=len, reverse=True):
            if err.path == local or err.path.startswith(local.rstrip("/") + "/"):
                err.path = sources[local] + err.path[len(local) :] if err.path != local else sources[local]
                break
    return err


# -- compare-and-swap ------------------------------------------------------------------

SWAP_ATTEMPTS = 1000  # a pointer that changes under this many swaps in a row is not a race any more


def lying_server(url: str, etag: str | None) -> PersistIOError:
    """The error for a server that refuses a swap on the etag its own read just returned."""
    import errno as _errno

    seen = "no object there" if etag is None else f"the etag {etag} its own read just returned"
    return PersistIOError(
        f"{url}: the server refused a compare-and-swap on {seen}, and the object has not changed: the server "
        "(or a proxy in front of it) rewrites etags or ignores If-Match / If-None-Match. persistkit cannot move "
        "a pointer safely there, and nothing was changed. Use a server that honours conditional writes (AWS S3, "
        "recent MinIO, or moto) with no proxy rewriting ETag headers.",
        errno=_errno.EOPNOTSUPP,
        path=url,
        operation="compare-and-swap upload",
    )


def swap_until(
    store: ObjectStore,
    key: str,
    change: Callable[[Fetched | None], bytes | None],
    *,
    limit: int = DOCUMENT_LIMIT,
    first: tuple[str | None, bytes] | None = None,
    what: str = "the object",
) -> bytes | None:
    """Replace ``key`` by compare-and-swap until a swap wins; the bytes written, or None if no change.

    ``change`` gets the object as read (None: absent) and returns its new bytes, or None when there is
    nothing to change. ``first``: (etag, bytes) to try before reading, when the caller knows both.

    A refused swap reads the object again (that read is the next round's), which tells apart:

    - the object now holds our bytes: our write landed and its answer was lost. Done;
    - it changed: another writer won the race. ``change`` runs again on what is there now;
    - it did not change (the same etag, or absent where we asked for "absent"): the server refuses
      its own etags. That is a lie, not a race: ``lying_server`` at once, not a thousand rounds.
    """
    current: Fetched | None = None
    read = False
    unchanged = 0  # refusals in a row where the bytes stayed what we had read (etag rewritten each read?)
    pending = first
    for _ in range(SWAP_ATTEMPTS):
        if pending is not None:
            etag, body = pending
            pending = None
        else:
            if not read:
                current = store.get_or_none(key, limit=limit)
            changed = change(current)
            if changed is None:
                return None
            body, etag = changed, None if current is None else current.etag
        if store.swap(key, body, etag) is not None:
            return body
        now = store.get_or_none(key, limit=limit)
        if now is not None and now.data == body:
            return body  # it landed; the answer that said so was lost
        if now is not None and now.etag == etag:
            raise lying_server(store.url_of(key), etag)
        same = (now is None and etag is None) or (now is not None and read and current is not None
                                                   and now.data == current.data)  # fmt: skip
        unchanged = unchanged + 1 if same else 0
        if unchanged >= 2:
            raise lying_server(store.url_of(key), None if now is None else now.etag)
        current, read = now, True
    url = store.url_of(key)
    raise PersistkitError(
        f"{url}: {what} changed under every one of {SWAP_ATTEMPTS} compare-and-swap attempts; another writer "
        "keeps replacing it. Check what else writes there, then retry.",
        path=url,
    )


class DelegatingObjectStore(ObjectStore):
    """Forwards every operation to ``inner``; wrappers (recording, faults) override a few."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.bucket = inner.bucket

    def url_of(self, key: str) -> str:
        return self.inner.url_of(key)

    def put_new(self, key: str, data: bytes) -> bool:
        return self.inner.put_new(key, data)

    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        return self.inner.upload_new(key, local_path, progress=progress)

    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        return self.inner.swap(key, data, etag)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        return self.inner.get(key, limit=limit)

    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        return self.inner.get_or_none(key, limit=limit)

    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        return self.inner.get_verified(key, sha256, size)

    def download_verified(
        self,
        key: str,
        local_path: str,
        sha256: str,
        size: int | None = None,
        *,
        progress: Progress | None = None,
        durable: bool = True,
    ) -> None:
        self.inner.download_verified(key, local_path, sha256, size, progress=progress, durable=durable)

    def download(self, key: str, local_path: str) -> None:
        self.inner.download(key, local_path)

    def check_digest(self, key: str, data: bytes, sha256: str, size: int | None) -> None:
        self.inner.check_digest(key, data, sha256, size)

    def list(self, prefix: str = "") -> builtins.list[str]:
        return self.inner.list(prefix)

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return self.inner.list_dirs(prefix)

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        return self.inner.list_objects(prefix, start_after=start_after)

    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return self.inner.list_uploads(prefix)

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.inner.abort_upload(key, upload_id)

    def error(self, op: str, key: str, err: BaseException, *, attempts: int = 1) -> PersistIOError:
        return self.inner.error(op, key, err, attempts=attempts)

    def check_conditional_writes(self) -> None:
        self.inner.check_conditional_writes()


def delegates_to(store: ObjectStore, target: ObjectStore) -> bool:
    """True if ``store`` is ``target`` or wraps it (through ``DelegatingObjectStore.inner``)."""
    seen: ObjectStore | None = store
    while seen is not None:
        if seen is target:
            return True
        seen = seen.inner if isinstance(seen, DelegatingObjectStore) else None
    return False


# -- the hook ------------------------------------------------------------------------

Wrap = Callable[[ObjectStore], ObjectStore]
_wraps: builtins.list[Wrap] = []
_wraps_lock = threading.Lock()


def has_object_store_hooks() -> bool:
    return bool(_wraps)


def wrap_store(store: ObjectStore) -> ObjectStore:
    """``store`` passed through every function installed with ``use_object_store``, outermost block first.

    Process-global rather than a context variable on purpose, like ``use_fs``:
    uploads made on other threads (state-store backups, parallel publishers)
    must pass through the same wrappers as the test's own thread.
    """
    with _wraps_lock:
        wraps = builtins.list(_wraps)
    for wrap in wraps:
        store = wrap(store)
    return store


@contextlib.contextmanager
def use_object_store(wrap: Wrap) -> Iterator[Wrap]:
    """Pass every object store created inside the block (by ``remote_store``) through ``wrap``.

    ``wrap`` takes the store persistkit would use and returns the one to use
    instead: a wrapper around it (recording, faults) or a replacement (an
    in-memory store). Stores created before the block are not affected.
    Nested blocks compose: the innermost block's function wraps last (outermost).
    """
    with _wraps_lock:
        _wraps.append(wrap)
    try:
        yield wrap
    finally:
        with _wraps_lock:
            _wraps.remove(wrap)
