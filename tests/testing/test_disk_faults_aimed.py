"""disk_faults injects what the kernel would, where it would, and survives what the save does.

Each test is a save a user could write. Before the seccomp injector, these verdicts were wrong:
faults landed on pipes and on every thread's N-th write, unlink got ENOSPC, no write ever
returned short, close and syncfs were never failed, a save that swallowed its timeout or
crashed its process took the test session down, and a descriptor held only by a traceback was
reported as leaked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

import pytest
from fsutil import careful, fsync_dir, read, write_all

from persistkit.testing.disk_faults import DiskFaults
from persistkit.testing.report import Recorder


@pytest.fixture
def faults(tmp_path):
    return DiskFaults(tmp_path, recorder=Recorder())


def test_a_single_write_that_ignores_its_count_publishes_a_truncated_file(faults, tmp_path):
    """A full disk makes write(2) return fewer bytes than asked. One os.write without a loop then
    publishes a truncated file: the short write catches it (no fault kind did before)."""
    path = str(tmp_path / "state.bin")
    careful(path, b"old-old-old")

    def save():
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"new-new-new")  # the bug: the count is not checked
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=[], close_errors=False)
    text = str(info.value)
    assert "First: short write at #1 write state.bin.tmp" in text
    assert "error swallowed: save() returned normally, yet load() returned b'new-n'" in text


def test_writes_to_pipes_and_other_threads_are_never_faulted(faults, tmp_path):
    """A save that reports progress on a pipe and stdout, with a busy logging thread writing its
    own pipe: only the save's file operations are faulted, one call of one thread each."""
    path = str(tmp_path / "m.json")
    careful(path, b'{"v": 1}')
    r, w = os.pipe()
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            os.write(w, b".")
            os.read(r, 1)

    def save():
        os.write(w, b"saving\n")
        os.read(r, 7)
        sys.stdout.write("progress\n")
        sys.stdout.flush()
        careful(path, b'{"v": 2}')

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        report = faults(save, lambda: read(path), errnos=["ENOSPC", "EIO"], modes=["once"])
    finally:
        stop.set()
        t.join()
        os.close(r)
        os.close(w)
    assert report.violations == [] and report.misfired == 0
    assert report.injected and all(
        ("state" in i or "m.json" in i or "fsync_dir" in i) for i in report.injected
    )
    assert not any("pipe" in i for i in report.injected)


def test_each_call_gets_only_the_errnos_its_man_page_lists(faults, tmp_path):
    """unlink(2) never returns ENOSPC or EDQUOT, open(2) never EIO, rename(2) never EIO."""
    path = str(tmp_path / "m.json")
    careful(path, b"1")
    (tmp_path / "stale.tmp").write_bytes(b"x")

    def save():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path / "stale.tmp")
        careful(path, b"2")

    report = faults(save, lambda: read(path), litter=None)
    assert report.violations == []
    unlinks = [i for i in report.injected if " unlink " in i]
    assert unlinks and all(i.startswith(("EIO", "EROFS")) for i in unlinks), unlinks
    assert not any(i.startswith("EIO at") and " create " in i for i in report.injected)
    assert not any(i.startswith("EIO at") and " replace " in i for i in report.injected)


def test_a_failed_close_releases_the_file_and_a_careful_save_passes(faults, tmp_path):
    """close(2) can report EIO (NFS, some FUSE file systems); the descriptor is released anyway.
    A save that treats it as an error and cleans up passes, without a leak."""
    path = str(tmp_path / "m.json")
    careful(path, b"1")
    report = faults(lambda: careful(path, b"2"), lambda: read(path), errnos=["EIO"], modes=["once"])
    assert report.violations == [] and report.kinds["close"] == 1
    assert any(i.startswith("EIO at #3 close m.json.tmp") for i in report.injected), report.injected


def test_syncfs_is_faulted_and_a_swallowed_failure_is_caught(faults, tmp_path):
    """syncfs(2) can fail with EIO: a save that makes its data durable with syncfs and ignores
    the result has acknowledged nothing."""
    libc = ctypes.CDLL(None, use_errno=True)
    path = str(tmp_path / "m.json")
    careful(path, b"1")

    def save():
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        write_all(fd, b"2")
        os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(tmp_path, os.O_RDONLY)
        try:
            libc.syncfs(dfd)  # the bug: the return value is ignored
        finally:
            os.close(dfd)

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["EIO"], modes=["once"])
    assert ("EIO at" in str(info.value) and "syncfs" in str(info.value)) or "sync_all" in str(info.value)


def test_an_o_tmpfile_save_that_swallows_every_error_is_caught(faults, tmp_path):
    """O_TMPFILE + linkat: the anonymous file's writes and fsync are faulted too (they were not)."""
    path = str(tmp_path / "m.bin")
    careful(path, b"old")

    libc = ctypes.CDLL(None, use_errno=True)

    def save():
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            with contextlib.suppress(OSError):  # the bug: every error swallowed
                write_all(fd, b"new")
            with contextlib.suppress(OSError):
                os.fsync(fd)
            tmp = path + ".new"
            # open(2)'s way to give an O_TMPFILE a name: linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW)
            if libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, tmp.encode(), 0x400) != 0:
                raise OSError(ctypes.get_errno(), "linkat failed", tmp)
            os.replace(tmp, path)
        finally:
            os.close(fd)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["EIO"], modes=["once"])
    assert "error swallowed" in str(info.value) or "fsync" in str(info.value)


