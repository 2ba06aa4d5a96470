"""The crash model must find the classic bugs, pass the correct protocols, and work at the kernel's grain.

These drive the model directly (``RecordingFS`` + ``Snapshot`` + ``CrashSimulator``); the
user-level versions, through ``crash_points`` and the syscall observer, are in
test_crash_model.py.
"""

from __future__ import annotations

import os
import stat

import pytest

from persistkit.io import atomic_write, current_fs, use_fs
from persistkit.testing.fs import CrashSimulator, Plan, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.observe.observer import observe_save
from persistkit.testing.observe.strace import ptrace_problem

OLD = b"o" * 5000
NEW = b"n" * 9000  # three 4 KiB pages


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
    assert any(loss.how == "reverted" and loss.op.kind == "replace" for loss in bad[0].losses)


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_atomic_write_has_no_violations(old_file, model):
    sim = record(old_file, lambda p: atomic_write(p, NEW))
    assert violations(sim, model) == []
    assert sim.stats.states >= (4 if model == "process" else 5)


def test_process_model_is_one_state_per_prefix_plus_torn_large_writes(old_file):
    sim = record(old_file, write_in_place)
    states = list(sim.states("process"))
    assert [s.after for s in states] == sorted(s.after for s in states)
    assert states[0].files()["f"] == OLD
    assert states[-1].files()["f"] == NEW and states[-1].complete
    contents = [s.files()["f"] for s in states]
    # after the truncating create the file is empty, after the first write it holds 4 KiB
    assert b"" in contents and NEW[:4096] in contents
    # the second write (4904 bytes, two pages) torn by a SIGKILL after its first page
    torn = [s for s in states if s.losses and s.losses[0].how == "torn"]
    assert torn and NEW[:8192] in [s.files()["f"] for s in torn]


def test_unsynced_pages_persist_in_any_subset(tmp_path):
    def unsynced_append(path):
        fs = current_fs()
        h = fs.create(path)
        fs.write(h, NEW)
        fs.close(h)

    sim = record(tmp_path, unsynced_append)
    contents = {s.files().get("f") for s in sim.states("power-loss")}
    assert None in contents  # the create itself reverted
    assert b"" in contents  # the file made, its size never updated
    assert NEW[:4096] in contents  # only the first page reached the disk
    assert NEW[:8192] + b"\0" * (9000 - 8192) in contents  # the last page lost, the size kept
    assert b"n" * 4096 + b"\0" * 4096 + b"n" * (9000 - 8192) in contents  # an inside page lost
    assert b"\0" * 9000 in contents  # delayed allocation: the size without the data
    assert NEW in contents
    assert sim.stats.per_class["first page"] >= 1 and sim.stats.per_class["last page"] >= 1


