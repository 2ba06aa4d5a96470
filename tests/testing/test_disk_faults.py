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


# python: 6 operations x 4 errnos x 2 modes. syscalls: each call gets the errnos its man page lists,
# once and persistently: open(O_CREAT) ENOSPC/EDQUOT/EROFS (6), write ENOSPC/EDQUOT/EIO (6) plus a short
# write, fsync EIO/ENOSPC/EDQUOT (6), close EIO once (1), rename ENOSPC/EDQUOT/EROFS (6), the
# directory's fsync (6): 32. A correct writer finishes a short write and succeeds: 31 raise.
@pytest.mark.parametrize(("observe", "cases", "raised"), [("python", 48, 48), ("syscalls", 32, 31)])
def test_atomic_write_handles_every_fault(tmp_path, fd_guard, observe, cases, raised):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 1}')
    rec = Recorder()
    report = DiskFaults(tmp_path, recorder=rec)(
        lambda: atomic_write(path, b'{"v": 2}'), lambda: load_json(path), observe=observe
    )
    assert len(report.operations) == 6 and report.cases == cases and report.fired == cases
    assert report.raised == raised and report.violations == [] and report.observer == observe
    assert rec.faults == cases
    assert load_json(path) == {"v": 2}


# python: EIO once at each of the 6 operations. syscalls: EIO only where the man page lists it (write,
# fsync, close, the directory's fsync; not open(2) nor rename(2)), plus a short write that atomic_write
# finishes by itself (no violation): 4 of 5.
@pytest.mark.parametrize(
    ("observe", "bad", "cases", "first"),
    [
        ("python", 6, 6, "EIO at #0 create .m.json.pk-tmp-"),
        ("syscalls", 4, 5, "EIO at #1 write .m.json.pk-tmp-"),
    ],
)
def test_swallowed_errors_are_reported(tmp_path, observe, bad, cases, first):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 1}')

    def save():
        with contextlib.suppress(OSError):
            atomic_write(path, b'{"v": 2}')

    with pytest.raises(AssertionError) as info:
        DiskFaults(tmp_path)(save, lambda: load_json(path), errnos=["EIO"], modes=["once"], observe=observe)
    message = str(info.value)
    assert message.startswith(
        f"disk_faults: {bad} of {cases} injected faults were mishandled (observed by {observe})."
    )
    assert first in message
    assert "error swallowed: save() returned normally, yet load() returned {'v': 1}" in message
    assert "EIO at #5 fsync_dir . (once)" in message  # a failed dir fsync must not be swallowed


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
    assert report.violations == [] and report.fired == 2 * report.points


def test_arguments_are_validated(tmp_path):
    faults = DiskFaults(tmp_path)
    with pytest.raises(ValueError, match="unknown errno 'ENOPE'"):
        faults(print, dict, errnos=["ENOPE"])
    with pytest.raises(ValueError, match="mode must be 'once' or 'persistent'"):
        faults(print, dict, modes=["sometimes"])
