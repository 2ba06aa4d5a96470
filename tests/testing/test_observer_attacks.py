"""Adversarial tests of the syscall observer: each asserts the TRUE verdict for a save."""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys

import pytest
from fsutil import fsync_dir, read, replace_swallowing_write_errors, write_all

from persistkit.testing.observe import NotJudgeable

libc = ctypes.CDLL(None, use_errno=True)


def atomic(path, data, *, flags=0, sync=True):
    tmp = str(path) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(str(path)))


# --- durability the observer must credit (else: false FAIL) -------------------------------


def test_o_sync_writes_are_durable_on_return(crash_points, tmp_path):
    """write(2) on an O_SYNC/O_DSYNC descriptor returns only once data (and the metadata
    needed to read it) is on stable storage (open(2), O_SYNC): no fsync is needed."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    for flag in (os.O_SYNC, os.O_DSYNC):
        crash_points(
            lambda: atomic(path, b"new", flags=flag, sync=False), lambda: read(path), observe="syscalls"
        )
        path.write_bytes(b"old")


def test_pwritev2_rwf_dsync_is_durable_on_return(crash_points, tmp_path):
    """pwritev2(..., RWF_DSYNC) is a per-write O_DSYNC (pwritev2(2))."""
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwritev(fd, [b"new"], 0, os.RWF_DSYNC)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    crash_points(save, lambda: read(path), observe="syscalls")


# --- durability the observer must NOT credit (else: false PASS) ---------------------------


def test_syncfs_of_another_file_system_does_not_sync_the_root(crash_points, tmp_path):
    """syncfs(fd) syncs only the file system that holds fd (syncfs(2)); a tmpfs fd says
    nothing about the disk under tmp_path. The save below is an unsynced rename: FAIL."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system")
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new")
        os.close(fd)
        d = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert libc.syncfs(d) == 0  # the "barrier" before the rename: wrong file system
        finally:
            os.close(d)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError, match=r"neither|lost|zeros"):
        crash_points(save, lambda: read(path), observe="syscalls")


# --- correct saves done in unusual ways must pass -----------------------------------------


def test_pwrite_on_o_append_descriptor_appends(crash_points, tmp_path):
    """Linux ignores pwrite's offset on an O_APPEND descriptor (pwrite(2), BUGS)."""
    path = tmp_path / "log"
    path.write_bytes(b"a")

    def save():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.pwrite(fd, b"b", 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    assert_judged(crash_points, save, lambda: read(path)[:1], model="process")
    assert read(path) == b"ab"


def assert_judged(crash_points, save, load, **kw):
    try:
        return crash_points(save, load, observe="syscalls", **kw)
    except NotJudgeable as err:
        pytest.fail(f"a fully observable save was refused a verdict: {err}")


def test_dup_then_close_original(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fd2 = os.dup(fd)
        fd3 = 50
        os.dup2(fd, fd3)
        os.close(fd)
        os.write(fd2, b"ne")
        os.close(fd2)
        os.write(fd3, b"w")
        os.fsync(fd3)
        os.close(fd3)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


def test_forked_child_writes(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        pid = os.fork()
        if pid == 0:
            try:
                atomic(path, b"new")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    assert_judged(crash_points, save, lambda: read(path))


@pytest.mark.parametrize("how", ["sh", "dd", "python", "cp"])
def test_subprocess_writes(crash_points, tmp_path, how):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    src = tmp_path.parent / (tmp_path.name + "-src")
    src.write_bytes(b"new")
    tmp = f"{path}.tmp"
    cmd = {
        "sh": f"printf new > {tmp} && sync {tmp} && mv {tmp} {path} && sync {tmp_path}",
        "dd": f"dd if={src} of={tmp} conv=fsync status=none && mv {tmp} {path} && sync {tmp_path}",
        "python": f"{sys.executable} -c \"import os; fd=os.open('{tmp}', os.O_WRONLY|os.O_CREAT|os.O_TRUNC); "
        f"os.write(fd, b'new'); os.fsync(fd); os.close(fd); os.rename('{tmp}', '{path}'); "
        f"d=os.open('{tmp_path}', os.O_RDONLY); os.fsync(d)\"",
        "cp": f"cp {src} {tmp} && sync {tmp} && mv {tmp} {path} && sync {tmp_path}",
    }[how]
    assert_judged(crash_points, lambda: subprocess.run(["sh", "-c", cmd], check=True), lambda: read(path))


def test_proc_self_fd_paths(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fd2 = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        os.write(fd2, b"new")
        os.fsync(fd2)
        os.close(fd2)
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


def test_o_tmpfile_linked_via_proc(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"new")
            os.fsync(fd)
            assert libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, str(path).encode(), 0x400) == 0
        finally:
            os.close(fd)
        fsync_dir(tmp_path)

    def load():
        return read(path) if path.exists() else None

    assert_judged(crash_points, save, load)  # the textbook O_TMPFILE publish: a PASS


def test_o_tmpfile_linked_with_at_empty_path_and_a_scratch_tmpfile(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        scratch = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)  # never published
        os.write(scratch, b"scratch")
        os.close(scratch)
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"new")
            os.fsync(fd)
            r = libc.linkat(fd, b"", -100, str(path).encode(), 0x1000)  # AT_EMPTY_PATH
            if r != 0:
                pytest.skip(f"linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH (errno {ctypes.get_errno()})")
        finally:
            os.close(fd)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path) if path.exists() else None)


