"""A save that commits but fails afterwards (reopening journals, pruning) is finished by the next save."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import open_store

from persistkit.errors import PersistIOError
from persistkit.io import current_fs, use_fs
from persistkit.state import generations as gens
from persistkit.state.store import StateRecoveredWarning
from persistkit.testing.fs.faultfs import Fault, FaultFS


def test_retry_after_journals_failed_to_reopen_restores_appends(store_dir):
    store, parts, _ = open_store(store_dir)
    parts["counter"].value = 7
    faulty = FaultFS(current_fs(), Fault(at=0, errno=errno.EMFILE, kinds=frozenset({"open_append"})))
    with use_fs(faulty), pytest.raises(PersistIOError, match=r"log\.journal"):
        store.save()  # the checkpoint commits; opening its fresh journal fails
    assert faulty.fired == 1
    committed = gens.read_current(str(store_dir), key=None)["generation"]
    assert committed == store.generation
    with pytest.raises(PersistIOError, match="Call save"):
        parts["log"].append("refused")  # no journal is open: never acknowledged
    checkpoint = store.save()  # nothing changed, yet it reopens the journal
    assert checkpoint.skipped and checkpoint.generation == committed
    parts["log"].append("durable")
    store.abandon()
    _, loaded, _ = open_store(store_dir, readonly=True)
    assert list(loaded["log"]) == ["durable"] and loaded["counter"].value == 7


def test_retry_after_pruning_failed_bounds_the_generations(store_dir):
    store, parts, _ = open_store(store_dir, keep_generations=1)
    parts["counter"].value = 1
    faulty = FaultFS(current_fs(), Fault(at=0, errno=errno.EIO, persistent=True, kinds=frozenset({"unlink"})))
    with use_fs(faulty):
        store.save()  # committed; deleting the old generation failed (logged, not raised)
    committed, leftovers = gens.list_generations(str(store_dir))
    # the old generation was renamed out of the way first, so the bound holds even now
    assert faulty.fired and committed == [store.generation]
    assert len(leftovers) == 1 and ".retired-" in leftovers[0]
    assert store.save().skipped  # the next save finishes the deletion
    assert gens.list_generations(str(store_dir)) == ([store.generation], [])
    store.close()
    assert not [n for n in os.listdir(store_dir) if ".tmp-" in n or ".retired-" in n]


def _flip_middle_byte(path):
    data = bytearray(current_fs().read_bytes(path))
    data[len(data) // 2] ^= 0x20
    with open(path, "r+b") as f:  # damage in place, as a bad sector would
        f.write(data)


def _reopen_after_damage(store_dir):
    with pytest.warns(StateRecoveredWarning, match="fell back to") as caught:
        store, parts, report = open_store(store_dir)
    assert len(caught) == 1 and report.recovered
    return store, parts, report


def test_a_failed_saves_leftover_is_never_adopted_when_current_is_damaged(store_dir):
    """TestStoreMachine's falsifying example, step by step.

    crash(); save_under_io_fault(at=22, persistent=True); save_under_io_fault(at=27);
    corrupt_newest(victim='CURRENT'); autosave()
    """
    store, _, _ = open_store(store_dir)
    store.abandon()
    store, parts, _ = open_store(store_dir)
    assert store.generation == 1
    faulty = FaultFS(current_fs(), Fault(at=22, errno=errno.EIO, persistent=True))
    with use_fs(faulty), pytest.raises(PersistIOError):
        store.save()
    # EIO from the fsync right after gen-000002 was renamed into place: never committed, and
    # its removal failed too, so it stays behind as an orphan
    assert faulty.log[22].startswith("#22 fsync_dir ") and faulty.log[21].endswith(gens.gen_name(2))
    assert gens.read_current(str(store_dir), key=None)["history"] == [1]
    assert gens.list_generations(str(store_dir))[0] == [1, 2]
    with pytest.raises(PersistIOError, match="Call save"):
        parts["log"].append("refused")  # no append is acknowledged beside the orphan
    faulty = FaultFS(current_fs(), Fault(at=27, errno=errno.EIO))
    with use_fs(faulty), pytest.raises(PersistIOError, match="fsync of directory"):
        store.save()  # CURRENT switched to gen-000003, then its directory fsync failed
    assert faulty.log[27].startswith("#27 fsync_dir ")
    assert gens.read_current(str(store_dir), key=None)["history"] == [1, 3]
    store.abandon()
    _flip_middle_byte(store_dir / gens.CURRENT)

    store, parts, report = _reopen_after_damage(store_dir)
    assert report.generation == 3  # the newest committed generation
    checkpoint = store.save()
    history = gens.read_current(str(store_dir), key=None)["history"]
    assert history == [1, 3, checkpoint.generation]  # the orphan is not adopted as committed
    assert gens.list_generations(str(store_dir))[0] == history
    store.close()


def test_no_append_is_acknowledged_beside_a_failed_saves_leftover(store_dir):
    """If the generation of a failed save cannot be removed, appends are refused until a save removes it.

    Otherwise a damaged CURRENT would later leave that generation in force, and the
    appends (journaled after the older one) would be lost.
    """
    store, parts, _ = open_store(store_dir)
    parts["log"].append("before")
    parts["counter"].value = 5
    # fsync_dir #0 (the new directory), replace #1 (into place), fsync_dir #2 fails, and from then
    # on every rename fails too: the orphan cannot be renamed out of the way
    fault = Fault(at=2, errno=errno.EIO, persistent=True, kinds=frozenset({"fsync_dir", "replace"}))
    with use_fs(FaultFS(current_fs(), fault)), pytest.raises(PersistIOError):
        store.save()
    assert gens.list_generations(str(store_dir))[0] == [1, 2]
    assert gens.read_current(str(store_dir), key=None)["generation"] == 1
    with pytest.raises(PersistIOError, match=r"Call save\(\) to retry"):
        parts["log"].append("after")
    store.abandon()
    _flip_middle_byte(store_dir / gens.CURRENT)

    _, parts, report = _reopen_after_damage(store_dir)
    # nothing tells gen-000002 from a commit whose CURRENT was lost: it is the interrupted save's
    # new state, and holds every append that was acknowledged
    assert report.generation == 2
    assert list(parts["log"]) == ["before"] and parts["counter"].value == 5


def _leave_an_orphan(store, parts):
    """A save that fails after renaming gen-000002 into place, and cannot rename it away again."""
    parts["counter"].value += 5
    fault = Fault(at=2, errno=errno.EIO, persistent=True, kinds=frozenset({"fsync_dir", "replace"}))
    with use_fs(FaultFS(current_fs(), fault)), pytest.raises(PersistIOError):
        store.save()
    assert gens.list_generations(str(store.directory))[0] == [1, 2]
    assert gens.read_current(str(store.directory), key=None)["generation"] == 1


def test_a_save_with_nothing_new_says_so_while_a_failed_saves_leftover_stays(store_dir):
    store, parts, _ = open_store(store_dir)
    _leave_an_orphan(store, parts)
    parts["counter"].value -= 5  # back to what gen-000001 holds: the next save has nothing to write
    stuck = Fault(at=0, errno=errno.EIO, persistent=True, kinds=frozenset({"replace"}))
    with use_fs(FaultFS(current_fs(), stuck)), pytest.raises(PersistIOError) as caught:
        store.save()
    assert caught.value.path == store.directory
    assert "could not be removed" in str(caught.value) and "call save() again" in str(caught.value)
    with pytest.raises(PersistIOError, match=r"Call save\(\) to retry"):
        parts["log"].append("refused")
    assert store.save().skipped  # the disk recovered: the leftover goes, journaling resumes
    assert gens.list_generations(str(store_dir))[0] == [1]
    parts["log"].append("durable")
    store.close()
    _, loaded, _ = open_store(store_dir, readonly=True)
    assert list(loaded["log"]) == ["durable"]


def test_an_open_that_cannot_remove_a_leftover_refuses_appends_until_a_save(store_dir):
    store, parts, _ = open_store(store_dir)
    _leave_an_orphan(store, parts)
    store.abandon()
    stuck = FaultFS(current_fs(), Fault(at=0, errno=errno.EIO, persistent=True, kinds=frozenset({"replace"})))
    with use_fs(stuck):
        store, parts, report = open_store(store_dir)
    assert report.generation == 1 and stuck.fired
    with pytest.raises(PersistIOError, match=r"Call save\(\) to retry"):
        parts["log"].append("refused")
    checkpoint = store.save()
    assert gens.list_generations(str(store_dir))[0] == [1, checkpoint.generation]
    parts["log"].append("durable")
    store.close()
