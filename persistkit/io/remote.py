"""STORAGE for object stores (S3 and anything else fsspec reaches): conditional PUTs instead of rename.

An object store has no rename and no fsync, so publishing works differently
from ``persistkit.io.atomic``:

1. the data goes up as one object, written *create-only* (``If-None-Match: *``).
   A whole PUT, or a multipart upload, is invisible until it completes, so a
   writer killed mid-upload leaves nothing visible behind; and the create-only
   condition makes the name unique across every writer on every machine;
2. it becomes visible to readers through a small pointer object, replaced with
   compare-and-swap (``If-Match: <etag>``), so two publishers never overwrite
   each other's pointer without having seen it.

Both guarantees depend on the server honouring conditional writes. AWS S3 does
(since 2024; If-Match since late 2024); some S3-compatible servers and older
proxies ignore the headers and silently overwrite. ``RemoteStore`` therefore
probes the server before its first conditional write (once per bucket and
process), with every kind of write persistkit relies on: a create-only PUT twice
on a probe key, a create-only multipart completion onto it, a compare-and-swap
on the etag a GET returned, and one on a stale etag. It refuses to write where a
guarantee cannot be kept. Readers never probe: loading, restoring, inspecting and
pulling need only s3:GetObject and s3:ListBucket. After a multipart completion
the object at the key is checked to be the one just completed (its etag and size).

Reads of persistkit's own small documents are capped (``get(key, limit=)``): the
body is read in chunks and refused past the cap, and the request has a deadline,
so a body that never ends or trickles in holds no caller.

Every download is checked against the sha256 persistkit recorded at upload,
before a single byte is parsed. Failures become ``PersistIOError`` naming the
URL, the errno-style cause and what to do; transient ones (connection refused
or reset, timeouts, throttling, 5xx) are retried a bounded number of times with
exponential backoff first.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno as _errno
import functools
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from persistkit.errors import IntegrityError, PersistIOError, PersistkitError, describe_errno
from persistkit.io.objects import (
    DOCUMENT_LIMIT,
    Fetched,
    Listed,
    ObjectStore,
    PendingUpload,
    Progress,
    Uploaded,
    too_large,
    wrap_store,
)

__all__ = [
    "Fetched",
    "Listed",
    "PendingUpload",
    "RemoteStore",
    "Uploaded",
    "is_url",
    "remote_store",
    "sha256_file",
]

T = TypeVar("T")

CHUNK = 8 * 2**20
MIN_RATE = 2**20  # bytes/s: an upload slower than this is taken for a dead connection
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
PROBE_PREFIX = ".persistkit-probe"
_TRANSIENT_ERRNOS = {
    _errno.EBUSY,  # s3fs: SlowDown / ServiceUnavailable (503)
    _errno.EAGAIN,
    _errno.ETIMEDOUT,
    _errno.ECONNREFUSED,
    _errno.ECONNRESET,
    _errno.ECONNABORTED,
    _errno.EREMOTEIO,  # s3fs: InternalError (500)
}
# botocore / aiohttp connection failures are not OSErrors; recognised by name so this module does not
# import them (fsspec backends other than s3fs raise their own).
_TRANSIENT_NAMES = (
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "TimeoutError",
)


def is_url(root: object) -> bool:
    """True for ``s3://bucket/path`` and other fsspec URLs (not for local paths, not for ``file://``)."""
    if not isinstance(root, str) or _SCHEME.match(root) is None:
        return False
    return not root.startswith("file://")


def sha256_file(path: str) -> tuple[str, int]:
    """(hex sha256, size) of a local file, read through persistkit.io."""
    from persistkit.io import current_fs

    digest = hashlib.sha256()
    size = 0
    with current_fs().open_read(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, (FileNotFoundError, PermissionError, FileExistsError)):
        return False
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(err, TimeoutError):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(err).__mro__)


# botocore's "no usable credentials" errors, recognised by name (this module does not import botocore)
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")


def _no_credentials(err: BaseException) -> bool:
    return any(
        cls.__name__ in _CREDENTIAL_ERRORS
        for cause in (err, err.__cause__, err.__context__)
        if cause is not None
        for cls in type(cause).__mro__
    )


def _server_code(err: BaseException) -> str | None:
    """The S3 error code (``NoSuchBucket``, ``PreconditionFailed``...) behind a translated s3fs error."""
    for cause in (err, err.__cause__, err.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, Mapping):
            code = response.get("Error", {}).get("Code")
            if isinstance(code, str):
                return code
    return None


def _condition(err: BaseException) -> str | None:
    for cause in (err, err.__cause__, err.__context__):
        response = getattr(cause, "response", None)
        if isinstance(response, Mapping) and response.get("Error", {}).get("Code") == "PreconditionFailed":
            return str(response["Error"].get("Condition") or "precondition")
    return None


