"""ModelStore("s3://...") against a real S3 server (moto's standalone server on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import persistkit as pk
from persistkit.errors import IntegrityError, NoVersionError, PersistIOError
from persistkit.model_store import Version

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
GROUP = "models/BTC-USDT/ppo/1h"
T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def store_at(s3_bucket, tmp_path):
    server, bucket = s3_bucket

    def make(cache="cache", **kw):
        return pk.ModelStore(
            f"s3://{bucket}/models",
            cache_dir=tmp_path / cache,
            key_file=tmp_path / "store.key",
            storage_options=server.storage_options,
            **kw,
        )

    make.server, make.bucket = server, bucket
    return make


def keys(server, bucket, prefix=""):
    out = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def check_consistent(server, bucket, group=GROUP):
    """Every listed version is complete (its bytes match its record) and the pointer names one of them."""
    client = server.client()
    names = keys(server, bucket, group + "/")
    records = [k for k in names if k.endswith(".models.json")]
    for record_key in records:
        record = json.loads(client.get_object(Bucket=bucket, Key=record_key)["Body"].read())
        data = client.get_object(Bucket=bucket, Key=record_key[: -len(".json")])["Body"].read()
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["size"]
    if records:
        pointer = json.loads(client.get_object(Bucket=bucket, Key=f"{group}/LATEST.json")["Body"].read())
        assert f"{group}/{pointer['name']}.json" in records  # never a dangling pointer
    return [k[len(group) + 1 : -len(".json")] for k in records]


def test_the_url_gives_a_remote_store_with_the_same_api(store_at, tmp_path):
    store = store_at()
    assert store.space.remote and isinstance(store, pk.ModelStore)
    url = store.save({"q": np.arange(4.0)}, **WHERE, when=T0, config={"lr": 0.1})
    assert url == f"s3://{store_at.bucket}/models/BTC-USDT/ppo/1h/2024-03-01_120000.models"
    assert isinstance(url, Version) and url.remote and url.key == "BTC-USDT/ppo/1h/2024-03-01_120000.models"
    assert store.versions(**WHERE) == [url] and store.latest(**WHERE) == url
    bundle = store.load_latest(**WHERE)
    np.testing.assert_array_equal(bundle["q"], np.arange(4.0))
    assert bundle.metadata["config"] == {"lr": 0.1}
    stored = keys(store_at.server, store_at.bucket)
    assert stored == [
        f"{GROUP}/2024-03-01_120000.models",
        f"{GROUP}/2024-03-01_120000.models.json",
        f"{GROUP}/LATEST.json",
        "models/store.json",
    ]
    assert not any(k.endswith(".key") for k in stored)  # the key never leaves this machine
    assert (tmp_path / "store.key").exists()


def test_another_machine_with_the_key_loads_it_and_without_it_cannot(store_at):
    store_at().save({"q": np.ones(3)}, **WHERE)
    other = store_at(cache="other-cache")  # a second machine: empty cache, the copied key file
    np.testing.assert_array_equal(other.load_latest(**WHERE)["q"], np.ones(3))
    keyless = pk.ModelStore(
        store_at().root, cache_dir=other.cache_dir + "3", key_file=other.cache_dir + "/nokey",
        storage_options=store_at.server.storage_options,
    )  # fmt: skip
    with pytest.raises(pk.WrongKeyError):
        keyless.load_latest(**WHERE)


def test_names_are_unique_and_monotonic_and_prune_keeps_the_latest(store_at):
    store = store_at()
    urls = [store.save({"q": np.full(2, float(n))}, **WHERE, when=T0) for n in range(3)]
    assert [u.name for u in urls] == [
        "2024-03-01_120000.models", "2024-03-01_120000_1.models", "2024-03-01_120000_2.models"
    ]  # fmt: skip
    later = store.save({"q": np.zeros(1)}, **WHERE)  # now: sorts after all of them
    assert store.versions(**WHERE) == [*urls, later] and store.latest(**WHERE) == later
    other = store.save({"q": np.zeros(1)}, symbol="ETH", agent="dqn", timeframe="5m")
    assert store.prune(keep=2, dry_run=True) == urls[:2]
    assert store.versions(**WHERE) == [*urls, later]
    assert store.prune(keep=2) == urls[:2]
    assert store.versions(**WHERE) == [urls[2], later]
    assert store.versions("ETH", "dqn", "5m") == [other]
    assert store.prune(keep=0) == [urls[2]]  # never the version the pointer names
    check_consistent(store_at.server, store_at.bucket)


def test_the_cache_is_used_and_verified(store_at, tmp_path):
    store = store_at()
    url = store.save({"q": np.arange(3.0)}, **WHERE)
    cached = tmp_path / "cache" / "BTC-USDT" / "ppo" / "1h" / url.name
    assert cached.exists()  # the upload warmed it
    before = store.remote.requests
    store.load_latest(**WHERE)
    assert store.remote.requests - before == 2  # the pointer and the record; no download
    cached.write_bytes(cached.read_bytes()[:-10])  # a damaged cache entry is replaced, not used
    np.testing.assert_array_equal(store.load_latest(**WHERE)["q"], np.arange(3.0))
    record = json.loads(store.remote.get(f"BTC-USDT/ppo/1h/{cached.name}.json").data)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == record["sha256"]


def test_a_corrupted_remote_object_is_refused_before_parsing(store_at, tmp_path):
    store = store_at(cache="c1")
    url = store.save({"q": np.arange(3.0)}, **WHERE)
    key = str(url).split("/", 3)[3]
    client = store_at.server.client()
    data = bytearray(client.get_object(Bucket=store_at.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x40
    client.put_object(Bucket=store_at.bucket, Key=key, Body=bytes(data))
    fresh = store_at(cache="c2")
    with pytest.raises(IntegrityError, match="does not match what persistkit uploaded") as info:
        fresh.load_latest(**WHERE)
    assert info.value.path == url
    assert not (tmp_path / "c2" / "BTC-USDT" / "ppo" / "1h" / key.rsplit("/", 1)[1]).exists()


@pytest.mark.parametrize(
    "record",
    [b"garbage", b'{"format": "persistkit.remote-version", "size": 3}', b'{"sha256": "' + b"0" * 64 + b'"}',
     b"{" + b" " * (1 << 20) + b"}"],
    ids=["not-json", "no-sha256", "no-format", "oversized"],
)  # fmt: skip
def test_a_damaged_version_record_is_an_integrity_error_naming_it(store_at, record):
    store = store_at(cache="c1")
    url = store.save({"q": np.arange(3.0)}, **WHERE)
    store_at.server.client().put_object(
        Bucket=store_at.bucket, Key=str(url).split("/", 3)[3] + ".json", Body=record
    )
    fresh = store_at(cache="c2")
    with pytest.raises(
        IntegrityError, match=r"the record beside .* is unreadable|larger than 1048576"
    ) as info:
        fresh.load_latest(**WHERE)
    assert info.value.path == str(url) + ".json" and "Restore" in str(info.value)


def test_fallback_skips_a_corrupted_newest_version(store_at):
    store = store_at(cache="c1")
    store.save({"q": np.zeros(2)}, **WHERE, when=T0)
    url = store.save({"q": np.ones(2)}, **WHERE, when=T0)
    store_at.server.client().put_object(
        Bucket=store_at.bucket, Key=str(url).split("/", 3)[3], Body=b"garbage"
    )
    np.testing.assert_array_equal(store_at(cache="c2").load_latest(**WHERE, fallback=True)["q"], np.zeros(2))


def test_errors_are_typed_and_name_the_url(store_at, s3_server, tmp_path):
    missing = pk.ModelStore(
        "s3://pk-missing-bucket/models", cache_dir=tmp_path, storage_options=s3_server.storage_options
    )  # sends nothing: the first read says what is wrong
    with pytest.raises(PersistIOError, match="bucket 'pk-missing-bucket' does not exist") as info:
        missing.latest(**WHERE)
    assert info.value.errno == errno.ENOENT
    store = store_at()
    with pytest.raises(NoVersionError, match=r"s3://.*/models/BTC-USDT/ppo/1h"):
        store.load_latest(**WHERE)
    with pytest.raises(PersistIOError, match="No such object") as info:
        store.load(f"{store.root}/BTC-USDT/ppo/1h/2024-01-01_000000.models")
    assert info.value.errno == errno.ENOENT
    store.save({"q": np.ones(1)}, **WHERE)
    with pytest.raises(ValueError, match="saves encrypted bundles"):
        store.save({"q": np.ones(1)}, **WHERE, encrypt=False)


def test_concurrent_publishing_threads_never_lose_a_version(store_at):
    stores = [store_at(cache=f"c{n}") for n in range(4)]
    published, failures = [], []

    def publisher(n):
        try:
            for i in range(5):
                published.append(stores[n].save({"q": np.full(2, n * 10.0 + i)}, **WHERE, when=T0))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(set(published)) == 20
    assert stores[0].versions(**WHERE) == sorted(published)  # Versions sort as their names do
    names = check_consistent(store_at.server, store_at.bucket)
    assert (
        stores[0].latest(**WHERE)
        == f"{stores[0].root}/BTC-USDT/ppo/1h/{max(names, key=pk.model_store.VERSIONS.sort_key)}"
    )


CHILD = """
import sys, numpy as np, persistkit as pk
url, cache, key, endpoint, n, size = sys.argv[1:7]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
store = pk.ModelStore(url, cache_dir=cache, key_file=key, storage_options=opts)
real = store.remote.upload_new
def announced(key, path, **kw):
    print("UPLOADING", key, flush=True)
    return real(key, path, **kw)
