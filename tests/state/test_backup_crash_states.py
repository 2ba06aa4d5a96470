"""Every crash state of state-store backups under the object-store model restores a consistent generation.

The model (persistkit.testing.objects): after a crash the bucket holds its objects from before plus
any prefix of the completed PUTs and DELETEs; an upload that never completed is invisible. Each
backup scenario runs against the real moto server, recorded; every crash state is then served from
memory to ``StateStore.restore_from``, and the restored store is loaded and checked.
"""

from __future__ import annotations

import errno
import itertools

import pytest

import persistkit as pk
from persistkit.errors import PersistIOError
from persistkit.state import backup as backup_mod
from persistkit.testing import object_crash_points


class Book:
    def __init__(self) -> None:
        self.cash, self.last_id = 0.0, -1

    def state_dict(self):
        return {"cash": self.cash, "last_id": self.last_id}

    def load_state_dict(self, state):
        self.cash, self.last_id = state["cash"], state["last_id"]


class Bot:
    """A store with a journaled log and a checkpointed component; rounds only when asked (no thread)."""

    def __init__(self, directory, url, options):
        self.store = pk.StateStore(
            directory, autosave_every=None, backup_to=url, backup_every=None, storage_options=options
        )
        self.trades = self.store.register("trades", pk.BoundedLog(100_000))
        self.book = self.store.register("book", Book())
        self.store.load()
        for t in self.trades:  # reconcile: journaled trades the checkpoint of book missed (as the README)
            if t["id"] > self.book.last_id:
                self.book.cash += t["id"]
                self.book.last_id = t["id"]

    def trade(self, n=1):
        for _ in range(n):
            i = len(self.trades)
            with self.store.atomic():
                self.trades.append({"id": i})
                self.book.cash += i
                self.book.last_id = i


def load(directory):
    store = pk.StateStore(directory, autosave_every=None)
    trades = store.register("trades", pk.BoundedLog(100_000))
    book = store.register("book", Book())
    store.load()
    state = [t["id"] for t in trades], book.state_dict()
    store.close()
    return state


class Judge:
    """check() for object_crash_points: restore the crash state into a fresh directory, load, compare."""

    def __init__(self, url, options, tmp_path, *, at_least, allow_none=False):
        self.url, self.options, self.tmp_path = url, options, tmp_path
        self.at_least = at_least  # trades backed up before the save: never lost by a crash during it
        self.allow_none = allow_none
        self.counter = itertools.count()
        self.seen: list[int | None] = []

    def __call__(self):
        into = self.tmp_path / f"check-{next(self.counter)}"
        try:
            report = pk.StateStore.restore_from(self.url, into, storage_options=self.options)
        except PersistIOError as err:
            if self.allow_none and err.errno == errno.ENOENT and "BACKUP.json is missing" in str(err):
                assert not into.exists()
                self.seen.append(None)
                return
            raise
        ids, book = load(into)
        assert ids == list(range(len(ids))), "the restored journal has a gap or a foreign record"
        assert len(ids) >= self.at_least, f"the crash lost backed-up trades: {len(ids)} < {self.at_least}"
        assert -1 <= book["last_id"] < len(ids) and book["cash"] == sum(range(book["last_id"] + 1))
        assert report.journal_records["trades"] <= len(ids)
        self.seen.append(len(ids))


