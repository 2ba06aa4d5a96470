"""Sequences of object-store faults during state-store backups, on the real moto server.

Faults are injected at the object-store layer (``FaultObjectStore`` through ``use_object_store``),
with exactly the errors the real layer raises once its bounded retries are spent, and simulated
process crashes before or after a request completed.
"""

from __future__ import annotations

import errno
import json

import pytest

import persistkit as pk
from persistkit.errors import PersistIOError
from persistkit.io.objects import use_object_store
from persistkit.state import backup as backup_mod
from persistkit.testing import FaultObjectStore, ObjectFault, SimulatedCrash


def open_bot(directory, url, options):
    store = pk.StateStore(
        directory, autosave_every=None, backup_to=url, backup_every=None, storage_options=options
    )
    trades = store.register("trades", pk.BoundedLog(100_000))
    store.load()
    return store, trades


def restored_ids(url, options, into):
    pk.StateStore.restore_from(url, into, storage_options=options)
    store = pk.StateStore(into, autosave_every=None)
    trades = store.register("trades", pk.BoundedLog(100_000))
    store.load()
    ids = list(trades)
    store.close()
    return ids


def remote_keys(server, bucket, prefix):
    found = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {e["Key"].removeprefix(prefix) for e in found.get("Contents", [])}


def named_keys(server, bucket, prefix):
    doc = json.loads(server.client().get_object(Bucket=bucket, Key=f"{prefix}BACKUP.json")["Body"].read())
    keys = {e["key"] for e in doc["files"].values()}
    keys |= {s["key"] for j in doc["journals"].values() for s in j["segments"]}
    return keys | {"BACKUP.json"}


def test_fail_recover_fail_again_crash_and_catch_up(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)  # collected at once: this test checks the collection
    server, bucket = s3_bucket
    prefix = "bots/faults/"
    url, options = f"s3://{bucket}/{prefix}".rstrip("/"), server.storage_options
    faults: list[FaultObjectStore] = []

    def wrap(inner):
        faulty = FaultObjectStore(inner)
        faults.append(faulty)
        return faulty

    with use_object_store(wrap):
        store, trades = open_bot(tmp_path / "bot", url, options)
        for i in range(5):
            trades.append(i)
        # 1. fail: the credentials expired when the pointer was to move
        store.backup.backup_now()  # creates the (wrapped) store: the first round succeeds
        fault = faults[-1]
        trades.append(5)
        store.save()
        fault.arm(ObjectFault(0, "expired-credentials", kinds=frozenset({"swap"})))
        with pytest.raises(PersistIOError) as caught:
            store.backup.backup_now()
        assert caught.value.errno == errno.EACCES and f"{url}/BACKUP.json" in str(caught.value)
        assert "credentials" in str(caught.value)
        status = store.stats()["backup"]
        assert (
            status["failures"] == 1
            and status["pending_generations"] == 1
            and "credentials" in status["last_error"]
        )
        trades.append(6)  # the bot keeps trading
        # 2. recover
        fault.clear()
        store.backup.backup_now()
        assert store.stats()["backup"]["pending_records"] == 0
        assert restored_ids(url, options, tmp_path / "r1") == list(range(7))
        assert remote_keys(server, bucket, prefix) == named_keys(
            server, bucket, prefix
        )  # round 1's leftovers gone
        # 3. fail again: the connection drops on every segment upload, persistently
        for i in range(7, 12):
            trades.append(i)
        fault.arm(ObjectFault(0, "dropped-connection", persistent=True, kinds=frozenset({"put-new"})))
        for _ in range(2):
            with pytest.raises(PersistIOError) as caught:
                store.backup.backup_now()
            assert ".journal." in str(caught.value) and "could not be reached" in str(caught.value)
        assert store.stats()["backup"]["failures"] == 2 and store.stats()["backup"]["pending_records"] == 5
        assert restored_ids(url, options, tmp_path / "r2") == list(range(7))  # the last good backup
        # 4. crash: the process dies right after the pointer moved, before the old objects are deleted
        fault.clear()
        store.save()
        trades.append(12)
        fault.arm(ObjectFault(0, "crash-after", kinds=frozenset({"swap"})))
        with pytest.raises(SimulatedCrash):
            store.backup.backup_now()
        store.abandon()
    assert restored_ids(url, options, tmp_path / "r3") == list(range(13))
    assert remote_keys(server, bucket, prefix) > named_keys(
        server, bucket, prefix
    )  # garbage left by the crash
    # 5. the bot restarts: its next generation goes up and the garbage is removed
    store, trades = open_bot(tmp_path / "bot", url, options)
    trades.append(13)
    store.close()
    assert restored_ids(url, options, tmp_path / "r4") == list(range(14))
    assert remote_keys(server, bucket, prefix) == named_keys(server, bucket, prefix)


def test_crash_before_a_generation_is_fully_uploaded_keeps_the_previous_backup(
    s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)  # collected at once: this test checks the collection
    server, bucket = s3_bucket
    prefix = "bots/half/"
    url, options = f"s3://{bucket}/{prefix}".rstrip("/"), server.storage_options
    store, trades = open_bot(tmp_path / "bot", url, options)
    trades.append("a")
    store.backup.backup_now()
    store.abandon()
    for crash_at in range(4):  # the n-th create-only PUT of the next generation never completes
        fault = ObjectFault(crash_at, "crash-before", kinds=frozenset({"put-new"}))
        with use_object_store(lambda inner, fault=fault: FaultObjectStore(inner, fault)):
            store, trades = open_bot(tmp_path / "bot", url, options)  # load: a new generation
            trades.append(f"b{crash_at}")
            store.save()
            with pytest.raises(SimulatedCrash):
                store.backup.backup_now()
            store.abandon()
        # the pointer still names the first round's backup, whole, whatever was uploaded after it
        assert restored_ids(url, options, tmp_path / f"r{crash_at}") == ["a"]
    store, trades = open_bot(tmp_path / "bot", url, options)
    store.close()  # the next round that completes catches up, and removes the halves
    assert restored_ids(url, options, tmp_path / "last") == ["a", "b0", "b1", "b2", "b3"]
    assert remote_keys(server, bucket, prefix) == named_keys(server, bucket, prefix)
