"""Verifier bugs found while judging tests/programs and the catalog, each as the user meets it.

Each test states the right behaviour and failed before the verifier was fixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import pytest
from fsutil import careful, fsync_dir, read, write_all

from persistkit.testing.disk_faults import DiskFaults
from persistkit.testing.fs.snapshot import Workshop
from persistkit.testing.observe import NotJudgeable
from persistkit.testing.report import Recorder


@pytest.fixture
def faults(tmp_path):
    return DiskFaults(tmp_path, recorder=Recorder())


def test_a_fault_on_an_fsync_through_a_read_only_descriptor_is_named_as_the_fsync(faults, tmp_path):
    """coreutils `sync FILE` (and this save) fsyncs through a descriptor opened O_RDONLY."""
    path = str(tmp_path / "m.bin")
    with open(path, "wb") as f:
        f.write(b"old")

    def save():
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, b"new-new")
            finally:
                os.close(fd)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                with contextlib.suppress(OSError):
                    os.fsync(fd)  # the bug under test: a failed fsync is ignored
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError) as info:
        faults(
            save, lambda: read(path), errnos=["EIO"], modes=["once"], short_writes=False, close_errors=False
        )
    text = str(info.value)
    assert "First: EIO at #4 fsync m.bin.tmp (once)" in text, text


def crash_while_closing():
    ctypes.string_at(0)  # a C library dereferencing NULL on its error path


def test_a_crash_says_where_the_save_was(faults, tmp_path):
    path = str(tmp_path / "m.bin")
    with open(path, "wb") as f:
        f.write(b"old")

    def save():
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, b"new")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            crash_while_closing()
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError) as info:
        faults(
            save, lambda: read(path), errnos=["EIO"], modes=["once"], short_writes=False, close_errors=False
        )
    text = str(info.value)
    assert "killed by SIGSEGV" in text
    where = text.split("where it was:", 1)[1].splitlines()[0]
    assert "crash_while_closing" in where, where


atomic_save = careful  # temp, fsync, rename, directory fsync (fsutil)


def test_a_load_that_writes_is_not_taken_for_writes_the_save_hid(faults, tmp_path):
    """ZODB's FileStorage, opened to load, writes its pid into Data.fs.lock: the save's own writes
    must be judged against the directory the save left, not the one load() left."""
    path, lock = str(tmp_path / "m.bin"), str(tmp_path / "m.lock")
    atomic_save(path, b"old")

    def locked(then):
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"%8d" % os.getpid(), 0)
            return then()
        finally:
            os.close(fd)

    report = faults(
        lambda: locked(lambda: atomic_save(path, b"new")),
        lambda: locked(lambda: read(path)),
        errnos=["EIO"],
        modes=["once"],
    )
    assert report.violations == [] and report.fired > 0, report.summary()


def test_a_run_without_a_verdict_leaves_no_workshop_behind(faults, tmp_path):
    """A dry run that ends in NotJudgeable (here: a log outside the root) after the state the save
    leaves was copied: that copy must be removed at once, not by a later garbage collection (which
    may run inside the next save's traced worker and be taken for that save's writes)."""
    root = tmp_path / "root"
    root.mkdir()
    path = str(root / "m.bin")
    atomic_save(path, b"old")

    def save():
        with open(tmp_path / "outside.log", "a") as log:
            log.write("saving\n")
        atomic_save(path, b"new")

    with pytest.raises(NotJudgeable, match="outside the directory under test") as info:
        faults(save, lambda: read(path), root=root, errnos=["EIO"], modes=["once"])
    assert info.value is not None  # the traceback (and all it references) is alive here
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".persistkit-")] == []


def test_a_forked_worker_never_removes_its_parents_workshop(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    workshop = Workshop(str(root))
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the workshop, as a forked worker's garbage collection would
        try:
            workshop.close()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.path.isdir(workshop.dir)
    workshop.close()
    assert not os.path.exists(workshop.dir)
