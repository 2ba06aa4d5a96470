"""Remote ModelStore benchmarks against a local S3 server (moto, its own process), and s3fs as the anchor.

Upload and download of a 100 MiB bundle through ``ModelStore("s3://...")`` against what a user
would otherwise write: ``save_bundle`` to a local file and s3fs ``put_file`` (and ``get_file`` then
``load_bundle``), same bytes, same server, same run. Two more pairs isolate the transfer itself
(``RemoteStore.upload_new``/``download_verified`` against ``put_file``/``get_file`` of the same
file). The requests a 1 MiB publish makes are counted on the real botocore client (its
``before-send`` event: one per HTTP request sent, retries included) and reported.

The server runs in its own process (``python -m moto.server``) so that it does not share the
client's interpreter. Every round starts from an empty bucket (moto keeps objects in memory).
In the CI smoke run (``--benchmark-disable``) the bundle is 1 MiB.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from pkbench import tag

import persistkit as pk

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
ROUNDS = 5


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (in persistkit[dev])")
    pytest.importorskip("s3fs", reason="pip install s3fs (persistkit[remote])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "moto server did not start"
            time.sleep(0.05)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    yield endpoint, options
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def bucket(server):
    import boto3

    endpoint, options = server
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    name = f"bench-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)

    def empty():
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])

    yield name, options, empty
    empty()
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def weights(request):
    full = bool(request.config.getoption("benchmark_enable")) or not request.config.getoption(
        "benchmark_disable"
    )
    nbytes = 100 << 20 if full else 1 << 20
    return {"w": np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)}


def label(weights) -> str:
    return f"{weights['w'].nbytes >> 20} MiB"


def s3fs_for(options):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def store_for(name, options, tmp_path, cache="cache"):
    return pk.ModelStore(
        f"s3://{name}/models",
        cache_dir=tmp_path / cache,
        key_file=tmp_path / "store.key",
        storage_options=options,
        progress=False,
    )


# -- the whole call a user makes -------------------------------------------------------------


def test_modelstore_save(benchmark, bucket, weights, tmp_path):
    name, options, empty = bucket
    store = store_for(name, options, tmp_path)
    benchmark.pedantic(
        lambda: store.save(weights, **WHERE), setup=empty, rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    tag(
        benchmark,
        comparison=f"publish a {label(weights)} bundle to S3 (moto): ModelStore.save vs save_bundle + s3fs put_file",
        role="persistkit",
        target="time<=1.2*s3fs",
    )


def test_s3fs_put_file_after_save_bundle(benchmark, bucket, weights, tmp_path):
    name, options, empty = bucket
    fs = s3fs_for(options)
    store_for(name, options, tmp_path)  # the same key file, so the bundle is encrypted the same way
    path = tmp_path / "b.models"

    def publish():
        pk.save_bundle(path, weights, key_file=tmp_path / "store.key")
        fs.put_file(str(path), f"{name}/models/b.models")

    benchmark.pedantic(publish, setup=empty, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison=f"publish a {label(weights)} bundle to S3 (moto): ModelStore.save vs save_bundle + s3fs put_file",
        role="s3fs",
        bytes=os.path.getsize(path),
    )


def test_modelstore_load_latest_cold(benchmark, bucket, weights, tmp_path):
    name, options, _ = bucket
    store_for(name, options, tmp_path).save(weights, **WHERE)
    reader = store_for(name, options, tmp_path, cache="reader")  # warm client, like the anchor's s3fs
    reader.latest(**WHERE)

    def empty_cache():  # a cold cache: the bundle must come down again
        shutil.rmtree(tmp_path / "reader", ignore_errors=True)

    benchmark.pedantic(
        lambda: reader.load_latest(**WHERE), setup=empty_cache, rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    tag(
        benchmark,
        comparison=f"load a {label(weights)} bundle from S3 (moto): ModelStore.load_latest, cold cache, vs s3fs get_file + load_bundle",
        role="persistkit",
        target="time<=1.2*s3fs",
    )


def test_s3fs_get_file_then_load_bundle(benchmark, bucket, weights, tmp_path):
    name, options, _ = bucket
    fs = s3fs_for(options)
    store_for(name, options, tmp_path)
    path = tmp_path / "b.models"
    pk.save_bundle(path, weights, key_file=tmp_path / "store.key")
    fs.put_file(str(path), f"{name}/models/b.models")
    target = tmp_path / "down.models"

    def load():
        fs.get_file(f"{name}/models/b.models", str(target))
        return pk.load_bundle(target, key_file=tmp_path / "store.key")

    benchmark.pedantic(load, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison=f"load a {label(weights)} bundle from S3 (moto): ModelStore.load_latest, cold cache, vs s3fs get_file + load_bundle",
        role="s3fs",
    )


# -- the transfer alone: the same file up and down ---------------------------------------------


@pytest.fixture
def bundle_file(weights, tmp_path):
    path = tmp_path / "b.models"
    pk.save_bundle(path, weights, encrypt=False)
    return path


def test_remotestore_upload_new(benchmark, bucket, bundle_file):
    from persistkit.io.remote import RemoteStore

    name, options, empty = bucket
    remote = RemoteStore(f"s3://{name}/models", storage_options=options)
    benchmark.pedantic(
        lambda: remote.upload_new("b.models", str(bundle_file)),
        setup=empty,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=1,
    )
    tag(
        benchmark,
        comparison=f"upload {os.path.getsize(bundle_file) >> 20} MiB: create-only, hashed (RemoteStore.upload_new) vs s3fs put_file",
        role="persistkit",
        target="time<=1.2*s3fs",
        bytes=os.path.getsize(bundle_file),
    )


def test_s3fs_put_file(benchmark, bucket, bundle_file):
    name, options, empty = bucket
    fs = s3fs_for(options)
    benchmark.pedantic(
        lambda: fs.put_file(str(bundle_file), f"{name}/models/b.models"),
        setup=empty,
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=1,
    )
    tag(
        benchmark,
        comparison=f"upload {os.path.getsize(bundle_file) >> 20} MiB: create-only, hashed (RemoteStore.upload_new) vs s3fs put_file",
        role="s3fs",
        bytes=os.path.getsize(bundle_file),
    )


def test_remotestore_download_verified(benchmark, bucket, bundle_file, tmp_path):
    from persistkit.io.remote import RemoteStore

    name, options, _ = bucket
    remote = RemoteStore(f"s3://{name}/models", storage_options=options)
    uploaded = remote.upload_new("b.models", str(bundle_file))
    assert uploaded is not None
    target = str(tmp_path / "down.models")
    benchmark.pedantic(
        lambda: remote.download_verified("b.models", target, uploaded.sha256, uploaded.size),
        rounds=ROUNDS,
        iterations=1,
        warmup_rounds=1,
    )
    tag(
        benchmark,
        comparison=f"download {uploaded.size >> 20} MiB: sha256-checked, atomic (RemoteStore.download_verified) vs s3fs get_file",
        role="persistkit",
        target="time<=1.2*s3fs",
        bytes=uploaded.size,
    )


def test_s3fs_get_file(benchmark, bucket, bundle_file, tmp_path):
    name, options, _ = bucket
    fs = s3fs_for(options)
    fs.put_file(str(bundle_file), f"{name}/models/b.models")
    target = str(tmp_path / "down.models")
    benchmark.pedantic(
        lambda: fs.get_file(f"{name}/models/b.models", target), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    tag(
        benchmark,
        comparison=f"download {os.path.getsize(bundle_file) >> 20} MiB: sha256-checked, atomic (RemoteStore.download_verified) vs s3fs get_file",
        role="s3fs",
        bytes=os.path.getsize(bundle_file),
    )


# -- requests per publish --------------------------------------------------------------------


def test_requests_per_publish_of_a_1mib_model(benchmark, bucket, tmp_path):
    """HTTP requests one ModelStore.save of a 1 MiB model sends, counted on botocore's client."""
    name, options, _ = bucket
    store = store_for(name, options, tmp_path)
    model = {"w": np.random.default_rng(0).standard_normal((1 << 20) // 4).astype(np.float32)}
    store.save(model, **WHERE)  # the store's first save also writes store.json: not a steady-state publish
    sent = []
    client = store.remote.fs.s3  # the aiobotocore client s3fs sends every request with
    client.meta.events.register(
        "before-send.s3", lambda request, **kw: sent.append((request.method, request.url))
    )
    counts = []

    def publish():
        before = len(sent)
        store.save(model, **WHERE)
        counts.append(len(sent) - before)

    benchmark.pedantic(publish, rounds=ROUNDS, iterations=1)
    uploads = [m for m, url in sent if m == "PUT" and url.split("?")[0].endswith(".models")]
    assert len(uploads) == len(counts)  # one data upload per publish (1 MiB: a single PUT)
    assert set(counts) == {4}, sent  # LIST, the data PUT, the record PUT, the pointer swap
    tag(
        benchmark,
        comparison=f"ModelStore.save of a 1 MiB model: {counts[0]} requests, {counts[0] - 1} beyond the data "
        "upload (target: at most 3 beyond), counted on botocore's client",
        role="persistkit",
        target="report",
        requests=counts[0],
        round_trips_beyond_upload=counts[0] - 1,
    )
