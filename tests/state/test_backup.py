"""Off-site backups of a StateStore (persistkit.state.backup) against a real local S3 server (moto)."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

import persistkit as pk
from persistkit.errors import IntegrityError, PersistIOError, PersistkitError, WrongKeyError
from persistkit.keys import write_key_file
from persistkit.state import backup as backup_mod
from persistkit.state.journal import APPEND, JournalWriter

MARKER = "PLAINTEXT-MARKER-7f3a"


class Book:
    """A checkpointed component."""

    def __init__(self) -> None:
        self.cash = 0.0
        self.last_id = -1
        self.note = ""

    def state_dict(self):
        return {"cash": self.cash, "last_id": self.last_id, "note": self.note}

    def load_state_dict(self, state):
        self.cash, self.last_id, self.note = state["cash"], state["last_id"], state["note"]


def open_bot(directory, *, url=None, server=None, every=0.05, **kw):
    if url is not None:
        kw.update(backup_to=url, backup_every=every, storage_options=server.storage_options)
    store = pk.StateStore(directory, autosave_every=None, **kw)
    trades = store.register("trades", pk.BoundedLog(10_000))
    book = store.register("book", Book())
    return store, trades, book


def trade(store, trades, book, i, note=""):
    with store.atomic():
        trades.append({"id": i, "pnl": float(i), "note": note})
        book.cash += float(i)
        book.last_id = i
        book.note = note


def restore_and_load(url, server, into, **kw):
    report = pk.StateStore.restore_from(url, into, storage_options=server.storage_options, **kw)
    store, trades, book = open_bot(into, **kw)
    load = store.load()
    state = (list(trades), book.state_dict())
    store.close()
    return report, load, state


def objects(server, bucket):
    client = server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            out[entry["Key"]] = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    return out


def pointer(server, bucket, prefix):
    body = server.client().get_object(Bucket=bucket, Key=f"{prefix}/BACKUP.json")["Body"].read()
    return json.loads(body)


def wait_for(predicate, *, seconds=30.0):
    """Poll until ``predicate()`` (a liveness bound, not a speed target)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not reached within {seconds} s")


def backed_up(store):
    status = store.stats()["backup"]
    return (
        status["pending_generations"] == 0 and status["pending_records"] == 0 and status["last_error"] is None
    )


# -- round trips ----------------------------------------------------------------------------------


