"""Verifier bugs found while judging tests/programs and the catalog, each as the user meets it.

Each test states the right behaviour and is an xfail(strict=True) until the verifier is fixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import pytest
from fsutil import fsync_dir, read, write_all

from persistkit.testing.disk_faults import DiskFaults
from persistkit.testing.report import Recorder


@pytest.fixture
def faults(tmp_path):
    return DiskFaults(tmp_path, recorder=Recorder())


@pytest.mark.xfail(
    strict=True,
    reason="the observer emits an 'open_existing' op for a descriptor opened read-only when it is first "
    "fsynced, with the fsync's syscall; _label_points gives the fault the first op of that (thread, "
    "syscall), so the fault on the fsync is named '#3 open_existing m.bin.tmp'",
)
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


@pytest.mark.xfail(
    strict=True,
    reason="disk_faults._stack_tail keeps the last 4 lines of faulthandler's dump, which lists the most "
    "recent call first: the message shows the outermost frames (disk_faults.py run/__call__, the test) and "
    "the 'Extension modules:' line, never where the save crashed or hung",
)
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
