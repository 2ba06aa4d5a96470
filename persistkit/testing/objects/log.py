"""Recording what a save did to a bucket: every completed PUT and DELETE, with its key and bytes, and every read, in order.

``record_objects()`` wraps every store opened at a URL (through ``persistkit.io.objects.use_object_store``)
in a ``RecordingObjectStore`` writing to one ``ObjectLog``. ``SimulatedCrash`` is the process death a
fault store simulates; an operation that completed before it is logged.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from persistkit.io import current_fs
from persistkit.io.objects import (
    DOCUMENT_LIMIT,
    DelegatingObjectStore,
    Fetched,
    Listed,
    ObjectStore,
    PendingUpload,
    Progress,
    Uploaded,
    use_object_store,
)

__all__ = [
    "DELETE",
    "MUTATIONS",
    "ObjectLog",
    "ObjectOp",
    "PUT_FILE_NEW",
    "PUT_NEW",
    "RecordingObjectStore",
    "SWAP",
    "SimulatedCrash",
    "record_objects",
]

# operation kinds, as recorded and as counted by FaultObjectStore
PUT_NEW, PUT_FILE_NEW, SWAP, DELETE = "put-new", "put-file-new", "swap", "delete"
MUTATIONS = frozenset({PUT_NEW, PUT_FILE_NEW, SWAP, DELETE})
# the operation names the real layer (RemoteStore) puts in its error messages
OP_NAMES = {
    PUT_NEW: "create-only upload",
    PUT_FILE_NEW: "create-only upload",
    SWAP: "compare-and-swap upload",
    DELETE: "delete",
    "get": "read",
    "get-or-none": "read",
    "get-verified": "read",
    "download": "download",
    "list": "list",
    "list-dirs": "list",
    "list-objects": "list",
    "list-uploads": "list uploads",
    "abort-upload": "abort upload",
}


class SimulatedCrash(BaseException):
    """Process death, simulated: a BaseException, so no ``except Exception`` in persistkit catches it.

    ``completed``: the operation it interrupted had completed at the store (``crash-after``);
    ``result`` is what it returned there. A recorder under which it passes logs that operation.
    """

    def __init__(self, message: str, *, completed: bool = False, result: Any = None) -> None:
        super().__init__(message)
        self.completed = completed
        self.result = result


@dataclass(frozen=True)
class ObjectOp:
    """One completed object-store operation.

    ``changed``: it changed the bucket (a create-only PUT that found the name
    taken, a swap that lost its race, and every read did not). ``data``: the
    bytes a PUT wrote; ``etag``: the etag a swap produced or a read returned.
    """

    index: int
    kind: str
    url: str
    data: bytes | None = None
    etag: str | None = None
    changed: bool = False

    @property
    def mutation(self) -> bool:
        return self.changed and self.kind in MUTATIONS

    def describe(self) -> str:
        if self.kind in (PUT_NEW, PUT_FILE_NEW):
            what = "PUT create-only" if self.changed else "PUT create-only (name taken, nothing written)"
        elif self.kind == SWAP:
            what = (
                "PUT compare-and-swap"
                if self.changed
                else "PUT compare-and-swap (lost the race, nothing written)"
            )
        elif self.kind == DELETE:
            what = "DELETE"
        else:
            what = self.kind
        size = f" ({len(self.data)} bytes)" if self.data is not None else ""
        return f"#{self.index} {what} {self.url}{size}"


class ObjectLog:
    """The operations of every recorded store, in the order they completed (thread-safe).

    Two threads' operations are ordered by when each wrapper saw its call
    return, which is after the server applied it; a crash-state prefix can
    therefore show B's PUT before A's when both were in flight at once.
    """

    def __init__(self) -> None:
        self._ops: list[ObjectOp] = []
        self._lock = threading.Lock()

    def add(self, kind: str, url: str, *, data: bytes | None = None, etag: str | None = None,
            changed: bool = False) -> ObjectOp:  # fmt: skip
        with self._lock:
            op = ObjectOp(len(self._ops), kind, url, data, etag, changed)
            self._ops.append(op)
        return op

    @property
    def ops(self) -> list[ObjectOp]:
        with self._lock:
            return list(self._ops)

    def mutations(self) -> list[ObjectOp]:
        return [op for op in self.ops if op.mutation]

    def reads(self) -> list[ObjectOp]:
        return [op for op in self.ops if not op.mutation]

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def __iter__(self) -> Iterator[ObjectOp]:
        return iter(self.ops)


# -- recording -----------------------------------------------------------------------


class RecordingObjectStore(DelegatingObjectStore):
    """Forwards to ``inner`` and logs every operation that returned (see ``ObjectOp``).

    An operation that raised is not logged: under the object-store model it
    did not complete, so it is invisible.
    """

    def __init__(self, inner: ObjectStore, log: ObjectLog | None = None) -> None:
        super().__init__(inner)
        self.log = log if log is not None else ObjectLog()

    def put_new(self, key: str, data: bytes) -> bool:
        made = self._logged(lambda: self.inner.put_new(key, data),
                            lambda made: self.log.add(PUT_NEW, self.url_of(key), data=bytes(data), changed=bool(made)))  # fmt: skip
        return bool(made)

    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        def note(made: Any) -> None:
            data = current_fs().read_bytes(local_path) if made is not None else None
            self.log.add(PUT_FILE_NEW, self.url_of(key), data=data, changed=made is not None)

        return cast(
            "Uploaded | None",
            self._logged(lambda: self.inner.upload_new(key, local_path, progress=progress), note),
        )

    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        def note(new: Any) -> None:
            self.log.add(SWAP, self.url_of(key), data=bytes(data), etag=new, changed=new is not None)

        return cast("str | None", self._logged(lambda: self.inner.swap(key, data, etag), note))

    def delete(self, key: str) -> None:
        self._logged(
            lambda: self.inner.delete(key), lambda _: self.log.add(DELETE, self.url_of(key), changed=True)
        )

    @staticmethod
    def _logged(call: Callable[[], Any], note: Callable[[Any], object]) -> Any:
        """Run a mutation and log it once it completed, also when a simulated crash came right after."""
        try:
            result = call()
        except SimulatedCrash as crash:
            if crash.completed:
                note(crash.result)
            raise
        note(result)
        return result

    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        found = self.inner.get(key, limit=limit)
        self.log.add("get", self.url_of(key), etag=found.etag)
        return found

    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        found = self.inner.get_or_none(key, limit=limit)
        self.log.add("get-or-none", self.url_of(key), etag=None if found is None else found.etag)
        return found

    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        data = self.inner.get_verified(key, sha256, size)
        self.log.add("get-verified", self.url_of(key))
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
        self.inner.download_verified(key, local_path, sha256, size, progress=progress, durable=durable)
        self.log.add("download", self.url_of(key))

    def list(self, prefix: str = "") -> builtins.list[str]:
        names = self.inner.list(prefix)
        self.log.add("list", self.url_of(prefix))
        return names

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        names = self.inner.list_dirs(prefix)
        self.log.add("list-dirs", self.url_of(prefix))
        return names

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        found = self.inner.list_objects(prefix, start_after=start_after)
        self.log.add("list-objects", self.url_of(prefix))
        return found

    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        found = self.inner.list_uploads(prefix)
        self.log.add("list-uploads", self.url_of(prefix))
        return found

    def abort_upload(self, key: str, upload_id: str) -> None:
        # changes nothing visible: an upload that never completed is no object (not a crash-state op)
        self.inner.abort_upload(key, upload_id)
        self.log.add("abort-upload", self.url_of(key))


@contextlib.contextmanager
def record_objects(log: ObjectLog | None = None) -> Iterator[ObjectLog]:
    """Record every object store created inside the block into one ``ObjectLog``."""
    shared = log if log is not None else ObjectLog()
    with use_object_store(lambda store: RecordingObjectStore(store, shared)):
        yield shared


# -- in memory -----------------------------------------------------------------------
