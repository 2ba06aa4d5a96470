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
