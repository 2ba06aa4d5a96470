"""The ObjectStore contract, held by the real RemoteStore (moto over HTTP) and by MemoryObjectStore alike,
and the one hook (use_object_store) every store made by remote_store() passes through."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
import threading

import pytest

from persistkit.errors import IntegrityError, PersistIOError
from persistkit.io.objects import DelegatingObjectStore, ObjectStore, delegates_to, use_object_store
from persistkit.io.remote import Fetched, RemoteStore, remote_store
from persistkit.testing import (
    MemoryObjectStore,
    ObjectSpace,
    RecordingObjectStore,
    record_objects,
    serve_objects,
)

# a server that is not there: a store that used the network with these options would fail
NOWHERE = {
    "key": "k",
    "secret": "s",
    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
}


@pytest.fixture(params=["memory", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "memory":
        return MemoryObjectStore("s3://bucket/root")
    server, bucket = request.getfixturevalue("s3_bucket")
    return RemoteStore(f"s3://{bucket}/root", storage_options=server.storage_options)


def test_create_only_put_never_replaces(store):
    assert store.put_new("a/x", b"one") is True
    assert store.put_new("a/x", b"two") is False
    assert store.get("a/x").data == b"one"


def test_put_file_new_uploads_the_file_once(store, tmp_path):
    source = tmp_path / "blob"
    source.write_bytes(b"payload" * 1000)
    assert store.put_file_new("f/blob", str(source)) is True
    source.write_bytes(b"other")
    assert store.put_file_new("f/blob", str(source)) is False
    assert store.get("f/blob").data == b"payload" * 1000


def test_swap_replaces_only_what_was_read(store):
    assert store.swap("p", b"v1", None) is not None  # None: create only if absent
    assert store.swap("p", b"again", None) is None
    first = store.get("p")
    second_etag = store.swap("p", b"v2", first.etag)
    assert second_etag is not None and second_etag != first.etag
    assert store.swap("p", b"v3", first.etag) is None  # stale etag: another writer got there first
    assert store.get("p") == Fetched(b"v2", second_etag)


def test_missing_object_is_a_typed_error_naming_the_url(store):
    with pytest.raises(PersistIOError) as caught:
        store.get("nope/x")
    assert caught.value.errno == errno.ENOENT
    assert store.url_of("nope/x") in str(caught.value)
    assert "No such object" in str(caught.value)
    assert store.get_or_none("nope/x") is None


def test_delete_is_idempotent(store):
    store.put_new("d", b"1")
    store.delete("d")
    store.delete("d")
    assert store.get_or_none("d") is None


def test_verified_reads_refuse_changed_bytes(store, tmp_path):
    store.put_new("v", b"good bytes")
    digest = hashlib.sha256(b"good bytes").hexdigest()
    assert store.get_verified("v", digest, 10) == b"good bytes"
    target = tmp_path / "copy"
    store.download_verified("v", str(target), digest, 10)
    assert target.read_bytes() == b"good bytes"
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(IntegrityError, match="does not match what persistkit uploaded") as caught:
        store.download_verified("v", str(tmp_path / "bad"), wrong, 10)
    assert store.url_of("v") in str(caught.value)
    assert not (tmp_path / "bad").exists()  # nothing unverified is kept
    with pytest.raises(IntegrityError):
        store.get_verified("v", digest, 11)


def test_listings_and_walk(store):
    for key in ("top", "g/a", "g/b", "g/sub/c"):
        store.put_new(key, key.encode())
    assert sorted(store.list("g")) == ["a", "b"]
    assert store.list_dirs("g") == ["sub"]
    assert store.list("empty") == []
    assert list(store.walk()) == ["top", "g/a", "g/b", "g/sub/c"]


def test_memory_etags_change_on_every_put_of_the_same_bytes():
    store = MemoryObjectStore("s3://b/r")
    first = store.swap("k", b"same", None)
    second = store.swap("k", b"same", first)
    assert first is not None and second is not None and first != second
    assert store.swap("k", b"same", first) is None  # ABA: the old etag no longer matches


def test_memory_stores_over_one_space_see_each_other():
    space = ObjectSpace()
    MemoryObjectStore("s3://b/one", space=space).put_new("k", b"1")
    assert MemoryObjectStore("s3://b", space=space).get("one/k").data == b"1"
    assert space.snapshot() == {"s3://b/one/k": b"1"}


def test_memory_put_file_new_of_a_missing_file_is_a_typed_error(tmp_path):
    store = MemoryObjectStore("s3://b/r")
    with pytest.raises(PersistIOError, match="create-only upload failed on 's3://b/r/k'"):
        store.put_file_new("k", str(tmp_path / "missing"))
    assert store.get_or_none("k") is None


# -- the hook ------------------------------------------------------------------------


def test_remote_store_without_hooks_is_the_real_store(s3_bucket):
    server, bucket = s3_bucket
    assert type(remote_store(f"s3://{bucket}/r", storage_options=server.storage_options)) is RemoteStore


def test_every_store_passes_through_the_hook_in_block_order(s3_bucket):
    server, bucket = s3_bucket
    seen = []

    class Tag(DelegatingObjectStore):
        pass

    def outer(store):
        seen.append(("outer", type(store).__name__))
        return Tag(store)

    def inner(store):
        seen.append(("inner", type(store).__name__))
        return RecordingObjectStore(store)

    with use_object_store(outer), use_object_store(inner):
        made = remote_store(f"s3://{bucket}/r", storage_options=server.storage_options)
    assert seen == [("outer", "RemoteStore"), ("inner", "Tag")]
    assert isinstance(made, RecordingObjectStore) and isinstance(made.inner, Tag)
    assert made.put_new("k", b"v") and made.inner.get("k").data == b"v"  # it reaches the real bucket
    after = remote_store(f"s3://{bucket}/r", storage_options=server.storage_options)
    assert type(after) is RemoteStore  # the hooks are gone with their blocks


def test_the_hook_reaches_stores_made_on_other_threads():
    made = []
    with serve_objects({}):
        worker = threading.Thread(
            target=lambda: made.append(remote_store("s3://b/r", storage_options=NOWHERE))
        )
        worker.start()
        worker.join()
    assert isinstance(made[0], MemoryObjectStore)


def test_a_replacement_never_touches_the_network():
    # the endpoint is closed: any request (the conditional-write probe included) would fail
    with serve_objects({"s3://fresh-bucket/r/k": b"v"}):
        store = remote_store("s3://fresh-bucket/r", storage_options=NOWHERE)
        assert store.get("k").data == b"v"
        assert store.put_new("k2", b"w")


def test_the_probe_runs_on_the_real_store_and_is_not_recorded(s3_bucket):
    server, bucket = s3_bucket
    opts = {**server.storage_options, "anon": False}  # options never seen before: this ident is probed afresh
    with record_objects() as log:
        store = remote_store(f"s3://{bucket}/r", storage_options=opts)
        store.put_new("k", b"v")
    assert [op.describe() for op in log] == [f"#0 PUT create-only s3://{bucket}/r/k (1 bytes)"]
    assert delegates_to(store, store) and not delegates_to(MemoryObjectStore("s3://b/r"), store)


def test_the_probe_still_refuses_a_real_server_reached_through_a_wrapper(s3_bucket):
    """A wrapped real store is probed too, before its first write: a bucket that does not exist is refused."""
    server, _ = s3_bucket
    opts = {**server.storage_options, "default_block_size": 5 * 2**20}
    with record_objects() as log:
        store = remote_store("s3://pk-no-such-bucket-objstore/r", storage_options=opts)  # sends nothing
        with pytest.raises(PersistIOError) as caught:
            store.put_new("k", b"v")
    assert "pk-no-such-bucket-objstore" in str(caught.value)
    assert len(log) == 0


def test_import_of_the_contract_is_light():
    code = "import sys, persistkit.io.objects; print(sorted(m for m in ('fsspec', 's3fs', 'botocore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fetched_is_still_importable_from_remote():
    from persistkit.io import objects, remote

    assert remote.Fetched is objects.Fetched
