"""An object store in memory that keeps S3's rules: create-only PUT, If-Match swaps whose etags change on every PUT
(so ABA bugs show), uploads invisible until complete. ``serve_objects(objects)`` replaces every store a test
opens by one over those objects: fast enough to check hundreds of crash states.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno as _errno
import hashlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

from persistkit.errors import PersistIOError
from persistkit.io import atomic_write, current_fs
from persistkit.io.objects import (
    DOCUMENT_LIMIT,
    Fetched,
    Listed,
    ObjectStore,
    PendingUpload,
    Progress,
    Uploaded,
    digest_mismatch,
    too_large,
    use_object_store,
)

__all__ = ["MemoryObjectStore", "ObjectSpace", "serve_objects", "snapshot_objects"]


class ObjectSpace:
    """Objects by full URL (``s3://bucket/a/b``): what several MemoryObjectStores share, like one server."""

    def __init__(self, objects: Mapping[str, bytes] | None = None) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.modified: dict[str, dt.datetime] = {}  # when each object was last written (for listings)
        for url, data in (objects or {}).items():
            self.objects[url] = (bytes(data), self._etag(data))

    def _etag(self, data: bytes) -> str:
        # S3's etag is the md5 of the bytes; this one also changes when the same bytes are PUT again,
        # so a compare-and-swap that only works by luck (ABA) fails here.
        self._generation += 1
        return '"' + hashlib.sha256(data + self._generation.to_bytes(8, "big")).hexdigest()[:32] + '"'

    def snapshot(self) -> dict[str, bytes]:
        with self._lock:
            return {url: data for url, (data, _) in self.objects.items()}

    def put(self, url: str, data: bytes, *, expect: str | bool | None) -> str | None:
        """Write ``url`` if the condition holds: ``expect`` False = no condition, None = absent, else etag."""
        with self._lock:
            current = self.objects.get(url)
            if expect is None and current is not None:
                return None
            if isinstance(expect, str) and (current is None or current[1] != expect):
                return None
            etag = self._etag(data)
            self.objects[url] = (bytes(data), etag)
            self.modified[url] = dt.datetime.now(dt.UTC)
            return etag

    def delete(self, url: str) -> None:
        with self._lock:
            self.objects.pop(url, None)
            self.modified.pop(url, None)

    def get(self, url: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self.objects.get(url)

    def names(self) -> builtins.list[str]:
        with self._lock:
            return sorted(self.objects)

    def when(self, url: str) -> dt.datetime:
        """When ``url`` was last written (objects the space started with: when it was made)."""
        with self._lock:
            return self.modified.setdefault(url, dt.datetime.now(dt.UTC))


class MemoryObjectStore(ObjectStore):
    """An ObjectStore in memory that keeps S3's conditional-write rules exactly.

    Several stores over one ``ObjectSpace`` see each other's objects. Failures
    are built by the real layer's mapping (``RemoteStore.error``), so their
    messages are the ones users see.
    """

    def __init__(self, url: str, *, space: ObjectSpace | None = None) -> None:
        self.url = url.rstrip("/")
        _, _, rest = self.url.partition("://")
        self.bucket = rest.strip("/").split("/", 1)[0]
        self.space = space if space is not None else ObjectSpace()

    def put_new(self, key: str, data: bytes) -> bool:
        return self.space.put(self.url_of(key), bytes(data), expect=None) is not None

    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        try:
            data = current_fs().read_bytes(local_path)
        except OSError as err:
            raise self.error("create-only upload", key, err) from err
        if not self.put_new(key, data):
            return None
        if progress is not None:
            progress(len(data))
        return Uploaded(hashlib.sha256(data).hexdigest(), len(data))

    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        return self.space.put(self.url_of(key), bytes(data), expect=etag)

    def delete(self, key: str) -> None:
        self.space.delete(self.url_of(key))

    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        found = self.get_or_none(key, limit=limit)
        if found is None:
            # what s3fs raises for S3's NoSuchKey
            missing = FileNotFoundError(_errno.ENOENT, "The specified key does not exist.")
            raise self.error("read", key, missing) from missing
        return found

    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        found = self.space.get(self.url_of(key))
        if found is not None and limit is not None and len(found[0]) > limit:
            raise too_large(self.url_of(key), limit)
        return None if found is None else Fetched(found[0], found[1])

    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        data = self.get(key, limit=DOCUMENT_LIMIT if size is None else size).data
        self.check_digest(key, data, sha256, size)
        return data

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
        data = self.get(key, limit=size).data
        self.check_digest(key, data, sha256, size)
        atomic_write(local_path, data, durable=durable)
        if progress is not None:
            progress(len(data))

    def check_digest(self, key: str, data: bytes, sha256: str, size: int | None) -> None:
        wrong = digest_mismatch(self.url_of(key), hashlib.sha256(data).hexdigest(), len(data), sha256, size)
        if wrong is not None:
            raise wrong

    def _below(self, prefix: str) -> Iterator[str]:
        base = self.url_of(prefix).rstrip("/") + "/"
        for url in self.space.names():
            if url.startswith(base):
                yield url[len(base) :]

    def list(self, prefix: str = "") -> builtins.list[str]:
        return [rest for rest in self._below(prefix) if "/" not in rest]

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return sorted({rest.split("/", 1)[0] for rest in self._below(prefix) if "/" in rest})

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        found = []
        for name in self.list(prefix):
            if name <= start_after:
                continue
            got = self.space.get(self.url_of(f"{prefix.rstrip('/')}/{name}" if prefix else name))
            if got is None:
                continue  # deleted since the listing
            url = self.url_of(f"{prefix.rstrip('/')}/{name}" if prefix else name)
            found.append(Listed(name, got[1], len(got[0]), self.space.when(url)))
        return found

    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return []  # an upload here completes or never happened: nothing is ever pending

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Nothing to abort (see ``list_uploads``)."""

    def error(self, op: str, key: str, err: BaseException, *, attempts: int = 1) -> PersistIOError:
        from persistkit.io.remote import RemoteStore

        # The real layer's mapping, so messages are identical; it reads only url_of() and bucket.
        return RemoteStore.error(cast(Any, self), op, key, err, attempts=attempts)

    def check_conditional_writes(self) -> None:
        """Nothing to probe: this store honours If-None-Match and If-Match by construction."""


@contextlib.contextmanager
def serve_objects(objects: Mapping[str, bytes] | ObjectSpace) -> Iterator[ObjectSpace]:
    """Replace every object store created inside the block by a MemoryObjectStore over ``objects``.

    ``objects`` maps full URLs (``s3://bucket/key``) to bytes; the stores never
    touch the network. Yields the shared ``ObjectSpace`` (its ``snapshot()``
    shows what the block left).
    """
    space = objects if isinstance(objects, ObjectSpace) else ObjectSpace(objects)
    with use_object_store(lambda store: MemoryObjectStore(store.url, space=space)):
        yield space


def snapshot_objects(url: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """Every object under ``url`` (its full URL -> bytes), read through persistkit's object-store layer."""
    from persistkit.io.remote import remote_store

    store = remote_store(url, storage_options=storage_options)
    return {store.url_of(key): store.get(key, limit=None).data for key in store.walk()}


# -- faults --------------------------------------------------------------------------