def test_o_tmpfile_linked_via_proc_unsynced_is_not_passed(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"new")
            assert libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, str(path).encode(), 0x400) == 0
        finally:
            os.close(fd)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError, match="lost #1 write"):  # the data was never synced: FAIL
        assert_judged(crash_points, save, lambda: read(path) if path.exists() else None)


def test_renameat2_noreplace(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new")
        os.fsync(fd)
        os.close(fd)
        r = libc.renameat2(-100, tmp.encode(), -100, str(path).encode(), 1)  # RENAME_NOREPLACE
        assert r == 0, ctypes.get_errno()
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


def test_relative_paths_after_chdir_and_dir_fd(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    (tmp_path / "sub").mkdir()

    def save():
        old = os.getcwd()
        os.chdir(tmp_path / "sub")
        try:
            d = os.open("..", os.O_RDONLY | os.O_DIRECTORY)
            fd = os.open("f.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=d)
            os.write(fd, b"new")
            os.fsync(fd)
            os.close(fd)
            os.rename("f.tmp", "../f", src_dir_fd=d)
            os.fsync(d)
            os.close(d)
        finally:
            os.chdir(old)

    assert_judged(crash_points, save, lambda: read(path))


def test_writev_many_iovecs_and_pwritev(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    data = [bytes([65 + i % 26]) * (i % 7 + 1) for i in range(1000)]

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.writev(fd, data)
        os.pwritev(fd, [b"X", b"YZ"], 2)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


def test_truncate_by_path_and_extend(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old-contents")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new-contents-long")
        os.close(fd)
        os.truncate(tmp, 3)
        fd = os.open(tmp, os.O_WRONLY)
        os.ftruncate(fd, 10)
        os.posix_fallocate(fd, 0, 20)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


def test_delete_and_recreate_same_name(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"junk")
        os.unlink(tmp)
        atomic(path, b"new")

    assert_judged(crash_points, save, lambda: read(path))


def test_write_through_symlinked_directory(crash_points, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    path = tmp_path / "link" / "f"
    path.write_bytes(b"old")
    assert_judged(crash_points, lambda: atomic(path, b"new"), lambda: read(path))


def test_root_reached_through_a_symlink(crash_points, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    root = tmp_path / "link"
    path = root / "f"
    path.write_bytes(b"old")
    assert_judged(crash_points, lambda: atomic(path, b"new"), lambda: read(path), root=root)


def test_save_that_only_deletes(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        os.unlink(path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: path.exists())


def test_fdatasync_and_sync(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new")
        os.fdatasync(fd)
        os.close(fd)
        os.replace(tmp, path)
        os.sync()

    assert_judged(crash_points, save, lambda: read(path))


def test_dir_fd_opened_before_tracing(crash_points, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:

        def save():
            tmp = str(path) + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"new")
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, path)
            os.fsync(d)

        assert_judged(crash_points, save, lambda: read(path))
    finally:
        os.close(d)


def test_shutil_copy2_and_move(crash_points, tmp_path):
    import shutil

    path = tmp_path / "f"
    path.write_bytes(b"old")
    src = tmp_path.parent / (tmp_path.name + "-src2")
    src.write_bytes(b"new")

    def save():
        tmp = str(path) + ".tmp"
        shutil.copy2(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        shutil.move(tmp, path)
        fsync_dir(tmp_path)

    assert_judged(crash_points, save, lambda: read(path))


# --- disk_faults ------------------------------------------------------------------------


def test_a_once_fault_is_one_failed_call_even_with_two_writer_threads(disk_faults, tmp_path):
    """strace's ``inject=write:when=N`` counts per thread, so it fails the N-th write of EVERY
    thread. A case reported as one fault ("ENOSPC at write a.tmp (once)") must not silently
    be two; such a run is a misfire (no verdict), not a judged case."""
    import threading

    seen: list[int] = []

    def cache(errors):  # best effort, not durable: its failures are ignored
        tmp = tmp_path / "cache.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"cache")
            os.replace(tmp, tmp_path / "cache")
        except OSError:
            errors.append("cache")
            tmp.unlink(missing_ok=True)

    def save():
        errors: list[str] = []
        t = threading.Thread(target=cache, args=(errors,))
        t.start()
        try:
            atomic(tmp_path / "a", b"new")
        except OSError:
            errors.append("a")
            (tmp_path / "a.tmp").unlink(missing_ok=True)
            raise
        finally:
            t.join()
            seen.append(len(errors))

    (tmp_path / "a").write_bytes(b"old")
    try:
        report = disk_faults(
            save,
            lambda: read(tmp_path / "a"),
            errnos=["ENOSPC"],
            modes=["once"],
            observe="syscalls",
            litter=None,
        )
    except NotJudgeable as err:
        pytest.fail(f"faults aimed at one call of one thread must land there: {err}")
    # every fault landed on its own call: never two threads' writes failing at once
    assert report.misfired == 0 and report.violations == [], report.summary()
    assert all(n <= 1 for n in seen), seen


def test_a_directory_built_then_renamed_is_fsynced_through_a_plain_o_rdonly_fd(crash_points, tmp_path):
    """The checkpoint-directory pattern: build ckpt.tmp/, fsync its files and itself (opened
    with a plain O_RDONLY, as most fsync_dir helpers do), rename it into place, fsync the
    parent. The directory no longer exists under its old name when the trace is decoded."""
    import shutil

    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "w").write_bytes(b"old")

    def plain_fsync_dir(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def save():
        tmp = tmp_path / "ckpt.tmp"
        tmp.mkdir()
        fd = os.open(tmp / "w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"new")
        os.fsync(fd)
        os.close(fd)
        plain_fsync_dir(tmp)
        old = tmp_path / "ckpt.old"
        os.rename(final, old)
        os.rename(tmp, final)
        plain_fsync_dir(tmp_path)
        shutil.rmtree(old)
        plain_fsync_dir(tmp_path)

    def load():
        p = final / "w"
        return read(p) if p.exists() else read(tmp_path / "ckpt.old" / "w")

    assert_judged(crash_points, save, load)


def _sqlite_put(db, value, wal=False, sync="FULL"):
    import sqlite3

    con = sqlite3.connect(db, isolation_level=None)
    try:
        if wal:
            con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={sync}")
        con.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
        con.execute("INSERT OR REPLACE INTO kv VALUES ('k', ?)", (value,))
    finally:
        con.close()


def _sqlite_get(db):
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT v FROM kv WHERE k='k'").fetchone()[0]
    finally:
        con.close()


def test_sqlite_rollback_journal_full_is_atomic_but_not_durable(crash_points, tmp_path):
    """SQLite's docs: synchronous=FULL in DELETE mode may lose the last commit to a power loss
    (the journal's unlink is not synced); EXTRA syncs the directory after it. TRUE verdicts:
    FULL fails only "after save() returned" (durability), EXTRA passes."""
    db = str(tmp_path / "s.db")
    _sqlite_put(db, "old")
    with pytest.raises(AssertionError, match=r"(?s)1 of .*after save\(\) returned.*synchronous=EXTRA"):
        crash_points(lambda: _sqlite_put(db, "new"), lambda: _sqlite_get(db), observe="syscalls")
    assert_judged(crash_points, lambda: _sqlite_put(db, "new", sync="EXTRA"), lambda: _sqlite_get(db))


def test_sqlite_rollback_journal_full_disk_faults(disk_faults, tmp_path):
    db = str(tmp_path / "s.db")
    _sqlite_put(db, "old")
    # SQLite (os_unix.c unixSync) ignores a failed fsync of the journal's directory: the only
    # TRUE findings are those; every other injected fault is handled.
    with pytest.raises(AssertionError) as info:
        disk_faults(
            lambda: _sqlite_put(db, "new"),
            lambda: _sqlite_get(db),
            observe="syscalls",
            errnos=["ENOSPC", "EIO"],
            litter=None,
        )
    msg = str(info.value)
    assert "2 of" in msg and "fsync_dir ." in msg and "Also failing (1): EIO at #13 fsync_dir" in msg, msg


def test_sqlite_wal(crash_points, tmp_path):
    """WAL mode maps the -shm index MAP_SHARED: honest refusal or a verdict, never a wrong one."""
    db = str(tmp_path / "s.db")
    _sqlite_put(db, "old", wal=True)
    try:
        crash_points(
            lambda: _sqlite_put(db, "new", wal=True),
            lambda: _sqlite_get(db),
            observe="syscalls",
            max_states=400,
        )
    except NotJudgeable as err:
        assert "mmap" in str(err) or "mapped" in str(err)


def test_sqlite_synchronous_off_is_not_passed(crash_points, tmp_path):
    db = str(tmp_path / "s.db")
    _sqlite_put(db, "old")
    with pytest.raises(AssertionError):
        crash_points(lambda: _sqlite_put(db, "new", sync="OFF"), lambda: _sqlite_get(db), observe="syscalls")


def test_a_fault_meant_for_the_file_that_lands_on_a_log_write_is_not_a_verdict(disk_faults, tmp_path):
    """strace's when=N counts every write of the thread, wherever it goes. A save that logs on
    some calls only (a buffered handler flushing every so often) shifts the count: the fault
    planned for ``write f.tmp`` hits the log write (which logging swallows), the file write
    succeeds, and the case "passes" without the file write ever failing. This save SWALLOWS
    errors of its file write and publishes an empty file: the true verdict is FAIL."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    log = os.open(os.devnull, os.O_WRONLY)
    calls = [0]

    def save():
        calls[0] += 1
        if calls[0] % 2 == 0:  # the log handler flushes on every other save
            try:  # noqa: SIM105
                os.write(log, b"saving\n")
            except OSError:
                pass  # logging.Handler.handleError: report and carry on
        replace_swallowing_write_errors(path, b"new")

    try:
        with pytest.raises(AssertionError) as info:  # FAIL, or NotJudgeable; never a pass
            disk_faults(save, lambda: read(path), errnos=["ENOSPC"], modes=["once"], observe="syscalls")
    finally:
        os.close(log)
        print(info.value)


def test_a_shared_mapping_made_writable_by_mprotect_is_not_passed(crash_points, tmp_path):
    """mmap(PROT_READ, MAP_SHARED) then mprotect(PROT_WRITE): stores reach the file with no
    system call the tracer decodes. The in-place update below can tear: never a PASS."""
    path = tmp_path / "f"
    path.write_bytes(b"A" * 8192)

    def save():
        fd = os.open(path, os.O_RDWR)
        try:
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_long,
            ]
            p = libc.mmap(None, 8192, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            assert p not in (None, ctypes.c_void_p(-1).value)
            assert libc.mprotect(ctypes.c_void_p(p), 8192, 3) == 0  # PROT_READ|PROT_WRITE
            ctypes.memset(p, ord("B"), 8192)
            libc.msync(ctypes.c_void_p(p), 8192, 4)  # MS_SYNC
            libc.munmap(ctypes.c_void_p(p), 8192)
        finally:
            os.close(fd)

    with pytest.raises(AssertionError):
        crash_points(save, lambda: read(path), observe="syscalls")
    assert read(path) == b"B" * 8192


def test_a_logging_thread_writing_outside_the_root(crash_points, tmp_path):
    """An unrelated handler appending to a log outside root while a correct save runs."""
    import threading

    path = tmp_path / "f"
    path.write_bytes(b"old")
    logfile = tmp_path.parent / (tmp_path.name + ".log")
    stop = threading.Event()

    def logger():
        with open(logfile, "a") as f:
            while not stop.is_set():
                f.write("tick\n")
                f.flush()
                stop.wait(0.001)

    t = threading.Thread(target=logger)
    t.start()
    try:
        # the log is outside the root: the save is judged once the log is declared not state
        report = crash_points(
            lambda: atomic(path, b"new"), lambda: read(path), observe="syscalls", allow_outside=[str(logfile)]
        )
        assert report.violations == [] and report.new_states >= 1
    finally:
        stop.set()
        t.join()


def test_a_journal_deleted_and_recreated_for_append(crash_points, tmp_path):
    """unlink(2) (not unlinkat) of a log, then O_CREAT|O_APPEND writes: they land at 0."""
    path = tmp_path / "log"
    path.write_bytes(b"old-old-old")

    def save():
        os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, b"new")
        os.fsync(fd)
        os.close(fd)
        fsync_dir(tmp_path)

    with pytest.raises(AssertionError, match=r"neither|not exist|No such"):  # deleted, then recreated: a gap
        try:
            crash_points(save, lambda: read(path), observe="syscalls")
        except NotJudgeable as err:
            pytest.fail(f"refused: {err}")


def test_a_fault_planned_for_a_call_the_faulted_run_never_makes_is_not_a_pass(disk_faults, tmp_path):
    """The dry run flushed a log line (one more write than later runs make), so ``when=N`` for
    the file's last write counts past it and never fires; that operation was never faulted.
    The save swallows its write errors (the true verdict is FAIL): never a silent pass."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    log = os.open(os.devnull, os.O_WRONLY)
    calls = [0]

    def save():
        calls[0] += 1
        if calls[0] == 1:
            os.write(log, b"first save\n")
        replace_swallowing_write_errors(path, b"new")

    try:
        with pytest.raises(AssertionError):
            disk_faults(save, lambda: read(path), errnos=["ENOSPC"], modes=["once"], observe="syscalls")
    finally:
        os.close(log)


def test_a_save_that_keeps_a_checksum_in_an_xattr(crash_points, tmp_path):
    """setxattr(2) is not a traced call, and snapshots do not carry xattrs: a correct save whose
    load checks an xattr must not be FAILED for states the crash model rebuilt without it."""
    import hashlib

    path = tmp_path / "f"

    def put(data):
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.setxattr(fd, "user.sha", hashlib.sha256(data).digest())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    try:
        put(b"old")
    except OSError as err:
        pytest.skip(f"no user xattrs here: {err}")

    def load():
        data = read(path)
        assert os.getxattr(path, "user.sha") == hashlib.sha256(data).digest(), "checksum"
        return data

    with pytest.raises(NotJudgeable, match="extended attributes"):  # honest: xattrs are not modelled
        crash_points(lambda: put(b"new"), load, observe="syscalls")


def test_a_save_whose_load_needs_the_mode_it_set(crash_points, tmp_path):
    """A launcher script published atomically with mode 0755; load runs it. Crash states keep
    the modes the save gave (they used to be rebuilt 0644: a false FAIL), and the root is left
    with the save's own file, mode and inode."""
    path = tmp_path / "run.sh"

    def put(text):
        tmp = str(path) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        try:
            os.write(fd, f"#!/bin/sh\necho {text}\n".encode())
            os.fchmod(fd, 0o755)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(tmp_path)

    put("old")
    load = lambda: subprocess.run([str(path)], capture_output=True, check=True).stdout  # noqa: E731
    crash_points(lambda: put("new"), load, observe="syscalls")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o755 and load() == b"new\n"


def test_o_append_switched_on_with_fcntl(crash_points, tmp_path):
    """fcntl(F_SETFL, O_APPEND) makes later writes land at the end of the file (fcntl(2))."""
    import fcntl

    path = tmp_path / "log"
    path.write_bytes(b"rec0\n")

    def save():
        fd = os.open(path, os.O_WRONLY)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
            os.write(fd, b"rec1\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    assert_judged(crash_points, save, lambda: read(path).splitlines()[0], model="process")
    assert read(path) == b"rec0\nrec1\n"


def test_a_load_that_answers_from_a_cache_is_not_passed(crash_points, tmp_path):
    """The save writes its file carelessly in place, but load() answers from an in-process cache
    the save updated: every crash state "loads" the new value. The state before the first
    operation IS the initial directory, so a load reading the directory must give the old
    value there; when it gives the new one, nothing was judged."""
    path = tmp_path / "f"
    path.write_bytes(b"old")
    cache: dict[str, bytes] = {}

    def save():
        cache["f"] = b"new"
        with open(path, "wb") as f:  # in place, no fsync: loses data
            f.write(b"new")

    def load():
        return cache.get("f") or read(path)

    with pytest.raises(AssertionError):
        crash_points(save, load, observe="syscalls")


def test_a_save_that_rewrites_a_fresh_file_after_a_failed_fsync(disk_faults, tmp_path):
    """fsyncgate is about retrying fsync on pages the kernel already dropped. This save instead
    discards the temp file and writes ALL the data again into a new inode; when that fsync
    succeeds the data is on disk (fsync(2)), so returning normally is correct (it was failed by
    a blanket policy before the fsyncgate state was modelled)."""
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def save():
        for attempt in range(3):
            tmp = f"{path}.{attempt}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, b"new")
                os.fsync(fd)
            except OSError:
                os.close(fd)
                os.unlink(tmp)
                if attempt == 2:
                    raise
                continue
            try:
                os.close(fd)  # close(2) can fail too (EIO): the descriptor is gone, the temp must go
            except OSError:
                os.unlink(tmp)
                raise
            try:
                os.replace(tmp, path)
            except OSError:
                os.unlink(tmp)
                raise
            fsync_dir(tmp_path)
            return

    disk_faults(save, lambda: read(path), errnos=["EIO"], modes=["once"], observe="syscalls")
