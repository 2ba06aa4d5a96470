"""ModelStore("s3://..."): the bucket is untrusted input, and the network can lie.

Against moto's standalone server, and, where the finding needs a lying server, a misbehaving HTTP
front in front of it (``fronts.Front``): a front that ignores a condition, rewrites etags, drops an
answer after the server acted, or sends a body that never ends or trickles in.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import threading
import time

import numpy as np
import pytest
from fronts import Front, completing, key_is

import persistkit as pk
from persistkit.errors import IntegrityError, PersistIOError, WrongKeyError

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
GROUP = "models/BTC-USDT/ppo/1h"
T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def store_at(s3_bucket, tmp_path):
    server, bucket = s3_bucket

    def make(cache="cache", options=None, **kw):
        kw.setdefault("key_file", tmp_path / "store.key")
        return pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / cache,
                             storage_options=options or server.storage_options, **kw)  # fmt: skip

    make.server, make.bucket, make.tmp = server, bucket, tmp_path
    return make


@pytest.fixture
def front(s3_server):
    made = Front(s3_server.endpoint)
    yield made
    made.close()


def put(store_at, key, body):
    store_at.server.client().put_object(Bucket=store_at.bucket, Key=key, Body=body)


def everything_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# -- names from the bucket never leave the cache ---------------------------------------------


ESCAPE = "../../../../escaped/2030-01-01_000000.models"


def plant_escape(store_at, writer):
    """A bucket tenant copies a real version to a key that climbs out of the group, with its record."""
    real = writer.save({"w": np.arange(3.0)}, **WHERE)
    client = store_at.server.client()
    data = client.get_object(Bucket=store_at.bucket, Key=f"{GROUP}/{real.name}")["Body"].read()
    record = json.loads(
        client.get_object(Bucket=store_at.bucket, Key=f"{GROUP}/{real.name}.json")["Body"].read()
    )
    put(store_at, f"{GROUP}/{ESCAPE}", data)
    put(store_at, f"{GROUP}/{ESCAPE}.json", json.dumps({**record, "name": ESCAPE}).encode())
    return record


def test_a_latest_pointer_naming_a_path_outside_the_group_is_refused_and_nothing_is_written_outside(store_at):
    record = plant_escape(store_at, store_at("trainer"))
    pointer = {"format": "persistkit.latest", "version": 1, "name": ESCAPE, "sha256": record["sha256"],
               "size": record["size"]}  # fmt: skip
    put(store_at, f"{GROUP}/LATEST.json", json.dumps(pointer).encode())
    bot = store_at("bot/cache")
    with pytest.raises(IntegrityError) as info:
        bot.load_latest(**WHERE)
    assert info.value.path == f"s3://{store_at.bucket}/{GROUP}/LATEST.json" and info.value.field == "name"
    assert "latest pointer is unreadable" in str(info.value)
    assert not (store_at.tmp / "escaped").exists() and not (store_at.tmp / "bot" / "escaped").exists()
    assert everything_under(store_at.tmp / "bot") == []  # not a byte anywhere, in the cache or outside


def test_an_alias_naming_a_path_outside_the_store_is_refused_and_nothing_is_written_outside(store_at):
    plant_escape(store_at, store_at("trainer"))
    index = {"format": "persistkit.aliases", "version": 1, "events": [
        {"alias": "production", "path": f"BTC-USDT/ppo/1h/{ESCAPE}", "since": "2024-03-01T12:00:00+00:00",
         "until": None}]}  # fmt: skip
    put(store_at, "models/aliases.json", json.dumps(index).encode())
    bot = store_at("bot/cache")
    with pytest.raises(IntegrityError) as info:
        bot.load("production")
    assert info.value.path == f"s3://{store_at.bucket}/models/aliases.json"
    assert info.value.field == "events[0].path"
    assert not (store_at.tmp / "escaped").exists() and everything_under(store_at.tmp / "bot") == []


@pytest.mark.parametrize(
    ("key", "body", "field"),
    [
        (f"{GROUP}/LATEST.json", {"format": "persistkit.latest", "version": 1, "name": 7, "sha256": "0" * 64,
                                  "size": 1}, "name"),
        (f"{GROUP}/LATEST.json", {"format": "persistkit.latest", "version": 1, "name": "2024-03-01_120000.models",
                                  "sha256": "0" * 64, "size": "1"}, "size"),
        ("models/aliases.json", {"format": "persistkit.aliases", "version": 1, "events": [
            {"alias": "production", "path": "BTC-USDT/ppo/1h/2024-03-01_120000.models", "since": 5,
             "until": None}]}, "events[0].since"),
        ("models/aliases.json", {"format": "persistkit.aliases", "version": 1, "events": {"x": 1}}, "events"),
        ("models/aliases.json", {"format": "persistkit.aliases", "version": 1, "events": [
            {"alias": "production", "path": ["x"], "since": "2024-03-01T12:00:00+00:00", "until": None}]},
         "events[0].path"),
    ],
    ids=["pointer-name-int", "pointer-size-str", "alias-since-int", "events-not-list", "alias-path-list"],
)  # fmt: skip
def test_wrong_field_types_are_integrity_errors_naming_the_object_and_field(store_at, key, body, field):
    writer = store_at("trainer")
    version = writer.save({"w": np.zeros(2)}, **WHERE, when=T0)
    writer.tag(version, "production")
    put(store_at, key, json.dumps(body).encode())
    bot = store_at("bot")
    with pytest.raises(IntegrityError) as info:
        bot.load_latest(**WHERE) if "LATEST" in key else bot.live_at("production", T0)
    assert info.value.path == f"s3://{store_at.bucket}/{key}" and info.value.field == field


def test_a_version_name_with_an_impossible_date_is_skipped_reported_and_never_pruned(store_at, caplog):
    writer = store_at("trainer")
    good = writer.save({"w": np.zeros(1)}, **WHERE, when=T0)
    bogus = f"{GROUP}/2026-13-99_000000.models"
    put(store_at, bogus, b"x")
    put(
        store_at,
        bogus + ".json",
        b'{"format": "persistkit.remote-version", "sha256": "' + b"0" * 64 + b'", "size": 1}',
    )
    assert writer.versions(**WHERE) == [good]
    assert "2026-13-99_000000.models" in caplog.text and "not a time" in caplog.text
    plan = {d.item.id: d for d in writer.prune_plan(keep=0)}
    skipped = plan[f"s3://{store_at.bucket}/{bogus}"]
    assert skipped.keep and "not a version, left alone" in skipped.reasons[0]
    assert writer.prune(keep=0) == []  # the pointer pins the good one; the bogus one is not a version
    assert bogus in [
        o["Key"] for o in store_at.server.client().list_objects_v2(Bucket=store_at.bucket)["Contents"]
    ]


# -- bounded reads -----------------------------------------------------------------------------


def test_an_endless_pointer_body_is_cut_off_at_the_cap(store_at, front):
    store_at("trainer").save({"w": np.zeros(1)}, **WHERE)
    front.add(key_is("LATEST.json", "GET"), "endless", b"x" * 65536)
    bot = store_at("bot", options=front.options(store_at.server.storage_options))
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="larger than 1048576 bytes") as info:
        bot.latest(**WHERE)
    assert info.value.path == f"s3://{store_at.bucket}/{GROUP}/LATEST.json"
    assert time.monotonic() - started < 30
    assert front.sent < 8 << 20  # what was sent before the reader hung up: the cap, and what was in flight


def test_a_pointer_trickled_one_byte_at_a_time_meets_a_deadline(store_at, front):
    store_at("trainer").save({"w": np.zeros(1)}, **WHERE)
    front.add(key_is("LATEST.json", "GET"), "trickle", (b" " * 200, 0.5))
    options = front.options(store_at.server.storage_options, connect_timeout=1, read_timeout=1)
    bot = store_at("bot", options=options)
    bot.remote.retries = 2
    done = threading.Event()
    caught = []

    def read():
        try:
            bot.latest(**WHERE)
        except BaseException as err:
            caught.append(err)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(60), "the trickled read never ended"
    [err] = caught
    assert isinstance(err, PersistIOError) and err.errno == errno.ETIMEDOUT and "deadline" in str(err)
    assert err.path == f"s3://{store_at.bucket}/{GROUP}/LATEST.json"


# -- conditions a server ignores, answers it loses, etags it changes -------------------------------


BIG = 2_000_000  # float64s: ~16 MB, two parts of 8 MiB


def test_a_server_that_ignores_the_condition_on_multipart_completion_is_refused_before_the_first_write(
    store_at, front
):
    front.add(completing, "strip", "If-None-Match")
    writer = store_at("trainer", options=front.options(store_at.server.storage_options))
    with pytest.raises(PersistIOError) as info:
        writer.save({"w": np.zeros(1)}, **WHERE)
    assert info.value.errno == errno.EOPNOTSUPP and "CompleteMultipartUpload" in str(info.value)
    assert writer.versions(**WHERE) == []  # refused before anything was written


def test_a_multipart_upload_completed_over_by_another_writer_is_not_taken_for_ours(store_at, front):
    """The front passes the probe but ignores If-None-Match on completion, and another trainer's upload of
    the same name completes right after ours, before we hear back. The completed object is checked to be
    ours; it is not, so the version goes up under the next name, and what LATEST names loads."""
    store_at("trainer").save({"w": np.zeros(1)}, **WHERE, when=T0)  # the store, its key and its pointer
    foreign = store_at.tmp / "foreign.models"
    pk.save_bundle(foreign, {"w": np.ones(BIG)}, key_file=store_at.tmp / "store.key")

    def another_trainer_completes(request):
        put(store_at, request.key.split("/", 1)[1], foreign.read_bytes())

    front.add(lambda r: completing(r) and not r.is_probe, "strip", "If-None-Match")
    front.rules.insert(0, front.add(lambda r: completing(r) and not r.is_probe, "after", another_trainer_completes,
                                    times=1))  # fmt: skip
    del front.rules[-1]
    writer = store_at("writer", options=front.options(store_at.server.storage_options))
    writer.remote.part_size = 5 * 2**20
    mine = np.random.default_rng(2).random(BIG)
    version = writer.save({"w": mine}, **WHERE, when=T0)
    assert version.name == "2024-03-01_120000_2.models"  # _1 holds the other trainer's object
    fresh = store_at("fresh")
    np.testing.assert_array_equal(fresh.load(version)["w"], mine)
    np.testing.assert_array_equal(fresh.load_latest(**WHERE)["w"], mine)
    assert fresh.latest(**WHERE) == version


def test_a_lost_answer_to_a_multipart_completion_is_recognised_as_ours(store_at, front):
    """The server completes the upload, the answer is lost, the retry finds the upload gone: the object
    there is ours (its etag and size), so the version is published under that name, with no orphan."""
    store_at("trainer").save({"w": np.zeros(1)}, **WHERE, when=T0)
    front.add(lambda r: completing(r) and not r.is_probe, "drop", times=1)
    writer = store_at("writer", options=front.options(store_at.server.storage_options))
    writer.remote.part_size, writer.remote.backoff = 5 * 2**20, 0.01
    mine = np.random.default_rng(3).random(BIG)
    version = writer.save({"w": mine}, **WHERE, when=T0)
    assert version.name == "2024-03-01_120000_1.models"
    assert [r.fired for r in front.rules] == [1]
    keys = [
        o["Key"]
        for o in store_at.server.client().list_objects_v2(Bucket=store_at.bucket, Prefix=GROUP)["Contents"]
    ]
    assert [k for k in keys if k.endswith(".models")] == [
        f"{GROUP}/2024-03-01_120000.models",
        f"{GROUP}/{version.name}",
    ]
    assert all(k + ".json" in keys for k in keys if k.endswith(".models"))  # no orphan left behind
    np.testing.assert_array_equal(store_at("fresh").load_latest(**WHERE)["w"], mine)


def test_a_lost_answer_to_a_pointer_swap_that_landed_is_a_success(store_at, front):
    """A regression guard for swap_until: the pointer's swap landed, its answer was lost, the retry is refused."""
    first = store_at("trainer").save({"w": np.zeros(1)}, **WHERE)
    front.add(key_is("LATEST.json", "PUT"), "drop", times=1)
    writer = store_at("writer", options=front.options(store_at.server.storage_options))
    writer.remote.backoff = 0.01
    second = writer.save({"w": np.ones(1)}, **WHERE)
    assert [r.fired for r in front.rules] == [1] and second != first
    assert store_at("fresh").latest(**WHERE) == second


