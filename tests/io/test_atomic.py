from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from persistkit.errors import PersistIOError
from persistkit.io import atomic_write, atomic_writer, use_fs
from persistkit.io.atomic import TEMP_MARKER, WRITEBACK_EVERY, cleanup_stale_temps, is_temp_name
from persistkit.io.fs import DelegatingFS, LocalFS
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.faultfs import FAULT_ERRNOS, Fault, FaultFS
from persistkit.testing.fs.recordfs import RecordingFS

OLD = bytes(range(256)) * 16  # 4 KiB
NEW = b"N" * 4096 + b"tail" * 300  # crosses a block boundary, so tears are possible


def temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if TEMP_MARKER in n]


def test_writes_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    assert atomic_write(target, b"hello") == target
    assert target.read_bytes() == b"hello"
    atomic_write(target, b"world!")
    assert target.read_bytes() == b"world!"
    assert temps(tmp_path) == []


def test_writer_context_streams_several_chunks(tmp_path):
    target = tmp_path / "f.bin"
    with atomic_writer(target) as w:
        w.write(b"a" * 10)
        w.write(memoryview(b"b" * 5))
        assert w.bytes_written == 15
        assert not target.exists()  # nothing visible before the commit
    assert target.read_bytes() == b"a" * 10 + b"b" * 5


def test_exception_in_block_keeps_old_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="boom"), atomic_writer(target) as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == OLD
    assert temps(tmp_path) == []


def test_mode_is_applied(tmp_path):
    target = tmp_path / "secret.key"
    atomic_write(target, b"k", mode=0o600)
    assert (target.stat().st_mode & 0o777) == 0o600