def test_a_temp_file_outside_the_root_is_faulted(tmp_path):
    """The temp file is written in a scratch directory and moved in: its writes are the save's."""
    root = tmp_path / "root"
    scratch = tmp_path / "scratch"
    root.mkdir()
    scratch.mkdir()
    path = str(root / "m.bin")
    careful(path, b"old")

    def save():
        tmp = str(scratch / "m.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with contextlib.suppress(OSError):  # the bug
                write_all(fd, b"new")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(root)

    with pytest.raises(AssertionError) as info:
        DiskFaults(root, recorder=Recorder())(save, lambda: read(path), errnos=["EIO"], modes=["once"])
    assert "m.part" in str(info.value) and "error swallowed" in str(info.value)


def test_a_save_that_retries_fsync_after_it_failed_loses_the_pages(faults, tmp_path):
    """fsyncgate: after a failed fsync Linux marks the dirty pages clean; fsync again "succeeds"
    and the data is gone. The save acknowledges anyway: caught on the state without the pages."""
    path = str(tmp_path / "m.bin")
    careful(path, b"old-state")

    def save():
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, b"new-state")
                try:
                    os.fsync(fd)
                except OSError:
                    os.fsync(fd)  # the bug: retrying fsync does not bring dropped pages back
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["EIO"], modes=["once"])
    text = str(info.value)
    assert "First: EIO at #2 fsync m.bin.tmp (once)" in text and "fsyncgate" in text, text


def test_a_save_that_swallows_its_timeout_is_killed_from_outside(faults, tmp_path):
    """It catches every exception and tries again forever. The case is killed (with everything it
    started), named as hung, and the session goes on."""
    path = str(tmp_path / "m.json")
    careful(path, b"1")

    def save():
        while True:
            try:
                careful(path, b"2")
                return
            except BaseException:
                pass

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["ENOSPC"], modes=["persistent"], timeout=3)
    assert "save() hung" in str(info.value)
    assert read(path) == b"2"  # and the directory is back as the clean save left it


def test_a_save_that_blocks_while_unwinding_is_killed_from_outside(faults, tmp_path):
    """The error kills a worker thread; the save then waits for an answer that never comes."""
    path = str(tmp_path / "m.json")
    careful(path, b"1")

    def save():
        done = threading.Event()

        def worker():
            careful(path, b"2")
            done.set()

        threading.Thread(target=worker, daemon=True).start()
        done.wait()  # the bug: no timeout, and the worker died

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["EIO"], modes=["once"], timeout=3)
    assert "save() hung" in str(info.value)


def test_a_save_that_crashes_its_process_is_a_verdict(faults, tmp_path):
    """A C library that dereferences a bad pointer on an error path (as h5py 3.16 does in
    File.close() after ENOSPC): the segfault is named, the session survives."""
    path = str(tmp_path / "m.json")
    careful(path, b"1")

    def save():
        try:
            careful(path, b"2")
        except OSError:
            ctypes.string_at(0)  # the crash

    with pytest.raises(AssertionError) as info:
        faults(save, lambda: read(path), errnos=["ENOSPC"], modes=["once"])
    assert "killed by SIGSEGV" in str(info.value)


def test_a_descriptor_only_the_traceback_holds_is_not_a_leak(faults, tmp_path):
    """torch.save(obj, path) keeps its C++ writer (and its descriptor) alive until the exception
    is dropped. Checked after the exception is released and collected, that is no leak."""
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "w.pt")
    torch.save({"w": torch.zeros(4)}, path)

    def save():
        tmp = path + ".tmp"
        try:
            torch.save({"w": torch.ones(4)}, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(tmp_path)

    report = faults(
        save, lambda: float(torch.load(path, weights_only=True)["w"].sum()), errnos=["ENOSPC"], modes=["once"]
    )
    assert report.violations == []


def test_temp_names_of_python_tempfile_with_an_underscore_are_the_same_place(faults, tmp_path):
    """Python's tempfile draws 8 characters from [a-z0-9_]: about one name in five has an underscore,
    and the fault aimed at the dry run's temp file was then said to land "elsewhere" in the faulted
    run (another random name): a correct mkstemp save got no verdict (the zoo's save_atomic, in CI)."""
    import random

    path = str(tmp_path / "model.json")
    careful(path, b"old")

    for at in (3, 6):  # the underscore after 3 and after 6 other characters ('.save-vgih87_g.tmp' in CI)

        def save(at=at):  # what tempfile.mkstemp does, with the underscore every time (a new name each run)
            letters = "".join(random.SystemRandom().choices("abcdefghijklmnopqrstuvwxyz0123456789", k=7))
            name = f".save-{letters[:at]}_{letters[at:]}.tmp"
            careful(path, b"new", tmp=os.path.join(str(tmp_path), name))

        report = faults(save, lambda: read(path), errnos=["EIO"], modes=["once"], observe="syscalls")
        assert report.violations == [] and report.misfired == 0 and report.fired > 3, report.summary()
