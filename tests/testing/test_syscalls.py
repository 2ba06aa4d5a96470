"""The syscall observer against real system calls: descriptors opened before tracing,
threads, copies the kernel makes, links, and files made outside the root and moved in."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import pytest
from fsutil import fsync_dir, read

from persistkit.testing.crash_points import CrashPoints
from persistkit.testing.observe import NotJudgeable
from persistkit.testing.observe.syscalls import SyscallLog, parse
from persistkit.testing.report import Recorder


@pytest.fixture
def cp(tmp_path):
    return CrashPoints(tmp_path, recorder=Recorder())


def test_parse_joins_unfinished_and_resumed_calls():
    text = (
        '10 write(3<\\x2f\\x74>, "\\x61\\x62", 2 <unfinished ...>\n'
        "11 close(4<\\x2f\\x75>) = 0\n"
        "10 <... write resumed>) = 2\n"
        '10 pwrite64(3<\\x2f\\x74>, "\\x63", 1, 7) = -1 ENOSPC (No space left on device) (INJECTED)\n'
        "10 +++ exited with 0 +++\n"
    )
    calls = list(parse(text))
    assert [(c.tid, c.name, c.ret, c.error, c.injected, c.ordinal) for c in calls] == [
        (11, "close", 0, None, False, 1),
        (10, "write", 2, None, False, 1),
        (10, "pwrite64", None, "ENOSPC", True, 1),
    ]
    assert calls[1].args[1] == '"\\x61\\x62"'


def test_an_append_only_descriptor_opened_before_tracing_is_placed_at_the_end(cp, tmp_path):
    journal = tmp_path / "journal"
    journal.write_bytes(b"rec0\n")
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    try:

        def save():
            nonlocal fd
            os.write(fd, b"rec1\n")
            os.fsync(fd)

        report = cp(save, lambda: read(journal), observe="syscalls", model="process")
        assert report.violations == [] and any("write journal [5:10]" in op for op in report.operations)
        # crash_points rewrote the directory's files while it explored states: reopen.
        os.close(fd)
        journal.write_bytes(b"rec0\n")
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
        # Power loss can leave the appended block allocated but unwritten: a reader that does
        # not tolerate a zero-filled tail is told so.
        with pytest.raises(AssertionError, match=r"write journal \[5:10\] left as zeros"):
            cp(save, lambda: read(journal), observe="syscalls", model="power-loss")
    finally:
        os.close(fd)


def test_a_descriptor_opened_before_tracing_keeps_its_position(cp, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"aaaabbbb")
    fd = os.open(path, os.O_RDWR)
    os.lseek(fd, 4, os.SEEK_SET)
    try:
        # overwrites bytes 4..8 in place: torn states exist, and the offsets must be right
        with pytest.raises(AssertionError, match=r"(?s)neither.*write data \[4:8\]"):
            cp(lambda: os.write(fd, b"cccc"), lambda: read(path), observe="syscalls", model="power-loss")
    finally:
        os.close(fd)
    assert read(path) == b"aaaacccc"


def test_writes_from_another_thread_are_seen(cp, tmp_path):
    path = tmp_path / "t.json"
    path.write_text("1")

    def save():
        def work():
            tmp = tmp_path / "t.json.tmp"
            with open(tmp, "w") as f:
                f.write("2")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(tmp_path)

        t = threading.Thread(target=work)
        t.start()
        t.join()

    report = cp(save, lambda: path.read_text(), observe="syscalls")
    assert report.violations == [] and len(report.operations) >= 5


def test_a_copy_made_by_the_kernel_carries_its_bytes(cp, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(20000))
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"old")

    def careless():
        shutil.copyfile(src, dst)  # sendfile into the target in place

    with pytest.raises(AssertionError, match="neither"):
        cp(careless, lambda: read(dst), observe="syscalls", model="process")
    assert read(dst) == read(src)

    dst.write_bytes(b"old")

    def careful():
        tmp = tmp_path / "dst.tmp"
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, dst)
        fsync_dir(tmp_path)

    report = cp(careful, lambda: read(dst), observe="syscalls")
    assert report.violations == [] and any("write dst.tmp [0:20000]" in op for op in report.operations)


def test_a_file_made_outside_the_root_and_moved_in_is_followed(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "scratch"
    root.mkdir()
    outside.mkdir()
    target = root / "m.bin"
    target.write_bytes(b"old")
    cp = CrashPoints(root, recorder=Recorder())

    def save():
        tmp = outside / "m.part"
        with open(tmp, "wb") as f:
            f.write(b"new" * 1000)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(root)

    report = cp(save, lambda: read(target), observe="syscalls")
    assert report.violations == [] and report.new_states >= 1 and report.old_states >= 1


def test_a_file_that_existed_outside_the_root_and_is_moved_in_is_not_judged(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "m.bin").write_bytes(b"old")
    staged = tmp_path / "staged.bin"
    staged.write_bytes(b"new")
    cp = CrashPoints(root, recorder=Recorder())
    with pytest.raises(NotJudgeable, match="existed before the save"):
        cp(lambda: os.replace(staged, root / "m.bin"), lambda: read(root / "m.bin"), observe="syscalls")


def test_hard_links_are_modelled(cp, tmp_path):
    target = tmp_path / "m.bin"

    def save():
        fd, tmp = tempfile.mkstemp(dir=tmp_path)
        os.write(fd, b"new")
        os.fsync(fd)
        os.close(fd)
        os.link(tmp, target)  # create-only publish, as atomicwrites' move_atomic does
        os.unlink(tmp)
        fsync_dir(tmp_path)

    def load():
        return read(target) if target.exists() else None

    report = cp(save, load, observe="syscalls")
    assert report.violations == [] and any(" link " in f" {op} " for op in report.operations)


def test_the_mapper_reports_a_shared_writable_mapping_under_the_root(tmp_path):
    path = tmp_path / "x"
    text = f"5 mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_SHARED, 3<{_hex(str(path))}>, 0) = 0x7f0000000000\n"
    log = SyscallLog(str(tmp_path), {}, str(tmp_path)).feed(parse(text))
    assert log.blind and str(path) in log.blind[0] and "mmap" in log.blind[0]


def _hex(text):
    return "".join(f"\\x{b:02x}" for b in text.encode())


def test_writes_outside_the_root_get_no_verdict_unless_allowed(cp, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "app.log"
    target = root / "v.txt"
    target.write_text("1")
    cp = CrashPoints(root, recorder=Recorder())

    def save():
        with open(log, "a") as f:
            f.write("saving\n")
        tmp = root / "v.tmp"
        with open(tmp, "w") as f:
            f.write("2")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(root)

    with pytest.raises(NotJudgeable, match=r"outside the directory under test.*app\.log"):
        cp(save, target.read_text, observe="syscalls")
    target.write_text("1")
    report = cp(save, target.read_text, observe="syscalls", allow_outside=[str(tmp_path / "*.log")])
    assert report.violations == []