def test_exactly_one_file_fsync_and_one_directory_fsync(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(OLD)
    rec = RecordingFS()
    with use_fs(rec):
        atomic_write(target, NEW)
    counts = rec.counts()
    assert counts["fsync"] == 1
    assert counts["fsync_dir"] == 1
    assert counts["replace"] == 1
    kinds = [op.kind for op in rec.ops]
    # the order is what makes it durable: data fsync before rename, dir fsync after
    assert kinds.index("fsync") < kinds.index("replace") < kinds.index("fsync_dir")


def test_stale_temps_from_dead_writers_are_cleaned(tmp_path):
    # a child process starts a write and is killed before it commits
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import os, signal
            from persistkit.io import atomic_writer
            with atomic_writer({str(tmp_path / "f.bin")!r}) as w:
                w.write(b'x' * 100)
                os.kill(os.getpid(), signal.SIGKILL)
        """),
        ],
        check=False,
    )
    assert child.returncode == -9
    left = temps(tmp_path)
    assert len(left) == 1 and is_temp_name(left[0])
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine")
    atomic_write(tmp_path / "other.bin", b"y")  # any write into the directory cleans up
    assert temps(tmp_path) == []
    assert unrelated.read_text() == "mine"


def test_cleanup_spares_live_writers(tmp_path):
    with atomic_writer(tmp_path / "f.bin") as w:
        w.write(b"in progress")
        assert cleanup_stale_temps(tmp_path) == []
        assert os.path.exists(w.temp_path)
    assert (tmp_path / "f.bin").read_bytes() == b"in progress"


def test_concurrent_writers_never_share_a_temp(tmp_path):
    target = tmp_path / "f.bin"
    with atomic_writer(target) as a, atomic_writer(target) as b:
        assert a.temp_path != b.temp_path
        a.write(b"A")
        b.write(b"B")
    assert target.read_bytes() == b"A"  # the outer writer commits last


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_every_crash_state_is_old_or_new(tmp_path, model):
    target = tmp_path / "f.bin"
    target.write_bytes(OLD)
    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    with use_fs(rec):
        atomic_write(target, NEW)
    sim = CrashSimulator(before, rec.ops)
    seen = {"old": 0, "new": 0}
    for state in sim.states(model):
        content = state.files().get("f.bin")
        allowed = {NEW: "new"} if state.complete else {OLD: "old", NEW: "new"}
        assert content in allowed, f"{state.description}: f.bin holds {content!r:.60}"
        seen[allowed[content]] += 1
        # after recovery (the next write) no temp litter survives
        state.materialize(tmp_path)
        atomic_write(tmp_path / "probe", b"")
        assert temps(tmp_path) == []
    assert seen["old"] >= 1 and seen["new"] >= 1
    print(f"\n{model}: {sim.stats.states} states explored, {sim.stats.duplicates} duplicates")


ERRNOS = sorted(FAULT_ERRNOS.items())


def count_ops(tmp_path) -> int:
    probe = FaultFS(LocalFS())
    (tmp_path / "f.bin").write_bytes(OLD)
    with use_fs(probe):
        atomic_write(tmp_path / "f.bin", NEW)
    (tmp_path / "f.bin").write_bytes(OLD)
    return probe.counter


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize(("name", "code"), ERRNOS, ids=[n for n, _ in ERRNOS])
def test_fault_at_every_operation(tmp_path, name, code, persistent, fd_guard):
    target = tmp_path / "f.bin"
    n_ops = count_ops(tmp_path)
    assert n_ops >= 6
    for at in range(n_ops):
        for short in (False, True):
            target.write_bytes(OLD)
            fs = FaultFS(LocalFS(), Fault(at, code, persistent=persistent, short_write=short))
            with use_fs(fs):
                try:
                    atomic_write(target, NEW)
                except PersistIOError as err:
                    assert err.errno == code
                    assert str(target) in str(err)
                    raised = True
                else:
                    raised = False
            assert fs.fired, f"fault {fs.fault} never fired"
            content = target.read_bytes()
            if raised and fs.log[at].split()[1] != "fsync_dir":
                assert content == OLD, f"{name} at #{at}: previous file changed"
            else:
                # the only failure after the rename is the directory fsync: new content is
                # in place and the caller was told it may not be durable
                assert content == NEW
            if not persistent:
                assert temps(tmp_path) == [], f"{name} at #{at}: temp litter {temps(tmp_path)}"
            else:
                # a persistent fault also refuses the cleanup unlink; what is left must be
                # recognisable as ours so the next write can remove it
                assert all(is_temp_name(n) for n in temps(tmp_path))
            fs.clear()
            with use_fs(fs):
                atomic_write(target, NEW)  # the next save succeeds once the fault clears
            assert target.read_bytes() == NEW
            assert temps(tmp_path) == [], f"{name} at #{at}: litter survived the next save"


def test_failed_fsync_is_never_retried(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(OLD)
    fs = FaultFS(LocalFS(), Fault(0, errno.EIO, kinds=frozenset({"fsync"})))
    rec = RecordingFS(fs)
    with use_fs(rec), pytest.raises(PersistIOError, match="fsync"):
        atomic_write(target, NEW)
    assert rec.counts()["fsync"] == 0  # the failed one is not logged, and no retry happened
    assert "replace" not in rec.counts()
    assert target.read_bytes() == OLD


def test_real_short_write_from_file_size_limit(tmp_path):
    """RLIMIT_FSIZE makes the kernel return a short write, then EFBIG."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        from persistkit.errors import PersistIOError
        from persistkit.io import atomic_write
        try:
            atomic_write({str(target)!r}, b"x" * 8000)
        except PersistIOError as err:
            print("errno", err.errno)
            sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 3, out.stderr
    assert f"errno {errno.EFBIG}" in out.stdout
    assert target.read_bytes() == b"old"
    assert temps(tmp_path) == []


def test_error_names_path_and_errno(tmp_path):
    missing_dir = tmp_path / "nope" / "f.bin"
    with pytest.raises(PersistIOError) as info:
        atomic_write(missing_dir, b"x")
    assert info.value.errno == errno.ENOENT
    assert "ENOENT" in str(info.value) and str(missing_dir) in str(info.value)


def test_durable_false_skips_fsyncs(tmp_path):
    rec = RecordingFS()
    with use_fs(rec):
        atomic_write(tmp_path / "note", b"x", durable=False)
    assert rec.counts()["fsync"] == 0 and rec.counts()["fsync_dir"] == 0


def test_resource_module_available():
    # guards the RLIMIT test above from silently testing nothing on odd platforms
    assert resource.RLIMIT_FSIZE >= 0 and time.time() > 0


class _CountingFS(DelegatingFS):
    """Real LocalFS underneath; counts write-back hints and can make them fail like a dying disk."""

    def __init__(self, fail_with: int | None = None) -> None:
        super().__init__(LocalFS())
        self.hints: list[int] = []
        self.fail_with = fail_with

    def start_writeback(self, handle):
        self.hints.append(handle.offset)
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with), handle.path)
        super().start_writeback(handle)


