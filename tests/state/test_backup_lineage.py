"""State-store backups that know their history, read an untrusted pointer, and survive a lying network.

Against moto's standalone server, and a misbehaving HTTP front (``fronts.Front``) where the finding
needs one: it drops an answer after the server acted, rewrites etags, or lets a bot move on while a
restore is fetching.
"""

from __future__ import annotations

import errno
import json
import shutil

import pytest
from fronts import Front, key_is
from test_backup import open_bot, pointer, restore_and_load, trade

import persistkit as pk
from persistkit.errors import IntegrityError, PersistIOError, PersistkitError
from persistkit.state import backup as backup_mod


def objects(server, bucket, prefix):
    out = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in out.get("Contents", []))


def named(doc):
    keys = {e["key"] for e in doc["files"].values()}
    for journal in doc["journals"].values():
        keys |= {s["key"] for s in journal["segments"]}
    return keys


@pytest.fixture
def front(s3_server):
    made = Front(s3_server.endpoint)
    yield made
    made.close()


# -- lineage: a local fallback or an older copy never replaces the newer off-site checkpoint ---------


def test_a_store_that_fell_back_never_replaces_or_deletes_the_newer_off_site_checkpoint(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/fallback"
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    for i in range(3):
        trade(store, trades, book, i)
        store.save()
    for i in range(3, 6):
        trade(store, trades, book, i)
    store.backup.backup_now()
    newest = store.generation
    store.close()  # the final round: generation `newest` and every trade are off-site
    off_site = pointer(server, bucket, "bots/fallback")
    assert off_site["generation"] >= newest
    # a bit flips in the newest local checkpoint: load falls back to an older one and commits on top of it
    gdir = tmp_path / "bot" / f"gen-{off_site['generation']:06d}"
    data = bytearray((gdir / "book.pk").read_bytes())
    data[len(data) // 2] ^= 0x01
    (gdir / "book.pk").write_bytes(bytes(data))
    again, _, _ = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    with pytest.warns(pk.StateRecoveredWarning):
        report = again.load()
    assert report.recovered and again.generation > off_site["generation"]
    with pytest.raises(PersistkitError) as caught:
        again.backup.backup_now()
    assert "does not descend from it" in str(caught.value) and f"{url}/BACKUP.json" in str(caught.value)
    status = again.stats()["backup"]
    assert status["refused"] and "fell back" in status["refused"] and status["last_error"]
    assert pointer(server, bucket, "bots/fallback") == off_site  # untouched
    assert named(off_site) <= set(objects(server, bucket, "bots/fallback"))  # every object still there
    again.abandon()
    _, _, (got, _) = restore_and_load(url, server, tmp_path / "elsewhere")
    assert [t["id"] for t in got] == list(range(6))  # the off-site copy still holds every trade


def test_a_store_put_back_from_an_older_copy_never_replaces_the_newer_off_site_checkpoint(
    s3_bucket, tmp_path
):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/snapshot"
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    trade(store, trades, book, 0)
    store.save()
    store.backup.backup_now()
    store.close()
    shutil.copytree(tmp_path / "bot", tmp_path / "vm-snapshot")  # the VM is snapshotted here
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    for i in range(1, 5):
        trade(store, trades, book, i)
        store.save()
    store.close()
    off_site = pointer(server, bucket, "bots/snapshot")
    shutil.rmtree(tmp_path / "bot")
    shutil.copytree(tmp_path / "vm-snapshot", tmp_path / "bot")  # ...and put back from the snapshot
    old, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    old.load()
    while old.generation <= off_site["generation"]:  # its generation numbers catch up, then overtake
        trade(old, trades, book, 100 + old.generation)
        old.save()
        with pytest.raises(PersistkitError, match=r"never moves backwards|does not descend"):
            old.backup.backup_now()
    assert old.generation > off_site["generation"]
    with pytest.raises(PersistkitError, match="does not descend from it"):
        old.backup.backup_now()
    assert "older copy" in old.stats()["backup"]["refused"]
    assert pointer(server, bucket, "bots/snapshot") == off_site
    assert named(off_site) <= set(objects(server, bucket, "bots/snapshot"))
    old.abandon()
    _, _, (got, _) = restore_and_load(url, server, tmp_path / "elsewhere")
    assert [t["id"] for t in got] == list(range(5))


def test_a_restart_after_many_checkpoints_still_proves_its_descent_from_the_lineage_file(s3_bucket, tmp_path):
    """More checkpoints than the store keeps between two rounds, and a restart: the round still goes up."""
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/lineage"
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None, keep_generations=2)
    store.load()
    trade(store, trades, book, 0)
    store.backup.backup_now()
    before = pointer(server, bucket, "bots/lineage")["generation"]
    trade(store, trades, book, 1)
    store.save()
    store.backup.backup_now()
    for i in range(2, 8):  # the off-site generation is pruned locally long before the next round
        trade(store, trades, book, i)
        store.save()
    store.abandon()  # killed: no final round
    lineage = json.loads((tmp_path / "bot" / ".persistkit.backup.json").read_text())
    off_site = pointer(server, bucket, "bots/lineage")
    assert lineage["off_site"]["generation"] == off_site["generation"] > before
    assert lineage["seen"]["generation"] == store.generation  # every commit was noted
    again, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None, keep_generations=2)
    again.load()
    again.backup.backup_now()  # descends: proven through the lineage file written by the last round
    assert pointer(server, bucket, "bots/lineage")["generation"] == again.generation
    assert (
        pointer(server, bucket, "bots/lineage")["parent"]["generation"] == lineage["off_site"]["generation"]
    )
    again.close()


