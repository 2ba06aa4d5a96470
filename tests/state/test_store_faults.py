"""A save that commits but fails afterwards (reopening journals, pruning) is finished by the next save."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import open_store

from persistkit.errors import PersistIOError
from persistkit.io import current_fs, use_fs
from persistkit.io.faults import Fault, FaultFS
from persistkit.state import generations as gens


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
    store._abandon()
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