store.remote.upload_new = announced
if sys.argv[8:] == ["hang"]:  # stop between the record and the pointer, to be killed there
    import time
    def hang(*args, **kw):
        print("POINTING", flush=True)
        time.sleep(60)
    store.space.advance_latest = hang
if sys.argv[8:] == ["serial-parts"]:  # a multipart upload that takes a while: 5 MiB parts, one at a time
    store.remote.part_size, store.remote.concurrency = 5 * 2**20, 1
if sys.argv[8:] == ["hang-record"]:  # stop between the upload and the record, to be killed there
    import time
    put_new = store.remote.put_new
    def hang_record(key, data):
        if key.endswith(".models.json"):
            print("RECORDING", flush=True)
            time.sleep(60)
        return put_new(key, data)
    store.remote.put_new = hang_record
rng = np.random.default_rng(int(n))
for i in range(int(sys.argv[7])):
    print("SAVED", store.save({"w": rng.random(int(size))}, symbol="BTC/USDT", agent="ppo", timeframe="1h"), flush=True)
"""


def run_child(store_at, tmp_path, n, *, size=100, count=1, hang=""):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, f"s3://{store_at.bucket}/models", str(tmp_path / f"cache{n}"),
         str(tmp_path / "store.key"), store_at.server.endpoint, str(n), str(size), str(count),
         *([hang] if hang else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip


def test_concurrent_publishing_processes_never_lose_a_version(store_at, tmp_path):
    store_at().save({"w": np.zeros(1)}, **WHERE)  # creates the shared key file first
    children = [run_child(store_at, tmp_path, n, count=4) for n in range(3)]
    published = [str(store_at().versions(**WHERE)[0])]
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        published += [line.split()[1] for line in out.splitlines() if line.startswith("SAVED")]
    assert len(set(published)) == 13
    assert sorted(map(str, store_at().versions(**WHERE))) == sorted(published)
    names = check_consistent(store_at.server, store_at.bucket)
    assert store_at().latest(**WHERE).name == max(names, key=pk.model_store.VERSIONS.sort_key)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_sigkill_of_a_publisher_mid_upload_leaves_nothing_partial_and_no_dangling_pointer(
    store_at, tmp_path, delay
):
    first = store_at().save({"w": np.zeros(1)}, **WHERE)
    child = run_child(store_at, tmp_path, 1, size=4_000_000)  # ~32 MB: the upload takes a while
    line = child.stdout.readline()
    assert line.startswith("UPLOADING"), child.stderr.read()
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    time.sleep(0.5)  # let the server finish whatever request it was handling
    names = check_consistent(store_at.server, store_at.bucket)  # complete objects only, pointer valid
    versions = store_at().versions(**WHERE)
    assert versions[0] == first and len(versions) == len(names) <= 2
    orphans = [k for k in keys(store_at.server, store_at.bucket, GROUP + "/") if k.endswith(".models")
               and f"{GROUP}/{k.rsplit('/', 1)[1]}" not in [f"{GROUP}/{n}" for n in names]]  # fmt: skip
    if delay == 0.0:
        assert orphans == []  # killed mid-transfer: the server never made the object visible
    assert len(orphans) <= 1  # killed after the upload: a whole object, never listed as a version
    # an object that is visible is whole; a version without a record is not listed; the store goes on
    after = store_at().save({"w": np.ones(1)}, **WHERE)
    assert store_at().latest(**WHERE) == after
    np.testing.assert_array_equal(store_at(cache="fresh").load_latest(**WHERE)["w"], np.ones(1))


@pytest.fixture
def own_store(own_s3_server, tmp_path):
    server = own_s3_server
    bucket = server.new_bucket()

    def make(cache="c"):
        store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / cache, key_file=tmp_path / "k",
                              storage_options=server.storage_options)  # fmt: skip
        store.remote.part_size = 5 * 2**20  # many parts, so the server can go away between two of them
        store.remote.retries, store.remote.backoff = 3, 0.05
        return store

    make.server, make.bucket = server, bucket
    return make


BIG = 6_000_000  # float64s: ~48 MB, ten parts of 5 MiB


def test_a_server_stopped_during_an_upload_gives_a_typed_error_then_the_same_save_succeeds(
    own_store, tmp_path
):
    server, bucket = own_store.server, own_store.bucket
    first = own_store().save({"q": np.zeros(1)}, **WHERE)
    network = Network(server.port, rate=None, rate_up=40 * 2**20)
    options = {**server.storage_options,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{network.port}", "region_name": "us-east-1"}}  # fmt: skip
    store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "c", key_file=tmp_path / "k",
                          storage_options=options)  # fmt: skip
    store.remote.part_size, store.remote.retries, store.remote.backoff = 5 * 2**20, 3, 0.05
    network.on_cut, network.cut_up_at = server.stop, [12 * 2**20]  # the server dies 12 MiB into the upload
    weights = np.random.default_rng(0).random(BIG)
    try:
        with pytest.raises(PersistIOError, match=r"could not be reached.*3 attempts") as info:
            store.save({"w": weights}, **WHERE)
        assert network.cuts == [12 * 2**20]  # in the middle of the upload, not before it
        assert info.value.path.startswith(f"s3://{bucket}/models/BTC-USDT/ppo/1h/")
        assert "retry" in str(info.value)
        assert not os.listdir(tmp_path / "c" / ".staging")  # no staging debris
        server.start()
        assert (
            store.versions(**WHERE) == [first] and store.latest(**WHERE) == first
        )  # nothing partial visible
        check_consistent(server, bucket)
        second = store.save({"w": weights}, **WHERE)  # the same save, once the server is back
        assert store.versions(**WHERE) == [first, second] and store.latest(**WHERE) == second
    finally:
        network.close()
    np.testing.assert_array_equal(own_store(cache="fresh").load_latest(**WHERE)["w"], weights)
    check_consistent(server, bucket)


class Network:
    """A TCP relay between the client and the server: ``cut()`` drops every open connection.

    moto's threaded server finishes the responses it has started when it is stopped; a server
    process that dies, or a network that fails, does not. Stopping the server and cutting the
    relay together is that: the transfer in flight breaks, and new connections are refused.
    """

    def __init__(self, upstream_port, *, rate=40 * 2**20, rate_up=None):
        import socket

        self.upstream_port = upstream_port
        self.rate, self.rate_up = rate, rate_up  # bytes/s towards the client and the server: a real link
        self.sent_up, self.cut_up_at, self.cuts = 0, [], []  # cut every connection as uploads pass these
        self.on_cut = None  # called first: e.g. the server's stop(), for a server that dies mid-upload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open, self.lock = set(), threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:  # the server is down: the client sees its connection closed
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src, dst, up):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                rate = self.rate_up if up else self.rate
                if rate:
                    time.sleep(len(data) / rate)
                if up:
                    with self.lock:
                        self.sent_up += len(data)
                        due = bool(self.cut_up_at) and self.sent_up >= self.cut_up_at[0]
                        if due:
                            self.cuts.append(self.cut_up_at.pop(0))
                    if due:
                        if self.on_cut is not None:
                            self.on_cut()
                        self.cut()
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *socks):
        import socket

        for sock in socks:
            with self.lock:
                self.open.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self):
        with self.lock:
            socks = list(self.open)
        self._close(*socks)

    def close(self):
        self.listener.close()
        self.cut()


def test_a_server_stopped_during_a_download_gives_a_typed_error_then_the_same_load_succeeds(
    own_store, tmp_path
):
    server = own_store.server
    weights = np.random.default_rng(1).random(BIG)
    url = own_store().save({"w": weights}, **WHERE)
    network = Network(server.port)
    options = {**server.storage_options,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{network.port}", "region_name": "us-east-1"}}  # fmt: skip
    reader = pk.ModelStore(f"s3://{own_store.bucket}/models", cache_dir=tmp_path / "reader",
                           key_file=tmp_path / "k", storage_options=options)  # fmt: skip
    reader.remote.retries, reader.remote.backoff = 3, 0.05
    cache = tmp_path / "reader"

    def bytes_arriving():  # the download's temp file in the cache has started to fill
        return any(f.stat().st_size > 0 for f in cache.rglob("*") if f.is_file())

    def server_dies():
        server.stop()
        network.cut()

    stopped = threading.Event()

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stopped.is_set():
            if bytes_arriving():
                server_dies()
                stopped.set()
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(PersistIOError, match=r"could not be reached.*3 attempts") as info:
            reader.load_latest(**WHERE)
        assert stopped.is_set()  # the server went away in the middle of the download
        assert info.value.path == url and info.value.operation == "download"
        assert "retry" in str(info.value)
        assert not [f for f in cache.rglob("*") if f.is_file()]  # nothing partial cached
        server.start()
        np.testing.assert_array_equal(reader.load_latest(**WHERE)["w"], weights)  # the same load, now whole
        assert reader.fetch(url) == str(cache / "BTC-USDT" / "ppo" / "1h" / url.name)
    finally:
        stopped.set()
        watcher.join()
        network.close()


def test_a_download_resumes_where_a_dropped_connection_broke_it(own_store, tmp_path):
    """The network drops the connection mid-download but the server stays up: the load resumes and succeeds."""
    server = own_store.server
    weights = np.random.default_rng(2).random(BIG)
    own_store().save({"w": weights}, **WHERE)
    network = Network(server.port)
    options = {**server.storage_options,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{network.port}", "region_name": "us-east-1"}}  # fmt: skip
    reader = pk.ModelStore(f"s3://{own_store.bucket}/models", cache_dir=tmp_path / "reader",
                           key_file=tmp_path / "k", storage_options=options)  # fmt: skip
    sent = []
    reader.remote.fs.s3.meta.events.register(
        "before-send.s3", lambda request, **kw: sent.append(request.headers.get("Range"))
    )
    cuts = []

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(cuts) < 2:
            sizes = [f.stat().st_size for f in (tmp_path / "reader").rglob("*") if f.is_file()]
            if sizes and max(sizes) > (len(cuts) + 1) * 8 * 2**20:  # twice, at 8 and 16 MiB
                network.cut()
                cuts.append(max(sizes))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        np.testing.assert_array_equal(reader.load_latest(**WHERE)["w"], weights)
    finally:
        watcher.join()
        network.close()
    assert len(cuts) == 2
    ranges = [r for r in sent if r]
    assert len(ranges) >= 2 and all(r.startswith(b"bytes=") or r.startswith("bytes=") for r in ranges)


def test_a_server_that_goes_away_again_and_again_never_leaves_a_dangling_pointer(own_store):
    """fail, recover, fail again: every state in between is consistent and the store keeps working."""
    server, bucket = own_store.server, own_store.bucket
    store = own_store()
    saved = [store.save({"q": np.zeros(1)}, **WHERE)]
    for round_ in range(2):
        server.stop()
        with pytest.raises(PersistIOError):
            store.save({"q": np.full(1, float(round_))}, **WHERE)
        with pytest.raises(PersistIOError):
            store.latest(**WHERE)
        server.start()
        assert store.versions(**WHERE) == saved
        check_consistent(server, bucket)
        saved.append(store.save({"q": np.full(1, float(round_))}, **WHERE))
        assert store.latest(**WHERE) == saved[-1]
    check_consistent(server, bucket)


def test_sigkill_between_record_and_pointer_leaves_the_pointer_on_a_valid_version(store_at, tmp_path):
    first = store_at().save({"w": np.zeros(1)}, **WHERE)
    child = run_child(store_at, tmp_path, 1, hang="hang")
    assert child.stdout.readline().startswith("UPLOADING")
    assert child.stdout.readline().startswith("POINTING"), child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    names = check_consistent(store_at.server, store_at.bucket)
    assert len(names) == 2 and store_at().latest(**WHERE) == first  # published, pointer not yet moved
    after = store_at().save({"w": np.ones(1)}, **WHERE)  # the next publisher moves it past both
    assert store_at().latest(**WHERE) == after and len(store_at().versions(**WHERE)) == 3


@pytest.fixture
def http_requests():
    """Requests the in-process moto server answered (its werkzeug access log), counted as they come."""
    import logging

    seen = []

    class Count(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("werkzeug")
    handler, level = Count(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_round_trips_per_publish_and_per_load_as_the_server_saw_them(store_at, http_requests):
    store = store_at()
    store.save({"q": np.zeros(1)}, **WHERE)
    http_requests.clear()
    store.save({"q": np.ones(1)}, **WHERE)
    methods = [line.split('"')[1].split()[0] for line in http_requests]
    assert methods == ["GET", "PUT", "PUT", "PUT"], http_requests  # list, data, record, swap
    assert "list-type=2" in http_requests[0] and "start-after=" in http_requests[0]
    http_requests.clear()
    store.load_latest(**WHERE)  # warm: the upload filled the cache
    assert len(http_requests) == 2, http_requests  # pointer, record
    http_requests.clear()
    store_at(cache="cold").load_latest(**WHERE)  # another process: reads store.json once, then downloads
    assert len(http_requests) == 4, http_requests  # pointer, store.json, record, GET of the bundle


def test_a_version_pruned_under_a_reader_is_followed_to_the_new_latest(store_at, monkeypatch):
    reader = store_at(cache="reader")
    old = store_at().save({"q": np.zeros(1)}, **WHERE)
    stale = reader.latest(**WHERE)
    assert stale == old
    new = store_at().save({"q": np.ones(1)}, **WHERE)
    assert store_at().prune(keep=1) == [old]
    answers = iter([stale, new])
    monkeypatch.setattr(
        reader, "latest", lambda *a: next(answers)
    )  # the reader read the pointer before the prune
    np.testing.assert_array_equal(reader.load_latest(**WHERE)["q"], np.ones(1))
    with pytest.raises(PersistIOError, match="No such object") as info:
        reader.load(old)  # asked for by URL: it is gone, and the error says which
    assert info.value.errno == errno.ENOENT and info.value.path == str(old) + ".json"


# -- aliases ---------------------------------------------------------------------------------


def test_remote_aliases_have_the_local_api_and_history(store_at):
    store = store_at()
    v1 = store.save({"q": np.full(2, 1.0)}, **WHERE, when=T0)
    v2 = store.save({"q": np.full(2, 2.0)}, **WHERE, when=T0)
    store.tag(v1, "production", when=T0)
    store.tag(v2, "staging", when=T0)
    store.tag(v2, "production", when=T0 + dt.timedelta(hours=2))
    store.tag(v2, "production", when=T0 + dt.timedelta(hours=3))  # no-op: already there
    other = store_at(cache="other")  # another machine sees the same aliases
    assert other.aliases() == {"production": v2, "staging": v2}
    np.testing.assert_array_equal(other.load("production")["q"], np.full(2, 2.0))
    assert other.live_at("production", T0 + dt.timedelta(hours=1)) == v1
    assert other.live_at("production", T0 + dt.timedelta(hours=5)) == v2
    assert other.live_at("production", T0 - dt.timedelta(hours=1)) is None
    assert [(e.path, e.since, e.until) for e in other.history("production")] == [
        (v1, "2024-03-01T12:00:00.000000+00:00", "2024-03-01T14:00:00.000000+00:00"),
        (v2, "2024-03-01T14:00:00.000000+00:00", None),
    ]
    index = json.loads(
        store_at.server.client().get_object(Bucket=store_at.bucket, Key="models/aliases.json")["Body"].read()
    )
    assert index["format"] == "persistkit.aliases" and len(index["events"]) == 3  # the local format
    assert store.prune(keep=0) == [v1]  # no alias names v1 any more; v2 is aliased (and the latest)
    assert other.history("production")[0].path == v1  # the history still says what was live when


def test_remote_alias_errors_are_typed_and_name_the_alias(store_at):
    from persistkit.errors import NotFoundError

    store = store_at()
    url = store.save({"q": np.zeros(1)}, **WHERE)
    with pytest.raises(
        NotFoundError, match=r"no alias 'production' in s3://.*aliases.json \(aliases: none\)"
    ):
        store.load("production")
    with pytest.raises(ValueError, match="alias"):
        store.tag(url, "bad/alias")
    with pytest.raises(ValueError, match="is not a version of the store"):
        store.tag("s3://elsewhere/BTC/ppo/1h/2024-01-01_000000.models", "production")
    missing = str(url).replace(".models", "_9.models")
    with pytest.raises(NotFoundError, match="no such published version") as info:
        store.tag(missing, "production")
    assert info.value.path == missing and store.aliases() == {}
    store_at.server.client().put_object(Bucket=store_at.bucket, Key="models/aliases.json", Body=b"{not json")
    with pytest.raises(IntegrityError, match="alias index is unreadable"):
        store.aliases()


def test_prune_never_removes_an_aliased_version(store_at):
    store = store_at()
    urls = [store.save({"q": np.full(1, float(n))}, **WHERE, when=T0) for n in range(4)]
    store.tag(urls[0], "production")
    assert store.prune(keep=1) == urls[1:3]
    assert store.versions(**WHERE) == [urls[0], urls[3]]
    np.testing.assert_array_equal(store_at(cache="c2").load("production")["q"], np.zeros(1))
    check_consistent(store_at.server, store_at.bucket)


def test_concurrent_alias_moves_from_threads_never_lose_one(store_at):
    store = store_at()
    a, b = (store.save({"q": np.full(1, float(n))}, **WHERE) for n in range(2))
    stores = [store_at(cache=f"t{n}") for n in range(4)]
    failures = []

    def mover(n):
        try:
            for i in range(6):
                stores[n].tag(a if i % 2 == 0 else b, f"alias{n}")
                stores[n].tag(a if (i + n) % 2 else b, "shared")
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=mover, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for n in range(4):  # every move of every writer is in the history: none was overwritten
        assert [e.path for e in store.history(f"alias{n}")] == [a, b] * 3
        assert [e.until is None for e in store.history(f"alias{n}")] == [False] * 5 + [True]
    shared = store.history("shared")
    assert sum(e.until is None for e in shared) == 1 and shared[-1].until is None
    assert all(x.until == y.since for x, y in itertools.pairwise(shared))  # one unbroken line
    assert store.aliases()["shared"] in (a, b)


ALIAS_CHILD = """
import sys, persistkit as pk
url, cache, key, endpoint, n, a, b = sys.argv[1:8]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
store = pk.ModelStore(url, cache_dir=cache, key_file=key, storage_options=opts)
for i in range(5):
    store.tag(a if i % 2 == 0 else b, f"alias{n}")
    store.tag(a if (i + int(n)) % 2 else b, "shared")
