"""Crash-state enumeration under the object-store model, fault sequences and record/replay.

The model: after a crash a bucket holds its objects from before plus any prefix
of the completed PUTs and DELETEs; an upload that never completed is invisible.
ModelStore("s3://...") runs against the real moto server (real s3fs/boto3 over
HTTP); each crash state is then served from memory to a fresh ModelStore.
"""

from __future__ import annotations

import collections
import datetime as dt
import errno
import itertools
import threading

import numpy as np
import pytest

import persistkit as pk
from persistkit.errors import NoVersionError, PersistIOError
from persistkit.io.objects import use_object_store
from persistkit.io.remote import remote_store
from persistkit.testing import (
    FaultObjectStore,
    MemoryObjectStore,
    ObjectFault,
    SimulatedCrash,
    object_crash_points,
    object_crash_states,
    record_objects,
    serve_objects,
)
from persistkit.testing.observe import NotJudgeable

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
NOWHERE = {
    "key": "k",
    "secret": "s",
    "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"},
}


def model(i: int) -> dict:
    return {"m": np.full(64, i, dtype=np.int64)}


@pytest.fixture
def bucket_store(s3_bucket, tmp_path):
    """(url, storage_options, make): ``make(cache)`` is a ModelStore on a fresh bucket; default: a fresh cache."""
    server, bucket = s3_bucket
    url = f"s3://{bucket}/models"
    caches = itertools.count()

    def make(cache: str | None = None) -> pk.ModelStore:
        return pk.ModelStore(
            url,
            cache_dir=tmp_path / (cache or f"reader-{next(caches)}"),
            key_file=tmp_path / "store.key",
            storage_options=server.storage_options,
        )

    make.server, make.bucket = server, bucket
    return url, server.storage_options, make


def judge(make, allowed: dict, values: dict, seen: collections.Counter) -> None:
    """One crash state: latest() is one of ``allowed`` and loads; every listed version loads to its value."""
    store = make()  # created here: served the crash state from memory
    latest = store.latest(**WHERE)
    assert latest in allowed, f"latest() names {latest!r}, which is neither the old nor the new version"
    seen[latest] += 1
    if latest is None:
        with pytest.raises(NoVersionError):
            store.load_latest(**WHERE)
    else:
        np.testing.assert_array_equal(store.load_latest(**WHERE)["m"], values[latest])
    for version in store.versions(**WHERE):
        assert version in values, f"versions() lists {version!r}, which no save made"
        np.testing.assert_array_equal(store.load(version)["m"], values[version])


def test_first_publish_every_crash_state(bucket_store, record_property, capsys):
    url, opts, make = bucket_store
    made = {}

    def save():
        made["url"] = make("writer").save(model(1), **WHERE, when=T0)

    seen: collections.Counter = collections.Counter()
    report = object_crash_points(
        save,
        lambda: judge(make, {None: None, made["url"]: 1}, {made["url"]: model(1)["m"]}, seen),
        url=url,
        storage_options=opts,
    )
    record_property("crash_states", report.states)
    with capsys.disabled():
        print(f"\n  first publish: {report.summary()}")
    assert report.violations == [] and report.states == report.mutations + 1
    assert report.mutations >= 3  # the data, its record, the pointer (and the store settings, first time)
    assert seen[None] >= 1 and seen[made["url"]] >= 1  # both the old and the new state were reached
    assert sum(seen.values()) == report.states


def test_second_publish_over_an_existing_version_every_crash_state(bucket_store, record_property, capsys):
    url, opts, make = bucket_store
    first = make("writer").save(model(1), **WHERE, when=T0)
    made = {}

    def save():
        made["url"] = make("writer").save(model(2), **WHERE, when=T0 + dt.timedelta(hours=1))

    seen: collections.Counter = collections.Counter()
    values = {first: model(1)["m"]}
    report = object_crash_points(
        save,
        lambda: judge(make, {first: 1, made["url"]: 2}, {**values, made["url"]: model(2)["m"]}, seen),
        url=url,
        storage_options=opts,
    )
    record_property("crash_states", report.states)
    with capsys.disabled():
        print(f"\n  second publish: {report.summary()}")
    assert report.violations == [] and report.states == report.mutations + 1 >= 4
    assert seen[first] >= 1 and seen[made["url"]] >= 1