class RemoteStore(ObjectStore):
    """Objects under one fsspec URL (``s3://bucket/prefix``): create-only PUT, CAS PUT, verified GET.

    Keys are '/'-separated and relative to the root URL. ``storage_options``
    go to ``fsspec.filesystem`` (for s3: ``endpoint_url=``, ``key=``,
    ``secret=``, ``client_kwargs=``...). ``retries`` bounds the attempts of
    each request on a transient failure; ``backoff`` is the first wait, doubled
    each time. A retried create-only PUT whose first attempt reached the server
    reads as "taken": callers treat that as a lost race (a name is skipped, never
    reused), unless the object there is provably the one this upload made (``upload_new``
    checks its etag and size). ``probe``: check the server's conditional writes before the
    first one (False: never; for servers known to honour them). ``part_size``: files of two parts or more go up as a multipart
    upload and come down as ranged GETs, ``concurrency`` parts at a time, each
    part retried on its own (a dropped connection costs one part, not the file).
    Every request has a timeout (botocore's connect and read timeouts), so a
    bounded number of attempts is a bounded wait.
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        retries: int = 4,
        backoff: float = 0.2,
        probe: bool = True,
        part_size: int = 16 * 2**20,
        concurrency: int = 4,
    ) -> None:
        try:
            import fsspec
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "remote stores need fsspec (and s3fs for s3://): pip install 'persistkit[remote]'"
            ) from err
        if not is_url(url):
            raise ValueError(f"{url!r} is not an object-store URL such as 's3://bucket/models'")
        self.url = url.rstrip("/")
        self.protocol, _, rest = self.url.partition("://")
        self.retries = max(1, retries)
        if part_size < 5 * 2**20:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum for a multipart part)")
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.backoff = backoff
        options = dict(storage_options or {})
        if self.protocol in ("s3", "s3a"):
            # persistkit retries itself (bounded, with backoff, knowing what is safe to retry); s3fs's and
            # botocore's own retry loops would multiply the wait (9 s for one refused connection).
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
            config.setdefault("connect_timeout", 5)
            config.setdefault("read_timeout", 60)
            options["config_kwargs"] = config
            self.timeouts = (float(config["connect_timeout"]), float(config["read_timeout"]))
        else:
            self.timeouts = (5.0, 60.0)
        # fsspec caches instances by their keyword arguments, not by the environment: a cached one would
        # keep another test's (or user's) credentials and endpoint taken from AWS_* variables.
        options.setdefault("skip_instance_cache", True)
        try:
            self.fs = fsspec.filesystem(self.protocol, **options)
        except ImportError as err:
            raise ImportError(
                f"{self.url}: the {self.protocol}:// backend is not installed; pip install 'persistkit[remote]' "
                f"(s3fs) or the fsspec backend for {self.protocol}://"
            ) from err
        if self.protocol in ("s3", "s3a"):
            self.fs.retries = 1  # s3fs's own loop (a class attribute, not a constructor argument)
        self.root = rest.strip("/")
        self.bucket = self.root.split("/", 1)[0]
        self._not_ours = 0  # completed multipart uploads in a row whose object turned out not to be ours
        self.requests = 0  # attempts made, retries included (a streamed download counts once): for tests
        self._count_lock = threading.Lock()
        # probed before the first conditional write (once per bucket and options in this process)
        self.probe = probe
        self._probe_ident = (f"{self.protocol}://{self.bucket}", repr(sorted(options.items())))

    # -- names ---------------------------------------------------------------

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def url_of(self, key: str) -> str:
        return f"{self.protocol}://{self.path(key)}"

    def _split(self, key: str) -> tuple[str, str]:
        bucket, _, name = self.path(key).partition("/")
        return bucket, name

    # -- the request loop ----------------------------------------------------

    def _call(
        self, op: str, key: str, call: Callable[[], T], *, answer: Callable[[Exception], bool] | None = None
    ) -> T:
        """Run one request, retrying transient failures; map the rest to PersistIOError.

        Errors for which ``answer`` is true are the server's answer to a condition (not failures): they
        are raised as they are, never retried.
        """
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            self._count()
            try:
                return call()
            except Exception as err:
                self._give_up_unless_transient(op, key, err, attempt, answer)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acall(
        self,
        op: str,
        key: str,
        call: Callable[[], Awaitable[T]],
        *,
        answer: Callable[[Exception], bool] | None = None,
        sending: int | None = None,
        deadline: float | None = None,
    ) -> T:
        """``_call`` for a coroutine on fsspec's event loop (the parts of one transfer run side by side).

        A request that sends a body (``sending`` bytes) is given a deadline of its own: botocore sends
        those with ``Expect: 100-continue``, and the wait for the server's go-ahead is not covered by
        the read timeout, so a server that accepts the connection and never answers would hold the
        upload forever. The deadline allows for a slow link (``MIN_RATE``). A read passes its own
        ``deadline`` (``get``: the size cap over a slow link).
        """
        delay = self.backoff
        if sending is not None:
            deadline = sum(self.timeouts) + sending / MIN_RATE
        for attempt in range(1, self.retries + 1):
            self._count()
            try:
                return await asyncio.wait_for(call(), deadline)
            except Exception as err:
                self._give_up_unless_transient(op, key, err, attempt, answer)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self) -> None:
        with self._count_lock:
            self.requests += 1

    def _give_up_unless_transient(
        self, op: str, key: str, err: Exception, attempt: int, answer: Callable[[Exception], bool] | None
    ) -> None:
        """Return to retry ``err``; raise it (a condition's answer, a typed error) or a PersistIOError otherwise."""
        if (answer is not None and answer(err)) or isinstance(err, PersistkitError):
            raise err
        if not (_is_transient(err) and attempt < self.retries):
            raise self.error(op, key, err, attempts=attempt) from err

    def _sync(self, coroutine: Callable[[], Awaitable[T]]) -> T:
        from fsspec.asyn import sync

        return sync(self.fs.loop, coroutine)  # type: ignore[no-any-return]

    def error(self, op: str, key: str, err: BaseException, *, attempts: int = 1) -> PersistIOError:
        """A PersistIOError for a failed ``op`` on ``key``: the URL, the cause, and what to do."""
        url = self.url_of(key)
        code = _server_code(err)
        text = (str(err) or type(err).__name__).rstrip(". ")
        if code == "NoSuchBucket" or (isinstance(err, FileNotFoundError) and "bucket" in text.lower()):
            number = _errno.ENOENT
            advice = (
                f"The bucket {self.bucket!r} does not exist (or is in another region/account): create it, "
                "or fix the URL."
            )
        elif isinstance(err, FileNotFoundError) or code in ("NoSuchKey", "NoSuchUpload"):
            number = _errno.ENOENT
            advice = "No such object: check the URL; if it was there before, restore it from a backup."
        elif (
            isinstance(err, PermissionError)
            or _no_credentials(err)
            or code
            in (
                "AccessDenied",
                "ExpiredToken",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
            )
        ):
            number = _errno.EACCES
            if _reads(op):
                needs = "s3:GetObject and s3:ListBucket (all a reader needs)"
            else:
                needs = (
                    "s3:GetObject, s3:ListBucket, s3:PutObject and s3:DeleteObject (what a writer needs; prune "
                    "also uses s3:ListBucketMultipartUploads and s3:AbortMultipartUpload)"
                )
            advice = (
                "Access denied: the credentials are missing, wrong or expired, or lack permission on "
                f"{self.bucket!r}. Refresh them (aws sso login, new session token) or grant {needs} on the "
                "bucket, then retry."
            )
        elif _is_transient(err):
            number = err.errno if isinstance(err, OSError) and err.errno else _errno.ECONNREFUSED
            if isinstance(err, TimeoutError) and not err.errno:  # a request past its deadline
                number = _errno.ETIMEDOUT
                text = "no answer within the request's deadline"
            if number in (_errno.EBUSY, _errno.EAGAIN):
                advice = (
                    f"The server kept throttling (SlowDown/503) after {attempts} attempts: spread requests over "
                    "more prefixes or slow down, then retry."
                )
            else:
                advice = (
                    f"The server could not be reached or failed ({attempts} attempts): check the endpoint, the "
                    "network and the service status, then retry."
                )
        else:
            number = err.errno if isinstance(err, OSError) and err.errno else _errno.EIO
            advice = "Fix the cause above, then retry."
        consequence = " Nothing was changed." if _reads(op) else " Nothing new was made visible to readers."
        message = f"{op} failed on {url!r}: {describe_errno(number)}: {text}. {advice}{consequence}"
        return PersistIOError(message, errno=number, path=url, operation=op)

    # -- writing -------------------------------------------------------------

    def put_new(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if no object has that name (If-None-Match: *).

        True when this call created it; False when the name was already taken.
        """
        self._before_writing(key)
        return self._put_new(key, data)

    def _put_new(self, key: str, data: bytes) -> bool:
        if self.protocol not in ("s3", "s3a"):
            raise self._unsupported(key, "create-only uploads are only implemented for s3:// in this version")
        bucket, name = self._split(key)
        try:
            self._sync(
                lambda: self._acall(
                    "create-only upload",
                    key,
                    lambda: self.fs._call_s3(
                        "put_object", Bucket=bucket, Key=name, Body=data, IfNoneMatch="*"
                    ),
                    answer=_taken,
                    sending=len(data),
                )
            )
        except Exception as err:
            if _taken(err):
                return False
            raise
        return True

    def upload_new(self, key: str, local_path: str, *, progress: Progress | None = None) -> Uploaded | None:
        """Upload ``local_path`` to ``key`` create-only, hashing it on the way; None if the name was taken.

        A file of two parts or more goes up as a multipart upload whose
        completion carries the condition: nothing is visible until the last
        part is in, and a failed or refused upload is aborted. The sha256 is
        taken from the very bytes sent, in the same read (no second pass).
        """
        if self.protocol not in ("s3", "s3a"):
            raise self._unsupported(key, "create-only uploads are only implemented for s3:// in this version")
        self._before_writing(key)
        from persistkit.io import current_fs

        try:
            size = current_fs().stat(local_path).st_size
        except OSError as err:
            from persistkit.io.fs import io_error

            raise io_error("read for upload", local_path, err) from err
        try:
            if size < 2 * self.part_size:
                return self._sync(lambda: self._put_whole(key, local_path, progress))
            return self._sync(lambda: self._put_multipart(key, local_path, progress))
        except Exception as err:
            if _taken(err):
                return None
            if isinstance(err, OSError) and not isinstance(err, PersistkitError):
                # every request's failure is a PersistIOError already: this is the local file
                from persistkit.io.fs import io_error

                raise io_error("read for upload", local_path, err) from err
            raise

    async def _put_whole(self, key: str, local_path: str, progress: Progress | None) -> Uploaded:
        from persistkit.io import current_fs

        bucket, name = self._split(key)
        with current_fs().open_read(local_path) as source:
            data = source.read()
        uploaded = Uploaded(hashlib.sha256(data).hexdigest(), len(data))
        sent = 0

        def put() -> Any:
            nonlocal sent
            sent += 1
            return self.fs._call_s3("put_object", Bucket=bucket, Key=name, Body=data, IfNoneMatch="*")

        try:
            await self._acall("create-only upload", key, put, answer=_taken, sending=len(data))
        except Exception as err:
            # "taken" on a retry may be this very upload, its first answer lost (S3's etag of a single PUT
            # is the md5 of its bytes); refused at the first attempt, the name is another writer's
            ours = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
            if not (_taken(err) and sent > 1 and await self._holds(key, ours, len(data))):
                raise
        if progress is not None:
            progress(len(data))
        return uploaded

    async def _holds(self, key: str, etag: str, size: int) -> bool:
        """Whether the object at ``key`` has this etag and size (HEAD): it is the one we just wrote."""
        bucket, name = self._split(key)
        try:
            head = await self._acall(
                "read", key, lambda: self.fs._call_s3("head_object", Bucket=bucket, Key=name), sending=0
            )
        except PersistIOError as err:
            if err.errno == _errno.ENOENT:
                return False
            raise
        return str(head.get("ETag")) == etag and head.get("ContentLength") == size

    async def _put_multipart(self, key: str, local_path: str, progress: Progress | None) -> Uploaded:
        # Written here rather than through s3fs's put_file: each part is retried on its own (a dropped
        # connection costs one part), the file is hashed in the same read as it is sent, progress is
        # reported per part, and a refused completion (the name was taken) aborts the upload.
        from persistkit.io import current_fs

        bucket, name = self._split(key)
        op = "create-only upload"
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        size = 0
        created = await self._acall(
            op, key, lambda: self.fs._call_s3("create_multipart_upload", Bucket=bucket, Key=name), sending=0
        )
        upload_id = created["UploadId"]
        slots = asyncio.Semaphore(self.concurrency)

        async def send(number: int, chunk: bytes) -> dict[str, Any]:
            try:
                out = await self._acall(
                    op,
                    key,
                    lambda: self.fs._call_s3(
                        "upload_part",
                        Bucket=bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    ),
                    sending=len(chunk),
                )
            finally:
                slots.release()
            if progress is not None:
                progress(len(chunk))
            return {"PartNumber": number, "ETag": out["ETag"]}

        def read_and_hash(source: Any) -> bytes:
            chunk: bytes = source.read(self.part_size)
            digest.update(chunk)  # hashlib releases the GIL: this overlaps the parts in flight
            return chunk

        tasks: list[asyncio.Task[dict[str, Any]]] = []
        try:
            with current_fs().open_read(local_path) as source:
                while True:
                    await slots.acquire()
                    failed = next((t for t in tasks if t.done() and t.exception() is not None), None)
                    if failed is not None:
                        slots.release()
                        await failed  # raises its error
                    chunk = await loop.run_in_executor(None, read_and_hash, source)
                    if not chunk:
                        slots.release()
                        break
                    size += len(chunk)
                    tasks.append(asyncio.ensure_future(send(len(tasks) + 1, chunk)))
            parts = list(await asyncio.gather(*tasks))
            # S3's etag of a completed multipart upload: the md5 of its parts' md5s, and their number
            ours = '"{}-{}"'.format(
                hashlib.md5(
                    b"".join(bytes.fromhex(str(p["ETag"]).strip('"')) for p in parts), usedforsecurity=False
                ).hexdigest(),
                len(parts),
            )
            sent = 0

            def complete() -> Any:
                nonlocal sent
                sent += 1
                return self.fs._call_s3(
                    "complete_multipart_upload",
                    Bucket=bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )

            try:
                done = await self._acall(
                    op, key, complete, answer=lambda err: _taken(err) or _no_such_upload(err), sending=0
                )
                ours = str(done.get("ETag") or ours)
            except Exception as err:
                if not (_taken(err) or _no_such_upload(err)):
                    raise
                if sent == 1:  # refused at once: another writer's name; gone at once: aborted under us
                    if _taken(err):
                        raise
                    raise self.error(op, key, err) from err
                # refused or gone on a retry: the attempt before may have completed it (its answer lost)
            # Whatever the answer said: is the object there the one completed here? A server that ignores
            # the condition on completion would have replaced another writer's object (the probe refuses
            # such a server; this catches the one that changes its mind), and a lost answer is ours.
            if not await self._holds(key, ours, size):
                self._not_ours += 1
                if self._not_ours >= _NOT_OURS_LIMIT:  # not a race any more: the server's answers are wrong
                    raise self._unsupported(
                        key,
                        f"{self._not_ours} multipart uploads in a row were completed (the server said so) but the "
                        "object at the name is not the one completed (another etag or size)",
                    )
                raise _NameTaken(key)
            self._not_ours = 0
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(
                Exception
            ):  # best effort: prune (or a lifecycle rule) aborts what is left
                abort = self.fs._call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id
                )
                await asyncio.wait_for(abort, sum(self.timeouts))
            raise
        return Uploaded(digest.hexdigest(), size)

    def swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Replace ``key`` with ``data`` only if it still has ``etag`` (None: only if it does not exist).

        Returns the new etag, or None if another writer got there first (read again and retry).
        """
        self._before_writing(key)
        return self._swap(key, data, etag)

    def _swap(self, key: str, data: bytes, etag: str | None) -> str | None:
        if self.protocol not in ("s3", "s3a"):
            raise self._unsupported(
                key, "compare-and-swap (If-Match) is only implemented for s3:// in this version"
            )
        bucket, name = self._split(key)
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            out = self._sync(
                lambda: self._acall(
                    "compare-and-swap upload",
                    key,
                    lambda: self.fs._call_s3("put_object", Bucket=bucket, Key=name, Body=data, **condition),
                    answer=_taken,
                    sending=len(data),
                )
            )
        except Exception as err:
            if _taken(err):
                return None
            raise
        return str(out["ETag"])

    def delete(self, key: str) -> None:
        """Delete ``key``; an object already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, lambda: self.fs.rm_file(self.path(key)),
                       answer=lambda err: isinstance(err, FileNotFoundError))  # fmt: skip

    # -- reading -------------------------------------------------------------

    def get(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched:
        """The object's bytes and etag (the etag of exactly these bytes, for a later ``swap``).

        At most ``limit`` bytes are read (more is ``too_large``), within a deadline that allows them
        over a slow link (``MIN_RATE``) beyond the connect and read timeouts: a body that never ends,
        or trickles in byte by byte, is cut off and retried like any request that timed out.
        """
        deadline = None if limit is None else sum(self.timeouts) + limit / MIN_RATE
        if self.protocol in ("s3", "s3a"):
            bucket, name = self._split(key)
            return self._sync(
                lambda: self._acall(
                    "read", key, lambda: self._get_capped(key, bucket, name, limit), deadline=deadline
                )
            )

        def read() -> bytes:
            with self.fs.open(self.path(key), "rb") as source:
                return bytes(source.read() if limit is None else source.read(limit + 1))

        data = self._call("read", key, read)
        if limit is not None and len(data) > limit:
            raise too_large(self.url_of(key), limit)
        return Fetched(data, None)

    async def _get_capped(self, key: str, bucket: str, name: str, limit: int | None) -> Fetched:
        out = await self.fs._call_s3("get_object", Bucket=bucket, Key=name)
        body = out["Body"]
        try:
            declared = out.get("ContentLength")
            if limit is not None and isinstance(declared, int) and declared > limit:
                raise too_large(self.url_of(key), limit)
            data = bytearray()
            while chunk := await body.read(CHUNK if limit is None else min(CHUNK, limit + 1 - len(data))):
                data += chunk
                if limit is not None and len(data) > limit:
                    raise too_large(self.url_of(key), limit)
        finally:
            body.close()
        return Fetched(bytes(data), str(out.get("ETag")))

    def get_or_none(self, key: str, *, limit: int | None = DOCUMENT_LIMIT) -> Fetched | None:
        """Like ``get``, but None when there is no such object (a missing bucket still raises)."""
        try:
            return self.get(key, limit=limit)
        except PersistIOError as err:
            if err.errno == _errno.ENOENT and f"The bucket {self.bucket!r} does not exist" not in err.message:
                return None
            raise

    def get_verified(self, key: str, sha256: str, size: int | None = None) -> bytes:
        """The object's bytes, checked against the sha256 recorded when persistkit wrote it."""
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
        """Download ``key`` into ``local_path`` (atomically, through persistkit.io), checking its sha256.

        The object comes down as one streaming GET, hashed and written as it arrives (as s3fs's
        get_file, which parallel ranged GETs did not beat against the benchmark server); a dropped
        connection resumes from the last byte received. On a mismatch the temp file is dropped and
        ``local_path`` is left as it was: nothing unverified is ever cached or parsed. Memory stays at
        two chunks whatever the object's size. ``durable=False`` skips the fsyncs (the replace stays atomic):
        for copies that are checked against their digest before every use, such as a cache.
        """
        from persistkit.io.atomic import atomic_writer

        with atomic_writer(local_path, durable=durable) as writer:
            digest, length = self._sync(lambda: self._get_stream(key, sha256, size, writer.write, progress))
            self._check(key, digest, length, sha256, size)

    async def _get_stream(
        self,
        key: str,
        sha256: str,
        size: int | None,
        write: Callable[[bytes], object],
        progress: Progress | None,
    ) -> tuple[str, int]:
        """One streaming GET, hashed and written as it arrives; a broken stream resumes where it broke.

        Written here rather than through s3fs's get_file: a dropped connection resumes with a ranged
        GET from the last byte received (If-Match on the first response's etag, so two versions of an
        object are never spliced), and each chunk is hashed and written while the next one is read.
        Attempts are bounded per stall: a resume that received nothing counts against ``retries``.
        """
        bucket, name = self._split(key)
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        offset = 0
        etag: str | None = None
        failures = 0
        delay = self.backoff
        pending: asyncio.Future[None] | None = None  # the last chunk's hash and write, still running

        def consume(chunk: bytes) -> None:
            digest.update(chunk)  # hashlib releases the GIL: this overlaps the next read
            write(chunk)

        while True:
            self._count()
            received = 0
            try:
                extra: dict[str, str] = {}
                if offset:
                    extra["Range"] = f"bytes={offset}-"
                if etag is not None:
                    extra["IfMatch"] = etag
                out = await self.fs._call_s3("get_object", Bucket=bucket, Key=name, **extra)
                body = out["Body"]
                try:
                    whole = str(out.get("ContentRange") or "").rpartition("/")[2]
                    total = int(whole) if whole.isdigit() else int(out.get("ContentLength", 0)) + offset
                    if size is not None and total != size:  # longer or shorter than recorded: refused now
                        self._check(key, "(not computed)", total, sha256, size)
                    etag = etag or str(out.get("ETag"))
                    while True:
                        chunk = await body.read(CHUNK)
                        if pending is not None:
                            await pending
                            pending = None
                        if not chunk:
                            break
                        received += len(chunk)
                        offset += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                        pending = loop.run_in_executor(None, consume, chunk)
                finally:
                    body.close()
                return digest.hexdigest(), offset
            except Exception as err:
                if pending is not None:  # chunks are hashed and written in order, whatever broke
                    await pending
                    pending = None
                if isinstance(err, PersistkitError):
                    raise
                if _condition(err) is not None:
                    url = self.url_of(key)
                    raise IntegrityError(
                        f"{url}: the object was replaced while it was being downloaded; nothing was kept. "
                        "Load again to get the new version.",
                        path=url,
                    ) from err
                failures = 0 if received else failures + 1
                self._give_up_unless_transient("download", key, err, failures + 1, None)
                await asyncio.sleep(delay if not received else 0)
                delay = self.backoff if received else delay * 2

    def download(self, key: str, local_path: str) -> None:
        """Stream ``key`` into ``local_path`` atomically, for an object persistkit has no record of.

        The caller checks the bytes by their format (``persistkit inspect URL`` of a foreign object).
        """
        from persistkit.io.atomic import atomic_writer

        def fetch() -> None:
            with (
                self.fs.open(self.path(key), "rb", block_size=CHUNK) as source,
                atomic_writer(local_path) as out,
            ):
                while chunk := source.read(CHUNK):
                    out.write(chunk)

        self._call("download", key, fetch)

    def check_digest(self, key: str, data: bytes, sha256: str, size: int | None) -> None:
        self._check(key, hashlib.sha256(data).hexdigest(), len(data), sha256, size)

    def _check(self, key: str, actual: str, length: int, sha256: str, size: int | None) -> None:
        if actual != sha256 or (size is not None and length != size):
            url = self.url_of(key)
            raise IntegrityError(
                f"{url}: the downloaded object does not match what persistkit uploaded (sha256 {actual[:16]}..., "
                f"{length} bytes; expected {sha256[:16]}..., {size} bytes): it was changed or damaged in the "
                "store. Nothing was parsed or cached. Restore the object from a backup or a bucket version, or "
                "load an older version.",
                path=url,
            )

    def list(self, prefix: str = "") -> list[str]:
        """Names of the objects directly under ``prefix`` (no '/' in them); [] if there is none."""

        def listing() -> list[str]:
            try:
                entries = self.fs.ls(self.path(prefix), detail=True, refresh=True)
            except FileNotFoundError:
                if not self._bucket_exists():
                    raise
                return []
            names = []
            for entry in entries:
                if entry.get("type") == "directory":
                    continue
                names.append(str(entry["name"]).rstrip("/").rsplit("/", 1)[-1])
            return names

        return self._call("list", prefix, listing)

    def list_objects(self, prefix: str = "", *, start_after: str = "") -> builtins.list[Listed]:
        """The objects directly under ``prefix`` whose names sort after ``start_after``, with etags.

        One LIST request per 1,000 objects. The etags are those a ``swap`` compares against, so a
        caller can list a group and swap its pointer without reading the pointer first.
        """
        if self.protocol not in ("s3", "s3a"):
            raise self._unsupported(
                prefix, "listing with etags is only implemented for s3:// in this version"
            )
        bucket, name = self._split(prefix)
        base = f"{name}/" if name else ""
        found: builtins.list[Listed] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": base, "Delimiter": "/"}
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = base + start_after
            page: dict[str, Any] = self._call("list", prefix, functools.partial(self._list_page, kw))
            for entry in page.get("Contents", []):
                found.append(Listed(str(entry["Key"])[len(base) :], str(entry.get("ETag")), int(entry.get("Size", 0)),
                                    entry["LastModified"]))  # fmt: skip
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                return found

    def list_uploads(self, prefix: str = "") -> builtins.list[PendingUpload]:
        """Multipart uploads under ``prefix`` never completed or aborted (invisible, but billed).

        ``started`` is the later of the upload's start and its newest part's: a slow upload that is
        still sending parts looks as young as its last part (one ListParts request per pending upload).
        """
        bucket, name = self._split(prefix)
        base = f"{name}/" if name else ""
        root = self._split("")[1]
        found: builtins.list[PendingUpload] = []
        marker: dict[str, str] = {}
        while True:
            kw = {"Bucket": bucket, "Prefix": base, **marker}
            page = self._call(
                "list uploads", prefix, functools.partial(self._s3, "list_multipart_uploads", kw)
            )
            for upload in page.get("Uploads", []):
                key = str(upload["Key"])[len(root) + 1 :] if root else str(upload["Key"])
                upload_id = str(upload["UploadId"])
                parts_kw = {"Bucket": bucket, "Key": upload["Key"], "UploadId": upload_id}
                try:
                    parts = self._call(
                        "list uploads", key, functools.partial(self._s3, "list_parts", parts_kw)
                    )
                except PersistIOError as err:
                    if err.errno == _errno.ENOENT:
                        continue  # completed or aborted meanwhile
                    raise
                started = max([upload["Initiated"], *(p["LastModified"] for p in parts.get("Parts", []))])
                found.append(
                    PendingUpload(key, upload_id, started, f"{self.url_of(key)}?uploadId={upload_id}")
                )
            if not page.get("IsTruncated"):
                return found
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one pending multipart upload (its parts are dropped); one already gone is fine."""
        bucket, name = self._split(key)
        kw = {"Bucket": bucket, "Key": name, "UploadId": upload_id}
        with contextlib.suppress(FileNotFoundError):
            self._call("abort upload", key, functools.partial(self._s3, "abort_multipart_upload", kw),
                       answer=lambda err: isinstance(err, FileNotFoundError))  # fmt: skip

    def _s3(self, method: str, kw: dict[str, Any]) -> dict[str, Any]:
        return self._sync(lambda: self.fs._call_s3(method, **kw))

    def _list_page(self, kw: dict[str, Any]) -> dict[str, Any]:
        return self._sync(lambda: self.fs._call_s3("list_objects_v2", **kw))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        def listing() -> builtins.list[str]:
            try:
                entries = self.fs.ls(self.path(prefix), detail=True, refresh=True)
            except FileNotFoundError:
                if not self._bucket_exists():
                    raise
                return []
            return [
                str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"
            ]

        return self._call("list", prefix, listing)

    def _bucket_exists(self) -> bool:
        try:
            self.fs.ls(self.bucket, refresh=True)
        except FileNotFoundError:
            return False
        return True

    # -- the start-up check --------------------------------------------------

    def _unsupported(self, key: str, why: str) -> PersistIOError:
        url = self.url_of(key)
        return PersistIOError(
            f"{url}: {why}, so persistkit cannot keep its guarantees there (unique version names across "
            "writers, a latest pointer that never loses a version). Use a server that honours conditional "
            "writes (AWS S3, recent MinIO, or moto), or keep the store on a local or network file system.",
            errno=_errno.EOPNOTSUPP,
            path=url,
            operation="probe conditional writes",
        )

    def _before_writing(self, key: str) -> None:
        """Probe the server's conditional writes before this bucket's first one in this process."""
        if not self.probe:
            return
        with _probed_lock:
            if self._probe_ident in _probed:
                return
        with _probing:  # one probe at a time; a second writer of the same bucket waits for its verdict
            with _probed_lock:
                if self._probe_ident in _probed:
                    return
            self.check_conditional_writes()
            with _probed_lock:
                _probed.add(self._probe_ident)

    def check_conditional_writes(self) -> None:
        """Refuse a server that does not honour every conditional write persistkit relies on.

        On a fresh probe key: a create-only PUT, then a second one that must be refused; a create-only
        multipart completion onto the existing key that must be refused (some servers honour
        If-None-Match on PutObject but not on CompleteMultipartUpload); a compare-and-swap on the etag
        a GET returned that must succeed (a proxy that rewrites etags fails here), and one on that etag,
        now stale, that must be refused. Ten requests, once per bucket and process, and only
        before the first write (readers never probe). Goes straight to the server (``_put_new``,
        ``_swap``): a recording wrapper never sees it.
        """
        key = f"{PROBE_PREFIX}/{os.getpid()}-{secrets.token_hex(8)}"
        if self.protocol not in ("s3", "s3a"):
            raise self._unsupported(
                "",
                f"compare-and-swap (If-Match) is only implemented for s3:// in this version, not {self.protocol}://",
            )
        try:
            if not self._put_new(key, b"1"):
                raise self._unsupported(key, "a create-only PUT of a fresh random name was refused")
            if self._put_new(key, b"2"):
                raise self._unsupported(
                    key, "the server accepted a second create-only PUT (If-None-Match: *) of the same name"
                )
            if self._sync(lambda: self._complete_onto(key)):
                raise self._unsupported(
                    key,
                    "the server completed a multipart upload with If-None-Match: * onto an existing object "
                    "(it honours the condition on PutObject but not on CompleteMultipartUpload, so two large "
                    "uploads of the same name would overwrite each other)",
                )
            read = self.get(key)
            if read.data != b"1":
                raise self._unsupported(key, "a refused create-only write overwrote an existing object")
            if self._swap(key, b"3", read.etag) is None:
                raise self._unsupported(
                    key,
                    f"the server refused a compare-and-swap (If-Match) on the etag its own GET returned "
                    f"({read.etag}): something between here and the server changes etags",
                )
            if self._swap(key, b"4", read.etag) is not None:
                raise self._unsupported(key, "the server accepted a PUT with a stale If-Match etag")
            if self.get(key).data != b"3":
                raise self._unsupported(key, "a refused compare-and-swap changed the object")
        finally:
            with contextlib.suppress(PersistIOError):
                self.delete(key)

    async def _complete_onto(self, key: str) -> bool:
        """A one-part multipart upload completed create-only onto ``key``; True if the server allowed it."""
        bucket, name = self._split(key)
        op = "probe conditional writes"
        created = await self._acall(
            op, key, lambda: self.fs._call_s3("create_multipart_upload", Bucket=bucket, Key=name), sending=0
        )
        upload_id = created["UploadId"]
        try:
            part = await self._acall(
                op,
                key,
                lambda: self.fs._call_s3(
                    "upload_part", Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=1, Body=b"2"
                ),
                sending=1,
            )
            try:
                await self._acall(
                    op,
                    key,
                    lambda: self.fs._call_s3(
                        "complete_multipart_upload",
                        Bucket=bucket,
                        Key=name,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
                        IfNoneMatch="*",
                    ),
                    answer=_taken,
                    sending=0,
                )
            except Exception as err:
                if _taken(err):
                    return False
                raise
            return True
        finally:
            with contextlib.suppress(Exception):
                abort = self.fs._call_s3(
                    "abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload_id
                )
                await asyncio.wait_for(abort, sum(self.timeouts))


_NOT_OURS_LIMIT = 3


class _NameTaken(FileExistsError):
    """The object at the key is not the one a create-only upload made: another writer has the name."""


def _reads(op: str) -> bool:
    """Whether ``op`` (as named in errors) is one a reader makes: what GetObject and ListBucket allow.

    Listing pending multipart uploads is a writer's (prune's) and needs its own permission.
    """
    return op.startswith(("read", "list", "stat", "download")) and op != "list uploads"


def _no_such_upload(err: BaseException) -> bool:
    return _server_code(err) == "NoSuchUpload" or (
        isinstance(err, FileNotFoundError) and "upload" in str(err).lower()
    )


def _taken(err: BaseException) -> bool:
    """The server refused a conditional write because its condition did not hold (someone else won)."""
    return (
        isinstance(err, FileExistsError)
        or _condition(err) is not None
        or _server_code(err)
        in (
            "ConditionalRequestConflict",  # S3: a concurrent conditional write to the same key is in flight
        )
    )


_probed: set[tuple[str, str]] = set()  # (protocol://bucket, options) whose conditional writes held
_probed_lock = threading.Lock()
_probing = threading.Lock()


def remote_store(url: str, *, storage_options: Mapping[str, Any] | None = None) -> ObjectStore:
    """The ObjectStore for ``url``: a RemoteStore, passed through the ``use_object_store`` hooks.

    Nothing is sent to the server here. The server's conditional writes are probed before the first
    write through the real store (once per bucket and process, never through a wrapper, so a recording
    does not see the probe); readers never probe, and an in-memory replacement never touches the network.
    """
    real = RemoteStore(url, storage_options=storage_options)
    return wrap_store(real)
