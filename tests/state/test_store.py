from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import Counter, open_store

from persistkit.errors import (
    BudgetExceededError,
    IntegrityError,
    LockedError,
    MigrationError,
    PersistIOError,
    UnsupportedTypeError,
    WrongKeyError,
)
from persistkit.format.crypto import KdfParams
from persistkit.io import use_fs
from persistkit.keys import write_key_file
from persistkit.state import BoundedLog, StateStore
from persistkit.state.store import StateRecoveredWarning
from persistkit.testing.fs.recordfs import RecordingFS

FAST = KdfParams(n=2**15)


def mutate(parts, n):
    parts["counter"].value += n
    parts["counter"].history.append(n)
    parts["pair"].a += 1
    parts["log"].append({"n": n})


def test_first_run_keeps_defaults_without_warnings(store_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store, parts, report = open_store(store_dir)
    assert {c.status for c in report.components.values()} == {"defaults"}
    assert parts["counter"].value == 0 and len(parts["log"]) == 0
    assert store.generation is not None  # an initial checkpoint gives journals a home
    store.close()


def test_lifecycle_save_close_restart(store_dir):
    store, parts, _ = open_store(store_dir)
    for n in range(1, 9):
        mutate(parts, n)
    cp = store.save()
    assert cp.generation >= 2 and set(cp.sizes) == {"counter", "pair", "log"}
    mutate(parts, 100)
    store.close()
    _store2, parts2, report = open_store(store_dir, readonly=True)
    assert report["counter"].status == "loaded"
    assert parts2["counter"].state_dict() == parts["counter"].state_dict()
    assert parts2["pair"].__getstate__() == parts["pair"].__getstate__()
    assert list(parts2["log"]) == list(parts["log"]) == [{"n": n} for n in (5, 6, 7, 8, 100)]
    assert parts2["log"].maxlen == 5


def crash_child(directory, body):
    """Run ``body`` against the store in a child that dies by SIGKILL without closing."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import open_store
        store, parts, report = open_store({str(directory)!r})
        {body}
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


def test_journaled_appends_survive_sigkill_and_are_replayed(store_dir):
    store, parts, _ = open_store(store_dir)
    store.close()
    crash_child(store_dir, "for i in range(7): parts['log'].append({'i': i})")
    store, parts, report = open_store(store_dir)
    assert list(parts["log"]) == [{"i": i} for i in range(2, 7)]  # maxlen 5 holds across replay
    assert report["log"].journal_records == 7
    # the recovery checkpoint compacted the journal: a second restart replays nothing
    store.close()
    _, parts, report = open_store(store_dir, readonly=True)
    assert report["log"].journal_records == 0 and list(parts["log"]) == [{"i": i} for i in range(2, 7)]


def test_torn_journal_tail_is_dropped_and_reported(store_dir):
    store, parts, _ = open_store(store_dir)
    parts["log"].append("kept")
    journal = os.path.join(store_dir, f"gen-{store.generation:06d}", "log.journal")
    store._writers["log"].close()
    with open(journal, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01")  # a record header cut short: power loss mid-append
    store._closed = True
    store._dir_lock.release()
    store2, parts2, report = open_store(store_dir)
    assert list(parts2["log"]) == ["kept"]
    assert (
        report["log"].torn_records == 1 and report["log"].torn_bytes == 5 and "torn" in report["log"].detail
    )
    store2.close()


def test_damaged_journal_middle_raises(store_dir):
    store, parts, _ = open_store(store_dir)
    for i in range(3):
        parts["log"].append(i)
    journal = os.path.join(store_dir, f"gen-{store.generation:06d}", "log.journal")
    store._writers["log"].close()
    data = bytearray(Path(journal).read_bytes())
    data[15] ^= 0xFF  # inside the first record; two good records follow
    Path(journal).write_bytes(bytes(data))
    store._closed = True
    store._dir_lock.release()
    with pytest.raises(IntegrityError, match="acknowledged appends") as info:
        open_store(store_dir)
    assert "log.journal" in str(info.value)


def flip_byte(path, offset=40):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x55
    Path(path).write_bytes(bytes(data))


def test_corrupt_newest_checkpoint_falls_back_and_quarantines(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    good = store.save().generation
    mutate(parts, 2)
    bad = store.save().generation
    store.close()
    newest = os.path.join(store_dir, f"gen-{bad:06d}")
    flip_byte(os.path.join(newest, "counter.pk"))
    with pytest.warns(StateRecoveredWarning) as caught:
        store2, parts2, report = open_store(store_dir)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert (
        f"gen-{bad:06d}" in message
        and "counter.pk" in message
        and f"gen-{good:06d}" not in message.split("because")[1].split(";")[0]
    ) or f"fell back to gen-{good:06d}" in message
    assert f"fell back to gen-{good:06d}" in message
    assert report.generation == good and report.recovered
    assert report["counter"].status == "recovered"
    assert parts2["counter"].value == 1
    quarantined = [n for n in os.listdir(store_dir) if n.startswith(f"gen-{bad:06d}.corrupt-")]
    assert len(quarantined) == 1 and report.quarantined[0].endswith(quarantined[0])
    assert os.path.exists(os.path.join(store_dir, quarantined[0], "counter.pk"))  # kept, never deleted
    # the log's appends made after the good checkpoint came back from the journals
    assert list(parts2["log"]) == [{"n": 1}, {"n": 2}]
    store2.close()


def test_every_generation_corrupt_raises_unless_defaults_chosen(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    store.save()
    store.close()
    for name in os.listdir(store_dir):
        if name.startswith("gen-"):
            flip_byte(os.path.join(store_dir, name, "MANIFEST"))
    with pytest.raises(IntegrityError, match="every checkpoint is damaged"):
        open_store(store_dir, readonly=True)
    with pytest.warns(StateRecoveredWarning, match="starting from defaults"):
        store2, parts2, report = open_store(store_dir, on_corrupt="defaults")
    assert parts2["counter"].value == 0 and {c.status for c in report.components.values()} == {"defaults"}
    store2.close()


def test_corrupt_current_pointer_falls_back_to_generations(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 3)
    store.close()
    flip_byte(os.path.join(store_dir, "CURRENT"), 20)
    with pytest.warns(StateRecoveredWarning, match="CURRENT"):
        store2, parts2, _ = open_store(store_dir)
    assert parts2["counter"].value == 3
    assert any(n.startswith("CURRENT.corrupt-") for n in os.listdir(store_dir))
    store2.close()


def test_spliced_component_from_another_generation_is_detected(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    a = store.save().generation
    mutate(parts, 2)
    b = store.save().generation
    store.close()
    old = Path(os.path.join(store_dir, f"gen-{a:06d}", "counter.pk")).read_bytes()
    Path(os.path.join(store_dir, f"gen-{b:06d}", "counter.pk")).write_bytes(old)
    with pytest.warns(StateRecoveredWarning, match="does not match the generation manifest"):
        _, _parts2, report = open_store(store_dir, readonly=True)
    assert report.generation == a


class V3Counter(Counter):
    def state_dict(self):
        return {"value": self.value, "history": list(self.history), "unit": self.unit}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.unit = state["unit"]


def test_migrations_run_step_by_step(store_dir):
    store = StateStore(store_dir, autosave_every=0)
    c = store.register("counter", Counter())
    store.load()
    c.value = 5
    store.close()
    calls = []

    def v1_to_v2(state):
        calls.append(1)
        return {**state, "value": state["value"] * 10}

    def v2_to_v3(state):
        calls.append(2)
        return {**state, "unit": "usd"}

    store = StateStore(store_dir, autosave_every=0)
    c3 = store.register("counter", V3Counter(), version=3, migrations={1: v1_to_v2, 2: v2_to_v3})
    report = store.load()
    assert calls == [1, 2] and report["counter"].status == "migrated"
    assert (c3.value, c3.unit) == (50, "usd") and report["counter"].stored_version == 1
    store.close()


def test_newer_state_than_code_raises(store_dir):
    store = StateStore(store_dir, autosave_every=0)
    store.register("counter", V3Counter(), version=3).unit = "eur"
    store.load()
    store.close()
    store = StateStore(store_dir, autosave_every=0, readonly=True)
    store.register("counter", Counter(), version=2)
    with pytest.raises(MigrationError, match="newer than this code"):
        store.load()


def test_missing_migration_and_dropped_fields_raise(store_dir):
    store = StateStore(store_dir, autosave_every=0)
    store.register("counter", V3Counter(), version=1).unit = "eur"
    store.load()
    store.close()
    s = StateStore(store_dir, autosave_every=0, readonly=True)
    s.register("counter", V3Counter(), version=2)
    with pytest.raises(MigrationError, match="no migration from version 1 to 2"):
        s.load()
    s = StateStore(store_dir, autosave_every=0, readonly=True)
    s.register("counter", Counter())  # would silently drop "unit"
    with pytest.raises(MigrationError, match="unit"):
        s.load()


def test_validator_rejects_bad_state_and_falls_back(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    store.save()
    parts["counter"].value = -5
    store.close()
    store = StateStore(store_dir, autosave_every=0, readonly=True)
    c = store.register(
        "counter", Counter(), validate=lambda s: "value must be >= 0" if s["value"] < 0 else None
    )
    with pytest.warns(StateRecoveredWarning, match="value must be >= 0"):
        store.load()
    assert c.value == 1


def test_unsupported_state_names_component_and_path(store_dir):
    store, parts, _ = open_store(store_dir)
    parts["counter"].history.append(object())
    with pytest.raises(UnsupportedTypeError, match=r"counter\['history'\]\[0\]"):
        store.save()
    store.close() if False else None
    parts["counter"].history.pop()
    store.close()


def test_budget_exceeded_keeps_previous_checkpoint(store_dir):
    store = StateStore(store_dir, autosave_every=0)
    c = store.register("counter", Counter(), max_bytes=200)
    store.load()
    c.value = 1
    first = store.save().generation
    c.history = list(range(1000))
    with pytest.raises(BudgetExceededError, match=r"counter.*max_bytes=200"):
        store.save()
    assert store.generation == first
    c.history = []
    store.close()
    _, parts, _ = open_store(store_dir, readonly=True)
    assert parts["counter"].value == 1


def test_password_encryption_and_wrong_password(store_dir):
    store, parts, _ = open_store(store_dir, password="s3cret", kdf=FAST)
    parts["counter"].history.append(987654321)
    parts["log"].append("api-key-AKIA1234")
    store.close()
    for root, _, files in os.walk(store_dir):
        for name in files:
            assert b"AKIA1234" not in Path(os.path.join(root, name)).read_bytes()
    _, parts2, _ = open_store(store_dir, password="s3cret", readonly=True)
    assert list(parts2["log"]) == ["api-key-AKIA1234"]
    with pytest.raises(WrongKeyError):
        open_store(store_dir, password="wrong", readonly=True)


def test_key_file_encryption(store_dir, tmp_path):
    key = tmp_path / "store.key"
    write_key_file(key)
    store, parts, _ = open_store(store_dir, key_file=key)
    mutate(parts, 4)
    store.close()
    _, parts2, _ = open_store(store_dir, key_file=key, readonly=True)
    assert parts2["counter"].value == 4
    with pytest.raises((WrongKeyError, IntegrityError)):
        open_store(store_dir, readonly=True)


def test_second_writer_gets_locked_error_and_readers_are_fine(store_dir):
    store, _parts, _ = open_store(store_dir)
    script = f"from persistkit.state import StateStore; StateStore({str(store_dir)!r})"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and "LockedError" in proc.stderr and str(os.getpid()) in proc.stderr
    with pytest.raises(LockedError):
        StateStore(store_dir)
    _, _parts2, _ = open_store(store_dir, readonly=True)
    with pytest.raises(PersistIOError, match="read-only"):
        StateStore(store_dir, readonly=True).save()
    store.close()


def test_exact_fsync_counts_per_save(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    rec = RecordingFS()
    with use_fs(rec):
        store.save()
    counts = rec.counts()
    # 3 components + MANIFEST, then CURRENT; the generation dir, the store dir, CURRENT's dir
    assert counts["fsync"] == 5
    assert counts["fsync_dir"] == 3
    rec.clear()
    with use_fs(rec):
        parts["log"].append("x")
    counts = rec.counts()
    assert (counts["write"], counts["fsync"], counts["fsync_dir"]) == (1, 1, 0)  # one write, one fsync
    store.close()


def test_unchanged_state_is_not_saved_again(store_dir):
    store, parts, _ = open_store(store_dir)
    first = store.save()
    again = store.save()
    assert again.skipped and again.generation == first.generation
    mutate(parts, 1)
    assert not store.save().skipped
    store.close()


def test_keep_generations_bounds_the_directory(store_dir):
    store, parts, _ = open_store(store_dir, keep_generations=2)
    for n in range(6):
        mutate(parts, n)
        store.save()
    gens = [n for n in os.listdir(store_dir) if n.startswith("gen-")]
    assert len(gens) == 2
    stats = store.stats()
    assert stats["generation"] == store.generation and set(stats["bytes"]) == {"counter", "pair", "log"}
    assert stats["last_save_seconds"] > 0
    store.close()


def test_autosave_saves_only_changes_and_survives_errors(store_dir):
    import time

    store = StateStore(store_dir, autosave_every=0.05)
    c = store.register("counter", Counter())
    store.load()
    store.start(signals=False)
    gen = store.generation
    time.sleep(0.3)
    assert store.generation == gen  # nothing changed, nothing saved
    c.value = 9
    deadline = time.time() + 60
    while store.generation == gen and time.time() < deadline:
        time.sleep(0.02)
    assert store.generation > gen
    c.history.append(object())  # the next autosave fails...
    deadline = time.time() + 60  # waits for the autosave thread, however slow the machine
    while store.last_error is None and time.time() < deadline:
        time.sleep(0.02)
    assert isinstance(store.last_error, UnsupportedTypeError)
    c.history.pop()  # ...and the one after recovers
    c.value = 10
    deadline = time.time() + 60
    while store.last_error is not None and time.time() < deadline:
        time.sleep(0.02)
    assert store.last_error is None
    store.close()


def test_registration_errors():
    store = StateStore("/tmp/never-used-pk", readonly=True)
    with pytest.raises(ValueError, match="name"):
        store.register("../evil", Counter())
    with pytest.raises(TypeError, match="state_dict"):
        store.register("x", 42)
    store.register("ok", Counter())
    with pytest.raises(ValueError, match="already registered"):
        store.register("ok", Counter())
    with pytest.raises(ValueError, match="maxlen"):
        BoundedLog(0)


def test_failed_load_releases_the_lock_so_a_retry_can_choose_defaults(store_dir):
    store, parts, _ = open_store(store_dir)
    mutate(parts, 1)
    store.close()
    for name in os.listdir(store_dir):
        if name.startswith("gen-"):
            flip_byte(os.path.join(store_dir, name, "MANIFEST"))
    first = StateStore(store_dir, autosave_every=0)
    first.register("counter", Counter())
    with pytest.raises(IntegrityError):
        first.load()
    with pytest.warns(StateRecoveredWarning, match="starting from defaults"):
        retry, parts2, _ = open_store(store_dir, on_corrupt="defaults")  # no LockedError
    assert parts2["counter"].value == 0
    retry.close()


def test_generation_pruning_goes_through_retention_with_reasons(store_dir):
    store, parts, _ = open_store(store_dir, keep_generations=2)
    for i in range(4):
        parts["counter"].value = i + 1
        store.save()
    newest = store.generation
    decisions = store.retention()
    kept = [f"gen-{newest:06d}", f"gen-{newest - 1:06d}"]
    assert [d.item.id for d in decisions] == kept
    assert all(d.keep for d in decisions)
    assert "pinned: in force" in decisions[0].reasons
    assert sorted(n for n in os.listdir(store_dir) if n.startswith("gen-")) == sorted(kept)
    store.close()
