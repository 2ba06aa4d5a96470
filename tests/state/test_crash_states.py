"""Crash-state enumeration of StateStore.save(): every component is old together or new together."""

from __future__ import annotations

import time

import pytest
from conftest import open_store

from persistkit.io import use_fs
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS


def view(parts):
    return (parts["counter"].state_dict(), parts["pair"].__getstate__(), list(parts["log"]))


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_save_is_all_or_nothing_in_every_crash_state(store_dir, model):
    store, parts, _ = open_store(store_dir)
    for n in (1, 2):
        parts["counter"].value += n
        parts["pair"].a += n
        parts["log"].append({"n": n})
    store.save()
    old = view(parts)
    parts["counter"].value += 10
    parts["pair"].b = "changed"
    parts["log"].append({"n": 3})  # journaled before the save: in both old and new states
    old = (old[0], old[1], [*old[2], {"n": 3}])
    before = Snapshot.take(store_dir)
    rec = RecordingFS()
    with use_fs(rec):
        store.save()
    new = view(parts)
    store.abandon()

    sim = CrashSimulator(before, rec.ops)
    start = time.perf_counter()
    counts = {"old": 0, "new": 0}
    for state in sim.states(model):
        state.materialize(store_dir)
        _, loaded, _ = open_store(store_dir, readonly=True)  # warnings are errors: no fallback needed
        got = view(loaded)
        allowed = {"new": new} if state.complete else {"old": old, "new": new}
        match = [k for k, v in allowed.items() if v == got]
        assert match, f"{state.description}: components disagree or are torn: {got}"
        counts[match[0]] += 1
    elapsed = time.perf_counter() - start
    assert counts["old"] and counts["new"]
    print(
        f"\n{model}: {sim.stats.states} crash states of save() ({len(rec.ops)} operations), "
        f"{counts['old']} old / {counts['new']} new, {sim.stats.states / elapsed:.0f} states/s"
    )


def test_append_is_durable_in_every_crash_state_after_it_returns(store_dir):
    store, parts, _ = open_store(store_dir)
    before = Snapshot.take(store_dir)
    rec = RecordingFS()
    with use_fs(rec):
        parts["log"].append({"acked": True})
    store.abandon()
    for state in CrashSimulator(before, rec.ops).states("power-loss"):
        state.materialize(store_dir)
        _, loaded, _ = open_store(store_dir, readonly=True)
        items = list(loaded["log"])
        assert items in ([], [{"acked": True}]), state.description
        if state.complete:
            assert items == [{"acked": True}], f"acknowledged append lost: {state.description}"
