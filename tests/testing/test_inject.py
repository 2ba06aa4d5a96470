"""The seccomp injector on real processes and files: each fault lands on exactly the aimed call.

Every save runs in a real forked (or exec'd) child; what the child saw comes back as JSON over
a pipe (pipe writes are never file operations, so reporting does not shift an ordinal).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from persistkit.testing.observe.inject import (
    MAN_PAGE_ERRNOS,
    Aim,
    Channel,
    Errno,
    InjectorUnavailable,
    Listener,
    ShortWrite,
    arm,
    injector_problem,
    run_in_child,
    run_program,
)


def kernel_lacks_the_injector():
    """Why this machine cannot run the injector, judged without the injector (so a broken one fails, not skips)."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2]) < (5, 9):
        return f"Linux {platform.release()} < 5.9"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as f:
            return None if "user_notif" in f.read() else "no seccomp user_notif"
    except OSError:
        return "seccomp disabled"


pytestmark = pytest.mark.skipif(
    kernel_lacks_the_injector() is not None, reason=f"{kernel_lacks_the_injector()}"
)


def test_the_injector_runs_on_this_kernel():
    assert injector_problem() is None


libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400


def reporting(fn, **kw):
    """Run ``fn`` in an armed child; return (ChildRun, what fn returned, sent back as JSON over a pipe)."""
    r, w = os.pipe()

    def body():
        os.close(r)
        result = fn()
        data = json.dumps(result).encode()
        while data:
            data = data[os.write(w, data) :]

    try:
        run = run_in_child(body, **kw)
    finally:
        os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    raw = b"".join(chunks)
    return run, (json.loads(raw) if raw else None)


def attempt(fn, *args):
    """Call ``fn``: its result, or the errno name it failed with."""
    try:
        return fn(*args)
    except OSError as err:
        return errno.errorcode[err.errno]


def fired(run):
    return [(f.point.syscall, f.point.path, f.errno, f.result, f.aimed) for f in run.log.fired]


# -- aimed at one thread, one call, one descriptor ------------------------------------------------


def test_only_the_aimed_file_write_fails_while_another_thread_writes_a_pipe_and_an_eventfd(tmp_path):
    target = str(tmp_path / "state.bin")

    def save():
        r, w = os.pipe()
        efd = os.eventfd(0)
        sock, peer = socket.socketpair()
        null = os.open(os.devnull, os.O_WRONLY)
        go = threading.Event()
        noise = []

        def chatter():  # writes to a pipe, an eventfd, a socket and /dev/null, many times, during the save
            go.set()
            for _ in range(200):
                noise.append(attempt(os.write, w, b"x"))
                noise.append(attempt(os.eventfd_write, efd, 1))
                noise.append(attempt(os.write, sock.fileno(), b"y"))
                noise.append(attempt(os.write, null, b"z"))
                os.read(r, 1)
                peer.recv(1)

        t = threading.Thread(target=chatter)
        t.start()
        go.wait()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        results = [attempt(os.write, fd, b"chunk%d" % i) for i in range(5)]
        os.close(fd)
        t.join()
        return {"file": results, "noise_failures": [n for n in noise if isinstance(n, str)]}

    # even a caller predicate that accepts every path cannot make a pipe, socket or device a file
    run, seen = reporting(save, aims=[Aim(0, "write", 2, Errno("ENOSPC"))], eligible=lambda path, kind: True)
    assert run.returncode == 0
    assert seen["file"] == [6, "ENOSPC", 6, 6, 6]
    assert seen["noise_failures"] == []
    assert fired(run) == [("write", target, "ENOSPC", -errno.ENOSPC, True)]
    # the pipe, eventfd and their thread are never file operations: no point names them
    assert {p.path for p in run.log.points} == {target}


