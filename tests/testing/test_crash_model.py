"""crash_points at the kernel's grain, as a user meets it (the syscall observer, real files).

Each of these was a wrong verdict or a side effect before the page-level model: unsynced pages
only ever persisted in issue order (a header reaching the disk before its record passed), a
write was all-or-nothing under SIGKILL, directory fsyncs were matched by path, hard links,
modes and FIFOs were dropped from crash states, and the root was not left as the save left it.
"""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from fsutil import fsync_dir, read, write_all

from persistkit.testing.crash_points import CrashPoints
from persistkit.testing.report import Recorder


@pytest.fixture
def cp(tmp_path):
    return CrashPoints(tmp_path, recorder=Recorder())


RECORD = 4096


def open_log(path):
    """A log: page 0 holds the record count, records follow, one page each."""
    with open(path, "rb") as f:
        data = f.read()
    count = int.from_bytes(data[:8], "little")
    records = [data[RECORD * (i + 1) : RECORD * (i + 2)] for i in range(count)]
    for r in records:
        if len(r) != RECORD or r != r[:1] * RECORD or r[:1] == b"\0":
            raise ValueError(f"record damaged: the header counts {count} records")
    return count


def test_a_header_that_reaches_the_disk_before_its_record_is_caught(cp, tmp_path):
    path = tmp_path / "log"
    path.write_bytes((1).to_bytes(8, "little").ljust(RECORD, b"\0") + b"A" * RECORD)
    fsync_dir(tmp_path)

    def append_record_then_count():
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, b"B" * RECORD, 2 * RECORD)  # the record
            os.pwrite(fd, (2).to_bytes(8, "little"), 0)  # the header that counts it
            os.fsync(fd)  # one fsync orders nothing: pages reach the disk in any order
        finally:
            os.close(fd)

    with pytest.raises(AssertionError) as info:
        cp(append_record_then_count, lambda: open_log(path), observe="syscalls")
    text = str(info.value)
    assert "only #" in text and "write log [0:8]" in text and "reached the disk" in text
    assert "Fix: the disk may write log's pages in any order: fsync what a later write refers to" in text
    assert open_log(path) == 2  # the root is left as the save left it

    def correct():
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, b"C" * RECORD, 3 * RECORD)
            os.fsync(fd)  # the record first
            os.pwrite(fd, (3).to_bytes(8, "little"), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    report = cp(correct, lambda: open_log(path), observe="syscalls")
    assert report.violations == [] and report.old_states > 0 and report.new_states > 0


def test_a_sigkill_can_tear_one_large_write(cp, tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (64 * 1024))

    def overwrite():
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\2" * (64 * 1024), 0)  # one call, sixteen pages
        finally:
            os.close(fd)

    def load():
        data = read(path)
        if len(set(data)) != 1:
            raise ValueError("mixed old and new weights")
        return data[0]

    with pytest.raises(AssertionError) as info:
        cp(overwrite, load, model="process", observe="syscalls")
    text = str(info.value)
    assert "process killed during #" in text and "torn (the kill came after" in text
    assert "Fix: a SIGKILL can stop a large write to weights.bin half way" in text


@pytest.mark.parametrize("observe", ["syscalls", "python"])
def test_an_fsync_of_the_old_directory_does_not_cover_a_new_one_at_its_path(cp, tmp_path, observe):
    (tmp_path / "d").mkdir()

    def save():
        old = os.open(tmp_path / "d", os.O_RDONLY)
        try:
            os.rename(tmp_path / "d", tmp_path / "d.old")
            os.mkdir(tmp_path / "d")
            fsync_dir(tmp_path)
            with open(tmp_path / "d" / "x", "wb") as f:
                f.write(b"data")
                f.flush()
                os.fsync(f.fileno())
            os.fsync(old)  # the directory that USED to be d: x's entry is not made durable
        finally:
            os.close(old)

    def load():
        return read(tmp_path / "d" / "x") if (tmp_path / "d" / "x").exists() else None

    with pytest.raises(AssertionError) as info:
        cp(save, load, observe=observe)
    text = str(info.value)
    assert "reverted #" in text and "create d/x" in text  # x's entry in the new d was never made durable


def test_a_directory_renamed_then_fsynced_under_its_new_name_passes(cp, tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "w").write_bytes(b"old")

    def save():
        tmp = tmp_path / "ckpt.tmp"
        tmp.mkdir()
        with open(tmp / "w", "wb") as f:
            f.write(b"new")
            f.flush()
            os.fsync(f.fileno())
        os.rename(final, tmp_path / "ckpt.old")
        os.rename(tmp, final)
        fsync_dir(final)  # under its new name: it covers w's entry made as ckpt.tmp/w
        fsync_dir(tmp_path)

    def load():
        for where in (final, tmp_path / "ckpt.old"):
            if (where / "w").exists():
                return read(where / "w")
        return None

    report = cp(save, load, observe="syscalls")
    assert report.violations == [] and report.new_states > 0


def test_hard_links_are_kept_in_every_state(cp, tmp_path):
    """Versioning by hard link: 'current' is the same file as one of the versions."""
    (tmp_path / "v1").write_bytes(b"one")
    os.link(tmp_path / "v1", tmp_path / "current")
    fsync_dir(tmp_path)

    def save():
        fd = os.open(tmp_path / "v2", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, b"two")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp_path / "v2", tmp_path / "current.tmp")
        os.replace(tmp_path / "current.tmp", tmp_path / "current")
        fsync_dir(tmp_path)

    def load():
        current = tmp_path / "current"
        version = next(
            v for v in ("v1", "v2") if (tmp_path / v).exists() and os.path.samefile(current, tmp_path / v)
        )
        return version, read(current)

    report = cp(save, load, observe="syscalls")
    assert report.violations == [] and report.new_states > 0 and report.old_states > 0


def test_the_root_is_left_exactly_as_the_save_left_it(cp, tmp_path):
    """An app keeps a database connection open and a FIFO for control: both work afterwards."""
    db = tmp_path / "ledger.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (v)")
    conn.commit()
    os.mkfifo(tmp_path / "control", 0o600)
    (tmp_path / "key").write_bytes(b"k")
    os.chmod(tmp_path / "key", 0o400)
    before = {p: os.lstat(tmp_path / p) for p in ("ledger.db", "control", "key")}

    def save():
        tmp = tmp_path / "positions.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            write_all(fd, b'{"BTC": 1}')
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, tmp_path / "positions.json")
        fsync_dir(tmp_path)

    def load():
        p = tmp_path / "positions.json"
        return (read(p), stat.S_IMODE(os.stat(p).st_mode)) if p.exists() else None

    report = cp(save, load, observe="syscalls")
    assert report.violations == []
    for name, st in before.items():
        now = os.lstat(tmp_path / name)
        assert (now.st_ino, now.st_mode, now.st_mtime_ns) == (st.st_ino, st.st_mode, st.st_mtime_ns), name
    assert stat.S_IMODE(os.stat(tmp_path / "positions.json").st_mode) == 0o640
    conn.execute("INSERT INTO t VALUES (1)")  # the connection still writes its own database
    conn.commit()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    conn.close()
    assert not [n for n in os.listdir(tmp_path.parent) if n.startswith(".persistkit-")]
