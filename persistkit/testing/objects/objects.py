"""Object-store test wrappers and crash-state enumeration under the object-store model.

Every store persistkit opens at a URL passes through the hook in
``persistkit.io.objects`` (``use_object_store``), so a test can:

- record it: ``record_objects()`` wraps every new store in a
  ``RecordingObjectStore``; the shared ``ObjectLog`` holds each completed
  PUT (create-only or compare-and-swap) and DELETE with its key and bytes, and
  every read, in order;
- inject faults: ``FaultObjectStore`` fails the n-th operation with exactly the
  error the real layer raises for a dropped connection, throttling or expired
  credentials (the raw failure goes through ``RemoteStore.error``), once or
  persistently, or "crashes" the process (``SimulatedCrash``) before or after an
  operation completes;
- replay it: ``MemoryObjectStore`` honours create-only and If-Match like S3
  (an etag changes on every PUT; an upload that did not complete is invisible),
  and ``serve_objects(objects)`` replaces every new store by one over those
  objects, which is fast enough to check hundreds of crash states.

The crash model for object stores: a crash leaves the objects that were there
before plus any prefix of the completed PUTs and DELETEs; an upload that never
completed is invisible. ``object_crash_states(initial, log)`` yields those
states; ``object_crash_points(save, check, url=...)`` records ``save()``
against the real store, checks the recording explains the bucket it left, then
runs ``check()`` in every crash state and fails naming the first bad state,
the operation that made it, and a "Fix:" hint. Observing no operation is an
error (``NotJudgeable``), never a pass.

Example::

    from persistkit.testing import object_crash_points

    def test_publish_is_atomic(s3_bucket, tmp_path):
        server, bucket = s3_bucket
        url, opts = f"s3://{bucket}/models", server.storage_options

        def save():
            ModelStore(url, storage_options=opts, cache_dir=tmp_path / "w").save(
                {"m": model}, symbol="BTC", agent="ppo", timeframe="1h")

        def check():  # runs once per crash state, against an in-memory copy of it
            store = ModelStore(url, storage_options=opts, cache_dir=tmp_path / "r", key_file=...)
            for version in store.versions("BTC", "ppo", "1h"):
                store.load(version)

        report = object_crash_points(save, check, url=url, storage_options=opts)
        print(report.summary())   # "5 crash states (object store) of a save with 4 completed PUTs/DELETEs ..."

Lower level, for a harness of your own::

    with record_objects() as log:
        save()
    for state in object_crash_states(initial_objects, log):
        with state.serve():
            check()
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno as _errno
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from persistkit.errors import PersistIOError
from persistkit.io import atomic_write, current_fs
from persistkit.io.objects import (
    DOCUMENT_LIMIT,
    DelegatingObjectStore,
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
from persistkit.testing.observe import NotJudgeable
from persistkit.testing.report import RECORDER, Recorder

__all__ = [
    "FAILURES",
    "FaultObjectStore",
    "MemoryObjectStore",
    "ObjectCrashReport",
    "ObjectCrashState",
    "ObjectFault",
    "ObjectLog",
    "ObjectOp",
    "ObjectSpace",
    "RecordingObjectStore",
    "SimulatedCrash",
    "object_crash_points",
    "object_crash_states",
    "record_objects",
    "serve_objects",
    "snapshot_objects",
]

# operation kinds, as recorded and as counted by FaultObjectStore
PUT_NEW, PUT_FILE_NEW, SWAP, DELETE = "put-new", "put-file-new", "swap", "delete"
MUTATIONS = frozenset({PUT_NEW, PUT_FILE_NEW, SWAP, DELETE})
# the operation names the real layer (RemoteStore) puts in its error messages
_OP_NAMES = {
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


# -- the log -------------------------------------------------------------------------


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

FAILURES = ("dropped-connection", "throttled", "expired-credentials", "crash-before", "crash-after")


@dataclass(frozen=True)
class ObjectFault:
    """Fail operation number ``at`` (0-based, counting only ``kinds`` if given) with ``failure``.

    ``failure``: "dropped-connection", "throttled", "expired-credentials" (a typed
    PersistIOError, exactly as the real layer raises it once its retries are spent), or
    "crash-before" / "crash-after" (``SimulatedCrash`` before the operation reaches the
    store, or after it completed there). ``persistent``: every later counted operation
    fails too. ``kinds``: e.g. ``{"put-file-new", "swap"}`` (see ``MUTATIONS``).
    """

    at: int
    failure: str = "dropped-connection"
    persistent: bool = False
    kinds: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.failure not in FAILURES:
            raise ValueError(f"unknown failure {self.failure!r}; choose one of {', '.join(FAILURES)}")
        if self.at < 0:
            raise ValueError(f"at must be >= 0, not {self.at}")

    def describe(self) -> str:
        kinds = f" among {'/'.join(sorted(self.kinds))}" if self.kinds else ""
        return (
            f"{self.failure} at operation #{self.at}{kinds} ({'persistent' if self.persistent else 'once'})"
        )


def raw_failure(failure: str, url: str) -> BaseException:
    """The exception the S3 client stack raises for ``failure`` (before persistkit maps it)."""
    try:
        from botocore.exceptions import ClientError, ConnectionClosedError
        from s3fs.errors import translate_boto_error
    except ImportError:  # pragma: no cover - without the remote extra: the same errnos, plain OSErrors
        plain: dict[str, BaseException] = {
            "dropped-connection": ConnectionResetError(_errno.ECONNRESET, "Connection reset by peer"),
            "throttled": OSError(_errno.EBUSY, "Please reduce your request rate."),
            "expired-credentials": PermissionError(_errno.EACCES, "The provided token has expired."),
        }
        return plain[failure]
    if failure == "dropped-connection":
        # what aiobotocore raises when the server closes the connection mid-request
        return cast(BaseException, ConnectionClosedError(endpoint_url=url))
    code, message, status = {
        "throttled": ("SlowDown", "Please reduce your request rate.", 503),
        "expired-credentials": ("ExpiredToken", "The provided token has expired.", 400),
    }[failure]
    error = ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    return cast(BaseException, translate_boto_error(error))


def _retries(store: ObjectStore) -> int:
    """How many attempts the real store under ``store`` makes before it gives up (1 if unknown)."""
    seen: ObjectStore | None = store
    while seen is not None:
        retries = getattr(seen, "retries", None)
        if isinstance(retries, int):
            return retries
        seen = seen.inner if isinstance(seen, DelegatingObjectStore) else None
    return 1


@dataclass
class FaultObjectStore(DelegatingObjectStore):
    """Wraps ``inner`` and injects ``fault``; ``fired`` counts the failures it caused.

    Failures are raised above the real layer's retry loop: what the caller sees
    is what ``RemoteStore`` raises once its bounded retries are spent (transient
    kinds) or at once (expired credentials), built by ``inner.error`` from the
    exception the S3 client raises, so the message is the real one.
    """

    inner: ObjectStore
    fault: ObjectFault | None = None
    counter: int = 0
    fired: int = 0
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        DelegatingObjectStore.__init__(self, self.inner)

    def arm(self, fault: ObjectFault | None) -> None:
        """Inject ``fault`` from now on, counting from zero again."""
        with self._lock:
            self.fault = fault
            self.counter = 0

    def clear(self) -> None:
        """Remove the fault: later operations succeed ("the network is back")."""
        with self._lock:
            self.fault = None

    def _due(self, kind: str, key: str) -> ObjectFault | None:
        with self._lock:
            fault = self.fault
            if fault is not None and fault.kinds is not None and kind not in fault.kinds:
                return None
            n = self.counter
            self.counter += 1
            self.log.append(f"#{n} {kind} {self.url_of(key)}")
            if fault is None or not (n == fault.at or (fault.persistent and n > fault.at)):
                return None
            self.fired += 1
            return fault

    def _run(self, kind: str, key: str, call: Callable[[], Any]) -> Any:
        fault = self._due(kind, key)
        if fault is None:
            return call()
        where = f"{_OP_NAMES[kind]} of {self.url_of(key)}"
        if fault.failure == "crash-before":
            raise SimulatedCrash(f"simulated crash before the {where}")
        if fault.failure == "crash-after":
            result = call()
            raise SimulatedCrash(
                f"simulated crash after the {where} completed", completed=True, result=result
            )
        raw = raw_failure(fault.failure, self.url_of(key))
        attempts = 1 if fault.failure == "expired-credentials" else _retries(self.inner)
        raise self.inner.error(_OP_NAMES[kind], key, raw, attempts=attempts) from raw

    def put_new(self, key: str, data: bytes) -> bool:
        return bool(self._run(PUT_NEW, key, lambda: self.inner.put_new(key, data)))

    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        return cast(
            "Uploaded | None",
            self._run(PUT_FILE_NEW, key, lambda: self.inner.upload_new(key, local_path, progress=progress)),
        )

    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        return cast("str | None", self._run(SWAP, key, lambda: self.inner.swap(key, data, etag)))

    def delete(self, key: str) -> None:
        self._run(DELETE, key, lambda: self.inner.delete(key))

    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        return cast(Fetched, self._run("get", key, lambda: self.inner.get(key, limit=limit)))

    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        return cast(
            "Fetched | None", self._run("get-or-none", key, lambda: self.inner.get_or_none(key, limit=limit))
        )

    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        return cast(bytes, self._run("get-verified", key, lambda: self.inner.get_verified(key, sha256, size)))

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
        self._run("download", key, lambda: self.inner.download_verified(
            key, local_path, sha256, size, progress=progress, durable=durable))  # fmt: skip

    def list(self, prefix: str = "") -> builtins.list[str]:
        return cast("builtins.list[str]", self._run("list", prefix, lambda: self.inner.list(prefix)))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return cast(
            "builtins.list[str]", self._run("list-dirs", prefix, lambda: self.inner.list_dirs(prefix))
        )

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        return cast("builtins.list[Listed]", self._run(
            "list-objects", prefix, lambda: self.inner.list_objects(prefix, start_after=start_after)))  # fmt: skip

    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        return cast(
            "builtins.list[PendingUpload]",
            self._run("list-uploads", prefix, lambda: self.inner.list_uploads(prefix)),
        )

    def abort_upload(self, key: str, upload_id: str) -> None:
        self._run("abort-upload", key, lambda: self.inner.abort_upload(key, upload_id))


# -- crash states --------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectCrashState:
    """The bucket a crash can leave: the initial objects plus the first ``applied`` completed mutations."""

    applied: int
    objects: Mapping[str, bytes]
    last: ObjectOp | None  # the last mutation applied (None: nothing yet)
    next: ObjectOp | None  # the first mutation not applied (None: the save's end state)

    def describe(self) -> str:
        after = "before any PUT or DELETE" if self.last is None else f"after {self.last.describe()}"
        pending = f", before {self.next.describe()}" if self.next is not None else " (the end state)"
        return f"state {self.applied}: {after}{pending}"

    def serve(self) -> contextlib.AbstractContextManager[ObjectSpace]:
        """Serve this state to every object store created inside the block (see ``serve_objects``)."""
        return serve_objects(dict(self.objects))


def object_crash_states(
    initial: Mapping[str, bytes], log: ObjectLog | Sequence[ObjectOp]
) -> Iterator[ObjectCrashState]:
    """Every crash state of the recorded operations: ``initial`` + each prefix of the completed mutations.

    Reads, create-only PUTs that found the name taken and swaps that lost
    their race changed nothing and add no state. Uploads that raised were
    never logged: they are invisible.
    """
    mutations = [op for op in (log.ops if isinstance(log, ObjectLog) else log) if op.mutation]
    objects = dict(initial)
    yield ObjectCrashState(0, dict(objects), None, mutations[0] if mutations else None)
    for i, op in enumerate(mutations):
        if op.kind == DELETE:
            objects.pop(op.url, None)
        else:
            assert op.data is not None
            objects[op.url] = op.data
        following = mutations[i + 1] if i + 1 < len(mutations) else None
        yield ObjectCrashState(i + 1, dict(objects), op, following)


@dataclass
class ObjectViolation:
    state: ObjectCrashState
    error: BaseException

    def describe(self) -> str:
        return f"{self.state.describe()}: check() raised {type(self.error).__name__}: {str(self.error)[:500]}"


@dataclass
class ObjectCrashReport:
    """What ``object_crash_points`` explored; ``violations`` is empty when the save passed."""

    url: str
    states: int
    operations: list[str]
    mutations: int
    sampled: bool = False
    seconds: float = 0.0
    violations: list[ObjectViolation] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.states} crash states (object store) of a save with {self.mutations} completed PUTs/DELETEs "
            f"and {len(self.operations) - self.mutations} other requests under {self.url}"
            f"{', sampled' if self.sampled else ''}: {len(self.violations)} violations"
        )


def object_fix_hint(state: ObjectCrashState) -> str:
    """One line saying what to change, read off the first violating state."""
    op = state.last
    if op is None:
        return (
            "the bucket fails check() before the save changed anything: the check (or the initial bucket) is "
            "wrong, not the save"
        )
    if op.kind == DELETE:
        return (
            f"something still visible refers to {op.url} when it is deleted: remove or move what names an "
            "object (its pointer or record) first, and delete the data last"
        )
    return (
        f"{op.url} is visible before what it refers to: upload the data first, then its record, and make "
        "it visible last with one conditional PUT of a small pointer"
    )


def _choose(n: int, limit: int | None) -> list[int]:
    if limit is None or n <= limit:
        return list(range(n))
    if limit < 2:
        return [n - 1]
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


def _within(url: str, objects: Mapping[str, bytes]) -> dict[str, bytes]:
    base = url.rstrip("/") + "/"
    return {k: v for k, v in objects.items() if k.startswith(base)}


def object_crash_points(
    save: Callable[[], Any],
    check: Callable[[], Any],
    *,
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    max_states: int | None = None,
    recorder: Recorder = RECORDER,
) -> ObjectCrashReport:
    """Run ``save()`` against the store at ``url`` recording it, then ``check()`` in every crash state.

    Crash states follow the object-store model (see the module docstring);
    each one is served from memory to every store created inside ``check()``,
    which raises (an AssertionError, a persistkit error...) when the state is
    unacceptable. Stores must be created inside ``save()`` and ``check()``: a
    store made before is not routed through the hook. ``max_states`` samples
    evenly, always keeping the first and the last.

    Raises ``NotJudgeable`` when nothing was observed or the recording does not
    explain what the bucket holds after the save (never a pass), and
    AssertionError naming the first violating state, the operation log and a
    "Fix:" hint.
    """
    __tracebackhide__ = True
    start = time.perf_counter()
    initial = snapshot_objects(url, storage_options=storage_options)
    with record_objects() as log:
        save()
    ops = log.ops
    if not ops:
        raise NotJudgeable(
            f"object_crash_points observed no object-store operation during save() under {url}: no verdict. "
            "Fix: make save() write through persistkit (ModelStore('s3://...'), remote_store()) and create the "
            "store inside save(); a store created before is not routed through the recording hook."
        )
    mutations = [op for op in ops if op.mutation]
    if not mutations:
        raise NotJudgeable(
            f"object_crash_points observed {len(ops)} read(s) and no completed PUT or DELETE during save() under "
            f"{url}: there is no crash state to check, so no verdict. Fix: check that save() really saves (and "
            "through persistkit's object-store layer)."
        )
    states = list(object_crash_states(initial, ops))
    actual = snapshot_objects(url, storage_options=storage_options)
    replayed = _within(url, states[-1].objects)
    if actual != replayed:
        unexplained = sorted(set(actual) ^ set(replayed)) or sorted(
            k for k in actual if actual[k] != replayed.get(k)
        )
        raise NotJudgeable(
            f"object_crash_points: the recorded operations do not explain what {url} holds after save() "
            f"(first difference: {unexplained[0]}): something wrote there without going through persistkit's "
            "object-store layer, or a store was created before the recording started. No verdict. "
            f"Operations seen: {len(ops)}."
        )
    chosen = _choose(len(states), max_states)
    report = ObjectCrashReport(
        url=url,
        states=len(chosen),
        operations=[op.describe() for op in ops],
        mutations=len(mutations),
        sampled=len(chosen) < len(states),
    )
    for i in chosen:
        state = states[i]
        with state.serve():
            try:
                check()
            except Exception as err:
                report.violations.append(ObjectViolation(state, err))
    report.seconds = time.perf_counter() - start
    recorder.add_run("object_crash_points", states=report.states, violations=len(report.violations))
    if report.violations:
        first = report.violations[0]
        log_lines = "\n".join(f"  {line}" for line in report.operations[:60])
        raise AssertionError(
            f"object_crash_points: {report.summary()}.\n"
            f"First violating crash state: {first.describe()}\n"
            f"Fix: {object_fix_hint(first.state)}\n"
            f"Operations recorded during save():\n{log_lines}"
        )
    return report
