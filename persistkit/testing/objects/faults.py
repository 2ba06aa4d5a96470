"""Faults for object stores: the n-th operation fails the way the real layer reports a dropped connection, throttling
or expired credentials (through ``RemoteStore.error``), once or persistently, or the process "crashes" before or
after an operation completes (``SimulatedCrash``).
"""

from __future__ import annotations

import builtins
import errno as _errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from persistkit.io.objects import (
    DOCUMENT_LIMIT,
    DelegatingObjectStore,
    Fetched,
    Listed,
    ObjectStore,
    PendingUpload,
    Progress,
    Uploaded,
)
from persistkit.testing.objects.log import DELETE, OP_NAMES, PUT_FILE_NEW, PUT_NEW, SWAP, SimulatedCrash

__all__ = ["FAILURES", "FaultObjectStore", "ObjectFault", "raw_failure"]

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
        where = f"{OP_NAMES[kind]} of {self.url_of(key)}"
        if fault.failure == "crash-before":
            raise SimulatedCrash(f"simulated crash before the {where}")
        if fault.failure == "crash-after":
            result = call()
            raise SimulatedCrash(
                f"simulated crash after the {where} completed", completed=True, result=result
            )
        raw = raw_failure(fault.failure, self.url_of(key))
        attempts = 1 if fault.failure == "expired-credentials" else _retries(self.inner)
        raise self.inner.error(OP_NAMES[kind], key, raw, attempts=attempts) from raw

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