def test_first_backup_of_a_store(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/bots/first", server.storage_options
    judge = Judge(url, options, tmp_path, at_least=0, allow_none=True)

    def save():
        bot = Bot(tmp_path / "bot", url, options)
        bot.trade(5)
        bot.store.save()
        bot.trade(5)
        bot.store.backup.backup_now()  # generation + one segment + the pointer
        bot.store.abandon()

    report = object_crash_points(save, judge, url=url, storage_options=options)
    print(report.summary())
    assert report.violations == [] and report.mutations >= 6
    assert judge.seen[0] is None and judge.seen[-1] == 10  # before: nothing; after: every trade


def test_rounds_with_new_generations_segments_merges_and_garbage_collection(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)  # collected at once: this test checks the collection
    server, bucket = s3_bucket
    monkeypatch.setattr(backup_mod, "MAX_SEGMENTS", 2)
    url, options = f"s3://{bucket}/bots/rounds", server.storage_options
    before = Bot(tmp_path / "bot", url, options)
    before.trade(7)
    before.store.backup.backup_now()
    before.store.abandon()  # 7 trades backed up (the checkpoint, then a segment)
    judge = Judge(url, options, tmp_path, at_least=7)

    def save():
        bot = Bot(tmp_path / "bot", url, options)  # load replays the journal: a new generation
        bot.store.backup.backup_now()  # new generation up, the old one deleted
        for _ in range(3):  # segments; the third is merged with the two before
            bot.trade(2)
            bot.store.backup.backup_now()
        bot.store.save()
        bot.trade(1)
        bot.store.close()  # the final checkpoint, in the last round

    report = object_crash_points(save, judge, url=url, storage_options=options)
    print(report.summary())
    deletes = [op for op in report.operations if " DELETE " in op]
    assert report.violations == [] and deletes, report.operations
    assert judge.seen[0] == 7 and judge.seen[-1] == 14
    assert set(judge.seen) >= {7, 9, 11, 13, 14}  # each round's state was seen restored


def test_a_restored_store_moving_the_pointer_on(s3_bucket, tmp_path, monkeypatch):
    """Machine B restores A's backup, then backs up there itself: the pointer moves from A's objects to B's."""
    monkeypatch.setattr(backup_mod, "RETIRE_GRACE", 0.0)  # collected at once: this test checks the collection
    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/bots/moved", server.storage_options
    a = Bot(tmp_path / "a", url, options)
    a.trade(4)
    a.store.save()
    a.trade(3)
    a.store.backup.backup_now()
    a.store.abandon()  # machine A is gone
    pk.StateStore.restore_from(url, tmp_path / "b", storage_options=options)
    judge = Judge(url, options, tmp_path, at_least=7)

    def save():
        b = Bot(tmp_path / "b", url, options)  # replays A's 3 journaled trades: a new generation
        b.trade(2)
        b.store.backup.backup_now()
        b.store.abandon()

    report = object_crash_points(save, judge, url=url, storage_options=options)
    print(report.summary())
    assert report.violations == [] and judge.seen[0] == 7 and judge.seen[-1] == 9
    assert any(" DELETE " in op for op in report.operations)  # A's objects, after the move


def test_a_backup_that_publishes_the_pointer_first_is_caught(s3_bucket, tmp_path, monkeypatch):
    """The enumeration has teeth: a round that names objects before they exist fails in some crash state."""
    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/bots/bad", server.storage_options
    original = backup_mod.StoreBackup._upload

    def upload_late(self, key, data):  # what a wrong order would do: the pointer first, the data after
        entry = {"key": key, "sha256": backup_mod._sha256(data), "size": len(data)}
        self.late.append((key, data))
        return entry

    def round_once(self, _inner=backup_mod.StoreBackup._round_once):
        self.late = []
        _inner(self)
        for key, data in self.late:
            original(self, key, data)

    monkeypatch.setattr(backup_mod.StoreBackup, "_upload", upload_late)
    monkeypatch.setattr(backup_mod.StoreBackup, "_round_once", round_once)
    judge = Judge(url, options, tmp_path, at_least=0, allow_none=True)

    def save():
        bot = Bot(tmp_path / "bot", url, options)
        bot.trade(3)
        bot.store.backup.backup_now()
        bot.store.abandon()

    with pytest.raises(AssertionError, match="First violating crash state"):
        object_crash_points(save, judge, url=url, storage_options=options)


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_every_local_crash_state_of_a_restore_leaves_no_store_or_the_whole_one(s3_bucket, tmp_path, model):
    """The restore's own file operations, recorded and crashed at every point (persistkit.testing.fs.crashsim)."""
    from persistkit.io import use_fs
    from persistkit.testing.fs import CrashSimulator, Snapshot
    from persistkit.testing.fs.recordfs import RecordingFS

    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/bots/restore", server.storage_options
    bot = Bot(tmp_path / "bot", url, options)
    bot.trade(6)
    bot.store.save()
    bot.trade(4)
    bot.store.backup.backup_now()  # a generation and a segment
    bot.store.abandon()
    root = tmp_path / "machine-b"
    root.mkdir()
    before = Snapshot.take(root)
    rec = RecordingFS()
    with use_fs(rec):
        pk.StateStore.restore_from(url, root / "store", storage_options=options)
    assert load(root / "store")[0] == list(range(10))
    sim = CrashSimulator(before, rec.ops)
    outcomes = {"absent": 0, "whole": 0}
    for state in sim.states(model):
        state.materialize(root)
        names = [p.name for p in root.iterdir()]
        assert all(n == "store" or n.startswith(".store.restore-") for n in names), names
        if "store" not in names:
            assert not state.complete, f"{state.description}: the restore returned, but no store is there"
            outcomes["absent"] += 1
            continue
        ids, book = load(root / "store")  # warnings are errors: a fallback or a dropped record fails
        assert ids == list(range(10)) and book["last_id"] == 5, state.description
        outcomes["whole"] += 1
    assert outcomes["absent"] and outcomes["whole"]
    print(f"\n{model}: {sim.stats.states} crash states of a restore ({len(rec.ops)} operations): {outcomes}")