def test_a_front_that_rewrites_etags_is_a_typed_error_at_once_not_a_thousand_rounds(store_at, front):
    writer = store_at("trainer")
    version = writer.save({"w": np.zeros(1)}, **WHERE)
    writer.tag(version, "staging")  # aliases.json exists: the next move is a compare-and-swap on its etag
    front.add(lambda r: r.key.endswith("aliases.json") and r.method in ("GET", "HEAD"), "etag",
              lambda etag: '"rewritten-' + etag.strip('"') + '"')  # fmt: skip
    tagger = store_at("tagger", options=front.options(store_at.server.storage_options))
    with pytest.raises(PersistIOError) as info:
        tagger.tag(version, "production")
    assert info.value.errno == errno.EOPNOTSUPP and "etag" in str(info.value)
    assert info.value.path == f"s3://{store_at.bucket}/models/aliases.json"
    swaps = [line for line in front.log if line.startswith("forward PUT") and "aliases.json" in line]
    assert len(swaps) <= 2  # refused, read again, refused on the same etag: no thousand rounds
    assert store_at("fresh").aliases() == {"staging": version}


# -- the store's key, and what stays out of the bucket -------------------------------------------


def test_a_trainer_without_the_store_key_is_refused_instead_of_minting_another(store_at):
    first = store_at("trainer").save({"w": np.zeros(1)}, **WHERE)
    (store_at.tmp / "second").mkdir()  # a machine with its own (empty) key directory
    stranger = store_at("second-trainer", key_file=store_at.tmp / "second" / "store.key")
    with pytest.raises(WrongKeyError) as info:
        stranger.save({"w": np.ones(1)}, **WHERE)
    message = str(info.value)
    assert (
        "no key file at" in message and "Copy the store's key" in message and "Nothing was saved" in message
    )
    assert info.value.path == f"s3://{store_at.bucket}/models/store.json"
    assert not (store_at.tmp / "second" / "store.key").exists()  # no new key was made
    other = store_at.tmp / "other.key"
    pk.keys.write_key_file(other)
    with pytest.raises(WrongKeyError, match="fingerprint"):
        store_at("third-trainer", key_file=other).save({"w": np.ones(1)}, **WHERE)
    assert store_at("bot").versions(**WHERE) == [first]  # nothing published that bots could not open
    second = store_at("second-trainer").save({"w": np.ones(1)}, **WHERE)  # with the copied key: fine
    np.testing.assert_array_equal(store_at("bot").load_latest(**WHERE)["w"], np.ones(1))
    assert store_at("bot").versions(**WHERE) == [first, second]