def test_prune_every_crash_state(bucket_store, record_property, capsys):
    url, opts, make = bucket_store
    writer = make("writer")
    urls = [writer.save(model(i), **WHERE, when=T0 + dt.timedelta(hours=i)) for i in range(3)]
    values = {u: model(i)["m"] for i, u in enumerate(urls)}
    removed = []
    seen: collections.Counter = collections.Counter()

    def check():
        judge(make, {urls[-1]: 2}, values, seen)
        assert urls[-1] in make().versions(**WHERE)  # the newest is never pruned

    report = object_crash_points(
        lambda: removed.extend(make("pruner").prune(keep=1)), check, url=url, storage_options=opts
    )
    record_property("crash_states", report.states)
    with capsys.disabled():
        print(f"\n  prune: {report.summary()}")
    assert removed == urls[:2]
    assert (
        report.violations == [] and report.states == report.mutations + 1 == 5
    )  # 2 versions x (record, data)


def test_two_concurrent_publishers_every_crash_state(bucket_store, record_property, capsys):
    """Two trainers publish at once (threads): in every prefix of their interleaved PUTs, no version is lost
    and the pointer never names a missing one."""
    url, opts, make = bucket_store
    first = make("writer").save(model(1), **WHERE, when=T0)
    made: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def publish(i: int) -> None:
        store = make(f"writer-{i}")
        barrier.wait()
        made[i] = store.save(model(i), **WHERE, when=T0 + dt.timedelta(hours=1))  # the same stamp: a race

    def save():
        threads = [threading.Thread(target=publish, args=(i,)) for i in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(made) == [2, 3] and made[2] != made[3]

    seen: collections.Counter = collections.Counter()

    def check():
        values = {first: model(1)["m"], made[2]: model(2)["m"], made[3]: model(3)["m"]}
        judge(make, {first: 1, made[2]: 2, made[3]: 3}, values, seen)

    report = object_crash_points(save, check, url=url, storage_options=opts)
    record_property("crash_states", report.states)
    with capsys.disabled():
        print(f"\n  two concurrent publishers: {report.summary()}")
    assert report.violations == [] and report.mutations >= 6
    final = make()
    assert final.versions(**WHERE) == [first, *sorted(made.values())]  # no version lost
    assert final.latest(**WHERE) == max(made.values())


# -- the simulator catches bad publishers (in memory: no server needed) ---------------

BASE = "s3://bucket/pub"


def pointer_target_exists() -> None:
    store = remote_store(BASE, storage_options=NOWHERE)
    found = store.get_or_none("LATEST")
    if found is not None:
        store.get(found.data.decode())  # a dangling pointer raises PersistIOError (ENOENT)


def test_pointer_written_before_its_data_is_caught():
    def bad_publish():
        store = remote_store(BASE, storage_options=NOWHERE)
        store.put_new("LATEST", b"data-1")  # the pointer first: a crash now leaves it dangling
        store.put_new("data-1", b"payload")

    with serve_objects({}), pytest.raises(AssertionError) as caught:
        object_crash_points(bad_publish, pointer_target_exists, url=BASE, storage_options=NOWHERE)
    message = str(caught.value)
    assert "First violating crash state: state 1: after #0 PUT create-only s3://bucket/pub/LATEST" in message
    assert "before #1 PUT create-only s3://bucket/pub/data-1" in message
    assert "Fix: s3://bucket/pub/LATEST is visible before what it refers to" in message
    assert "3 crash states" in message and "1 violations" in message


def test_delete_before_write_is_caught_and_the_right_order_passes():
    initial = {f"{BASE}/LATEST": b"data-1", f"{BASE}/data-1": b"old"}

    def bad_replace():
        store = remote_store(BASE, storage_options=NOWHERE)
        store.delete("data-1")  # the old data goes while the pointer still names it
        store.put_new("data-2", b"new")
        found = store.get("LATEST")
        assert store.swap("LATEST", b"data-2", found.etag) is not None

    with serve_objects(initial), pytest.raises(AssertionError) as caught:
        object_crash_points(bad_replace, pointer_target_exists, url=BASE, storage_options=NOWHERE)
    message = str(caught.value)
    assert "First violating crash state: state 1: after #0 DELETE s3://bucket/pub/data-1" in message
    assert "Fix: something still visible refers to s3://bucket/pub/data-1 when it is deleted" in message

    def good_replace():
        store = remote_store(BASE, storage_options=NOWHERE)
        store.put_new("data-2", b"new")
        found = store.get("LATEST")
        assert store.swap("LATEST", b"data-2", found.etag) is not None
        store.delete("data-1")

    with serve_objects(initial):
        report = object_crash_points(good_replace, pointer_target_exists, url=BASE, storage_options=NOWHERE)
    assert report.violations == [] and report.states == 4


def test_observing_nothing_is_never_a_pass():
    with serve_objects({}), pytest.raises(NotJudgeable, match="observed no object-store operation"):
        object_crash_points(lambda: None, pointer_target_exists, url=BASE, storage_options=NOWHERE)
    with serve_objects({}), pytest.raises(NotJudgeable, match=r"1 read\(s\) and no completed PUT or DELETE"):
        object_crash_points(pointer_target_exists, pointer_target_exists, url=BASE, storage_options=NOWHERE)


def test_writes_the_recording_did_not_see_are_not_judged():
    with serve_objects({}):
        early = remote_store(
            BASE, storage_options=NOWHERE
        )  # made before the recording: not routed through it

        def save():
            early.put_new("data-1", b"unseen")
            remote_store(BASE, storage_options=NOWHERE).put_new("LATEST", b"data-1")

        with pytest.raises(NotJudgeable, match=r"do not explain what s3://bucket/pub holds.*data-1"):
            object_crash_points(save, pointer_target_exists, url=BASE, storage_options=NOWHERE)


def test_max_states_samples_first_and_last():
    def publish():
        store = remote_store(BASE, storage_options=NOWHERE)
        for i in range(6):
            store.put_new(f"data-{i}", b"x")

    with serve_objects({}):
        report = object_crash_points(publish, lambda: None, url=BASE, storage_options=NOWHERE, max_states=3)
    assert report.states == 3 and report.sampled and report.mutations == 6


# -- the crash model itself -------------------------------------------------------------


def test_an_upload_that_never_completed_is_in_no_state():
    mutations = frozenset({"put-new", "put-file-new", "swap", "delete"})
    with (
        serve_objects({}) as space,
        use_object_store(lambda s: FaultObjectStore(s, ObjectFault(1, "crash-before", kinds=mutations))),
        record_objects() as log,
    ):
        store = remote_store(BASE, storage_options=NOWHERE)
        assert store.put_new("a", b"1")
        with pytest.raises(SimulatedCrash, match="before the create-only upload of s3://bucket/pub/b"):
            store.put_new("b", b"2")
    assert space.snapshot() == {f"{BASE}/a": b"1"}
    states = [dict(s.objects) for s in object_crash_states({}, log)]
    assert states == [{}, {f"{BASE}/a": b"1"}]


def test_an_upload_that_completed_just_before_the_crash_is_a_state():
    with (
        serve_objects({}) as space,
        use_object_store(
            lambda s: FaultObjectStore(s, ObjectFault(0, "crash-after", kinds=frozenset({"swap"})))
        ),
        record_objects() as log,
    ):
        store = remote_store(BASE, storage_options=NOWHERE)
        assert store.put_new("a", b"1")
        assert store.put_new("a", b"again") is False  # taken: changed nothing, adds no state
        with pytest.raises(
            SimulatedCrash, match="after the compare-and-swap upload of s3://bucket/pub/p completed"
        ):
            store.swap("p", b"a", None)
    assert space.snapshot() == {f"{BASE}/a": b"1", f"{BASE}/p": b"a"}
    states = list(object_crash_states({"s3://bucket/other": b"kept"}, log))
    assert [s.applied for s in states] == [0, 1, 2]
    assert dict(states[-1].objects) == {"s3://bucket/other": b"kept", **space.snapshot()}
    assert states[-1].describe().startswith("state 2: after #2 PUT compare-and-swap s3://bucket/pub/p")


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown failure 'disk-full'"):
        ObjectFault(0, "disk-full")


# -- fault sequences against the real server --------------------------------------------


def consistent_on_server(make) -> list[str]:
    """Through a fresh store on the real bucket: latest() loads, every listed version loads; the versions."""
    store = make()
    versions = store.versions(**WHERE)
    latest = store.latest(**WHERE)
    if versions:
        assert latest in versions  # never a dangling pointer
        store.load_latest(**WHERE)
    else:
        assert latest is None
    for version in versions:
        store.load(version)
    return versions


def test_fault_sequence_fail_recover_fail_again_crash(bucket_store):
    url, _, make = bucket_store
    with use_object_store(FaultObjectStore):
        writer = make("writer")
    faults = writer.remote
    assert isinstance(faults, FaultObjectStore)

    # 1. the connection drops during the data upload: a typed error naming the object, nothing published
    faults.arm(ObjectFault(0, "dropped-connection", kinds=frozenset({"put-file-new"})))
    with pytest.raises(PersistIOError) as caught:
        writer.save(model(1), **WHERE, when=T0)
    message = str(caught.value)
    assert caught.value.errno == errno.ECONNREFUSED and faults.fired == 1
    assert f"create-only upload failed on '{url}/BTC-USDT/ppo/1h/" in message
    assert (
        "could not be reached or failed (4 attempts)" in message and "Nothing new was made visible" in message
    )
    assert consistent_on_server(make) == []

    # 2. the network is back: the same writer saves
    faults.clear()
    v1 = writer.save(model(1), **WHERE, when=T0)
    assert consistent_on_server(make) == [v1] and make().latest(**WHERE) == v1

    # 3. fails again: throttled on every pointer swap; the version is listed, the pointer stays on v1
    faults.arm(ObjectFault(0, "throttled", persistent=True, kinds=frozenset({"swap"})))
    with pytest.raises(PersistIOError) as caught:
        writer.save(model(2), **WHERE, when=T0 + dt.timedelta(hours=1))
    assert caught.value.errno == errno.EBUSY and "throttling (SlowDown/503) after 4 attempts" in str(
        caught.value
    )
    assert f"{url}/BTC-USDT/ppo/1h/LATEST.json" in str(caught.value)
    listed = consistent_on_server(make)
    assert len(listed) == 2 and make().latest(**WHERE) == v1

    # 4. expired credentials on the first read: refused at once (no retries), nothing changed
    faults.arm(ObjectFault(0, "expired-credentials", kinds=frozenset({"list-objects"})))
    with pytest.raises(PersistIOError) as caught:
        writer.save(model(3), **WHERE, when=T0 + dt.timedelta(hours=2))
    assert caught.value.errno == errno.EACCES and "expired" in str(caught.value)
    assert "Refresh them" in str(caught.value)
    assert consistent_on_server(make) == listed

    # 5. the process dies mid-save, before its record is written, then one dies right after writing it
    faults.arm(ObjectFault(0, "crash-before", kinds=frozenset({"put-new"})))
    with pytest.raises(SimulatedCrash):
        writer.save(model(3), **WHERE, when=T0 + dt.timedelta(hours=2))
    assert consistent_on_server(make) == listed  # its data is up, unlisted: never a partial version
    with use_object_store(
        lambda s: FaultObjectStore(s, ObjectFault(0, "crash-after", kinds=frozenset({"put-new"})))
    ):
        doomed = make("writer-2")
    with pytest.raises(SimulatedCrash):
        doomed.save(model(4), **WHERE, when=T0 + dt.timedelta(hours=3))
    after_crash = consistent_on_server(make)
    assert len(after_crash) == 3 and make().latest(**WHERE) == v1  # listed; the pointer was never moved

    # 6. a fresh process saves: it works and becomes the latest
    v5 = make("writer-3").save(model(5), **WHERE, when=T0 + dt.timedelta(hours=4))
    assert consistent_on_server(make) == [*after_crash, v5]
    assert make().latest(**WHERE) == v5
    np.testing.assert_array_equal(make().load_latest(**WHERE)["m"], model(5)["m"])


# -- recording against the real server, replayed into memory ------------------------------


def test_recording_replayed_into_memory_gives_the_real_bucket(bucket_store, tmp_path):
    _, opts, make = bucket_store
    server, bucket = make.server, make.bucket
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 40)
    with record_objects() as log:
        writer = make("writer")
        for i in range(3):
            writer.save(model(i), **WHERE, when=T0 + dt.timedelta(hours=i))
        writer.prune(keep=1)
        other = remote_store(f"s3://{bucket}/misc", storage_options=opts)
        assert other.put_file_new("blob", str(blob))
        etag = other.swap("pointer", b"one", None)
        assert other.swap("pointer", b"two", etag) is not None
        assert other.swap("pointer", b"lost", etag) is None  # a lost race: recorded, changes nothing
        other.put_new("gone", b"x")
        other.delete("gone")

    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    real = {
        f"s3://{bucket}/{o['Key']}": client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listing
    }

    memory = MemoryObjectStore(f"s3://{bucket}")
    for op in log.mutations():
        key = op.url[len(memory.url) + 1 :]
        if op.kind == "delete":
            memory.delete(key)
        elif op.kind == "swap":
            current = memory.get_or_none(key)
            assert memory.swap(key, op.data, None if current is None else current.etag) is not None
        else:
            assert memory.put_new(key, op.data), op.describe()
    replayed = {memory.url_of(k): memory.get(k).data for k in memory.walk()}
    assert sorted(replayed) == sorted(real) and replayed == real
    assert dict(list(object_crash_states({}, log))[-1].objects) == real
    assert len(log.reads()) > 0 and len(log.mutations()) >= 12