def run_two_writers(tmp_path, aims):
    paths = [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]

    def save():
        barrier = threading.Barrier(2)
        results = {}

        def writer(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            barrier.wait()  # both threads write at the same time
            results[path] = [attempt(os.write, fd, b"%d" % i) for i in range(6)]
            os.close(fd)

        threads = [threading.Thread(target=writer, args=(p,)) for p in paths]
        for t in threads:  # created in a fixed order: rank 1 writes a.bin, rank 2 b.bin
            t.start()
        for t in threads:
            t.join()
        return results

    return paths, *reporting(save, aims=aims)


def test_thread_ranks_follow_creation_order(tmp_path):
    paths, run, _ = run_two_writers(tmp_path, [])
    writes = {(p.rank, p.ordinal): p.path for p in run.log.points if p.family == "write"}
    assert {rank for rank, _ in writes} == {1, 2}
    assert all(path == paths[rank - 1] for (rank, _), path in writes.items())


def test_two_writer_threads_only_the_aimed_threads_third_write_fails_every_time(tmp_path):
    aim = Aim(2, "write", 3, Errno("EIO"))
    for _ in range(20):
        paths, run, seen = run_two_writers(tmp_path, [aim])
        assert run.returncode == 0
        assert seen[paths[0]] == [1, 1, 1, 1, 1, 1]
        assert seen[paths[1]] == [1, 1, "EIO", 1, 1, 1]
        assert fired(run) == [("write", paths[1], "EIO", -errno.EIO, True)]


# -- short writes ---------------------------------------------------------------------------------


WRITERS = {
    "write": lambda fd, data, at: os.write(fd, data),
    "pwrite64": lambda fd, data, at: os.pwrite(fd, data, at),
    "writev": lambda fd, data, at: os.writev(fd, [data[:3], data[3:10], data[10:]]),
    "pwritev": lambda fd, data, at: os.pwritev(fd, [data[:5], data[5:]], at),
}


@pytest.mark.parametrize("how", sorted(WRITERS))
def test_a_short_write_returns_the_count_the_file_holds_exactly_the_prefix_and_a_loop_completes_it(
    tmp_path, how
):
    target = str(tmp_path / "data.bin")
    payload = bytes(range(256)) * 64  # 16 KiB

    def save():
        write = WRITERS[how]
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        done = write(fd, payload, 0)
        after_first = os.pread(fd, len(payload), 0)
        position = os.lseek(fd, 0, os.SEEK_CUR)
        while done < len(payload):  # the loop every correct writer has
            done += write(fd, payload[done:], done)
        os.close(fd)
        return {
            "first": len(after_first),
            "prefix_ok": after_first == payload[: len(after_first)],
            "pos": position,
        }

    run, seen = reporting(save, aims=[Aim(0, "write", 1, ShortWrite(1000))])
    assert run.returncode == 0
    [shot] = run.log.fired
    assert (shot.action, shot.result, shot.requested) == ("short-write", 1000, len(payload))
    assert seen["first"] == 1000 and seen["prefix_ok"]
    # the file offset moved by exactly the bytes written (for write/writev), as the kernel's would
    assert seen["pos"] == (1000 if how in ("write", "writev") else 0)
    with open(target, "rb") as f:
        assert f.read() == payload


def test_a_short_write_to_an_append_only_file_appends_the_prefix(tmp_path):
    target = tmp_path / "journal"
    target.write_bytes(b"old|")

    def save():
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        n = os.write(fd, b"0123456789")
        os.close(fd)
        return n

    _, n = reporting(save, aims=[Aim(0, "write", 1, ShortWrite())])
    assert n == 5 and target.read_bytes() == b"old|01234"


def test_persistent_short_write_is_a_full_disk(tmp_path):
    target = str(tmp_path / "big.bin")

    def save():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        return [attempt(os.write, fd, b"x" * 100), attempt(os.write, fd, b"y" * 50), attempt(os.fsync, fd)]

    _, seen = reporting(save, aims=[Aim(0, "write", 1, ShortWrite(30), persistent=True)])
    assert seen == [30, "ENOSPC", "ENOSPC"]
    with open(target, "rb") as f:
        assert f.read() == b"x" * 30


# -- close errors ---------------------------------------------------------------------------------


def test_a_close_error_returns_eio_and_releases_the_file_description(tmp_path):
    target = str(tmp_path / "locked")

    def save():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by this open file description until it is released
        os.write(fd, b"data")
        closed = attempt(os.close, fd)
        holders = [n for n in os.listdir("/proc/self/fd") if _link(f"/proc/self/fd/{n}") == target]
        other = os.open(target, os.O_RDONLY)
        # a second description of the same file can take the lock only if the first one is gone
        lock = attempt(fcntl.flock, other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
        return {"close": closed, "holders": holders, "lock": lock, "slot": _link(f"/proc/self/fd/{fd}")}

    run, seen = reporting(save, aims=[Aim(0, "close", 1, Errno("EIO"))])
    assert seen["close"] == "EIO"
    assert seen["holders"] == []  # no descriptor of the real file is left
    assert seen["lock"] is None  # flock returned: the old description was released
    assert seen["slot"] == "/dev/null"  # what the program sees in the old slot until it exits
    assert fired(run) == [("close", target, "EIO", -errno.EIO, True)]
    [shot] = run.log.fired
    assert shot.action == "close-error"
    with open(target, "rb") as f:
        assert f.read() == b"data"


def _link(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def test_closing_what_was_only_read_is_not_a_file_operation(tmp_path):
    (tmp_path / "in").write_text("x")

    def save():
        fd = os.open(tmp_path / "in", os.O_RDONLY)
        os.read(fd, 1)
        os.close(fd)
        out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(out)

    run, _ = reporting(save)
    assert [(p.syscall, os.path.basename(p.path)) for p in run.log.points] == [
        ("openat", "out"),
        ("close", "out"),
    ]


# -- persistent faults ----------------------------------------------------------------------------


def test_persistent_enospc_fails_every_later_allocation_but_unlink_and_close_work(tmp_path):
    d = str(tmp_path)
    elsewhere = f"/dev/shm/persistkit-inject-{os.getpid()}"

    def save():
        fd = os.open(f"{d}/a.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        out = {
            "write1": attempt(os.write, fd, b"1"),
            "write2": attempt(os.write, fd, b"2"),
            "write3": attempt(os.write, fd, b"3"),
            "fsync": attempt(os.fsync, fd),
            "ftruncate": attempt(os.ftruncate, fd, 0),  # truncate(2) lists no ENOSPC: shrinking frees space
            "close": attempt(os.close, fd),
            "rename": attempt(os.rename, f"{d}/a.tmp", f"{d}/a"),
            "mkdir": attempt(os.mkdir, f"{d}/sub"),
            "unlink": attempt(os.unlink, f"{d}/a.tmp"),
        }
        other = os.open(elsewhere, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # another device
        out["other_device"] = attempt(os.write, other, b"ok")
        os.close(other)
        os.unlink(elsewhere)
        return out

    try:
        run, seen = reporting(save, aims=[Aim(0, "write", 2, Errno("ENOSPC"), persistent=True)])
    finally:
        if os.path.exists(elsewhere):
            os.unlink(elsewhere)
    assert seen == {
        "write1": 1,
        "write2": "ENOSPC",
        "write3": "ENOSPC",
        "fsync": "ENOSPC",
        "ftruncate": None,
        "close": None,
        "rename": "ENOSPC",
        "mkdir": "ENOSPC",
        "unlink": None,
        "other_device": 2,
    }
    assert [f.aimed for f in run.log.fired] == [True, False, False, False, False]
    assert not os.path.exists(f"{d}/a.tmp")


def test_persistent_eio_turns_read_only_where_eio_is_not_listed(tmp_path):
    d = str(tmp_path)

    def save():
        fd = os.open(f"{d}/f", os.O_WRONLY | os.O_CREAT, 0o644)
        return [attempt(os.fsync, fd), attempt(os.write, fd, b"x"), attempt(os.rename, f"{d}/f", f"{d}/g"),
                attempt(os.unlink, f"{d}/f"), attempt(os.close, fd)]  # fmt: skip

    _, seen = reporting(save, aims=[Aim(0, "fsync", 1, Errno("EIO"), persistent=True)])
    # rename(2) lists no EIO: a failing disk refuses it as read-only; unlink(2) lists EIO
    assert seen == ["EIO", "EIO", "EROFS", "EIO", None]


# -- only the errnos each man page lists ----------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "errno_name"),
    [("unlink", "ENOSPC"), ("unlink", "EDQUOT"), ("rmdir", "EIO"), ("rename", "EIO"), ("sync", "EIO"),
     ("copy", "EDQUOT"), ("truncate", "ENOSPC"), ("open", "EIO")],
)  # fmt: skip
def test_an_errno_the_man_page_does_not_list_is_refused(family, errno_name):
    with pytest.raises(ValueError, match=f"{errno_name} is never returned by the {family} family"):
        Aim(0, family, 1, Errno(errno_name)).validate()
    with pytest.raises(ValueError):
        run_in_child(lambda: None, aims=[Aim(0, family, 1, Errno(errno_name))])


def test_no_unlink_ever_lists_enospc_and_the_table_cites_man_pages():
    assert "ENOSPC" not in MAN_PAGE_ERRNOS["unlink"][0] and "ENOSPC" not in MAN_PAGE_ERRNOS["unlinkat"][0]
    assert MAN_PAGE_ERRNOS["sync"][0] == () and "always successful" in MAN_PAGE_ERRNOS["sync"][1]
    assert all("(2)" in why for _, why in MAN_PAGE_ERRNOS.values())


def test_enospc_on_an_open_that_creates_nothing_is_refused_and_the_call_runs(tmp_path):
    target = tmp_path / "exists"
    target.write_text("old")

    def save():
        return attempt(os.open, target, os.O_WRONLY | os.O_TRUNC) is not None

    run, opened = reporting(save, aims=[Aim(0, "open", 1, Errno("ENOSPC"))])
    assert opened and run.log.fired == []
    assert "cannot return ENOSPC" in run.log.refused[0]
    [point] = run.log.points
    assert point.errnos == ("EROFS",)


def test_fsync_of_a_file_and_of_a_directory_fail_with_eio(tmp_path):
    def save():
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        return [attempt(os.fsync, fd), attempt(os.fsync, dfd)]

    run, seen = reporting(save, aims=[Aim(0, "fsync", 1, Errno("EIO")), Aim(0, "fsync", 2, Errno("EIO"))])
    assert seen == ["EIO", "EIO"]
    assert [f.point.kind for f in run.log.fired] == ["regular", "directory"]


def test_syncfs_is_faultable_and_sync_is_counted(tmp_path):
    def save():
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        os.sync()  # sync(2): "always successful"; counted, never faulted
        return attempt(libc.syncfs, fd) == -1 and ctypes.get_errno()

    run, err = reporting(save, aims=[Aim(0, "syncfs", 1, Errno("EIO"))])
    assert err == errno.EIO
    assert [p.syscall for p in run.log.points] == ["openat", "sync", "syncfs"]
    assert fired(run) == [("syncfs", str(tmp_path / "f"), "EIO", -errno.EIO, True)]


# -- O_TMPFILE and files outside the root -----------------------------------------------------------


def tmpfile_save(d, dest):
    fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o644)
    first = attempt(os.write, fd, b"new ")
    second = attempt(os.write, fd, b"state")
    if second != 5:
        os.write(fd, b"state")  # retry, as a careful writer would
    linked = libc.linkat(fd, b"", AT_FDCWD, dest.encode(), AT_EMPTY_PATH)
    err = ctypes.get_errno() if linked else 0
    os.close(fd)
    return [first, second, errno.errorcode.get(err, err)]


def test_a_write_to_an_o_tmpfile_file_is_faultable_and_linkat_publishes_it(tmp_path):
    dest = str(tmp_path / "published")
    run, seen = reporting(
        lambda: tmpfile_save(str(tmp_path), dest), aims=[Aim(0, "write", 2, Errno("ENOSPC"))]
    )
    assert seen == [4, "ENOSPC", 0]
    with open(dest, "rb") as f:
        assert f.read() == b"new state"
    opened, write = run.log.points[0], run.log.points[2]
    assert (opened.tmpfile, opened.path) == (True, str(tmp_path))
    assert write.tmpfile and os.path.dirname(write.path) == str(tmp_path)
    link = next(p for p in run.log.points if p.family == "link")
    assert (link.tmpfile, link.second) == (True, dest)


def test_the_linkat_that_publishes_an_o_tmpfile_file_is_faultable(tmp_path):
    dest = str(tmp_path / "published")
    _, seen = reporting(lambda: tmpfile_save(str(tmp_path), dest), aims=[Aim(0, "link", 1, Errno("ENOSPC"))])
    assert seen == [4, 5, "ENOSPC"] and not os.path.exists(dest)


def test_linkat_through_proc_self_fd_is_seen_as_publishing_the_o_tmpfile_file(tmp_path):
    dest = str(tmp_path / "out")

    def save():
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        return libc.linkat(
            AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, dest.encode(), AT_SYMLINK_FOLLOW
        )

    run, ret = reporting(save)
    assert ret == 0
    link = next(p for p in run.log.points if p.family == "link")
    assert link.tmpfile and link.second == dest and link.path.startswith(str(tmp_path) + "/#")


def test_every_mutating_call_is_decoded_with_its_file_and_kind(tmp_path):
    d = str(tmp_path)
    (tmp_path / "src").write_bytes(b"source bytes")

    def save():
        os.chdir(d)
        fd = os.open("f", os.O_RDWR | os.O_CREAT, 0o644)  # relative to the cwd
        os.pwritev(fd, [b"ab", b"cd"], 0)
        os.ftruncate(fd, 2)
        os.posix_fallocate(fd, 0, 8192)
        src = os.open("src", os.O_RDONLY)
        os.copy_file_range(src, fd, 4)
        os.sendfile(fd, src, 0, 4)
        os.close(src)
        os.fdatasync(fd)
        os.close(fd)
        os.truncate("f", 1)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.mkdir("sub", dir_fd=dfd)
        os.symlink("f", "sub/link")
        os.rename("sub/link", "link2")
        os.link("f", "hard")
        os.mkfifo("fifo")  # a FIFO is not a file of a save
        os.unlink("hard")
        os.rmdir("sub")
        os.fsync(dfd)
        os.close(dfd)

    run, _ = reporting(save)
    seen = [
        (p.syscall, p.path.removeprefix(d), p.kind, (p.second or "").removeprefix(d)) for p in run.log.points
    ]
    assert seen == [
        ("openat", "/f", "regular", ""),
        ("pwritev2", "/f", "regular", ""),  # CPython calls pwritev2 even without flags
        ("ftruncate", "/f", "regular", ""),
        ("fallocate", "/f", "regular", ""),
        ("copy_file_range", "/f", "regular", ""),
        ("sendfile", "/f", "regular", ""),
        ("fdatasync", "/f", "regular", ""),
        ("close", "/f", "regular", ""),
        ("truncate", "/f", "regular", ""),
        ("mkdirat", "/sub", "directory", ""),
        ("symlink", "/sub/link", "symlink", ""),
        ("rename", "/sub/link", "symlink", "/link2"),
        ("link", "/f", "regular", "/hard"),
        ("unlink", "/hard", "regular", ""),
        ("rmdir", "/sub", "directory", ""),
        ("fsync", "", "directory", ""),
    ]
    assert [p.ordinal for p in run.log.points if p.family == "write"] == [1]


def test_openat2_is_decoded_from_its_open_how_struct(tmp_path):
    target = str(tmp_path / "via-openat2")

    def save():
        how = (ctypes.c_uint64 * 3)(os.O_WRONLY | os.O_CREAT, 0o644, 0)  # struct open_how
        libc.syscall.restype = ctypes.c_long
        fd = libc.syscall(437, AT_FDCWD, target.encode(), ctypes.byref(how), ctypes.sizeof(how))
        return fd >= 0 or ctypes.get_errno()

    run, ok = reporting(save, aims=[Aim(0, "open", 1, Errno("EDQUOT"))])
    if run.log.points and run.log.points[0].syscall != "openat2":
        pytest.skip("this machine has no openat2")
    assert ok == errno.EDQUOT
    assert fired(run) == [("openat2", target, "EDQUOT", -errno.EDQUOT, True)]


def test_threads_started_before_arm_are_covered_too(tmp_path):
    target = str(tmp_path / "early")
    channel = Channel()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            go = threading.Event()
            results = []

            def early():  # exists before the filter; TSYNC puts the filter on it as well
                go.wait()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
                results.append(attempt(os.write, fd, b"x"))
                os.close(fd)

            t = threading.Thread(target=early)
            t.start()
            arm(channel)
            go.set()
            t.join()
            code = 0 if results == ["EIO"] else 4
        finally:
            os._exit(code)
    channel.close_child_end()
    with Listener(channel, aims=[Aim(1, "write", 1, Errno("EIO"))]) as listener:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [(p.rank, p.family) for p in listener.log.points] == [(1, "open"), (1, "write"), (1, "close")]


def test_programs_the_child_starts_are_covered_and_ranked_after_it(tmp_path):
    target = str(tmp_path / "from-shell")

    def save():
        done = subprocess.run(
            ["sh", "-c", f"printf 'a' > {target}; printf 'b' >> {target}"], capture_output=True
        )
        return [done.returncode, done.stderr.decode()]

    dry, _ = reporting(save)
    writes = [p for p in dry.log.points if p.family == "write"]
    assert [p.path for p in writes] == [target, target]
    assert writes[0].rank >= 1 and writes[0].pid != dry.log.armed_pid
    aim = Aim.at(writes[1], Errno("ENOSPC"))
    run, (code, stderr) = reporting(save, aims=[aim])
    assert code != 0 and "error" in stderr  # dash's printf says "I/O error" for any write error
    assert run.log.misfire(aim, writes[1]) is None
    with open(target) as f:
        assert f.read() == "a"


def test_a_file_name_that_is_not_utf8_is_decoded_and_faultable(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.bin")

    def save():
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
        return attempt(os.write, fd, b"x")

    run, seen = reporting(save, aims=[Aim(0, "write", 1, Errno("EIO"))])
    assert seen == "EIO"
    assert [os.fsencode(p.path) for p in run.log.points] == [name, name]


def test_a_caller_predicate_chooses_the_files_of_the_save(tmp_path):
    root = tmp_path / "root"
    root.mkdir()

    def save():
        for name in (tmp_path / "outside.log", root / "state"):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"x")
            os.close(fd)

    run, _ = reporting(save, eligible=lambda path, kind: path.startswith(str(root) + "/"))
    assert {p.path for p in run.log.points} == {str(root / "state")}


# -- programs, C extensions, tracers ---------------------------------------------------------------


C_WRITER = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 2; }
    for (int i = 0; i < 4; i++) {
        printf("writing %d\n", i);  /* stdout is a pipe: never a file operation */
        fflush(stdout);
        if (write(fd, "chunk", 5) != 5) printf("write %d: %s\n", i, strerror(errno));
        else printf("write %d: ok\n", i);
        fflush(stdout);
    }
    if (fsync(fd) != 0) { printf("fsync: %s\n", strerror(errno)); return 1; }
    return close(fd) == 0 ? 0 : 3;
}
"""


@pytest.fixture(scope="module")
def c_writer(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("cprog")
    (d / "writer.c").write_text(C_WRITER)
    subprocess.run(["gcc", "-O1", "-o", str(d / "writer"), str(d / "writer.c")], check=True)
    return str(d / "writer")


def test_a_c_program_run_armed_receives_the_aimed_fault(c_writer, tmp_path):
    out = str(tmp_path / "out.bin")
    dry = run_program([c_writer, out])
    assert dry.returncode == 0
    assert [(p.family, p.ordinal) for p in dry.log.points] == [
        ("open", 1), ("write", 1), ("write", 2), ("write", 3), ("write", 4), ("fsync", 1), ("close", 1),
    ]  # fmt: skip
    plan = dry.log.points[2]
    aim = Aim.at(plan, Errno("EDQUOT"))
    run = run_program([c_writer, out], aims=[aim])
    lines = run.stdout.decode().splitlines()
    assert [line for line in lines if line.startswith("write")] == [
        "write 0: ok", "write 1: Disk quota exceeded", "write 2: ok", "write 3: ok",
    ]  # fmt: skip
    assert run.returncode == 0 and run.log.misfire(aim, plan) is None
    with open(out, "rb") as f:
        assert f.read() == b"chunk" * 3


def test_a_program_killed_at_the_timeout_is_reported(tmp_path):
    run = run_program([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1.0)
    assert run.timed_out and run.returncode == -signal.SIGKILL


def test_h5py_holding_the_gil_gets_the_fault_without_deadlock(tmp_path):
    h5py = pytest.importorskip("h5py")
    np = pytest.importorskip("numpy")
    target = str(tmp_path / "model.h5")

    def save():
        stop = threading.Event()
        ticks = []

        def needs_the_gil():  # a second Python thread that runs whenever the GIL is free
            while not stop.is_set():
                ticks.append(1)

        t = threading.Thread(target=needs_the_gil)
        t.start()
        try:
            with h5py.File(target, "w") as f:
                f.create_dataset("w", data=np.arange(100_000, dtype="f8"))
            outcome = "saved"
        except Exception as err:  # h5py reports the write error as it sees fit
            outcome = f"{type(err).__name__}: {err}"
        stop.set()
        t.join()
        return outcome

    dry, outcome = reporting(save)
    assert outcome == "saved"
    plan = next(p for p in dry.log.points if p.family == "write" and p.path == target)
    aim = Aim.at(plan, Errno("ENOSPC"))
    run, outcome = reporting(save, aims=[aim], timeout=120)
    assert not run.timed_out
    assert outcome != "saved" and ("No space left on device" in outcome or "errno = 28" in outcome)
    assert run.log.misfire(aim, plan) is None


def test_sqlite_commit_gets_the_fault(tmp_path):
    import sqlite3

    target = str(tmp_path / "db.sqlite")

    def save():
        con = sqlite3.connect(target)
        try:
            con.execute("create table t (x)")
            con.executemany("insert into t values (?)", [(i,) for i in range(1000)])
            con.commit()
            return "committed"
        except sqlite3.Error as err:
            return str(err)
        finally:
            con.close()

    dry, outcome = reporting(save)
    assert outcome == "committed"
    fsyncs = [p for p in dry.log.points if p.family == "fsync" and p.path == target]
    aim = Aim.at(fsyncs[-1], Errno("EIO"))
    os.unlink(target)
    run, outcome = reporting(save, aims=[aim])
    assert outcome == "disk I/O error"
    assert run.log.misfire(aim, fsyncs[-1]) is None


def test_strace_attached_before_the_filter_sees_the_injected_results(tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    from persistkit.testing.observe.strace import ptrace_problem

    if ptrace_problem() is not None:
        pytest.skip(ptrace_problem())
    target = str(tmp_path / "traced")
    trace = str(tmp_path / "trace.txt")
    channel = Channel()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the process under test: waits for strace, then arms, then saves
        code = 1
        try:
            os.close(go_w)
            os.read(go_r, 1)
            arm(channel)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            results = [attempt(os.write, fd, w) for w in (b"one", b"two-two", b"three")]
            results.append(attempt(os.close, fd))
            code = 0 if results == [3, 3, "ENOSPC", "EIO"] else 5
        finally:
            os._exit(code)
    os.close(go_r)
    channel.close_child_end()
    aims = [
        Aim(0, "write", 2, ShortWrite(3)),
        Aim(0, "write", 3, Errno("ENOSPC")),
        Aim(0, "close", 1, Errno("EIO")),
    ]
    with Listener(channel, aims=aims) as listener:
        tracer = subprocess.Popen(
            ["strace", "-f", "-o", trace, "-e", "trace=openat,write,close", "-p", str(pid)],
            stderr=subprocess.PIPE,
        )
        assert b"attached" in tracer.stderr.readline()  # strace says so once it is attached
        os.write(go_w, b"g")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        tracer.wait(timeout=60)
        tracer.stderr.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert [f.action for f in listener.log.fired] == ["short-write", "errno", "close-error"]
    with open(trace) as f:
        calls = [
            re.sub(r"\s+= ", " = ", line.split(None, 1)[1].rstrip()) for line in f
        ]  # strace pads columns
    opened = next(i for i, line in enumerate(calls) if target in line)
    fd = calls[opened].rsplit("= ", 1)[1]
    lines = [line for line in calls[opened + 1 :] if line.startswith((f"write({fd},", f"close({fd})"))]
    assert lines == [
        f'write({fd}, "one", 3) = 3',
        f'write({fd}, "two-two", 7) = 3',  # the short write: 3 of 7 bytes
        f'write({fd}, "three", 5) = -1 ENOSPC (No space left on device)',
        f"close({fd}) = -1 EIO (Input/output error)",
    ]


# -- the listener survives what the child does ------------------------------------------------------


@pytest.mark.parametrize("fault", [Errno("EIO"), ShortWrite(2)])
def test_a_child_killed_while_its_call_waits_for_the_listener_does_not_hang_it(tmp_path, fault):
    target = str(tmp_path / "f")
    channel = Channel()
    pid = os.fork()
    if pid == 0:
        try:
            arm(channel)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"never answered")
        finally:
            os._exit(0)
    channel.close_child_end()
    pidfd = os.pidfd_open(pid)

    def eligible(path, kind):
        if path == target:
            seen.append(path)
            if len(seen) == 2:  # the write (the open came first)
                os.kill(pid, signal.SIGKILL)  # while its notification waits for this very answer
                select.select([pidfd], [], [])  # until it is dead (a zombie: not reaped yet)
        return True

    seen: list[str] = []
    listener = Listener(channel, aims=[Aim(0, "write", 1, fault)], eligible=eligible).start()
    listener.ready()
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    log = listener.stop()
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
    assert len(seen) == 2 and log.fired == []
    assert [p.family for p in log.points] == ["open"]  # the killed write never happened: not counted
    with open(target, "rb") as f:
        assert f.read() == b""


def test_a_child_that_dies_before_arming_is_reported():
    channel = Channel()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    channel.close_child_end()
    listener = Listener(channel).start()
    os.waitpid(pid, 0)
    with pytest.raises(InjectorUnavailable, match="ended before arming"):
        listener.ready()
    listener.stop()


def test_misfire_names_an_aim_the_run_never_reached(tmp_path):
    def save():
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)

    dry, _ = reporting(save)
    plan = dry.log.points[1]
    beyond = Aim(0, "write", 2, Errno("EIO"))
    run, _ = reporting(save, aims=[beyond])
    assert run.log.fired == []
    assert "never came" in run.log.misfire(beyond, plan)