def test_round_trip_with_appends_and_saves_restores_on_another_machine(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/alpha"
    store, trades, book = open_bot(tmp_path / "machine-a", url=url, server=server)
    store.load()
    for i in range(20):
        trade(store, trades, book, i)
    store.save()
    for i in range(20, 35):
        trade(store, trades, book, i)
    store.backup.backup_now()
    # appends after the checkpoint reach the remote copy as journal segments
    doc = pointer(server, bucket, "bots/alpha")
    assert doc["generation"] == store.generation
    assert doc["journals"]["trades"]["segments"][-1]["end"] == 35
    expected_trades, expected_book = list(trades), book.state_dict()
    report, load, (got_trades, got_book) = restore_and_load(url, server, tmp_path / "machine-b")
    assert got_trades == expected_trades  # every append, the last 15 from segments
    # the checkpointed component is as of the last checkpoint; the journal is ahead of it
    assert got_book["last_id"] == 19 and expected_book["last_id"] == 34
    assert report.generation == doc["generation"] and report.journal_records == {"trades": 15}
    assert report.components == ["book", "trades"] and report.bytes > 0
    assert load.generation == report.generation
    assert 0 <= report.age_seconds < 600 and report.directory == str(tmp_path / "machine-b")
    store.close()
    # after close the final checkpoint is backed up: the restore holds everything, in every component
    _, _, (got_trades, got_book) = restore_and_load(url, server, tmp_path / "machine-c")
    assert got_trades == expected_trades and got_book == expected_book


def test_background_thread_backs_up_without_being_asked(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/bg"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server)
    store.load()
    for i in range(5):
        trade(store, trades, book, i)
    wait_for(lambda: backed_up(store))
    status = store.stats()["backup"]
    assert status["running"] and status["rounds"] >= 1 and status["uploaded_objects"] >= 5
    assert status["remote_generation"] == store.generation
    assert status["seconds_since_success"] is not None
    store.save()
    wait_for(lambda: backed_up(store))
    assert pointer(server, bucket, "bots/bg")["generation"] == store.generation
    store.close()


def test_old_generations_and_merged_segments_are_removed_remotely(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)  # collected at once: this test checks the collection
    server, bucket = s3_bucket
    monkeypatch.setattr(backup_mod, "MAX_SEGMENTS", 3)
    url = f"s3://{bucket}/bots/gc"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=3600)
    store.load()
    for i in range(8):  # one segment per round: past 3 they are merged into one
        trade(store, trades, book, i)
        store.backup.backup_now()
        doc = pointer(server, bucket, "bots/gc")
        assert len(doc["journals"]["trades"]["segments"]) <= 3
    names = set(objects(server, bucket)) - {"bots/gc/BACKUP.json"}
    named = {e["key"] for e in doc["files"].values()} | {
        s["key"] for s in doc["journals"]["trades"]["segments"]
    }
    assert {n.removeprefix("bots/gc/") for n in names} == named  # nothing unnamed is left
    for _ in range(3):
        store.save()
        store.backup.backup_now()
    doc = pointer(server, bucket, "bots/gc")
    names = {n.removeprefix("bots/gc/") for n in objects(server, bucket)} - {"BACKUP.json"}
    assert all(n.startswith(f"objects/g{store.generation:06d}-") for n in names)
    expected = list(trades)
    store.close()
    _, _, (got, _) = restore_and_load(url, server, tmp_path / "b")
    assert got == expected


def test_with_a_key_nothing_leaves_the_machine_in_plaintext(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    key = tmp_path / "bot.key"
    write_key_file(key)
    url = f"s3://{bucket}/bots/secret"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, key_file=key)
    store.load()
    book.note = MARKER
    store.save()
    for i in range(10):
        trade(store, trades, book, i, note=MARKER)
    store.backup.backup_now()
    uploaded = objects(server, bucket)  # with the journal segments
    assert any(".journal." in k for k in uploaded)
    store.close()
    uploaded.update(objects(server, bucket))  # the final checkpoint
    assert len(uploaded) >= 7
    for name, data in uploaded.items():
        assert MARKER.encode() not in data, name
        assert MARKER.encode("utf-16-le") not in data, name
    # the local store holds the marker only encrypted too; and a restore with the key gets it back
    _, _, (got_trades, got_book) = restore_and_load(url, server, tmp_path / "b", key_file=key)
    assert got_book["note"] == MARKER and [t["note"] for t in got_trades] == [MARKER] * 10
    # without the key, or with another one, nothing is restored
    for kw in ({}, {"key_file": write_key_file(tmp_path / "other.key") and tmp_path / "other.key"}):
        with pytest.raises(WrongKeyError):
            pk.StateStore.restore_from(url, tmp_path / "c", storage_options=server.storage_options, **kw)
        assert not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_password_store_restores_with_the_password(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/pw"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, password="hunter2")
    store.load()
    trade(store, trades, book, 1, note=MARKER)
    store.save()
    store.close()
    assert all(MARKER.encode() not in data for data in objects(server, bucket).values())
    report = pk.StateStore.restore_from(
        url, tmp_path / "b", password="hunter2", storage_options=server.storage_options
    )
    assert report.journal_records == {"trades": 0}
    with pytest.raises(WrongKeyError):
        pk.StateStore.restore_from(
            url, tmp_path / "c", password="wrong", storage_options=server.storage_options
        )


# -- the network is down: the bot keeps trading ------------------------------------------------


def test_server_down_append_and_save_succeed_and_backup_catches_up_fail_recover_fail(own_s3_server, tmp_path):
    server = own_s3_server
    bucket = server.new_bucket()
    url = f"s3://{bucket}/bots/net"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server)
    store.load()
    trade(store, trades, book, 0)
    wait_for(lambda: backed_up(store))
    next_id = 1
    for outage in range(2):  # fail, recover, fail again, recover
        server.stop()
        # the thread is failing now, with backoff...
        wait_for(lambda: store.stats()["backup"]["failures"] >= 1)
        failures_before = store.stats()["backup"]["failures"]
        # ...and the bot keeps trading: appends and saves succeed while the server is down
        for _ in range(30):
            trade(store, trades, book, next_id)
            next_id += 1
        checkpoint = store.save()
        for _ in range(10):
            trade(store, trades, book, next_id)
            next_id += 1
        assert checkpoint.generation == store.generation
        status = store.stats()["backup"]
        assert status["pending_generations"] == 1 and status["pending_records"] >= 40
        assert f"s3://{bucket}/bots/net" in status["last_error"]
        with pytest.raises(PersistIOError) as caught:
            store.backup.backup_now()
        assert f"s3://{bucket}/bots/net" in str(caught.value) and "network" in str(caught.value)
        wait_for(lambda: store.stats()["backup"]["failures"] > failures_before)  # it kept retrying
        server.start()  # same port, same objects
        wait_for(lambda: backed_up(store))
        assert store.stats()["backup"]["failures"] == 0
        expected = list(trades)
        _, _, (got, _) = restore_and_load(url, server, tmp_path / f"restored-{outage}")
        assert got == expected
    store.close()


def test_close_gives_a_hung_round_a_bounded_chance_and_reports_what_is_left(tmp_path, caplog):
    """A server that accepts connections and never answers: a round hangs in a request."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    port = hole.getsockname()[1]
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 20},
    }
    pytest.importorskip("s3fs")
    try:
        store = pk.StateStore(
            tmp_path / "a",
            autosave_every=None,
            backup_to="s3://hole/bots/x",
            backup_every=0.05,
            storage_options=options,
            grace=0.5,
        )
        trades = store.register("trades", pk.BoundedLog(100))
        store.load()  # commits generation 1: a round starts and hangs in its first request
        wait_for(lambda: store.stats()["backup"]["in_round"])
        for i in range(50):
            trades.append(i)
        store.save()
        status = store.stats()["backup"]
        # everything above completed while that round was still hanging
        assert status["in_round"] and status["rounds"] == 0 and status["last_error"] is None
        assert status["pending_generations"] == 1 and status["pending_records"] == 50
        with caplog.at_level("WARNING", logger="persistkit"):
            store.close()
        assert "did not finish in 0.5 s" in caplog.text and "1 generation(s)" in caplog.text
        assert "s3://hole/bots/x" in caplog.text
    finally:
        hole.close()


# -- failures are typed and name the URL ---------------------------------------------------------


def test_corrupted_remote_object_fails_the_restore_naming_the_url(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/rot"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=3600)
    store.load()
    for i in range(5):
        trade(store, trades, book, i)
    store.backup.backup_now()
    store.abandon()
    doc = pointer(server, bucket, "bots/rot")
    client = server.client()
    victims = [doc["files"]["book.pk"]["key"], doc["files"]["MANIFEST"]["key"],
               doc["journals"]["trades"]["segments"][0]["key"]]  # fmt: skip
    for n, victim in enumerate(victims):
        key = f"bots/rot/{victim}"
        good = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(bad))
        into = tmp_path / f"b{n}"
        with pytest.raises(IntegrityError) as caught:
            pk.StateStore.restore_from(url, into, storage_options=server.storage_options)
        assert f"s3://{bucket}/{key}" in str(caught.value) and "Nothing was parsed" in str(caught.value)
        assert not into.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        client.put_object(Bucket=bucket, Key=key, Body=good)  # repaired: the restore works again
        _, _, (got, _) = restore_and_load(url, server, tmp_path / f"ok{n}")
        assert [t["id"] for t in got] == list(range(5))


def test_damaged_pointer_is_an_integrity_error_naming_the_field(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/ptr"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=3600)
    store.load()
    trade(store, trades, book, 0)
    store.backup.backup_now()
    doc = pointer(server, bucket, "bots/ptr")
    client = server.client()
    cases = [
        (b"{not json", "(the document)"),
        (json.dumps({**doc, "generation": "7"}).encode(), "generation"),
        (
            json.dumps({**doc, "files": {k: v for k, v in doc["files"].items() if k != "MANIFEST"}}).encode(),
            "files",
        ),
    ]
    segs = doc["journals"]["trades"]["segments"]
    forged = json.loads(json.dumps(doc))
    forged["journals"]["trades"]["segments"] = [
        {**segs[0], "first": segs[0]["first"] + 1, "end": segs[0]["end"] + 1}
    ]
    cases.append((json.dumps(forged).encode(), "journals['trades'].segments[0].first"))
    for body, where in cases:
        client.put_object(Bucket=bucket, Key="bots/ptr/BACKUP.json", Body=body)
        with pytest.raises(IntegrityError) as caught:
            pk.StateStore.restore_from(url, tmp_path / "b", storage_options=server.storage_options)
        assert caught.value.field == where and f"{url}/BACKUP.json" in str(caught.value)
        # the store's own backup refuses to build on it too, and says so in stats()
        with pytest.raises(IntegrityError):
            store.backup.backup_now()
        assert "BACKUP.json" in store.stats()["backup"]["last_error"]
    store.abandon()


def test_missing_bucket_missing_backup_and_bad_credentials_are_typed(s3_bucket, tmp_path, monkeypatch):
    server, bucket = s3_bucket
    # a bucket that does not exist: the round fails with the bucket named, the bot keeps going
    url = "s3://no-such-bucket-pk/bots/x"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=3600)
    store.load()
    trade(store, trades, book, 0)
    with pytest.raises(PersistIOError) as caught:
        store.backup.backup_now()
    assert "'no-such-bucket-pk' does not exist" in str(caught.value)
    assert "no-such-bucket-pk" in store.stats()["backup"]["last_error"]
    store.close()
    with pytest.raises(PersistIOError) as caught:
        pk.StateStore.restore_from(url, tmp_path / "b", storage_options=server.storage_options)
    assert "'no-such-bucket-pk' does not exist" in str(caught.value)
    # a bucket without a backup
    with pytest.raises(PersistIOError) as caught:
        pk.StateStore.restore_from(
            f"s3://{bucket}/nothing", tmp_path / "b", storage_options=server.storage_options
        )
    assert f"s3://{bucket}/nothing/BACKUP.json" in str(caught.value) and "backup_to" in str(caught.value)
    assert caught.value.errno == 2
    # no credentials at all (nothing in the environment, none given)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = {"client_kwargs": server.storage_options["client_kwargs"]}
    with pytest.raises(PersistkitError) as caught:
        pk.StateStore.restore_from(f"s3://{bucket}/x", tmp_path / "b", storage_options=anonymous)
    assert f"s3://{bucket}/x/BACKUP.json" in str(caught.value) and "credentials" in str(caught.value)
    assert isinstance(caught.value, PersistIOError) and caught.value.errno == errno.EACCES
    assert "Refresh them" in str(caught.value)  # the credentials advice, not "fix the cause above"
    assert not (tmp_path / "b").exists()


def test_restore_refuses_a_non_empty_directory_and_fills_an_empty_one(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/into"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server)
    store.load()
    trade(store, trades, book, 0)
    store.close()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(PersistIOError) as caught:
        pk.StateStore.restore_from(url, busy, storage_options=server.storage_options)
    assert str(busy) in str(caught.value) and "empty directory" in str(caught.value)
    assert (busy / "keep.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(PersistIOError):
        pk.StateStore.restore_from(url, a_file, storage_options=server.storage_options)
    empty = tmp_path / "empty"
    empty.mkdir()
    _, _, (got, _) = restore_and_load(url, server, empty)
    assert [t["id"] for t in got] == [0]


def test_another_store_or_a_newer_generation_at_the_url_is_never_overwritten(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/shared"
    first, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=3600)
    first.load()
    for i in range(3):
        trade(first, trades, book, i)
        first.save()
    first.backup.backup_now()
    before = pointer(server, bucket, "bots/shared")
    other, _, _ = open_bot(tmp_path / "b", url=url, server=server, every=3600)
    other.load()
    with pytest.raises(PersistkitError) as caught:
        other.backup.backup_now()
    assert "another store" in str(caught.value) and f"{url}/BACKUP.json" in str(caught.value)
    other.close()
    # a restored copy on another machine is behind the original: its backups never move the pointer back
    restored = pk.StateStore.restore_from(url, tmp_path / "c", storage_options=server.storage_options)
    assert restored.generation == before["generation"]
    for i in range(3, 6):  # the original moves on, three checkpoints further
        trade(first, trades, book, i)
        first.save()
    first.backup.backup_now()
    ahead = pointer(server, bucket, "bots/shared")
    copy, _, _ = open_bot(tmp_path / "c", url=url, server=server, every=3600)
    copy.load()  # one checkpoint after the restored one: still behind the original
    assert copy.generation < ahead["generation"]
    with pytest.raises(PersistkitError) as caught:
        copy.backup.backup_now()
    assert "never moves backwards" in str(caught.value) and f"{url}/BACKUP.json" in str(caught.value)
    assert pointer(server, bucket, "bots/shared") == ahead
    copy.abandon()
    first.close()
    assert pointer(server, bucket, "bots/shared")["store"] == before["store"]


def test_bad_arguments_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="object-store URL"):
        pk.StateStore(tmp_path / "a", backup_to=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="backup_every"):
        pk.StateStore(tmp_path / "a", backup_to="s3://b/x", backup_every=0)
    with pytest.raises(ValueError, match="writable"):
        pk.StateStore(tmp_path / "a", backup_to="s3://b/x", readonly=True)


# -- closed segments: whole, acknowledged records only ------------------------------------------


def test_segments_are_cut_at_record_boundaries_never_through_a_torn_record(tmp_path):
    path = str(tmp_path / "log.journal")
    writer = JournalWriter(path, next_seq=10)
    for i in range(5):
        writer.append(APPEND, f"record {i}".encode())
    writer.close()
    data = (tmp_path / "log.journal").read_bytes()
    whole, end = backup_mod.cut_segment(data, 10, 10, 15)
    assert whole == data and end == 15
    middle, end = backup_mod.cut_segment(data, 10, 12, 14)
    assert end == 14 and b"record 2" in middle and b"record 4" not in middle and b"record 1" not in middle
    torn = data + data[len(data) // 5 * 4 :][:7]  # a record being written: its first bytes only
    assert backup_mod.cut_segment(torn, 10, 10, 16) == (data, 15)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # the last record fails its checksum: it is not shipped
    upto_14, _ = backup_mod.cut_segment(data, 10, 10, 14)
    assert backup_mod.cut_segment(bytes(flipped), 10, 10, 15) == (upto_14, 14)
    assert backup_mod.cut_segment(data, 10, 15, 20) == (b"", 15)


def test_batch_sync_ships_only_records_that_are_on_disk(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/batch"
    store, trades, book = open_bot(
        tmp_path / "a", url=url, server=server, every=3600, sync="batch", batch_ms=1
    )
    store.load()
    for i in range(40):
        trade(store, trades, book, i)
    store.backup.backup_now()
    shipped = pointer(server, bucket, "bots/batch")["journals"]["trades"]["segments"]
    ends = [s["end"] for s in shipped]
    assert ends == sorted(ends) and (not ends or ends[-1] <= 40)
    store.flush()
    store.backup.backup_now()
    assert pointer(server, bucket, "bots/batch")["journals"]["trades"]["segments"][-1]["end"] == 40
    store.abandon()
    _, _, (got, _) = restore_and_load(url, server, tmp_path / "b")
    assert [t["id"] for t in got] == list(range(40))


def test_a_generation_still_being_committed_is_never_uploaded(s3_bucket, tmp_path):
    """Paused between renaming gen-N into place and switching CURRENT: gen-N exists, but is not committed."""
    import threading

    from persistkit.io.fs import DelegatingFS, current_fs, use_fs

    class PauseBeforeCurrent(DelegatingFS):
        def __init__(self, inner):
            super().__init__(inner)
            self.armed, self.paused, self.go = False, threading.Event(), threading.Event()

        def replace(self, src, dst):
            if self.armed and os.path.basename(os.fspath(dst)) == "CURRENT":
                self.paused.set()
                assert self.go.wait(30)
            self.inner.replace(src, dst)

    server, bucket = s3_bucket
    url = f"s3://{bucket}/bots/midcommit"
    store, trades, book = open_bot(tmp_path / "a", url=url, server=server, every=None)
    store.load()
    trade(store, trades, book, 0)
    store.backup.backup_now()
    before = pointer(server, bucket, "bots/midcommit")
    pausing = PauseBeforeCurrent(current_fs())
    with use_fs(pausing):
        pausing.armed = True
        saver = threading.Thread(target=store.save)
        saver.start()
        assert pausing.paused.wait(30)
        n = before["generation"] + 1
        assert (tmp_path / "a" / f"gen-{n:06d}").is_dir()  # renamed into place, CURRENT not switched yet
        with pytest.raises(PersistkitError, match="lock was held"):
            store.backup.backup_now()
        assert pointer(server, bucket, "bots/midcommit") == before
        assert not any(f"objects/g{n:06d}-" in k for k in objects(server, bucket))
        pausing.go.set()
        saver.join(30)
    store.backup.backup_now()
    assert pointer(server, bucket, "bots/midcommit")["generation"] == n == store.generation
    store.close()
