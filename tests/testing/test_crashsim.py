"""The crash simulator must find the classic bugs and pass the correct protocol."""

from __future__ import annotations

import os

import pytest

from persistkit.io import atomic_write, current_fs, use_fs
from persistkit.testing.fs import CrashSimulator, Entry, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS

OLD = b"o" * 5000
NEW = b"n" * 9000  # three 4 KiB blocks


def record(tmp_path, save):
    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    with use_fs(rec):
        save(str(tmp_path / "f"))
    return CrashSimulator(before, rec.ops)


def violations(sim, model):
    bad = []
    for state in sim.states(model):
        content = state.files().get("f")
        ok = {NEW} if state.complete else {OLD, NEW}
        if content not in ok:
            bad.append(state)
    return bad


def write_in_place(path):
    fs = current_fs()
    h = fs.create(path, exclusive=False)
    fs.write(h, NEW[:4096])
    fs.write(h, NEW[4096:])
    fs.fsync(h)
    fs.close(h)


def rename_without_file_fsync(path):
    fs = current_fs()
    h = fs.create(path + ".tmp")
    fs.write(h, NEW)
    fs.close(h)
    fs.replace(path + ".tmp", path)
    fs.fsync_dir(os.path.dirname(path))


def no_directory_fsync(path):
    fs = current_fs()
    h = fs.create(path + ".tmp")
    fs.write(h, NEW)
    fs.fsync(h)
    fs.close(h)
    fs.replace(path + ".tmp", path)


def delete_then_write(path):
    fs = current_fs()
    fs.unlink(path)
    fs.fsync_dir(os.path.dirname(path))
    h = fs.create(path + ".tmp")
    fs.write(h, NEW)
    fs.fsync(h)
    fs.close(h)
    fs.replace(path + ".tmp", path)
    fs.fsync_dir(os.path.dirname(path))


@pytest.fixture
def old_file(tmp_path):
    (tmp_path / "f").write_bytes(OLD)
    return tmp_path


@pytest.mark.parametrize(
    ("bug", "model"),
    [
        (write_in_place, "process"),
        (write_in_place, "power-loss"),
        (rename_without_file_fsync, "power-loss"),
        (no_directory_fsync, "power-loss"),
        (delete_then_write, "process"),
    ],
)
def test_buggy_protocols_are_caught(old_file, bug, model):
    sim = record(old_file, bug)
    bad = violations(sim, model)
    assert bad, f"{bug.__name__} under {model}: no violating state among {sim.stats.states}"


def test_rename_without_fsync_survives_process_crashes(old_file):
    # kill -9 keeps the page cache: this bug only shows on power loss
    assert violations(record(old_file, rename_without_file_fsync), "process") == []


def test_no_dir_fsync_is_torn_only_after_return(old_file):
    bad = violations(record(old_file, no_directory_fsync), "power-loss")
    assert bad and all(s.complete for s in bad)
    assert "reverted" in bad[0].description


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_atomic_write_has_no_violations(old_file, model):
    sim = record(old_file, lambda p: atomic_write(p, NEW))
    assert violations(sim, model) == []
    assert sim.stats.states >= (4 if model == "process" else 5)


def test_process_model_is_one_state_per_prefix(old_file):
    sim = record(old_file, write_in_place)
    states = list(sim.states("process"))
    assert [s.after for s in states] == sorted({s.after for s in states})
    assert states[0].files()["f"] == OLD
    assert states[-1].files()["f"] == NEW and states[-1].complete
    # after the truncating create the file is empty, after the first write it holds 4 KiB
    contents = [s.files()["f"] for s in states]
    assert b"" in contents and NEW[:4096] in contents


def test_torn_writes_cut_and_zero_at_block_boundaries(tmp_path):
    def unsynced_append(path):
        fs = current_fs()
        h = fs.create(path)
        fs.write(h, NEW)
        fs.close(h)

    sim = record(tmp_path, unsynced_append)
    contents = {s.files().get("f") for s in sim.states("power-loss")}
    assert None in contents  # the create itself reverted
    assert NEW[:4096] in contents and NEW[:8192] in contents  # cut at boundaries
    assert NEW[:4096] + b"\0" * (9000 - 4096) in contents  # extended, rest zeros
    assert b"\0" * 9000 in contents  # delayed allocation: size without data
    assert NEW in contents


def test_directory_creation_needs_parent_fsync(tmp_path):
    def make_dir_and_file(path):
        fs = current_fs()
        d = os.path.join(os.path.dirname(path), "sub")
        fs.mkdir(d)
        atomic_write(os.path.join(d, "x"), b"data")  # fsyncs sub, but not sub's parent

    sim = record(tmp_path, make_dir_and_file)
    finals = [s.files() for s in sim.states("power-loss") if s.complete]
    assert any("sub" not in snap.entries for snap in finals)  # the mkdir can be lost

    def durable_dirs(path):
        current_fs().makedirs(os.path.join(os.path.dirname(path), "sub2"))
        atomic_write(os.path.join(os.path.dirname(path), "sub2", "x"), b"data")

    sim = record(tmp_path, durable_dirs)
    for s in sim.states("power-loss"):
        if s.complete:
            assert s.files().get(os.path.join("sub2", "x")) == b"data", s.description


def test_directory_rename_moves_subtree(tmp_path):
    (tmp_path / "gen1").mkdir()
    (tmp_path / "gen1" / "a").write_bytes(b"A")

    def rename_dir(path):
        fs = current_fs()
        fs.replace(tmp_path / "gen1", tmp_path / "gen2")
        fs.fsync_dir(tmp_path)

    sim = record(tmp_path, rename_dir)
    states = list(sim.states("process"))
    assert states[-1].files() == {os.path.join("gen2", "a"): b"A"}


def test_impossible_combinations_are_skipped(tmp_path):
    sim = record(tmp_path, rename_without_file_fsync)
    list(sim.states("power-loss"))
    # a persisted rename whose create was reverted cannot happen
    assert sim.stats.infeasible > 0


def test_materialize_reproduces_the_state(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"123")
    os.symlink("d/f", tmp_path / "link")
    snap = Snapshot.take(tmp_path)
    assert snap.entries["link"] == Entry("symlink", target="d/f")
    (tmp_path / "d" / "f").write_bytes(b"changed")
    (tmp_path / "extra").write_bytes(b"x")
    snap.materialize()
    again = Snapshot.take(tmp_path)
    assert again.entries == snap.entries
    assert again.fingerprint() == snap.fingerprint()
    assert snap.diff(again) == []


def test_large_writes_are_sampled_and_reported(tmp_path):
    def big(path):
        fs = current_fs()
        h = fs.create(path)
        fs.write(h, b"z" * (4096 * 100))
        fs.close(h)

    sim = CrashSimulator(Snapshot.take(tmp_path), [], max_tears_per_write=8)
    rec = RecordingFS()
    with use_fs(rec):
        big(str(tmp_path / "f"))
    sim = CrashSimulator(Snapshot.take(tmp_path / "nonexistent-root-is-empty"), rec.ops)
    assert sim.ops == []  # operations outside the snapshot root are not modelled
    sim = CrashSimulator(Snapshot(str(tmp_path), {}), rec.ops, max_tears_per_write=8)
    n = sum(1 for _ in sim.states("power-loss"))
    assert sim.stats.sampled and n >= 8


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model"):
        next(CrashSimulator(Snapshot(str(tmp_path), {}), []).states("bogus"))  # type: ignore[arg-type]