def test_a_header_written_after_its_record_can_reach_the_disk_first(tmp_path):
    """The kernel writes dirty pages back in any order: one fsync at the end does not order them."""
    log = tmp_path / "log"
    log.write_bytes(b"\0" * 4096)  # page 0: the header (a record count), zero records

    def append_then_count(path):
        fs = current_fs()
        h = fs.open_append(tmp_path / "log")
        fs.write(h, b"R" * 4096)  # the record, page 1
        fs.close(h)
        with open(tmp_path / "log", "r+b") as raw:  # the header, in place
            raw.write((1).to_bytes(8, "little"))
        fs.fsync_dir(tmp_path)

    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    from persistkit.testing.observe.intercept import GuardFS, Interceptor

    with use_fs(GuardFS(rec)), Interceptor(str(tmp_path), log=rec):
        append_then_count(str(log))
        fd = os.open(log, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    sim = CrashSimulator(before, rec.ops)
    counts_without_record = [
        s for s in sim.states("power-loss")
        if (data := s.files().get("log")) and int.from_bytes(data[:8], "little") == 1 and data[4096:] != b"R" * 4096
    ]  # fmt: skip
    assert counts_without_record, "no state where the header counts a record that never reached the disk"
    assert any(loss.how == "early" for s in counts_without_record for loss in s.losses)


def test_a_directory_fsync_covers_the_directory_not_its_old_path(tmp_path):
    """A new directory at a reused path is not made durable by an fsync of the old one."""
    (tmp_path / "d").mkdir()

    def save(_):
        old = os.open(tmp_path / "d", os.O_RDONLY)
        os.rename(tmp_path / "d", tmp_path / "d.old")
        os.mkdir(tmp_path / "d")
        fd = os.open(tmp_path, os.O_RDONLY)
        os.fsync(fd)  # the rename and the new d are durable
        os.close(fd)
        with open(tmp_path / "d" / "x", "wb") as f:
            f.write(b"data")
            f.flush()
            os.fsync(f.fileno())
        os.fsync(old)  # the OLD directory: x's entry in the new d is not durable
        os.close(old)

    sim = _python_record(tmp_path, save)
    finals = [s.files() for s in sim.states("power-loss") if s.complete]
    assert any(os.path.join("d", "x") not in f for f in finals)


def test_a_directory_renamed_then_fsynced_under_its_new_name_is_durable(tmp_path):
    """The files made in tmpdir/ are durable once the directory is fsynced, whatever it is called by then."""

    def save(_):
        os.mkdir(tmp_path / "tmpdir")
        with open(tmp_path / "tmpdir" / "x", "wb") as f:
            f.write(b"data")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp_path / "tmpdir", tmp_path / "final")
        for where in (tmp_path / "final", tmp_path):
            fd = os.open(where, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

    sim = _python_record(tmp_path, save)
    finals = [s.files() for s in sim.states("power-loss") if s.complete]
    assert finals and all(f.get(os.path.join("final", "x")) == b"data" for f in finals), finals


def _python_record(tmp_path, save):
    from persistkit.testing.observe.intercept import GuardFS, Interceptor

    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    with use_fs(GuardFS(rec)), Interceptor(str(tmp_path), log=rec):
        save(str(tmp_path))
    return CrashSimulator(before, rec.ops)


def test_hard_links_modes_fifos_and_times_are_kept_and_the_root_is_restored(tmp_path):
    (tmp_path / "v1").write_bytes(b"one")
    os.link(tmp_path / "v1", tmp_path / "current")
    os.mkfifo(tmp_path / "control", 0o600)
    (tmp_path / "secret").write_bytes(b"s")
    os.chmod(tmp_path / "secret", 0o600)
    os.utime(tmp_path / "secret", ns=(10**18, 10**18))
    inodes = {p: os.lstat(tmp_path / p).st_ino for p in ("v1", "current", "control", "secret")}

    def save(path):
        atomic_write(tmp_path / "v2", b"two")
        fs = current_fs()
        os.link(tmp_path / "v2", tmp_path / "current.tmp")  # hard-link versioning
        fs.replace(tmp_path / "current.tmp", tmp_path / "current")
        fs.fsync_dir(tmp_path)

    sim = _python_record(tmp_path, lambda p: save(p))
    root = str(tmp_path)
    for state in sim.states("power-loss"):
        state.materialize()
        assert stat.S_ISFIFO(os.lstat(tmp_path / "control").st_mode)
        assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o600
        assert os.stat(tmp_path / "secret").st_mtime_ns == 10**18
        both = os.path.exists(tmp_path / "current") and os.path.exists(tmp_path / "v2")
        if both and (tmp_path / "current").read_bytes() == b"two":
            assert os.path.samefile(tmp_path / "current", tmp_path / "v2"), state.description
    sim.close()
    sim.before.close()
    # the root is exactly as the save left it: same inodes for what the save did not touch
    assert (
        os.path.samefile(tmp_path / "current", tmp_path / "v2")
        and (tmp_path / "current").read_bytes() == b"two"
    )
    assert {p: os.lstat(tmp_path / p).st_ino for p in ("v1", "control", "secret")} == {
        p: inodes[p] for p in ("v1", "control", "secret")
    }
    assert not any(name.startswith(".persistkit-") for name in os.listdir(os.path.dirname(root)))


def test_impossible_combinations_are_skipped(tmp_path):
    sim = record(tmp_path, rename_without_file_fsync)
    list(sim.states("power-loss"))
    # a persisted rename whose create was reverted cannot happen
    assert sim.stats.infeasible > 0


def test_a_state_built_into_another_directory_is_the_same_state(old_file, tmp_path_factory):
    sim = record(old_file, write_in_place)
    elsewhere = tmp_path_factory.mktemp("copy")
    for state in sim.states("power-loss"):
        built = state.materialize(elsewhere)
        assert {"f": (elsewhere / "f").read_bytes()} == state.files()
        assert built == str(elsewhere)


def test_snapshot_materialize_restores_and_keeps_what_did_not_change(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"123")
    (tmp_path / "same").write_bytes(b"same")
    os.symlink("d/f", tmp_path / "link")
    snap = Snapshot.take(tmp_path)
    assert snap.entries["link"].kind == "symlink" and snap.entries["link"].target == "d/f"
    same_ino = os.lstat(tmp_path / "same").st_ino
    f_ino = os.lstat(tmp_path / "d" / "f").st_ino
    (tmp_path / "d" / "f").write_bytes(b"changed in place")
    (tmp_path / "extra").write_bytes(b"x")
    snap.materialize()
    again = Snapshot.take(tmp_path, content=False)
    assert snap.diff(again) == []
    assert (tmp_path / "d" / "f").read_bytes() == b"123"
    assert os.lstat(tmp_path / "same").st_ino == same_ino  # untouched: the same file
    assert os.lstat(tmp_path / "d" / "f").st_ino == f_ino  # changed in place: restored in place
    snap.close()


def test_max_states_chooses_without_building_the_others(tmp_path):
    def many(path):
        fs = current_fs()
        for i in range(300):
            h = fs.create(f"{path}.{i}")
            fs.write(h, b"x" * 100)
            fs.close(h)

    sim = record(tmp_path, many)
    states = list(sim.states("process", max_states=20))
    assert len(states) <= 20 and sim.stats.sampled and sim.stats.candidates > 300
    # spread over the whole save: the first state and the completed save are both there
    assert states[0].after == 0 and states[-1].complete


def test_a_plan_with_dropped_pages_is_what_a_failed_fsync_leaves(tmp_path):
    (tmp_path / "f").write_bytes(OLD)

    def save(path):
        fs = current_fs()
        h = fs.create(path, exclusive=False)
        fs.write(h, NEW)
        fs.close(h)

    sim = record(tmp_path, save)
    writes = [i for i, op in enumerate(sim.model.ops) if op.kind == "write"]
    files = sim.materializer().contents(Plan(len(sim.model.ops), dropped=frozenset(writes)))
    assert files["f"] == b"\0" * len(NEW)  # truncated by the create, the new bytes dropped


@pytest.mark.skipif(ptrace_problem() is not None, reason="needs the syscall observer")
def test_a_power_cut_keeps_what_a_durable_rename_needs_and_drops_the_rest(tmp_path):
    """``power_cut()``: the most a power cut can lose, as ``lifecycle(model="power-loss")`` restarts from it.

    The file is built in a staging directory that is never fsynced, then renamed into the
    root, whose fsync makes the rename durable; the rename implies its source's creation (and
    its directory) persisted. A file written after that and never synced is lost.
    """
    root = tmp_path / "state"
    root.mkdir()
    (root / "data").write_bytes(OLD)
    before = Snapshot.take(root)

    def save():
        os.mkdir(root / "staging")
        fd = os.open(root / "staging" / "x", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, NEW)
        os.fsync(fd)
        os.close(fd)
        os.rename(root / "staging" / "x", root / "data")
        dfd = os.open(root, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        (root / "scratch").write_bytes(b"not synced")

    _, error, obs = observe_save(save, str(root), "syscalls")
    assert error is None
    sim = CrashSimulator(before, obs.ops, volatile=obs.volatile)
    state = sim.power_cut()
    assert [loss.how for loss in state.losses] == ["reverted", "lost"]
    assert "scratch" in state.description
    sim.leave(state)
    assert (root / "data").read_bytes() == NEW
    assert not (root / "scratch").exists()
    assert sorted(os.listdir(root)) == ["data", "staging"]
    before.close()
    obs.close()
