"""RemoteStore against a real S3 server (moto's standalone server on 127.0.0.1, over HTTP)."""

from __future__ import annotations

import errno
import hashlib
import threading

import pytest

from persistkit.errors import IntegrityError, PersistIOError
from persistkit.io.remote import RemoteStore, is_url


@pytest.fixture
def remote(s3_bucket):
    server, bucket = s3_bucket
    return RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options)


def test_urls_are_told_from_local_paths():
    assert is_url("s3://b/models") and is_url("gs://b/x")
    assert not is_url("models") and not is_url("/tmp/s3://x")
    assert not is_url("file:///tmp/models") and not is_url(42)


def test_the_write_probe_runs_before_the_first_write_only_and_leaves_nothing(s3_bucket):
    server, bucket = s3_bucket
    store = RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options)
    assert store.requests == 0  # nothing is sent at start-up
    assert store.get_or_none("x") is None and store.list("") == []  # a reader never probes
    reads = store.requests
    assert store.put_new("x", b"1")
    # put, put again (refused), a multipart upload completed create-only onto it (create, part, complete
    # refused; its abort is not counted), get, swap on that etag, swap on it again (refused), get, delete
    assert store.requests - reads - 1 == 10
    before = store.requests
    assert store.put_new("y", b"2") and store.requests == before + 1  # once per bucket and process
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["root/x", "root/y"]
    assert not server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_a_server_that_ignores_if_none_match_is_refused(s3_bucket, monkeypatch):
    """A server (or proxy) that drops the condition would silently overwrite: persistkit says so and stops."""
    import s3fs

    real = s3fs.S3FileSystem._call_s3

    async def ignoring(self, method, *args, **kw):
        kw.pop("IfNoneMatch", None)  # what such a server does: overwrite
        return await real(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", ignoring)
    server, bucket = s3_bucket
    store = RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options)
    with pytest.raises(PersistIOError, match="cannot keep its guarantees") as info:
        store.put_new("x", b"1")
    assert info.value.errno == errno.EOPNOTSUPP and "If-None-Match" in str(info.value)
    assert store.get_or_none("x") is None  # refused before the write


def test_a_backend_without_compare_and_swap_is_refused():
    pytest.importorskip("fsspec")
    with pytest.raises(PersistIOError, match="compare-and-swap"):
        RemoteStore("memory://bucket/root").put_new("x", b"1")


def test_create_only_put_gives_a_name_to_one_writer(remote):
    assert remote.put_new("a/x", b"first") is True
    assert remote.put_new("a/x", b"second") is False
    assert remote.get("a/x").data == b"first"


def test_create_only_put_is_unique_under_concurrency(remote):
    winners = []

    def race(n):
        if remote.put_new("race", str(n).encode()):
            winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert remote.get("race").data == str(winners[0]).encode()


def test_compare_and_swap(remote):
    assert remote.swap("p", b"1", None) is not None
    assert remote.swap("p", b"2", None) is None  # exists already
    current = remote.get("p")
    assert remote.swap("p", b"3", current.etag) is not None
    assert remote.swap("p", b"4", current.etag) is None  # stale etag: someone else moved it
    assert remote.get("p").data == b"3"


def test_listing(remote):
    remote.put_new("g/a", b"")
    remote.put_new("g/b", b"")
    remote.put_new("g/sub/c", b"")
    assert sorted(remote.list("g")) == ["a", "b"]
    assert remote.list_dirs("g") == ["sub"]
    assert remote.list("nothing-here") == []


def test_a_corrupted_object_is_detected_before_use(remote, s3_bucket, tmp_path):
    server, bucket = s3_bucket
    data = b"model bytes" * 100
    remote.put_new("obj", data)
    digest = hashlib.sha256(data).hexdigest()
    assert remote.get_verified("obj", digest, len(data)) == data
    flipped = bytearray(data)
    flipped[10] ^= 1
    server.client().put_object(Bucket=bucket, Key="root/obj", Body=bytes(flipped))
    target = tmp_path / "copy"
    with pytest.raises(IntegrityError, match=r"s3://.*/root/obj.*does not match") as info:
        remote.download_verified("obj", str(target), digest, len(data))
    assert info.value.path.endswith("/root/obj")
    assert not target.exists()  # nothing parsed, nothing cached
    server.client().put_object(Bucket=bucket, Key="root/obj", Body=data + b"appended")  # longer, same prefix
    with pytest.raises(IntegrityError, match=rf"{len(data) + 8} bytes; expected .* {len(data)} bytes"):
        remote.download_verified("obj", str(target), digest, len(data))  # refused at the first response
    with pytest.raises(IntegrityError, match="does not match"):
        remote.download_verified("obj", str(target), digest)  # no size given: the sha256 still decides
    server.client().put_object(Bucket=bucket, Key="root/obj", Body=data)  # repaired
    remote.download_verified("obj", str(target), digest)
    assert target.read_bytes() == data


