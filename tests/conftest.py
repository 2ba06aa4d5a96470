from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def open_fds() -> set[int]:
    """File descriptors this process holds right now (Linux: /proc/self/fd)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_guard():
    """Fails the test if it leaks file descriptors."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # listdir itself may transiently hold one fd that is gone by now; anything left is a leak.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked file descriptors: {sorted(leaked)}"


@contextlib.contextmanager
def _mounted_tmpfs(where: Path, *options: str, size: str = "1m") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


@pytest.fixture
def tmpfs():
    """``with tmpfs(where, "ro", size="256k") as mounted:`` a real small filesystem (needs root; else skips)."""
    return _mounted_tmpfs


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the long soaks marked @pytest.mark.slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow soak: run with `nox -s slow` (pytest -m slow --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# -- a real S3 server (moto's standalone server) on 127.0.0.1 -----------------------------


class S3Server:
    """moto's threaded S3 server on 127.0.0.1 at a free port; stop() and start() keep its objects."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.port = 0
        self._server = None
        self.start()

    def start(self) -> None:
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        assert host == "127.0.0.1"

    def stop(self) -> None:
        self._server.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        import uuid

        name = f"pk-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session (each test takes its own bucket)."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in persistkit[dev])")
    pytest.importorskip("s3fs", reason="pip install s3fs (persistkit[remote])")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)  # only the test credentials, only the local server
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def own_s3_server():
    """A server of this test's own, which it may stop and restart."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in persistkit[dev])")
    pytest.importorskip("s3fs", reason="pip install s3fs (persistkit[remote])")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the session's server: (server, bucket name)."""
    return s3_server, s3_server.new_bucket()


@pytest.fixture
def iam_enforcing_endpoint():
    """moto's server as a subprocess that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): its endpoint URL."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in persistkit[dev])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


class IamServer:
    """A credential-checking moto server with a bucket, a writer and a read-only reader (their own keys)."""

    READER_POLICY = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::*/*"},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::*"},
        ],
    }
    WRITER_POLICY = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }

    def __init__(self, endpoint: str) -> None:
        import json
        import urllib.request

        import boto3

        self.endpoint = endpoint
        self.bucket = "pk-iam-bucket"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "admin",
                 "aws_secret_access_key": "admin"}  # fmt: skip
        boto3.client("s3", **admin).create_bucket(Bucket=self.bucket)
        iam = boto3.client("iam", **admin)
        self.keys = {}
        for user, policy in (("reader", self.READER_POLICY), ("writer", self.WRITER_POLICY)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
            made = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (made["AccessKeyId"], made["SecretAccessKey"])
        # from now on every request is checked against these users' policies
        reset = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(reset, timeout=30) as answer:
            assert answer.status == 200

    def options(self, user: str) -> dict:
        key, secret = self.keys[user]
        return {"key": key, "secret": secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}}  # fmt: skip


# moto's server checks a request's signature against the URL werkzeug hands it, whose query has "/" (and
# other characters) decoded, while the client signed them encoded ("prefix=models%2F"): every listing of
# a prefix fails with SignatureDoesNotMatch. This runs moto's own server with that one canonicalisation
# fixed (the query encoded as SigV4 says), so signatures and policies are checked for every request.
_SIGNED_QUERIES_MOTO = """
import sys
import urllib.parse as up
import moto.iam.access_control as ac
from moto.server import main

made = ac.IAMRequestBase._create_aws_request

def encoded_query(self):
    request = made(self)
    parts = up.urlsplit(request.url)
    if parts.query:
        pairs = up.parse_qsl(parts.query, keep_blank_values=True)
        query = "&".join(up.quote(k, safe="-_.~") + "=" + up.quote(v, safe="-_.~") for k, v in pairs)
        request.url = up.urlunsplit(parts._replace(query=query))
    return request

ac.IAMRequestBase._create_aws_request = encoded_query
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


@pytest.fixture
def iam_server():
    """moto's server as a subprocess that checks credentials and IAM policies: a reader and a writer.

    The server starts open (no checks), a bucket and two users are made, then checks are switched on
    (moto's reset-auth): ``options("reader")`` may only GetObject and ListBucket.
    """
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in persistkit[dev])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", _SIGNED_QUERIES_MOTO, str(port)],
        env={k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
            time.sleep(0.05)
    try:
        yield IamServer(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)