def test_large_durable_writes_start_writeback_while_writing(tmp_path, fd_guard):
    size = 3 * WRITEBACK_EVERY + 12345
    data = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    fs = _CountingFS()
    with use_fs(fs):
        atomic_write(tmp_path / "big.bin", data)
        atomic_write(tmp_path / "small.bin", data[: WRITEBACK_EVERY - 1])
        atomic_write(tmp_path / "advisory.bin", data, durable=False)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert (tmp_path / "small.bin").read_bytes() == data[: WRITEBACK_EVERY - 1]
    assert (tmp_path / "advisory.bin").read_bytes() == data
    # only the big durable write was handed over early, at offsets before its end
    assert 1 <= len(fs.hints) <= 3 and all(0 < offset < size for offset in fs.hints), fs.hints
    assert not [t for t in threading.enumerate() if t.name == "persistkit-writeback"]


def test_failed_writeback_fails_the_save_and_keeps_the_old_file(tmp_path, fd_guard):
    target = tmp_path / "big.bin"
    target.write_bytes(OLD)
    fs = _CountingFS(fail_with=errno.EIO)
    with use_fs(fs), pytest.raises(PersistIOError, match="fsync") as info:
        atomic_write(target, b"x" * (2 * WRITEBACK_EVERY))
    assert info.value.errno == errno.EIO and info.value.path == str(target)
    assert fs.hints and target.read_bytes() == OLD and temps(tmp_path) == []


def test_writeback_thread_is_joined_when_the_block_raises(tmp_path, fd_guard):
    target = tmp_path / "big.bin"
    target.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="producer failed"), atomic_writer(target) as writer:
        writer.write(b"y" * (2 * WRITEBACK_EVERY))
        raise RuntimeError("producer failed")
    assert target.read_bytes() == OLD and temps(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name == "persistkit-writeback"]


def test_a_fork_while_another_thread_holds_the_locks_does_not_hang_the_child(tmp_path):
    """Locks held by other threads at fork() stay held forever in the child unless reset after the fork."""
    import persistkit.io.atomic as atomic

    (tmp_path / "old.bin").write_bytes(OLD)
    with atomic._closer_lock, atomic._active_lock:  # as if a saving thread held them at the fork
        pid = os.fork()
        if pid == 0:  # the child: save and release through both locks, then report
            try:
                atomic.close_later(atomic.keep_open(tmp_path / "old.bin"))
                atomic_write(tmp_path / "old.bin", NEW)
                os._exit(0 if (tmp_path / "old.bin").read_bytes() == NEW else 1)
            finally:
                os._exit(2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child deadlocked on a lock held at fork time")


@pytest.mark.parametrize("length", [230, 255])
def test_any_target_name_that_fits_gets_a_temp_name_that_fits(tmp_path, length):
    target = tmp_path / ("é" * (length // 2) + "x" * (length % 2))
    assert len(target.name.encode()) == length
    atomic_write(target, b"data")
    assert target.read_bytes() == b"data"
    assert temps(tmp_path) == []
