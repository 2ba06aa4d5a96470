"""``crash_points.subprocess`` judges a program as it is: it ends when it returns, by itself.

Before, a program that outlived ``timeout=`` raised a bare ``subprocess.TimeoutExpired`` and kept
writing into the test's directory after the fixture returned; a program that left its save to a
detached child was judged only once every traced process had exited (so it passed); a death by a
signal read "exited with status -11 without a crash"; and a program that printed anything got no
verdict at all.
"""

from __future__ import annotations

import os
import sys

import pytest

from persistkit.testing.crash_points import CrashPoints
from persistkit.testing.report import Recorder


@pytest.fixture
def cp(tmp_path):
    return CrashPoints(tmp_path, recorder=Recorder())


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_a_program_that_prints_is_judged(cp, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"old")
    script = f"echo saving; echo more >&2; printf new > {f}.tmp && mv {f}.tmp {f}"
    with pytest.raises(AssertionError, match="First violation"):  # no fsync: a real verdict, not "no verdict"
        cp.subprocess(["sh", "-c", script], lambda: read(f), cwd=tmp_path)
    report = cp.subprocess(["sh", "-c", script], lambda: read(f), cwd=tmp_path, model="process")
    assert report.violations == [] and report.new_states >= 1


def test_a_program_that_outlives_its_timeout_is_killed_with_everything_it_started(cp, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"old")
    script = f"echo $$ > {tmp_path}/pid; (echo $$ > {tmp_path}/child; sleep 60; echo late > {f}) & sleep 60"
    with pytest.raises(AssertionError) as info:
        cp.subprocess(["sh", "-c", script], lambda: read(f), cwd=tmp_path, timeout=2)
    assert "did not exit within 2 s; it was killed with every process it started" in str(info.value)
    assert not isinstance(info.value, TimeoutError)
    for name in ("pid", "child"):
        pid = int((tmp_path / name).read_text().split()[0])
        assert not alive(pid), name
    assert read(f) == b"old"


def test_a_program_that_leaves_its_save_to_a_detached_child_fails(cp, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"old")
    helper = tmp_path / "later.py"
    helper.write_text(
        "import os, sys, time\n"
        "if os.fork():\n    sys.exit(0)  # the command returns at once\n"
        "os.setsid()\n"
        "time.sleep(30)\n"
        f"open({str(f)!r} + '.tmp', 'wb').write(b'new'); os.replace({str(f)!r} + '.tmp', {str(f)!r})\n"
    )
    with pytest.raises(AssertionError) as info:
        cp.subprocess([sys.executable, str(helper)], lambda: read(f), cwd=tmp_path)
    text = str(info.value)
    assert "returned while processes it started were still running" in text and "later.py" in text


def test_a_death_by_signal_is_named(cp, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"old")
    with pytest.raises(AssertionError) as info:
        cp.subprocess(["sh", "-c", "printf x > f.tmp; kill -SEGV $$"], lambda: read(f), cwd=tmp_path)
    assert "was killed by SIGSEGV (it crashed)" in str(info.value)
    assert "status -11" not in str(info.value)


def test_nothing_it_started_outlives_the_fixture(cp, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"old")
    script = (
        f"printf new > {f}.tmp && mv {f}.tmp {f}; "
        f"(setsid sh -c 'echo $$ > {tmp_path}/daemon; sleep 60' &) ; sleep 0"
    )
    with pytest.raises(AssertionError):
        cp.subprocess(["sh", "-c", script], lambda: read(f), cwd=tmp_path, model="process")
    daemon = tmp_path / "daemon"
    if daemon.exists():  # the daemon got as far as writing its pid before it was killed
        assert not alive(int(daemon.read_text().split()[0]))
    assert os.listdir(tmp_path)