# -- a pointer from an untrusted bucket --------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e300"])
def test_a_pointer_with_an_impossible_time_is_refused_before_anything_is_restored(s3_bucket, tmp_path, value):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/times"
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    trade(store, trades, book, 0)
    store.close()
    good = server.client().get_object(Bucket=bucket, Key="bots/times/BACKUP.json")["Body"].read()
    doc = good.decode().replace('"as_of": ', f'"as_of": {value}, "was": ', 1)
    server.client().put_object(Bucket=bucket, Key="bots/times/BACKUP.json", Body=doc.encode())
    into = tmp_path / "restored"
    with pytest.raises(IntegrityError) as caught:
        pk.StateStore.restore_from(url, into, storage_options=server.storage_options)
    assert caught.value.path == f"{url}/BACKUP.json" and caught.value.field in ("as_of", "(the document)")
    assert not into.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    server.client().put_object(Bucket=bucket, Key="bots/times/BACKUP.json", Body=good)  # repaired
    report = pk.StateStore.restore_from(url, into, storage_options=server.storage_options)  # the same target
    assert report.directory == str(into)


def test_restore_errors_name_the_bucket_object_not_a_temp_copy(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/forged"
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    trade(store, trades, book, 0)
    store.close()
    doc = pointer(server, bucket, "bots/forged")
    key = doc["files"]["book.pk"]["key"]
    forged = b"\x89PKENV" + b"\x00" * 200  # checked against its (rewritten) sha256, then parsed: damage
    import hashlib

    doc["files"]["book.pk"].update(sha256=hashlib.sha256(forged).hexdigest(), size=len(forged))
    client = server.client()
    client.put_object(Bucket=bucket, Key=f"bots/forged/{key}", Body=forged)
    client.put_object(Bucket=bucket, Key="bots/forged/BACKUP.json", Body=json.dumps(doc).encode())
    with pytest.raises(PersistkitError) as caught:
        pk.StateStore.restore_from(url, tmp_path / "restored", storage_options=server.storage_options)
    message = str(caught.value)
    assert f"{url}/{key}" in message and caught.value.path.startswith(url)
    assert ".restore-" not in message and ".pk-tmp-" not in message and str(tmp_path) not in message


# -- lost answers and lies ---------------------------------------------------------------------------


def test_a_pointer_swap_whose_answer_was_lost_is_a_success(s3_bucket, tmp_path, front):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/lost"
    options = front.options(server.storage_options)
    store = pk.StateStore(tmp_path / "bot", autosave_every=None, backup_to=url, backup_every=None,
                          storage_options=options)  # fmt: skip
    trades = store.register("trades", pk.BoundedLog(100))
    store.load()
    trades.append({"id": 0})
    store.backup.backup_now()  # the first pointer
    front.add(key_is("BACKUP.json", "PUT"), "drop", times=1)
    store.save()
    status = store.backup.backup_now()  # the swap lands, its answer is lost, the retry is refused
    assert [r.fired for r in front.rules] == [1]
    assert status.remote_generation == store.generation and status.last_error is None
    assert pointer(server, bucket, "bots/lost")["generation"] == store.generation
    store.close()


def test_a_front_that_rewrites_etags_stops_backups_with_a_typed_error_at_once(s3_bucket, tmp_path, front):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/etags"
    front.add(lambda r: r.key.endswith("BACKUP.json") and r.method in ("GET", "HEAD"), "etag",
              lambda etag: '"rewritten-' + etag.strip('"') + '"')  # fmt: skip
    store = pk.StateStore(tmp_path / "bot", autosave_every=None, backup_to=url, backup_every=None,
                          storage_options=front.options(server.storage_options))  # fmt: skip
    trades = store.register("trades", pk.BoundedLog(100))
    store.load()
    trades.append({"id": 0})
    store.backup.backup_now()  # creating the pointer needs no etag
    store.save()
    with pytest.raises(PersistIOError) as caught:
        store.backup.backup_now()
    assert caught.value.errno == errno.EOPNOTSUPP and "etag" in str(caught.value)
    assert "another process" not in str(caught.value)
    assert "etag" in store.stats()["backup"]["last_error"]
    swaps = [
        line
        for line in front.log
        if line.startswith("forward PUT") and line.split()[2].endswith("BACKUP.json")
    ]
    assert len(swaps) <= 3  # the first pointer, then one refused swap (and at most one more): no loop
    store.abandon()


# -- restoring from a bot that keeps moving ------------------------------------------------------------


def busy_bot(tmp_path, server, url):
    store, trades, book = open_bot(tmp_path / "bot", url=url, server=server, every=None)
    store.load()
    for i in range(3):
        trade(store, trades, book, i)
    store.save()
    store.backup.backup_now()
    moves = []

    def bot_moves_on(request):  # while the restore fetches, the bot checkpoints and backs up again
        trade(store, trades, book, 100 + len(moves))
        store.save()
        store.backup.backup_now()
        moves.append(store.generation)

    return store, bot_moves_on, moves


def test_a_restore_of_a_running_bot_finishes_while_the_bot_moves_on(s3_bucket, tmp_path, front):
    """Objects the pointer stopped naming stay RETIRE_GRACE: a restore that read it finishes."""
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/busy"
    store, bot_moves_on, moves = busy_bot(tmp_path, server, url)
    first = pointer(server, bucket, "bots/busy")
    front.add(lambda r: r.method == "GET" and "/objects/" in r.key, "before", bot_moves_on, times=5)
    report = pk.StateStore.restore_from(url, tmp_path / "restored",
                                        storage_options=front.options(server.storage_options))  # fmt: skip
    assert (
        len(moves) == 5 and report.generation == first["generation"]
    )  # before each object: it read them all
    assert pointer(server, bucket, "bots/busy")["generation"] == moves[-1]
    store.abandon()


def test_a_restore_follows_the_newest_pointer_for_as_long_as_the_bot_moves_on(
    s3_bucket, tmp_path, front, monkeypatch
):
    """Without a grace, every fetch finds an object gone: the restore starts over from the newer pointer."""
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/racing"
    store, bot_moves_on, moves = busy_bot(tmp_path, server, url)
    front.add(lambda r: r.method == "GET" and "/objects/" in r.key, "before", bot_moves_on, times=7)
    report = pk.StateStore.restore_from(url, tmp_path / "restored",
                                        storage_options=front.options(server.storage_options))  # fmt: skip
    assert len(moves) == 7 and report.generation == moves[-1]  # more attempts than the five it used to allow
    store.abandon()
