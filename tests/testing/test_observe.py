"""The observers, on real saves: what each one sees, and that what it cannot see gets no verdict."""

from __future__ import annotations

import mmap
import os
import random
import re
import sqlite3
import subprocess
import threading

import pytest

from persistkit.io import atomic_write
from persistkit.testing.observe import NotJudgeable
from persistkit.testing.observe.strace import ptrace_problem
from persistkit.testing.observe.syscalls import _HEX, _split_args, _unhex, parse

needs_strace = pytest.mark.skipif(
    ptrace_problem() is not None, reason=f"syscall observer: {ptrace_problem()}"
)


def read_or_none(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


# -- no verdict ------------------------------------------------------------------------------------------


@needs_strace
def test_a_write_outside_the_root_is_not_judgeable_and_named(crash_points, tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()

    def save():
        (elsewhere / "side.log").write_text("x")
        (root / "f").write_text("y")

    with pytest.raises(NotJudgeable) as err:
        crash_points(save, lambda: read_or_none(root / "f"), root=root, observe="syscalls")
    assert "outside the directory under test" in str(err.value)
    assert str(elsewhere / "side.log") in str(err.value)


@pytest.mark.parametrize("observe", [pytest.param("syscalls", marks=needs_strace), "python"])
def test_a_save_that_writes_nothing_has_nothing_to_judge(crash_points, observe):
    with pytest.raises(NotJudgeable, match="nothing to judge"):
        crash_points(lambda: None, lambda: 1, observe=observe)


def test_torch_save_under_the_python_observer_is_not_judgeable(crash_points, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    with pytest.raises(NotJudgeable) as err:
        crash_points(
            lambda: torch.save(torch.ones(4), path),
            lambda: torch.load(path).tolist() if path.exists() else None,
            observe="python",
        )
    assert "observe='syscalls'" in str(err.value) and "m.pt" in str(err.value)


@needs_strace
def test_a_shared_writable_mmap_is_not_judgeable_and_named(crash_points, tmp_path):
    path = tmp_path / "mapped.bin"
    path.write_bytes(bytes(4096))

    def save():
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
            m[:3] = b"abc"
            m.flush()

    with pytest.raises(NotJudgeable) as err:
        crash_points(save, lambda: path.read_bytes()[:3], observe="syscalls")
    assert str(path) in str(err.value) and "mmap" in str(err.value)


# -- what the syscall observer sees ----------------------------------------------------------------------


def ops_of(err: pytest.ExceptionInfo[AssertionError]) -> str:
    text = str(err.value)
    return text[text.index("Operations recorded during save() by the syscalls observer") :]


@needs_strace
def test_a_write_from_another_thread_is_seen(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        t = threading.Thread(target=lambda: path.write_text("x"))
        t.start()
        t.join()

    # seen: the verdict (not "no verdict") is the torn state an in-place write leaves
    with pytest.raises(AssertionError) as err:
        crash_points(save, lambda: read_or_none(path), model="process", observe="syscalls")
    assert not isinstance(err.value, NotJudgeable)
    assert re.search(r"#0 create f\n(.*\n)*  #\d+ write f \[0:1\]$", ops_of(err), flags=re.M)


@needs_strace
def test_a_child_process_is_seen(crash_points, tmp_path):
    path = tmp_path / "f"

    def save():
        subprocess.run(["sh", "-c", "printf x > f"], cwd=tmp_path, check=True)

    with pytest.raises(AssertionError) as err:
        crash_points(save, lambda: read_or_none(path), model="process", observe="syscalls")
    assert not isinstance(err.value, NotJudgeable)
    # sh opens f, dup2()s it onto stdout and closes the first descriptor before printf writes
    assert re.search(r"#0 create f\n(.*\n)*  #\d+ write f \[0:1\]$", ops_of(err), flags=re.M)


@needs_strace
def test_a_child_process_doing_it_right_passes(crash_points, tmp_path):
    (tmp_path / "f").write_text("old")
    report = crash_points(
        lambda: subprocess.run(["sh", "-c", "printf new > f.tmp && mv f.tmp f"], cwd=tmp_path, check=True),
        lambda: read_or_none(tmp_path / "f"),
        model="process",
        observe="syscalls",
    )
    assert report.observer == "syscalls" and report.old_states and report.new_states


@needs_strace
def test_subprocess_shell_rename_fails_power_loss_but_passes_the_process_model(crash_points, tmp_path):
    (tmp_path / "f").write_text("old")
    script = ["sh", "-c", "printf new > f.tmp && mv f.tmp f"]
    load = lambda: read_or_none(tmp_path / "f")  # noqa: E731
    with pytest.raises(AssertionError) as err:
        crash_points.subprocess(script, load, cwd=tmp_path, model="power-loss")
    assert not isinstance(err.value, NotJudgeable)
    assert "power loss" in str(err.value) and "lost #" in str(err.value)  # the unsynced write
    assert (tmp_path / "f").read_text() == "new"  # the directory is left as the save left it
    (tmp_path / "f").write_text("old")
    report = crash_points.subprocess(script, load, cwd=tmp_path, model="process")
    assert report.observer == "syscalls" and not report.violations and report.old_states and report.new_states


# -- disk faults -----------------------------------------------------------------------------------------


def sqlite_save_load(db: str, synchronous: str):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.commit()
    conn.close()

    def save():
        conn = sqlite3.connect(db)
        try:
            conn.execute(f"PRAGMA synchronous={synchronous}")
            with conn:
                conn.execute("UPDATE t SET v = 'b' WHERE k = 1")
        finally:
            conn.close()

    def load():
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT k, v FROM t").fetchall()
        finally:
            conn.close()

    return save, load


@needs_strace
def test_disk_faults_sqlite_handles_every_io_error_except_the_journal_directory_fsync(disk_faults, tmp_path):
    """SQLite surfaces every failed write and fsync, and rolls back, except one: the fsync of the
    directory after it creates the rollback journal, whose result os_unix.c ignores by design.
    disk_faults reports exactly that one (once; persistently, the next fsync fails and is reported)."""
    save, load = sqlite_save_load(str(tmp_path / "s.db"), "FULL")
    with pytest.raises(AssertionError) as err:
        disk_faults(save, load, errnos=["EIO"], observe="syscalls")
    text = str(err.value)
    assert not isinstance(err.value, NotJudgeable)
    assert re.search(r"disk_faults: 1 of \d+ injected faults were mishandled", text), text[:600]
    assert re.search(r"First: EIO at #\d+ fsync_dir \. \(once\)", text)
    assert load() == [(1, "b")]


@needs_strace
def test_disk_faults_sqlite_passes_every_fault_on_data_files(disk_faults, tmp_path):
    save, load = sqlite_save_load(str(tmp_path / "s.db"), "FULL")
    report = disk_faults(save, load, errnos=["ENOSPC", "EIO"], modes=["persistent"], observe="syscalls")
    assert report.observer == "syscalls" and not report.violations and report.fired > 10


@needs_strace
def test_disk_faults_in_place_write_loses_the_previous_state(disk_faults, tmp_path):
    path = tmp_path / "f"
    path.write_text("old")

    def save():
        with open(path, "w") as f:
            f.write("new")

    with pytest.raises(AssertionError, match="previous state lost") as err:
        disk_faults(save, lambda: path.read_text(), errnos=["ENOSPC"], observe="syscalls")
    assert not isinstance(err.value, NotJudgeable)


@needs_strace
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_faults_unclosed_in_place_write_swallows_the_error(disk_faults, tmp_path):
    """``open(p, 'w').write()`` writes at garbage collection, where CPython ignores the error."""
    path = tmp_path / "f"
    path.write_text("old")

    def save():
        open(path, "w").write("new")  # noqa: SIM115

    with pytest.raises(AssertionError, match="error swallowed"):
        disk_faults(save, lambda: path.read_text(), errnos=["ENOSPC"], observe="syscalls")


@needs_strace
def test_fault_recover_fault_again_then_crash_points_on_the_same_directory(
    disk_faults, crash_points, tmp_path
):
    path = tmp_path / "state.bin"
    atomic_write(path, b"v0")

    def load():
        return path.read_bytes()

    r1 = disk_faults(lambda: atomic_write(path, b"v1"), load, errnos=["ENOSPC"], observe="syscalls")
    assert load() == b"v1" and os.listdir(tmp_path) == ["state.bin"]  # recovered, no temp litter
    r2 = disk_faults(lambda: atomic_write(path, b"v2"), load, errnos=["EIO"], observe="syscalls")
    assert load() == b"v2" and os.listdir(tmp_path) == ["state.bin"]
    report = crash_points(lambda: atomic_write(path, b"v3"), load, observe="syscalls")
    assert r1.fired and r2.fired and not (r1.violations or r2.violations or report.violations)
    assert report.observer == "syscalls" and report.old_states and report.new_states
    assert load() == b"v3" and os.listdir(tmp_path) == ["state.bin"]


# -- the parser's fast paths decode exactly what the plain loops did ---------------------------------------


def reference_unhex(text: str) -> bytes:
    return bytes(int(h, 16) for h in _HEX.findall(text))


def reference_split(text: str) -> list[str]:
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "[{(<":
            depth += 1
        elif ch in "]})>":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def test_unhex_and_split_args_match_the_reference_loops():
    rng = random.Random(5)
    pieces = ['"', "...", " ", "x", ",", "a", "3", *"[]{}()<>", r"\x41", r"\x4", r"\X41", r"\x4A"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert _unhex(text) == reference_unhex(text), text
        assert _split_args(text) == reference_split(text), text
    data = os.urandom(1 << 16)
    quoted = '"' + "".join(f"\\x{b:02x}" for b in data) + '"'
    assert _unhex(quoted) == data and _unhex(quoted + "...") == data
    args = f"3</tmp/\\x61>, {quoted}, 65536, [{{iov_base={quoted}, iov_len=1}}], 1"
    assert _split_args(args) == reference_split(args) and len(_split_args(args)) == 5


def test_parse_decodes_a_large_write():
    data = os.urandom(1 << 20)
    hexed = "".join(f"\\x{b:02x}" for b in data)
    line = f'123 write(3<\\x2f\\x74\\x2f\\x66>, "{hexed}", {len(data)}) = {len(data)}\n'
    (call,) = parse(line)
    assert call.name == "write" and call.ret == len(data) and len(call.args) == 3
    assert _unhex(call.args[1]) == data and call.args[0] == "3<\\x2f\\x74\\x2f\\x66>"


def test_writev_iov_bases_decode_in_order():
    from persistkit.testing.observe.syscalls import SyscallLog

    chunks = [os.urandom(n) for n in (0, 1, 300, 1 << 16)]
    hexed = ['"' + "".join(f"\\x{b:02x}" for b in c) + '"' for c in chunks]
    iov = (
        "["
        + ", ".join(f"{{iov_base={h}, iov_len={len(c)}}}" for h, c in zip(hexed, chunks, strict=True))
        + "]"
    )
    log = SyscallLog("/nonexistent", {}, "/")
    assert log._iov(iov) == (b"".join(chunks), False)
    cut = iov.replace(hexed[-1], hexed[-1] + "...")
    assert log._iov(cut) == (b"".join(chunks), True)
