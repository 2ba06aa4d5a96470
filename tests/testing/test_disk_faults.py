"""disk_faults: every operation fails with every errno, once and persistently; mishandling is named."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from persistkit.io import atomic_write
from persistkit.state import StateStore
from persistkit.testing.disk_faults import DiskFaults
from persistkit.testing.report import Recorder


def load_json(path):
    with open(path) as f:
        return json.load(f)


def test_atomic_write_handles_every_fault(tmp_path, fd_guard):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 1}')
    rec = Recorder()
    report = DiskFaults(tmp_path, recorder=rec)(
        lambda: atomic_write(path, b'{"v": 2}'), lambda: load_json(path)
    )
    # create, write, fsync, close, replace, fsync_dir: x 4 errnos x 2 modes
    assert len(report.operations) == 6 and report.cases == 48 and report.fired == 48
    assert report.raised == 48 and report.violations == []
    assert rec.faults == 48
    assert load_json(path) == {"v": 2}


def test_swallowed_errors_are_reported(tmp_path):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 1}')

    def save():
        with contextlib.suppress(OSError):
            atomic_write(path, b'{"v": 2}')

    with pytest.raises(AssertionError) as info:
        DiskFaults(tmp_path)(save, lambda: load_json(path), errnos=["EIO"], modes=["once"])
    message = str(info.value)
    assert message.startswith("disk_faults: 6 of 6 injected faults were mishandled.")
    assert "EIO at #0 create .m.json.pk-tmp-" in message
    assert "error swallowed: save() returned normally, yet load() returned {'v': 1}" in message
    assert "EIO at #5 fsync_dir . (once)" in message  # fsyncgate: a failed dir fsync must not be swallowed


def test_leaked_descriptors_and_litter_are_reported(tmp_path):
    path = tmp_path / "m.json"
    atomic_write(path, b"{}")
    kept = []

    def save():
        f = open(f"{path}.tmp", "w")  # noqa: SIM115 - the bug under test
        kept.append(f)
        f.write("{}")
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(f"{path}.tmp", path)

    with pytest.raises(AssertionError) as info:
        DiskFaults(tmp_path)(save, lambda: load_json(path), errnos=["ENOSPC"], modes=["once"])
    for f in kept:
        f.close()
    assert "leaked file descriptors: ['m.json.tmp']" in str(info.value)
    assert "temp litter after the failed save: ['m.json.tmp']" in str(info.value)


def test_state_store_checkpoint_with_setup_and_teardown(tmp_path, fd_guard):
    where = tmp_path / "store"

    class Counter:
        def __init__(self):
            self.value = 0

        def state_dict(self):
            return {"value": self.value}

        def load_state_dict(self, state):
            self.value = state["value"]

    def open_store(readonly=False):
        c = Counter()
        s = StateStore(where, autosave_every=0, readonly=readonly)
        s.register("c", c)
        s.load()
        return s, c

    store, _ = open_store()
    store.close()

    def setup():
        s, c = open_store()
        c.value = 7
        return s

    def load():
        s, c = open_store(readonly=True)
        s.close()
        return c.value

    report = DiskFaults(tmp_path)(
        lambda s: s.save(), load, setup=setup, teardown=lambda s: s.abandon(), rotate_errnos=True, root=where
    )
    assert report.violations == [] and report.fired == 2 * len(report.operations)


def test_arguments_are_validated(tmp_path):
    faults = DiskFaults(tmp_path)
    with pytest.raises(ValueError, match="unknown errno 'ENOPE'"):
        faults(print, dict, errnos=["ENOPE"])
    with pytest.raises(ValueError, match="mode must be 'once' or 'persistent'"):
        faults(print, dict, modes=["sometimes"])