def test_an_older_store_without_a_recorded_key_refuses_a_trainer_that_would_mint_one(store_at):
    store_at("trainer").save({"w": np.zeros(1)}, **WHERE)
    put(
        store_at,
        "models/store.json",
        b'{"format": "persistkit.model-store", "version": 1, "encrypted": true}',
    )
    (store_at.tmp / "none").mkdir()
    with pytest.raises(WrongKeyError, match="already holds encrypted versions"):
        store_at("keyless", key_file=store_at.tmp / "none" / "store.key").save({"w": np.ones(1)}, **WHERE)
    store_at("trainer").save({"w": np.ones(1)}, **WHERE)  # the trainer with the key records it
    doc = json.loads(
        store_at.server.client().get_object(Bucket=store_at.bucket, Key="models/store.json")["Body"].read()
    )
    assert doc["key"]["kind"] == "key file" and doc["key"]["fingerprint"] == pk.keys.read_key_file(
        store_at.tmp / "store.key").fingerprint  # fmt: skip


def test_an_encrypted_store_keeps_the_config_out_of_the_bucket(store_at):
    marker = "CONFIG-MARKER-41c7"
    store = store_at("trainer")
    version = store.save({"w": np.zeros(1)}, **WHERE, config={"secret": marker})
    client = store_at.server.client()
    for entry in client.list_objects_v2(Bucket=store_at.bucket)["Contents"]:
        assert (
            marker.encode() not in client.get_object(Bucket=store_at.bucket, Key=entry["Key"])["Body"].read()
        )
    assert store_at("bot").load(version).metadata["config"] == {"secret": marker}  # in the sealed bundle