print("DONE", flush=True)
"""


def test_concurrent_alias_moves_from_processes_never_lose_one(store_at, tmp_path):
    store = store_at()
    a, b = (store.save({"q": np.full(1, float(n))}, **WHERE) for n in range(2))
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ALIAS_CHILD,
                store.root,
                str(tmp_path / f"p{n}"),
                str(tmp_path / "store.key"),
                store_at.server.endpoint,
                str(n),
                str(a),
                str(b),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for n in range(3)
    ]
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0 and out.strip() == "DONE", err
    for n in range(3):
        assert [e.path for e in store.history(f"alias{n}")] == [a, b, a, b, a]
    assert sum(e.until is None for e in store.history("shared")) == 1


def test_tagging_while_another_machine_prunes_never_leaves_an_alias_on_a_missing_version(store_at):
    """Race tag() against prune(): whoever wins, every alias names a version whose bytes are there."""
    from persistkit.errors import NotFoundError

    for round_ in range(3):
        store = store_at(cache=f"w{round_}")
        urls = [store.save({"q": np.full(1, float(n))}, **WHERE, when=T0) for n in range(4)]
        tagger, pruner = store_at(cache=f"t{round_}"), store_at(cache=f"p{round_}")
        outcomes = []

        def tag_old(tagger=tagger, urls=urls, outcomes=outcomes):
            for url in urls[:3]:
                try:
                    tagger.tag(url, f"r{round_}")
                    outcomes.append(url)
                except NotFoundError:  # pruned first: the move was refused or undone
                    outcomes.append(None)

        thread = threading.Thread(target=tag_old)
        thread.start()
        pruner.prune(keep=1)
        thread.join()
        client = store_at.server.client()
        for alias, url in store.aliases().items():
            key = str(url).split("/", 3)[3]
            client.head_object(Bucket=store_at.bucket, Key=key)  # the data is there
            client.head_object(Bucket=store_at.bucket, Key=key + ".json")  # and its record
        check_consistent(store_at.server, store_at.bucket)
        pruner.prune(keep=1)  # and the next prune keeps what the aliases name
        aliased = store.aliases()
        assert set(aliased.values()) <= set(store.versions(**WHERE))
        mine = f"r{round_}"
        if mine in aliased:  # the alias survived the race: it loads, and it is the version it names
            q = store.load(mine)["q"]
            np.testing.assert_array_equal(q, np.full(1, float(urls.index(aliased[mine]))))
        assert outcomes[-1] is None or aliased[mine] == outcomes[-1]  # the last accepted move stands


# -- orphans -----------------------------------------------------------------------------------


def test_a_publisher_killed_before_its_record_leaves_an_orphan_that_prune_removes_after_the_grace(
    store_at, tmp_path
):
    first = store_at().save({"w": np.zeros(1)}, **WHERE)
    child = run_child(store_at, tmp_path, 1, hang="hang-record")
    assert child.stdout.readline().startswith("UPLOADING")
    assert child.stdout.readline().startswith("RECORDING"), child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    store = store_at()
    assert store.versions(**WHERE) == [first]  # the orphan is not a version
    objects = [k for k in keys(store_at.server, store_at.bucket, GROUP + "/") if k.endswith(".models")]
    assert len(objects) == 2
    orphan = f"s3://{store_at.bucket}/{next(k for k in objects if not str(first).endswith(k))}"
    # fresh: its publisher may still be about to record it, so it stays, and the plan says why
    plan = {d.item.id: d for d in store.prune_plan(keep=0)}
    assert plan[orphan].keep and "its writer may still finish it" in plan[orphan].reasons[0]
    assert store.prune(keep=0) == []
    assert store.prune(keep=0, orphan_grace=dt.timedelta(0), dry_run=True) == [orphan]
    assert str(orphan).split("/", 3)[3] in keys(store_at.server, store_at.bucket)  # a dry run deletes nothing
    plan = {d.item.id: d for d in store.prune_plan(keep=0, orphan_grace=dt.timedelta(0))}
    assert not plan[orphan].keep and "without a record (its publisher died)" in plan[orphan].reasons[0]
    assert store.prune(keep=0, orphan_grace=dt.timedelta(0)) == [orphan]
    assert str(orphan).split("/", 3)[3] not in keys(store_at.server, store_at.bucket)
    assert store.versions(**WHERE) == [first]  # the version itself is kept: the pointer names it
    after = store.save({"w": np.ones(1)}, **WHERE)  # and the store goes on
    assert store_at(cache="fresh").latest(**WHERE) == after
    check_consistent(store_at.server, store_at.bucket)


def test_prune_aborts_a_multipart_upload_its_killed_publisher_left(store_at, tmp_path):
    store_at().save({"w": np.zeros(1)}, **WHERE)
    child = run_child(store_at, tmp_path, 1, size=6_000_000, hang="serial-parts")  # ~48 MB: ten parts
    assert child.stdout.readline().startswith("UPLOADING")
    client = store_at.server.client()

    def parts_in():  # of the bundle's upload (the write probe's, before it, has come and gone)
        uploads = [u for u in client.list_multipart_uploads(Bucket=store_at.bucket).get("Uploads", [])
                   if u["Key"].startswith(GROUP)]  # fmt: skip
        return any(
            client.list_parts(Bucket=store_at.bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
            for u in uploads
        )

    deadline = time.monotonic() + 60
    while not parts_in():  # killed with parts sent: invisible, but billed until aborted
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    store = store_at()
    [pending] = client.list_multipart_uploads(Bucket=store_at.bucket)["Uploads"]
    plan = [d for d in store.prune_plan(keep=5) if "uploadId" in d.item.id]
    assert len(plan) == 1 and plan[0].keep and "upload never completed" in plan[0].reasons[0]
    removed = store.prune(keep=5, orphan_grace=dt.timedelta(0))
    assert removed == [f"{store.root}/{pending['Key'][len('models/') :]}?uploadId={pending['UploadId']}"]
    assert not client.list_multipart_uploads(Bucket=store_at.bucket).get("Uploads")
    check_consistent(store_at.server, store_at.bucket)


def test_a_backfilled_version_never_moves_latest_backwards(store_at, http_requests):
    store = store_at()
    newer = store.save({"q": np.ones(1)}, **WHERE)
    http_requests.clear()
    older = store.save({"q": np.zeros(1)}, **WHERE, when=T0)  # a past moment: sorts first
    methods = [line.split('"')[1].split()[0] for line in http_requests]
    assert methods == ["GET", "PUT", "PUT", "GET"], http_requests  # list, data, record, read the pointer
    assert store.versions(**WHERE) == [older, newer] and store.latest(**WHERE) == newer
    np.testing.assert_array_equal(store_at(cache="fresh").load_latest(**WHERE)["q"], np.ones(1))
    check_consistent(store_at.server, store_at.bucket)


def test_an_upload_survives_dropped_connections_by_retrying_only_the_broken_parts(own_store, tmp_path):
    server, bucket = own_store.server, own_store.bucket
    own_store().save({"w": np.zeros(1)}, **WHERE)
    network = Network(server.port, rate=None, rate_up=40 * 2**20)  # uploads flow towards the server
    options = {**server.storage_options,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{network.port}", "region_name": "us-east-1"}}  # fmt: skip
    writer = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "writer", key_file=tmp_path / "k",
                           storage_options=options)  # fmt: skip
    writer.remote.part_size = 5 * 2**20
    parts = []
    writer.remote.fs.s3.meta.events.register(
        "before-send.s3",
        lambda request, **kw: parts.append(request.url) if "partNumber=" in request.url else None,
    )
    network.cut_up_at = [12 * 2**20, 30 * 2**20]  # the relay drops every connection twice mid-upload
    weights = np.random.default_rng(3).random(BIG)
    try:
        url = writer.save({"w": weights}, **WHERE)
    finally:
        network.close()
    assert len(network.cuts) == 2
    numbers = [u.split("partNumber=")[1].split("&")[0] for u in parts]
    assert len(numbers) > len(set(numbers))  # some parts were sent twice: the ones the cuts broke
    cached = tmp_path / "writer" / "BTC-USDT" / "ppo" / "1h" / url.name  # the bytes that went up
    assert len(set(numbers)) == -(-cached.stat().st_size // (5 * 2**20))  # every part, once or more
    assert own_store().latest(**WHERE) == url
    np.testing.assert_array_equal(own_store(cache="fresh").load_latest(**WHERE)["w"], weights)
    check_consistent(server, bucket)