def test_a_missing_object_is_a_typed_error_naming_the_url(remote):
    with pytest.raises(PersistIOError, match=r"s3://.*/root/nope.*No such object") as info:
        remote.get("nope")
    assert info.value.errno == errno.ENOENT and info.value.path.endswith("/root/nope")
    assert remote.get_or_none("nope") is None


def test_a_missing_bucket_is_a_typed_error_saying_so(s3_server):
    store = RemoteStore("s3://pk-no-such-bucket/root", storage_options=s3_server.storage_options)
    with pytest.raises(PersistIOError, match=r"bucket 'pk-no-such-bucket' does not exist") as info:
        store.get_or_none("x")
    assert info.value.errno == errno.ENOENT


def test_access_denied_and_throttling_map_to_advice(remote):
    """The mapping itself (moto does not enforce IAM by default): an s3fs PermissionError and a 503."""
    denied = remote.error("read", "obj", PermissionError("The provided token has expired"))
    assert denied.errno == errno.EACCES and "expired" in str(denied) and "s3://" in str(denied)
    slow = remote.error("read", "obj", OSError(errno.EBUSY, "SlowDown"), attempts=4)
    assert "throttling" in str(slow) and "4 attempts" in str(slow)


def test_an_unreachable_server_is_retried_then_a_typed_error_and_then_recovers(own_s3_server):
    server = own_s3_server
    bucket = server.new_bucket()
    store = RemoteStore(
        f"s3://{bucket}/root", storage_options=server.storage_options, retries=3, backoff=0.05
    )
    store.put_new("before", b"1")
    server.stop()
    with pytest.raises(PersistIOError, match=r"could not be reached.*3 attempts") as info:
        store.get("before")
    assert info.value.errno == errno.ECONNREFUSED and "s3://" in info.value.path
    with pytest.raises(PersistIOError):
        store.put_new("during", b"2")
    server.start()  # same port, same objects
    assert store.get("before").data == b"1"
    assert store.get_or_none("during") is None  # the failed write left nothing
    assert store.put_new("during", b"2") is True


def test_a_multipart_upload_is_create_only_too(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    store = RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options, part_size=5 * 2**20)
    big = tmp_path / "big"
    big.write_bytes(b"a" * (12 * 2**20))
    other = tmp_path / "other"
    other.write_bytes(b"b" * (12 * 2**20))
    assert store.put_file_new("big", str(big)) is True
    assert store.get("big", limit=None).etag.endswith('-3"')  # three parts: it really was a multipart upload
    assert store.put_file_new("big", str(other)) is False  # the completion carried If-None-Match: *
    data = store.get("big", limit=None).data
    assert len(data) == 12 * 2**20 and data[:1] == b"a" and data[-1:] == b"a"


KILLED_UPLOAD = """
import sys
from persistkit.io.remote import RemoteStore
endpoint, bucket, path = sys.argv[1:4]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
store = RemoteStore(f"s3://{bucket}/root", storage_options=opts, part_size=5 * 2**20)
print("UPLOADING", flush=True)
store.put_file_new("big", path)
print("DONE", flush=True)
"""


def test_sigkill_during_a_multipart_upload_leaves_no_visible_object(s3_bucket, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    server, bucket = s3_bucket
    big = tmp_path / "big"
    big.write_bytes(os.urandom(60 * 2**20))  # 12 parts
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_UPLOAD, server.endpoint, bucket, str(big)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert child.stdout.readline() == "UPLOADING\n", child.stderr.read()
    client = server.client()
    deadline = time.monotonic() + 60
    while not [
        u for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == "root/big"
    ]:
        # parts are on their way (the write probe, before them, is done)
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    time.sleep(0.5)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing visible
    assert client.list_multipart_uploads(Bucket=bucket)[
        "Uploads"
    ]  # invisible parts: a lifecycle rule aborts them
    store = RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options, part_size=5 * 2**20)
    assert store.put_file_new("big", str(big)) is True  # the name was never taken


def test_unknown_or_expired_credentials_are_a_typed_error_with_advice(iam_enforcing_endpoint):
    options = {
        "key": "AKIAEXPIREDORUNKNOWN",
        "secret": "wrong",
        "client_kwargs": {"endpoint_url": iam_enforcing_endpoint, "region_name": "us-east-1"},
    }
    store = RemoteStore("s3://some-bucket/root", storage_options=options)
    with pytest.raises(
        PersistIOError, match=r"Access denied.*credentials are missing, wrong or expired"
    ) as info:
        store.get("x")
    assert info.value.errno == errno.EACCES and info.value.path == "s3://some-bucket/root/x"
    assert "s3:GetObject and s3:ListBucket (all a reader needs)" in str(info.value)
    with pytest.raises(PersistIOError, match=r"Access denied") as info:
        store.put_new("x", b"1")  # the write probe's first PUT: a writer's advice
    assert "s3:PutObject and s3:DeleteObject (what a writer needs" in str(info.value)


class ThrottlingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that answers 503 SlowDown to the next
    ``throttle`` requests, then forwards (so the client sees what S3 sends while it repartitions)."""

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        proxy = self
        self.throttle = 0
        self.throttled = 0
        target = urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.throttle > 0:
                    proxy.throttle -= 1
                    proxy.throttled += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(proxy.SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(proxy.SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttled(s3_bucket):
    server, bucket = s3_bucket
    proxy = ThrottlingProxy(server.endpoint)
    options = {
        **server.storage_options,
        "client_kwargs": {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"},
    }
    store = RemoteStore(f"s3://{bucket}/root", storage_options=options, retries=4, backoff=0.01)
    yield proxy, store
    proxy.close()


def test_throttling_is_retried_with_backoff(throttled):
    proxy, store = throttled
    proxy.throttle = 3
    assert store.put_new("obj", b"data") is True  # the 4th attempt gets through
    assert proxy.throttled == 3 and store.get("obj").data == b"data"


def test_persistent_throttling_is_a_typed_error_saying_so(throttled):
    proxy, store = throttled
    proxy.throttle = 100
    with pytest.raises(PersistIOError, match=r"throttling \(SlowDown/503\) after 4 attempts") as info:
        store.get("obj")
    assert info.value.errno == errno.EBUSY and proxy.throttled == 4


def test_a_server_that_accepts_but_never_answers_is_a_bounded_wait_then_a_typed_error(tmp_path):
    """Every request has a timeout, so bounded retries are a bounded wait, even against a silent server."""
    import socket
    import time

    pytest.importorskip("s3fs")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never reads or answers
    try:
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {
                "endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                "region_name": "us-east-1",
            },
            "config_kwargs": {"connect_timeout": 0.5, "read_timeout": 0.5},
        }
        store = RemoteStore("s3://bucket/root", storage_options=options, probe=False, retries=2, backoff=0.05)
        started = time.monotonic()
        with pytest.raises(PersistIOError, match=r"could not be reached.*2 attempts") as info:
            store.get("obj")
        assert time.monotonic() - started < 10  # two attempts of 0.5 s each, and the backoff
        assert info.value.path == "s3://bucket/root/obj" and store.requests == 2
        big = tmp_path / "big"
        big.write_bytes(b"x" * 64)
        with pytest.raises(
            PersistIOError, match="create-only upload failed on 's3://bucket/root/big'"
        ) as info:
            store.upload_new("big", str(big))  # botocore waits for "100 Continue": the deadline ends it
        assert info.value.errno == errno.ETIMEDOUT and "deadline" in str(info.value)
        with pytest.raises(PersistIOError, match="create-only upload failed"):
            store.put_new("small", b"1")
        with pytest.raises(PersistIOError, match="compare-and-swap upload failed"):
            store.swap("pointer", b"1", None)
        target = tmp_path / "down"
        with pytest.raises(PersistIOError, match="download failed"):
            store.download_verified("obj", str(target), "0" * 64, 10)
        assert not target.exists() and not list(tmp_path.glob(".*pk-tmp*"))
    finally:
        silent.close()


def test_a_local_file_that_cannot_be_read_is_a_typed_error_naming_it(remote, tmp_path):
    missing = tmp_path / "gone.models"
    with pytest.raises(PersistIOError, match=r"gone\.models") as info:
        remote.upload_new("x", str(missing))
    assert info.value.errno == errno.ENOENT
    unreadable = tmp_path / "dir.models"
    unreadable.mkdir()  # a directory where a file should be: open succeeds on Linux, read fails
    with pytest.raises(PersistIOError, match=r"dir\.models"):
        remote.upload_new("y", str(unreadable))
    assert remote.get_or_none("x") is None and remote.get_or_none("y") is None  # nothing was made


def test_the_write_probe_refuses_a_front_that_rewrites_etags_and_a_reader_never_meets_it(s3_bucket):
    """A proxy that changes ETag headers breaks every compare-and-swap on what a GET returned: the write
    probe finds out before the first write; reading through it works."""
    from fronts import Front

    server, bucket = s3_bucket
    server.client().put_object(Bucket=bucket, Key="root/there", Body=b"readable")
    front = Front(server.endpoint)
    try:
        front.add(lambda r: r.method in ("GET", "HEAD"), "etag", lambda e: '"proxied-' + e.strip('"') + '"')
        store = RemoteStore(f"s3://{bucket}/root", storage_options=front.options(server.storage_options))
        assert store.get("there").data == b"readable"
        with pytest.raises(PersistIOError, match="etag its own GET returned") as info:
            store.put_new("x", b"1")
        assert info.value.errno == errno.EOPNOTSUPP and store.get_or_none("x") is None
    finally:
        front.close()
