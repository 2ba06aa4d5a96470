from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from persistkit.errors import LockedError
from persistkit.io.lock import DirectoryLock


def test_second_writer_in_process_is_refused_with_pid(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(LockedError) as info:
            DirectoryLock(tmp_path).acquire()
        assert info.value.pid == os.getpid()
        assert str(os.getpid()) in str(info.value)
        assert str(tmp_path) in str(info.value)
    # released: the next writer gets it
    with DirectoryLock(tmp_path) as lock:
        assert lock.held


def test_lock_held_by_another_process_names_it(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from persistkit.io.lock import DirectoryLock
            lock = DirectoryLock({str(tmp_path)!r}).acquire()
            print("locked", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError) as info:
            DirectoryLock(tmp_path).acquire()
        assert info.value.pid == child.pid
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    # SIGKILL released the lock: no stale lock survives a crashed holder
    with DirectoryLock(tmp_path) as lock:
        assert lock.held


def test_timeout_waits_for_the_holder(tmp_path):
    holder = DirectoryLock(tmp_path).acquire()
    start = time.monotonic()
    with pytest.raises(LockedError):
        DirectoryLock(tmp_path, timeout=0.2).acquire()
    assert time.monotonic() - start >= 0.2
    holder.release()


def test_creates_missing_directory(tmp_path):
    target = tmp_path / "a" / "b"
    with DirectoryLock(target):
        assert target.is_dir()
